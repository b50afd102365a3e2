"""The status page served by a real coordinator: /api/status agrees with GetProgress, the history is sampled into
SQLite and survives a restart, no peer address leaks, and the CLI flags build its settings."""
from __future__ import annotations

import argparse
import json
import time
import urllib.request

import pytest
import sqlalchemy as sa

from swarm.v1 import coordinator_pb2 as pb
from swarm_coordinator import db
from swarm_coordinator.statuspage.settings import StatusPageSettings

pytestmark = pytest.mark.timeout(60)

PAGE = StatusPageSettings(port=0, host="127.0.0.1", public_address="swarm.example.org:50051", cache_s=0.0,
                          sample_interval=1.0, token_contact="ask in #swarm")


def _status(server) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.status_port}/api/status", timeout=5) as response:
        assert response.headers["Content-Security-Policy"]
        return json.loads(response.read())


def _wait_for(condition, *, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
    return value


def test_api_status_agrees_with_get_progress_and_hides_addresses(coordinator, clock):
    server, client = coordinator(status_page=PAGE, upkeep_interval=0.05)
    reachable = "QmQJ3KMfh8TfJqZcRrZqrNvfLZYncAXotU4LCB4DrtYVpG"  # a multiaddr must name its peer's real id
    client.register(reachable, name="alice", multiaddrs=[f"/ip4/203.0.113.5/tcp/31338/p2p/{reachable}"])
    client.register("QmBehindNat", name="bob", client_mode=True)
    client.Heartbeat(pb.HeartbeatRequest(peer_id=reachable, global_epoch=3, loss=0.5, samples_per_s=2.5))
    doc = _status(server)
    progress = client.GetProgress(pb.GetProgressRequest())
    assert doc["run"]["name"] == "tiny fine-tune" and doc["run"]["model"] == "tiny" and doc["run"]["mode"] == "sync"
    assert "test-run" not in json.dumps(doc)  # the run id is the DHT prefix only admitted peers learn
    assert doc["run"]["config_version"] == progress.config_version
    assert doc["run"]["samples_done"] == progress.samples_done
    assert doc["run"]["max_data_epochs"] == progress.max_data_epochs
    assert doc["swarm"]["global_epoch"] == progress.swarm_epoch == 3
    assert doc["swarm"]["peers_online"] == progress.peers_alive == 2
    assert doc["swarm"]["lr"] == pytest.approx(progress.lr)
    assert doc["swarm"]["loss"] == 0.5 and doc["swarm"]["samples_per_s"] == 2.5
    assert doc["run"]["started"] == pytest.approx(clock.now)
    assert {p["name"]: p["mode"] for p in doc["leaderboard"]["peers"]} == {"alice": "reachable", "bob": "client"}
    assert doc["join"]["coordinator"] == "swarm.example.org:50051" and doc["join"]["token"] == "ask in #swarm"
    assert [(s["name"], s["up"]) for s in doc["health"]["services"]] == [
        ("coordinator", True), ("dataset service", None), ("bootstrap DHT", None)]
    assert "203.0.113.5" not in json.dumps(doc) and "/ip4/" not in json.dumps(doc)


def test_history_is_sampled_into_sqlite_and_survives_a_restart(coordinator, clock, db_path):
    server, client = coordinator(status_page=PAGE, upkeep_interval=0.05)
    client.register("QmPeer", name="alice")
    _wait_for(lambda: len(server.store.history.points()) >= 1)
    clock.advance(10.0)  # past the sample interval, and into the next 5 s bucket of the chart
    _wait_for(lambda: len(server.store.history.points()) >= 2)
    doc = _status(server)
    assert len(doc["history"]["t"]) >= 2 and doc["history"]["peers_online"][-1] == 1
    server.stop(grace=0.1)
    engine = db.make_engine(db_path, immediate=False)
    try:
        with engine.connect() as conn:
            stored = conn.execute(sa.select(sa.func.count()).select_from(db.status_history)).scalar()
    finally:
        engine.dispose()
    assert stored >= 2
    restarted, _ = coordinator(status_page=PAGE, upkeep_interval=3600.0)
    assert len(restarted.store.history.points()) >= stored


def test_no_status_page_unless_asked(coordinator):
    server, _ = coordinator()
    assert server.status_port is None


def test_cli_flags_build_the_status_page_settings():
    from swarm_coordinator import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["coordinator"])
    assert cli._status_page(args) is None
    args = parser.parse_args(["coordinator", "--status-port", "8080", "--public-address", "swarm.example.org:50051",
                              "--join-image", "registry.example.org/swarm/trainer:0.1.0", "--token-contact",
                              "https://example.org/join"])
    page = cli._status_page(args)
    assert (page.port, page.public_address, page.join_image, page.token_contact) == (
        8080, "swarm.example.org:50051", "registry.example.org/swarm/trainer:0.1.0", "https://example.org/join")
    for bad in (["--status-port", "http"], ["--status-port", "70000"], ["--public-address", "no-port"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["coordinator", *bad])
