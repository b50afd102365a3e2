"""A hostile token holder against the real coordinator over gRPC (issue 13 items 2, 4, 5, 6).

Every test checks the refusal's status code and message, and that an honest peer carries on beside it."""
from __future__ import annotations

import grpc
import pytest

from swarm.runconfig import RunConfig
from swarm.v1 import coordinator_pb2 as pb
from swarm_coordinator.addresses import base58_encode, check_peer_multiaddrs, is_peer_id, parse_multiaddr
from swarm_coordinator.limits import Limits
from swarm_coordinator.rules import InvalidRequest
from swarm_coordinator.tokens import create_token

pytestmark = pytest.mark.timeout(60)

REAL_PEER_ID = "QmQJ3KMfh8TfJqZcRrZqrNvfLZYncAXotU4LCB4DrtYVpG"


def peer_id(name: str) -> str:
    """A well-formed libp2p peer id (an identity multihash) for a test peer named `name`."""
    return base58_encode(bytes([0, len(name)]) + name.encode())


def maddr(peer: str, host: str = "203.0.113.7") -> str:
    return f"/ip4/{host}/tcp/31337/p2p/{peer}"


def refused(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def seed(server, *, n: int, size: int = 2) -> None:
    server.store.add_chunks([((64, 64), range(i * size + 1, (i + 1) * size + 1)) for i in range(n)])


def lease(client, peer: str, n: int, **kw):
    return client.LeaseChunks(pb.LeaseChunksRequest(peer_id=peer, max_chunks=n, config_version=1), **kw)


# ------------------------------------------------------------------------------------------ multiaddrs (pure)

@pytest.mark.parametrize("addr", [maddr(REAL_PEER_ID), f"/ip6/2001:db8::1/tcp/1/p2p/{REAL_PEER_ID}",
                                  f"/dns4/swarm.example.org/tcp/31337/p2p/{REAL_PEER_ID}",
                                  f"/ip4/198.51.100.2/udp/31337/quic/p2p/{REAL_PEER_ID}",
                                  f"/ip4/198.51.100.2/tcp/1/p2p/{peer_id('alice')}"])
def test_what_the_coordinator_accepts_hivemind_parses_too(addr):
    from hivemind.utils.multiaddr import Multiaddr

    assert parse_multiaddr(addr)[-1][0] == "p2p"
    assert str(Multiaddr(addr)) == addr  # a joiner's p2p daemon takes it


@pytest.mark.parametrize("addr", ["/not/a/valid/maddr", "/ip4/1.2.3.4/tcp/99999/p2p/" + REAL_PEER_ID,
                                  "/ip4/1.2.3/tcp/1/p2p/" + REAL_PEER_ID, "/ip4/1.2.3.4/tcp/1/p2p/peerA",
                                  "/tcp/1/p2p/" + REAL_PEER_ID, "localhost:80", "/ip4/1.2.3.4/tcp/1 /p2p/x"])
def test_malformed_multiaddrs_are_refused(addr):
    with pytest.raises(ValueError):
        parse_multiaddr(addr)


def test_a_peer_announces_only_its_own_addresses():
    me = peer_id("me")
    assert check_peer_multiaddrs([maddr(me), maddr(me)], peer_id=me, limit=4) == (maddr(me),)
    assert is_peer_id(REAL_PEER_ID) and not is_peer_id("peerA") and not is_peer_id("Qm0OIl")
    for bad in ([maddr(REAL_PEER_ID)], ["/ip4/1.2.3.4/tcp/1"], [maddr(me)] * 5):
        with pytest.raises(InvalidRequest):
            check_peer_multiaddrs(bad, peer_id=me, limit=4)


# ------------------------------------------------------------------------------------------ over gRPC

def test_bad_or_foreign_multiaddrs_are_refused_and_joiners_get_only_good_ones(coordinator):
    server, client = coordinator()
    honest = peer_id("honest")
    for addrs, phrase in ((["/not/a/valid/maddr"], "unknown protocol"),
                          ([maddr(honest)], f"must end in /p2p/{peer_id('mallory')}")):
        code, message = refused(lambda: client.register(peer_id("mallory"), multiaddrs=addrs))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and phrase in message
    client.register(honest, multiaddrs=[maddr(honest)])
    joiner = client.register(peer_id("joiner"), multiaddrs=[maddr(peer_id("joiner"), "198.51.100.3")])
    assert list(joiner.initial_peers) == [maddr(honest)]


def test_implausible_epochs_are_refused_and_the_swarm_epoch_stays_sane(coordinator):
    server, client = coordinator(config=RunConfig(max_data_epochs=1, target_batch_size=4))
    seed(server, n=4)  # 8 samples, 1 data epoch, 4 a step: 2 planned global epochs
    client.register("mallory")
    client.register("honest")
    for epoch in (2**63 - 1, 10_000):
        code, message = refused(lambda: client.Heartbeat(pb.HeartbeatRequest(peer_id="mallory", global_epoch=epoch)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and f"global_epoch {epoch} is not plausible" in message
    beat = client.Heartbeat(pb.HeartbeatRequest(peer_id="honest", global_epoch=2))
    assert beat.swarm_epoch == 2


def test_peers_per_token_are_capped_and_other_tokens_still_join(coordinator, db_path):
    server, client = coordinator(limits=Limits(peers_per_token=3))
    for i in range(3):
        client.register(f"sybil{i}")
    client.register("sybil0", name="renamed")  # re-registering a peer is no new peer
    code, message = refused(lambda: client.register("sybil3"))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit of 3 live peers per join token" in message
    honest_token = create_token(db_path, name="honest")
    client.register("honest", token=honest_token)
    assert {p.peer_id for p in client.ListPeers(pb.ListPeersRequest()).peers} == {"sybil0", "sybil1", "sybil2",
                                                                                  "honest"}


def test_leases_per_peer_are_capped_and_the_rest_stays_free_for_others(coordinator):
    server, client = coordinator(limits=Limits(leases_per_peer=2))
    seed(server, n=6)
    client.register("hoarder")
    client.register("honest")
    assert len(lease(client, "hoarder", 1024).leases) == 2  # what fits under the cap
    code, message = refused(lambda: lease(client, "hoarder", 1))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit of 2 active leases per peer" in message
    got = lease(client, "honest", 1)
    assert len(got.leases) == 1
    done = client.ReportChunkDone(pb.ReportChunkDoneRequest(peer_id="honest", lease_id=got.leases[0].lease_id))
    assert done.outcome == pb.ReportChunkDoneResponse.COUNTED


def test_reports_faster_than_plausible_are_refused_and_not_counted(coordinator):
    server, client = coordinator(limits=Limits(report_pace_floor=0.01, report_burst=4))
    seed(server, n=6)  # chunks of 2 samples
    for peer in ("fast", "honest"):
        client.register(peer)
    leases = lease(client, "fast", 3).leases
    for got in leases[:2]:  # the burst: 4 samples
        client.ReportChunkDone(pb.ReportChunkDoneRequest(peer_id="fast", lease_id=got.lease_id))
    code, message = refused(lambda: client.ReportChunkDone(pb.ReportChunkDoneRequest(
        peer_id="fast", lease_id=leases[2].lease_id)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "plausible pace" in message
    assert server.store.progress().samples_done == 4  # the refused report counted nothing
    honest = lease(client, "honest", 1).leases[0]
    done = client.ReportChunkDone(pb.ReportChunkDoneRequest(peer_id="honest", lease_id=honest.lease_id))
    assert done.outcome == pb.ReportChunkDoneResponse.COUNTED


def test_large_messages_are_refused_before_the_token_is_checked(coordinator):
    server, client = coordinator()
    big = pb.RegisterPeerRequest(peer_id="x", name="y" * (2 * 1024 * 1024))
    code, _ = refused(lambda: client.RegisterPeer(big, token="swt_not_a_token"))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.register("honest").config.version == 1


def test_peer_lists_and_progress_reveal_no_addresses(coordinator, db_path, clock):
    server, client = coordinator()
    hidden, public = peer_id("behind-nat"), peer_id("public")
    client.register(hidden, multiaddrs=[maddr(hidden, "192.0.2.44")], client_mode=True)
    client.register(public, multiaddrs=[maddr(public, "198.51.100.9")])
    reader = create_token(db_path, name="status-reader")
    clock.advance(5)  # past the initial-peer candidates' cache
    listed = client.ListPeers(pb.ListPeersRequest(), token=reader)
    progress = client.GetProgress(pb.GetProgressRequest(), token=reader)
    assert len(listed.peers) == len(progress.peers) == 2
    assert all(not p.multiaddrs for p in list(listed.peers) + list(progress.peers))
    assert "192.0.2.44" not in str(listed) + str(progress)  # a client-mode peer's address reaches nobody
    assert list(listed.initial_peers) == [maddr(public, "198.51.100.9")]  # what a joiner dials


def test_revoking_a_token_releases_its_leases_at_once(coordinator, db_path):
    from swarm_coordinator.tokens import revoke_tokens

    server, client = coordinator(upkeep_interval=0.1, token_cache_ttl=0.2, lease_ttl=3600)
    seed(server, n=2)
    mallory = create_token(db_path, name="mallory")
    client.register("mallory", token=mallory)
    client.register("honest")
    assert len(lease(client, "mallory", 2, token=mallory).leases) == 2
    revoke_tokens(db_path, "mallory")
    import time

    deadline = time.monotonic() + 10
    got = []
    while not got and time.monotonic() < deadline:
        got = list(lease(client, "honest", 2).leases)
        time.sleep(0.1)
    assert len(got) == 2  # mallory's chunks came back within seconds, not after the 1 h lease TTL
    code, _ = refused(lambda: lease(client, "mallory", 1, token=mallory))
    assert code == grpc.StatusCode.UNAUTHENTICATED
