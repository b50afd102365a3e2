"""The coordinator's gRPC server in process on port 0, called by real gRPC clients."""
from __future__ import annotations

import json
import math
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from swarm.rpc import channel
from swarm.runconfig import RunConfig
from swarm.v1 import coordinator_pb2 as pb
from swarm_coordinator import configs
from swarm_coordinator.addresses import base58_encode
from swarm_coordinator.limits import Limits
from swarm_coordinator.tokens import create_token, revoke_tokens

pytestmark = pytest.mark.timeout(60)

BOOT = "/ip4/10.0.0.1/tcp/31337/p2p/QmBootstrap"


def peer_id(name: str) -> str:
    """A well-formed libp2p peer id (an identity multihash) for a test peer named `name`."""
    return base58_encode(bytes([0, len(name)]) + name.encode())


def _seed(server, n=3, size=2):
    return server.store.add_chunks([((64, 96), range(i * size + 1, (i + 1) * size + 1)) for i in range(n)])


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_every_rpc_but_health_needs_a_valid_token(coordinator, db_path):
    server, client = coordinator(token_cache_ttl=0.3)
    with channel(server.address) as ch:
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="swarm.v1.Coordinator"),
                                                       timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    for token, phrase in ((None, "missing join token"), ("swt_nope", "invalid join token")):
        code, message = _code(lambda: client.GetConfig(pb.GetConfigRequest(), token=token))
        assert code == grpc.StatusCode.UNAUTHENTICATED and phrase in message and "swarm token create" in message
    other = create_token(db_path, name="to-revoke")
    assert client.GetConfig(pb.GetConfigRequest(), token=other).version == 1  # a new token works at once
    revoke_tokens(db_path, "to-revoke")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # revocation takes effect within the checker's cache time
        try:
            client.GetConfig(pb.GetConfigRequest(), token=other)
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAUTHENTICATED and "was revoked" in e.details()
            break
        time.sleep(0.05)
    else:
        pytest.fail("a revoked token was still accepted")


def test_register_returns_config_initial_peers_and_dataset(coordinator, clock):
    server, client = coordinator(bootstrap_peers=[BOOT], dataset="127.0.0.1:1", dataset_public_address="data:50052",
                                 lease_ttl=300, heartbeat_interval=7, config=RunConfig(lr=3e-5))
    a, b, c = peer_id("peerA"), peer_id("peerB"), peer_id("peerC")
    client.register(a, multiaddrs=[f"/ip4/1.1.1.1/tcp/1/p2p/{a}"], name="A", batch_size=4)
    client.register(c, multiaddrs=[f"/ip4/3.3.3.3/tcp/3/p2p/{c}"], client_mode=True)
    reply = client.register(b, multiaddrs=[f"/ip4/2.2.2.2/tcp/2/p2p/{b}"])
    # bootstrap first; no client-mode peer, not self
    assert list(reply.initial_peers) == [BOOT, f"/ip4/1.1.1.1/tcp/1/p2p/{a}"]
    assert reply.dataset_address == "data:50052"
    assert (reply.lease_ttl_s, reply.heartbeat_interval_s) == (300, 7)
    assert json.loads(reply.config.config_json)["lr"] == 3e-5 and reply.config.run_id == "test-run"
    clock.advance(200)  # peer A and B are now dead
    client.register("peerD")
    listed = client.ListPeers(pb.ListPeersRequest())
    assert [p.peer_id for p in listed.peers] == ["peerD"] and list(listed.initial_peers) == [BOOT]


def test_bad_requests_get_invalid_argument_and_the_server_keeps_serving(coordinator):
    server, client = coordinator()
    _seed(server)
    client.register("peerA")
    version = client.GetConfig(pb.GetConfigRequest()).version
    cases = [
        (lambda: client.register(""), "peer_id is empty"),
        (lambda: client.register("bad peer id"), "peer_id"),
        (lambda: client.register("p", multiaddrs=["localhost:80"]), "multiaddr"),
        (lambda: client.register("p", batch_size=-1), "batch_size"),
        (lambda: client.LeaseChunks(pb.LeaseChunksRequest(peer_id="peerA", max_chunks=0, config_version=version)),
         "max_chunks must be between 1 and 1024"),
        (lambda: client.LeaseChunks(pb.LeaseChunksRequest(peer_id="peerA", max_chunks=5000, config_version=version)),
         "max_chunks"),
        (lambda: client.ReportChunkDone(pb.ReportChunkDoneRequest(peer_id="peerA", lease_id="x")), "lease id"),
        (lambda: client.ReportChunkDone(pb.ReportChunkDoneRequest(peer_id="peerA")), "lease_id is empty"),
        (lambda: client.Heartbeat(pb.HeartbeatRequest(peer_id="peerA", global_epoch=-3)), "global_epoch"),
        (lambda: client.GetConfig(pb.GetConfigRequest(version=-1)), "version must be >= 0"),
    ]
    for call, phrase in cases:
        code, message = _code(call)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and phrase in message, (code, message)
    # State errors get their own statuses.
    code, message = _code(lambda: client.LeaseChunks(pb.LeaseChunksRequest(peer_id="peerA", max_chunks=1,
                                                                          config_version=version + 5)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert message.startswith(f"unknown config version {version + 5}; re-fetch the config with GetConfig")
    code, message = _code(lambda: client.LeaseChunks(pb.LeaseChunksRequest(peer_id="ghost", max_chunks=1,
                                                                          config_version=version)))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "RegisterPeer" in message
    code, _ = _code(lambda: client.GetConfig(pb.GetConfigRequest(version=42)))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = _code(lambda: client.ReportChunkDone(pb.ReportChunkDoneRequest(
        peer_id="peerA", lease_id="00000000-0000-4000-8000-000000000000")))
    assert code == grpc.StatusCode.NOT_FOUND
    # Still serving, nothing stored was touched.
    leased = client.LeaseChunks(pb.LeaseChunksRequest(peer_id="peerA", max_chunks=2, config_version=version))
    assert [lease.chunk_id for lease in leased.leases] == [1, 2]


def test_lease_heartbeat_report_release_over_grpc(coordinator, clock):
    server, client = coordinator(lease_ttl=60, peer_ttl=30, config=RunConfig(max_data_epochs=1))
    _seed(server, n=3)
    for peer in ("a", "b"):
        client.register(peer)
    version = client.GetConfig(pb.GetConfigRequest()).version
    lease = lambda peer, n: client.LeaseChunks(pb.LeaseChunksRequest(peer_id=peer, max_chunks=n,  # noqa: E731
                                                                     config_version=version))
    got_a = lease("a", 2)
    assert [lease.chunk_id for lease in got_a.leases] == [1, 2] and list(got_a.leases[0].sample_ids) == [1, 2]
    assert got_a.leases[0].deadline_unix_ms == int((clock.now + 60) * 1000)
    assert (got_a.leases[0].bucket_width, got_a.leases[0].bucket_height) == (64, 96)
    got_b = lease("b", 5)
    assert [lease.chunk_id for lease in got_b.leases] == [3] and not got_b.run_complete

    clock.advance(40)
    beat = client.Heartbeat(pb.HeartbeatRequest(peer_id="a", lease_ids=[lease.lease_id for lease in got_a.leases],
                                                global_epoch=6, loss=0.5, samples_per_s=3.0))
    assert all(s.valid for s in beat.leases) and beat.leases[0].deadline_unix_ms == int((clock.now + 60) * 1000)
    beat = client.Heartbeat(pb.HeartbeatRequest(peer_id="b", global_epoch=4, finished=True))
    assert (beat.swarm_epoch, beat.swarm_epoch_min, beat.peers_training) == (6, 4, 1)
    assert beat.config_version == version and beat.lr == pytest.approx(RunConfig().lr)

    clock.advance(30)  # b's lease (not heartbeated) expired; a's were extended
    first = client.ReportChunkDone(pb.ReportChunkDoneRequest(peer_id="a", lease_id=got_a.leases[0].lease_id))
    assert first.outcome == pb.ReportChunkDoneResponse.COUNTED and first.samples_counted == 2
    again = client.ReportChunkDone(pb.ReportChunkDoneRequest(peer_id="a", lease_id=got_a.leases[0].lease_id))
    assert again.outcome == pb.ReportChunkDoneResponse.DUPLICATE and again.samples_counted == 0
    late = client.ReportChunkDone(pb.ReportChunkDoneRequest(peer_id="b", lease_id=got_b.leases[0].lease_id))
    assert late.outcome == pb.ReportChunkDoneResponse.STALE and "expired" in late.message
    # Graceful stop: a gives back everything it holds at once.
    assert client.ReleaseLeases(pb.ReleaseLeasesRequest(peer_id="a")).released == 1
    progress = client.GetProgress(pb.GetProgressRequest())
    assert (progress.chunks_total, progress.chunks_queued, progress.chunks_leased, progress.chunks_done) == (3, 2, 0, 1)
    assert progress.samples_done == 2 and progress.samples_total == 6 and progress.max_data_epochs == 1
    assert {p.peer_id: p.samples_contributed for p in progress.peers} == {"a": 2, "b": 0}
    for grant in lease("b", 5).leases:
        client.ReportChunkDone(pb.ReportChunkDoneRequest(peer_id="b", lease_id=grant.lease_id))
    final = lease("a", 1)
    assert final.run_complete and not final.leases
    assert client.GetProgress(pb.GetProgressRequest()).data_epochs_done == 1


def test_config_set_while_running_reaches_heartbeats(coordinator, db_path):
    server, client = coordinator(upkeep_interval=0.05)
    client.register("a")
    before = client.Heartbeat(pb.HeartbeatRequest(peer_id="a")).config_version
    configs.set_config(db_path, assignments=["lr=2e-5"])
    deadline = time.monotonic() + 10
    while client.Heartbeat(pb.HeartbeatRequest(peer_id="a")).config_version == before:
        assert time.monotonic() < deadline, "the new config version never reached heartbeats"
        time.sleep(0.05)
    current = client.GetConfig(pb.GetConfigRequest())
    assert current.version == before + 1 and json.loads(current.config_json)["lr"] == 2e-5
    assert json.loads(client.GetConfig(pb.GetConfigRequest(version=before)).config_json)["lr"] == RunConfig().lr


def test_metrics_and_status_output(coordinator, capsys):
    server, client = coordinator(metrics_port=0, metrics_host="127.0.0.1")
    _seed(server, n=2)
    client.register("peer-with-a-long-hivemind-id-1234567890", name="alice")
    version = client.GetConfig(pb.GetConfigRequest()).version
    (lease,) = client.LeaseChunks(pb.LeaseChunksRequest(peer_id="peer-with-a-long-hivemind-id-1234567890",
                                                        max_chunks=1, config_version=version)).leases
    client.ReportChunkDone(pb.ReportChunkDoneRequest(peer_id="peer-with-a-long-hivemind-id-1234567890",
                                                     lease_id=lease.lease_id))
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    for line in ("swarm_coordinator_samples_done_total 2.0", "swarm_coordinator_data_epochs_done 0.0",
                 'swarm_coordinator_chunks{state="done"} 1.0', 'swarm_coordinator_chunks{state="queued"} 1.0',
                 "swarm_coordinator_peers_alive 1.0", "swarm_coordinator_config_version 1.0",
                 'swarm_coordinator_peer_samples_contributed{name="alice",'
                 'peer="peer-with-a-long-hivemind-id-1234567890"} 2.0',
                 'swarm_coordinator_rpc_total{code="OK",method="ReportChunkDone"}',
                 'swarm_coordinator_rpc_seconds_bucket{le="0.005",method="LeaseChunks"}',
                 "swarm_coordinator_lr 0.0001", "swarm_coordinator_swarm_epoch 0.0"):
        assert line in text, line

    from swarm_launcher.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["status", "--coordinator", server.address, "--token", client.token])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "samples done:      2 (5.0% of 40)" in out and "1 queued, 0 leased, 1 done" in out
    assert "alice" in out and "peer-w…567890" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["status", "--coordinator", server.address, "--token", "swt_wrong"])
    assert exit_info.value.code == 2 and "UNAUTHENTICATED" in capsys.readouterr().err


def test_peer_info_reports_nan_loss_when_none(coordinator):
    server, client = coordinator()
    client.register("a")
    client.Heartbeat(pb.HeartbeatRequest(peer_id="a", loss=float("inf")))
    (peer,) = client.GetProgress(pb.GetProgressRequest()).peers
    assert math.isnan(peer.loss) and peer.alive


def test_only_the_registering_token_speaks_for_a_peer(coordinator, db_path, clock):
    server, client = coordinator(peer_ttl=30, config=RunConfig(max_data_epochs=1))
    _seed(server, n=2)
    other = create_token(db_path, name="someone-else")
    client.register("alice")
    (lease,) = client.LeaseChunks(pb.LeaseChunksRequest(peer_id="alice", max_chunks=1, config_version=1)).leases
    for call in (lambda: client.register("alice", token=other),
                 lambda: client.ReleaseLeases(pb.ReleaseLeasesRequest(peer_id="alice"), token=other),
                 lambda: client.Heartbeat(pb.HeartbeatRequest(peer_id="alice", finished=True), token=other),
                 lambda: client.LeaseChunks(pb.LeaseChunksRequest(peer_id="alice", max_chunks=1, config_version=1),
                                            token=other),
                 lambda: client.ReportChunkDone(pb.ReportChunkDoneRequest(peer_id="alice", lease_id=lease.lease_id),
                                                token=other)):
        code, message = _code(call)
        assert code == grpc.StatusCode.PERMISSION_DENIED and "another join token" in message
    assert client.ReportChunkDone(pb.ReportChunkDoneRequest(peer_id="alice", lease_id=lease.lease_id)).outcome == \
        pb.ReportChunkDoneResponse.COUNTED
    # Once alice has been silent for the peer TTL, her id may move to another token (and is then that token's).
    clock.advance(31)
    client.register("alice", token=other)
    code, _ = _code(lambda: client.Heartbeat(pb.HeartbeatRequest(peer_id="alice")))
    assert code == grpc.StatusCode.PERMISSION_DENIED


def test_concurrent_calls_from_many_threads_all_succeed(coordinator):
    """Handler threads run at once: registering, listing, heartbeating and progress must never trip over each other
    (reads of the in-memory tables happen under the store lock)."""
    import threading

    server, client = coordinator(max_workers=8, limits=Limits(peers_per_token=1000))
    _seed(server, n=50)
    errors: list[str] = []

    def work(t: int) -> None:
        try:
            for i in range(40):
                peer = peer_id(f"t{t}-p{i}")
                client.register(peer, multiaddrs=[f"/ip4/10.0.{t}.{i}/tcp/1/p2p/{peer}"])
                client.Heartbeat(pb.HeartbeatRequest(peer_id=peer, global_epoch=i % 3))  # plausible: <= planned + slack
                leases = client.LeaseChunks(pb.LeaseChunksRequest(peer_id=peer, max_chunks=1, config_version=1))
                for lease in leases.leases:
                    client.ReportChunkDone(pb.ReportChunkDoneRequest(peer_id=peer, lease_id=lease.lease_id))
                if i % 5 == 0:
                    client.ListPeers(pb.ListPeersRequest())
                    client.GetProgress(pb.GetProgressRequest())
        except grpc.RpcError as e:
            errors.append(f"{e.code().name}: {e.details()}")

    import sys

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show up instead of hiding
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors[:3]
    progress = client.GetProgress(pb.GetProgressRequest())
    assert progress.peers_alive == 320 and len(progress.peers) == 320
    assert progress.samples_done == sum(p.samples_contributed for p in progress.peers) > 0
