"""A trainer drops initial peers it cannot parse instead of failing (issue 13 item 5), and announces its own
addresses with its peer id (the coordinator takes only those)."""
from __future__ import annotations

import pytest

from swarm_trainer.swarm import dialable_initial_peers

GOOD = "/ip4/203.0.113.7/tcp/31337/p2p/QmQJ3KMfh8TfJqZcRrZqrNvfLZYncAXotU4LCB4DrtYVpG"


def test_unparsable_initial_peers_are_dropped_and_good_ones_kept(caplog):
    assert dialable_initial_peers(["/not/a/valid/maddr", GOOD, "/ip4/1.2.3.4/tcp/1/p2p/peerA"]) == [GOOD]
    assert "/not/a/valid/maddr" in caplog.text


def test_announced_addresses_get_the_peer_id(coordinator_for_client):
    client, peer = coordinator_for_client
    reply = client.register(peer_id=peer, multiaddrs=["/ip4/198.51.100.1/tcp/31337"], client_mode=False,
                            name="", batch_size=1)
    assert reply.config.version == 1


@pytest.fixture
def coordinator_for_client(tmp_path):
    from swarm_coordinator.server import start
    from swarm_coordinator.settings import CoordinatorSettings
    from swarm_coordinator.tokens import create_token
    from swarm_trainer.coordinator_client import CoordinatorClient

    db_path = str(tmp_path / "coordinator.sqlite")
    token = create_token(db_path, name="t")
    server = start(CoordinatorSettings(listen="127.0.0.1:0", db_path=db_path, run_id="test-run", metrics_port=None))
    client = CoordinatorClient(server.address, token=token, timeout=5)
    yield client, "QmQJ3KMfh8TfJqZcRrZqrNvfLZYncAXotU4LCB4DrtYVpG"
    server.stop(grace=0.1)


def test_tls_flags_pin_every_channel_of_the_trainer(monkeypatch):
    from types import SimpleNamespace

    from swarm import tls
    from swarm.errors import UsageError
    from swarm_trainer.cli import _use_tls

    # setenv, not delenv: monkeypatch then records "unset" and removes what _use_tls writes into os.environ, so
    # the pin cannot leak into later tests (their plaintext loopback servers would fail the TLS fetch).
    monkeypatch.setenv(tls.FINGERPRINT_ENV, "")
    monkeypatch.setenv(tls.CA_FILE_ENV, "")
    digest = "AB:" * 31 + "AB"
    _use_tls(SimpleNamespace(tls_fingerprint=digest, tls_ca_file=None))
    assert tls.ClientTls.from_env().fingerprint == "sha256:" + "ab" * 32
    monkeypatch.setenv(tls.FINGERPRINT_ENV, "")
    with pytest.raises(UsageError, match="not a sha256 fingerprint"):
        _use_tls(SimpleNamespace(tls_fingerprint="md5:00", tls_ca_file=None))
