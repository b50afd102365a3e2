"""GetCredential on a real coordinator over gRPC: a token holder gets a credential bound to its peer and DHT key;
a revoked token gets none; the signing key lives beside the database (0600) and survives a restart; trust counters
reported in heartbeats become per-peer, per-token metrics."""
from __future__ import annotations

import os
import stat
import time

import grpc
import pytest
from prometheus_client import REGISTRY

from swarm.trust.credentials import verify_credential
from swarm.v1 import coordinator_pb2 as pb
from swarm_coordinator.tokens import create_token, revoke_tokens
from tests.coordinator.conftest import clock, coordinator, db_path  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(60)
PEER = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"


def ask(client, **token):
    return client.GetCredential(pb.GetCredentialRequest(peer_id=PEER, dht_public_key=b"rsa-key"), **token)


def test_token_holder_gets_a_credential_bound_to_its_peer(coordinator, db_path):  # noqa: F811
    server, client = coordinator(credential_lifetime=30.0, token_cache_ttl=0.2)
    answer = ask(client)
    credential = verify_credential(answer.credential, answer.coordinator_public_key, peer_id=PEER,
                                   dht_public_key=b"rsa-key")
    assert credential.token_name == "tests" and answer.run_id == "test-run"
    assert 29 <= credential.remaining_s() <= 30 and answer.expires_at_unix == credential.expires_at
    assert credential.max_weight == server.store.config.config.target_batch_size
    key_file = os.path.join(os.path.dirname(db_path), "coordinator-signing.key")
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600

    with pytest.raises(grpc.RpcError) as bad:
        client.GetCredential(pb.GetCredentialRequest(peer_id="", dht_public_key=b"rsa-key"))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as bad:
        client.GetCredential(pb.GetCredentialRequest(peer_id=PEER))
    assert "DHT public key" in bad.value.details()
    refused = REGISTRY.get_sample_value("swarm_coordinator_credentials_total",
                                        {"token": "tests", "outcome": "refused"})
    assert refused >= 2

    bob = create_token(db_path, name="bob")
    assert verify_credential(ask(client, token=bob).credential, answer.coordinator_public_key).token_name == "bob"
    revoke_tokens(db_path, "bob")
    time.sleep(0.3)  # the token check's cache
    with pytest.raises(grpc.RpcError) as revoked:
        ask(client, token=bob)
    assert revoked.value.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in revoked.value.details()

    server.stop()
    server2, client2 = coordinator()
    assert ask(client2).coordinator_public_key == answer.coordinator_public_key  # same key after a restart


def test_heartbeat_contributions_become_metrics(coordinator):  # noqa: F811
    server, client = coordinator()
    client.register("reporter-a")
    client.register("reporter-b")
    bad = pb.Contribution(peer_id="QmBad", token_name="mallory", accepted=1, clipped=2, dropped=3, refused=0)
    client.Heartbeat(pb.HeartbeatRequest(peer_id="reporter-a", contributions=[bad]))
    client.Heartbeat(pb.HeartbeatRequest(peer_id="reporter-b", contributions=[bad]))
    client.Heartbeat(pb.HeartbeatRequest(peer_id="reporter-a", contributions=[bad]))  # cumulative: replaces, not adds
    labels = {"peer": "QmBad", "token": "mallory"}
    assert REGISTRY.get_sample_value("swarm_coordinator_contributions", labels | {"verdict": "dropped"}) == 6
    assert REGISTRY.get_sample_value("swarm_coordinator_contributions", labels | {"verdict": "clipped"}) == 4
    progress = client.GetProgress(pb.GetProgressRequest())
    assert [(c.peer_id, c.token_name, c.dropped, c.clipped) for c in progress.contributions] == [
        ("QmBad", "mallory", 6, 4)]
    from swarm_coordinator.status import format_progress

    table = format_progress(progress)
    assert "contributions as judged by groupmates" in table and "mallory" in table
    with pytest.raises(grpc.RpcError) as bad_request:
        client.Heartbeat(pb.HeartbeatRequest(peer_id="reporter-a", contributions=[pb.Contribution(accepted=1)]))
    assert bad_request.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_revoking_a_token_releases_its_peers_leases_at_once(coordinator, db_path):  # noqa: F811
    from swarm_coordinator.admission import RevocationWatch

    server, client = coordinator()
    server.store.add_chunks([((64, 64), range(i * 2 + 1, i * 2 + 3)) for i in range(4)])
    bob = create_token(db_path, name="bob")
    client.register("bob-peer", token=bob)
    client.register("alice-peer")
    config_version = server.store.config.version
    bobs = client.LeaseChunks(pb.LeaseChunksRequest(peer_id="bob-peer", max_chunks=2, config_version=config_version),
                              token=bob).leases
    alices = client.LeaseChunks(pb.LeaseChunksRequest(peer_id="alice-peer", max_chunks=1,
                                                      config_version=config_version)).leases
    assert len(bobs) == 2 and len(alices) == 1
    watch = RevocationWatch(server.store, db_path=db_path)
    try:
        assert watch() == 0
        revoke_tokens(db_path, "bob")
        assert watch() == 2  # bob's two leases, not alice's
        assert watch() == 0
        assert server.store.leases.owned("alice-peer") == [alices[0].lease_id]
    finally:
        watch.close()
