"""Streams tied to leases (issue 13 item 3), against a real coordinator and dataset service: a token streams only the
samples its peers hold active leases on, never another token's, and nothing once the lease is reported or released;
the host's originals token and the coordinator's own dataset sync keep full access, and honest streams carry on."""
from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
from PIL import Image

from swarm.procs import free_port
from swarm.rpc import channel, token_metadata
from swarm.runconfig import RunConfig
from swarm.v1 import coordinator_pb2 as pb
from swarm.v1 import coordinator_pb2_grpc as pb_grpc
from swarm_dataset.client import iter_chunk_messages, iter_chunk_samples
from swarm_dataset.stream_guard import LEASE_RECHECK_S
from tests.dataset.conftest import encode, write_pair

pytestmark = pytest.mark.timeout(90)


class Peer:
    """One token holder's peer on the real coordinator: register, lease, report, release."""

    def __init__(self, address: str, token: str, peer_id: str):
        self.token, self.peer_id = token, peer_id
        self._channel = channel(address)
        self._stub = pb_grpc.CoordinatorStub(self._channel)
        self._metadata = token_metadata(token)
        self._stub.RegisterPeer(pb.RegisterPeerRequest(peer_id=peer_id, name=peer_id), metadata=self._metadata,
                                timeout=5)

    def lease(self) -> pb.Lease:
        leases = self._stub.LeaseChunks(pb.LeaseChunksRequest(peer_id=self.peer_id, max_chunks=1, config_version=1),
                                        metadata=self._metadata, timeout=5).leases
        assert len(leases) == 1
        return leases[0]

    def report(self, lease: pb.Lease) -> None:
        outcome = self._stub.ReportChunkDone(pb.ReportChunkDoneRequest(peer_id=self.peer_id, lease_id=lease.lease_id),
                                             metadata=self._metadata, timeout=5).outcome
        assert outcome == pb.ReportChunkDoneResponse.COUNTED

    def heartbeat(self, lease: pb.Lease) -> None:
        self._stub.Heartbeat(pb.HeartbeatRequest(peer_id=self.peer_id, lease_ids=[lease.lease_id]),
                             metadata=self._metadata, timeout=5)

    def release(self) -> None:
        self._stub.ReleaseLeases(pb.ReleaseLeasesRequest(peer_id=self.peer_id), metadata=self._metadata, timeout=5)

    def progress(self) -> pb.Progress:
        return self._stub.GetProgress(pb.GetProgressRequest(), metadata=self._metadata, timeout=5)

    def close(self) -> None:
        self._channel.close()


def start_host(index_path: str, db_path: str, *, chunk_size: int, lease_ttl: float = 1200.0):
    """(coordinator, dataset service, originals token): a coordinator syncing the dataset with its own internal token,
    and a dataset service checking tokens and leases with it."""
    from swarm_coordinator import tokens
    from swarm_coordinator.server import start
    from swarm_coordinator.settings import CoordinatorSettings
    from swarm_dataset.server import start_server

    dataset_port = free_port()
    coordinator = start(CoordinatorSettings(listen="127.0.0.1:0", db_path=db_path, metrics_port=None,
                                            token_cache_ttl=0.2, dataset=f"127.0.0.1:{dataset_port}",
                                            sync_interval=0.2, lease_ttl=lease_ttl,
                                            config=RunConfig(chunk_size=chunk_size, max_data_epochs=1)))
    originals = tokens.create_token(db_path, name="host-originals")
    dataset = start_server(index_path=index_path, listen=f"127.0.0.1:{dataset_port}", metrics_port=None,
                           coordinator=coordinator.address, token_ttl_s=0.3, originals_token=originals, workers=2)
    return coordinator, dataset, originals


@pytest.fixture
def host_factory(tmp_path):
    """host_factory(index_path, samples, chunk_size=, lease_ttl=) -> (dataset address, peer(name) -> Peer, originals
    token, coordinator db path), once the coordinator has cut the dataset's `samples` into chunks."""
    from swarm_coordinator import tokens

    db_path = str(tmp_path / "coordinator.sqlite")
    running, peers = [], []

    def make(index_path: str, samples: int, **kwargs):
        coordinator, dataset, originals = start_host(index_path, db_path, **kwargs)
        running.append((coordinator, dataset))

        def peer(name: str) -> Peer:
            peers.append(Peer(coordinator.address, tokens.create_token(db_path, name=name), f"{name}-peer"))
            return peers[-1]

        deadline, watcher = time.monotonic() + 30, peer("watcher")
        while (p := watcher.progress()).samples_total < samples or p.samples_pending:  # the sync cut chunks
            assert time.monotonic() < deadline, "the coordinator never synced the dataset"
            time.sleep(0.1)
        return dataset.address, peer, originals, db_path

    yield make
    for p in peers:
        p.close()
    for coordinator, dataset in running:
        dataset.stop(grace=1)
        coordinator.stop(grace=0.5)


@pytest.fixture
def swarm_host(small_dataset, host_factory):
    """(dataset service address, peer(name) -> Peer, originals token) over the six-image dataset, chunks of two."""
    address, peer, originals, _ = host_factory(small_dataset["index_path"], 6, chunk_size=2)
    return address, peer, originals


def stream(address: str, ids, token: str) -> list[int]:
    return [sample[2] for sample in iter_chunk_samples(address, list(ids), token=token, timeout=10)]


def denied(address: str, ids, token: str) -> str:
    with pytest.raises(grpc.RpcError) as info:
        stream(address, ids, token)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, info.value.details()
    return info.value.details()


def test_a_token_streams_only_what_its_peers_hold_active_leases_on(swarm_host):
    address, peer, originals = swarm_host
    alice, bob = peer("alice"), peer("bob")
    alice_lease = alice.lease()
    mine = list(alice_lease.sample_ids)
    assert stream(address, mine, alice.token) == mine
    outside = [i for i in range(1, 7) if i not in mine]
    assert "not leased to this join token" in denied(address, [outside[0]], alice.token)
    assert "not leased" in denied(address, [*mine, outside[0]], alice.token)  # one unleased id refuses the stream

    assert "not leased" in denied(address, mine, bob.token)  # another token's lease is not bob's
    bob_lease = bob.lease()
    assert stream(address, bob_lease.sample_ids, bob.token) == list(bob_lease.sample_ids)  # honest bob carries on

    alice.report(alice_lease)
    assert "not leased" in denied(address, mine, alice.token)  # reported: the lease is over
    bob.release()
    assert "not leased" in denied(address, bob_lease.sample_ids, bob.token)  # released likewise
    assert stream(address, range(1, 7), originals) == list(range(1, 7))  # the host's originals token: any sample

    carol = peer("carol")  # what alice and bob gave back is leased afresh and streams for its new holder
    carol_lease = carol.lease()
    assert stream(address, carol_lease.sample_ids, carol.token) == list(carol_lease.sample_ids)


@pytest.fixture
def noisy_dataset(tmp_path):
    """Twenty-five noise images (each sample over 64 KiB as JPEG), for five chunks of five: a reader with a small
    receive window holds its stream open, since the service cannot send far ahead of what it reads."""
    from swarm_dataset.buckets import BucketParams
    from swarm_dataset.index import Index
    from swarm_dataset.ingest import ingest
    from swarm_dataset.storage import open_storage

    rng = np.random.default_rng(0)
    for i in range(25):
        pixels = rng.integers(0, 256, size=(384, 512, 3), dtype=np.uint8)
        write_pair(tmp_path / "noisy", f"n{i:02d}.jpg", encode(Image.fromarray(pixels), quality=95), f"noise {i}")
    index = Index(tmp_path / "noisy.sqlite")
    ingest(source=open_storage(str(tmp_path / "noisy"), create=False), index=index,
           storage=open_storage(str(tmp_path / "noisy-objects")),
           bucket_params=BucketParams(resolution=256, side_min=128, side_max=512), progress=False)
    index.close()
    return str(tmp_path / "noisy.sqlite")


def slow_reader(address: str) -> grpc.Channel:
    """A client on a slow link: a fixed 64 KiB receive window (no BDP growth), so the service sends at most about one
    sample ahead of what this client has read."""
    return grpc.insecure_channel(address, options=[("grpc.http2.bdp_probe", 0)])


def test_an_open_stream_ends_within_seconds_once_its_lease_ends(noisy_dataset, host_factory):
    from swarm_coordinator.tokens import revoke_tokens

    lease_ttl = 4.0
    address, peer, _, db_path = host_factory(noisy_dataset, 25, chunk_size=5, lease_ttl=lease_ttl)
    names = ("released", "reported", "expired", "revoked", "honest")
    peers = {name: peer(name) for name in names}
    leases = {name: p.lease() for name, p in peers.items()}
    channels = {name: slow_reader(address) for name in names}
    streams = {name: iter_chunk_messages(address, list(leases[name].sample_ids), token=peers[name].token,
                                         channel=channels[name], timeout=30) for name in names}
    try:
        for name in names:  # every stream authorized, open, one sample read
            assert next(streams[name]).sample_id == leases[name].sample_ids[0]
        peers["released"].release()
        peers["reported"].report(leases["reported"])
        revoke_tokens(db_path, "revoked")
        ended_at = time.monotonic()
        while time.monotonic() < ended_at + lease_ttl + LEASE_RECHECK_S + 1:  # "expired" sends no heartbeat
            peers["honest"].heartbeat(leases["honest"])
            time.sleep(0.5)
        for name in names[:4]:
            got = 1
            with pytest.raises(grpc.RpcError) as info:
                for _ in streams[name]:
                    got += 1
            code, details = info.value.code(), info.value.details()
            assert got < 5, f"{name}: the stream ran on to its end"
            if name == "revoked":  # the token check or the lease check, whichever comes first
                assert code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED), details
            else:
                assert code == grpc.StatusCode.PERMISSION_DENIED, details
                assert details.startswith("stream ended: the lease that authorized it is over"), details
        assert [m.sample_id for m in streams["honest"]] == list(leases["honest"].sample_ids[1:])  # honest: all
    finally:
        for channel_ in channels.values():
            channel_.close()
