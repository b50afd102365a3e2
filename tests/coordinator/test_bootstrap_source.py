"""Bootstrap multiaddrs fetched from the bootstrap DHT's /multiaddrs route."""
from __future__ import annotations

import time

import pytest

from swarm.metrics import MetricsServer
from swarm_coordinator.bootstrap_source import BootstrapPeersSource, merge_bootstrap_peers, parse_multiaddrs
from tests.e2e.waiting import wait_until

MADDR = "/ip4/203.0.113.7/tcp/31337/p2p/QmQJ3KMfh8TfJqZcRrZqrNvfLZYncAXotU4LCB4DrtYVpG"

pytestmark = pytest.mark.timeout(30)


def test_parse_keeps_order_and_drops_repeats():
    assert parse_multiaddrs({"peer_id": "x", "multiaddrs": [MADDR, MADDR]}) == [MADDR]


@pytest.mark.parametrize("payload", [[], {"multiaddrs": "x"}, {"multiaddrs": ["/ip4/1.2.3.4/tcp/1"]},
                                     {"multiaddrs": [3]}, {"peer_id": "x"}])
def test_parse_refuses_what_a_joiner_could_not_dial(payload):
    with pytest.raises(ValueError):
        parse_multiaddrs(payload)


def test_merge_puts_flag_addresses_first():
    assert merge_bootstrap_peers(["/a/p2p/1", "/b/p2p/2"], ["/b/p2p/2", "/c/p2p/3"]) == [
        "/a/p2p/1", "/b/p2p/2", "/c/p2p/3"]


def test_source_retries_until_the_node_answers_then_publishes():
    published: list[list[str]] = []
    # No multiaddrs at first (a node still starting), then a real answer: the source keeps retrying meanwhile.
    answer = {"peer_id": "x"}
    asked = []

    def route():
        asked.append(time.monotonic())
        return answer

    server = MetricsServer(host="127.0.0.1", port=0, json_routes={"/multiaddrs": route})
    source = BootstrapPeersSource(f"http://127.0.0.1:{server.port}/multiaddrs", static=["/static/p2p/1"],
                                  publish=published.append, retry_interval=0.05, interval=60)
    try:
        source.start()
        # The source really asked (and asked again after its retry interval) and published nothing it could not use.
        wait_until(lambda: len(asked) >= 3, timeout=10, what="three fetches of an answer without multiaddrs")
        assert not published
        answer = {"peer_id": "x", "multiaddrs": [MADDR]}
        wait_until(lambda: published, timeout=10, what="the multiaddrs published once the node answers")
        assert published == [["/static/p2p/1", MADDR]]
        # Once it has an answer it refreshes at `interval` (60 s), not at the retry interval.
        fetches = len(asked)
        time.sleep(0.3)
        assert len(asked) == fetches
    finally:
        source.stop()
        server.close()
