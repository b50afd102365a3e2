"""Who did what on a real coordinator over gRPC: credentials issued and refused per peer AND per token (metrics with
bounded cardinality, GetProgress, `swarm status`), and what bounds a peer's weight claims (ListPeers' samples
credited and leased, turned into WeightBudgets as a trainer does)."""
from __future__ import annotations

import grpc
import pytest
from prometheus_client import REGISTRY

from swarm.trust.budget import budget_slack, budgets_from_peers
from swarm.v1 import coordinator_pb2 as pb
from swarm_coordinator.admission import CredentialBook
from swarm_coordinator.status import format_progress
from swarm_coordinator.tokens import create_token
from tests.coordinator.conftest import clock, coordinator, db_path  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(60)
ALICE_PEER = "QmAliceAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
BOB_PEER = "QmBobBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"


def ask(client, peer_id, token, key=b"rsa-key"):
    return client.GetCredential(pb.GetCredentialRequest(peer_id=peer_id, dht_public_key=key), token=token)


def sample(peer, token, outcome):
    return REGISTRY.get_sample_value("swarm_coordinator_peer_credentials_total",
                                     {"peer": peer, "token": token, "outcome": outcome})


def test_credentials_are_counted_per_peer_and_per_token(coordinator, db_path):  # noqa: F811
    server, client = coordinator()
    alice, bob = create_token(db_path, name="alice"), create_token(db_path, name="bob")
    for _ in range(3):
        ask(client, ALICE_PEER, alice)
    ask(client, BOB_PEER, bob)
    for bad in (dict(peer_id=BOB_PEER, key=b""), dict(peer_id="not a peer id!")):  # refused: no key, bad id
        with pytest.raises(grpc.RpcError) as refused:
            ask(client, bad["peer_id"], bob, key=bad.get("key", b"rsa-key"))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    assert sample(ALICE_PEER, "alice", "issued") == 3 and sample(ALICE_PEER, "alice", "refused") == 0
    assert sample(BOB_PEER, "bob", "issued") == 1 and sample(BOB_PEER, "bob", "refused") == 1
    assert sample("(invalid)", "bob", "refused") == 1  # garbage ids share one label value
    progress = client.GetProgress(pb.GetProgressRequest())
    rows = [(c.peer_id, c.token_name, c.issued, c.refused) for c in progress.credentials]
    assert rows == [(BOB_PEER, "bob", 1, 1), ("(invalid)", "bob", 0, 1), (ALICE_PEER, "alice", 3, 0)]
    table = format_progress(progress)
    assert "credentials issued / refused" in table and "alice" in table and "(invalid)" in table


def test_credential_series_are_capped_and_dropped_when_stale():
    now = [0.0]
    book = CredentialBook(stale_after_s=100.0, series_cap=2, max_entries=3, clock=lambda: now[0])
    for i, peer in enumerate(("QmA", "QmB", "QmC")):
        book.count(peer, "t", "refused" if i == 2 else "issued")
    assert [row[0] for row in book.rows(recent_only=True)] == ["QmC", "QmA"]  # capped, most refused first
    now[0] = 50.0
    book.count("QmD", "t", "issued")  # over max_entries: the pair asked longest ago is forgotten
    assert len(book.rows()) == 3
    now[0] = 120.0
    assert [row[0] for row in book.rows(recent_only=True)] == ["QmD"]  # the others went quiet: no series


def test_list_peers_tells_trainers_what_bounds_each_peers_claims(coordinator):  # noqa: F811
    server, client = coordinator()
    server.store.add_chunks([((64, 96), range(i * 8 + 1, (i + 1) * 8 + 1)) for i in range(4)])
    version = server.store.config.version
    client.register(ALICE_PEER)
    client.register(BOB_PEER)
    leases = client.LeaseChunks(pb.LeaseChunksRequest(peer_id=ALICE_PEER, max_chunks=2, config_version=version))
    client.ReportChunkDone(pb.ReportChunkDoneRequest(peer_id=ALICE_PEER, lease_id=leases.leases[0].lease_id))
    peers = {p.peer_id: p for p in client.ListPeers(pb.ListPeersRequest()).peers}
    assert (peers[ALICE_PEER].samples_contributed, peers[ALICE_PEER].samples_leased) == (8, 8)
    assert (peers[BOB_PEER].samples_contributed, peers[BOB_PEER].samples_leased) == (0, 0)
    progress = {p.peer_id: p for p in client.GetProgress(pb.GetProgressRequest()).peers}
    assert progress[ALICE_PEER].samples_leased == 8

    slack = budget_slack(target_batch_size=16, chunk_size=8)
    budgets = budgets_from_peers(peers.values(), slack=slack, fetched_at=0.0, heartbeat_interval_s=1.0)
    assert budgets.allowance_of(ALICE_PEER) == 8 + 8 + slack
    assert budgets.allowance_of(BOB_PEER) == budgets.allowance_of("QmNewcomer") == slack
