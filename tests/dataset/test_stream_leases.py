"""Streams tied to leases (issue 13 item 3), against a real coordinator and dataset service: a token streams only the
samples its peers hold active leases on, never another token's, and nothing once the lease is reported or released;
the host's originals token and the coordinator's own dataset sync keep full access, and honest streams carry on."""
from __future__ import annotations

import time

import grpc
import pytest

from swarm.procs import free_port
from swarm.rpc import channel, token_metadata
from swarm.runconfig import RunConfig
from swarm.v1 import coordinator_pb2 as pb
from swarm.v1 import coordinator_pb2_grpc as pb_grpc
from swarm_dataset.client import iter_chunk_samples

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

    def release(self) -> None:
        self._stub.ReleaseLeases(pb.ReleaseLeasesRequest(peer_id=self.peer_id), metadata=self._metadata, timeout=5)

    def progress(self) -> pb.Progress:
        return self._stub.GetProgress(pb.GetProgressRequest(), metadata=self._metadata, timeout=5)

    def close(self) -> None:
        self._channel.close()


@pytest.fixture
def swarm_host(small_dataset, tmp_path):
    """(dataset service address, coordinator db path, originals token, tokens module): a coordinator syncing the
    dataset with its own internal token, and a dataset service checking tokens and leases with it."""
    from swarm_coordinator import tokens
    from swarm_coordinator.server import start
    from swarm_coordinator.settings import CoordinatorSettings
    from swarm_dataset.server import start_server

    db_path = str(tmp_path / "coordinator.sqlite")
    dataset_port = free_port()
    coordinator = start(CoordinatorSettings(listen="127.0.0.1:0", db_path=db_path, metrics_port=None,
                                            token_cache_ttl=0.2, dataset=f"127.0.0.1:{dataset_port}",
                                            sync_interval=0.2, config=RunConfig(chunk_size=2, max_data_epochs=1)))
    originals = tokens.create_token(db_path, name="host-originals")
    dataset = start_server(index_path=small_dataset["index_path"], listen=f"127.0.0.1:{dataset_port}",
                           metrics_port=None, coordinator=coordinator.address, token_ttl_s=0.3,
                           originals_token=originals, workers=2)
    peers: list[Peer] = []

    def peer(name: str) -> Peer:
        peers.append(Peer(coordinator.address, tokens.create_token(db_path, name=name), f"{name}-peer"))
        return peers[-1]

    deadline, watcher = time.monotonic() + 30, peer("watcher")
    while (p := watcher.progress()).samples_total < 6 or p.samples_pending:  # the sync (internal token) cut chunks
        assert time.monotonic() < deadline, "the coordinator never synced the dataset"
        time.sleep(0.1)
    yield dataset.address, peer, originals
    for p in peers:
        p.close()
    dataset.stop(grace=1)
    coordinator.stop(grace=0.5)


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
