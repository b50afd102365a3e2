"""A hostile token holder against the real dataset service (issue 13 items 2-4): repeats, originals, too many
streams, a revoked token's open stream. Each test checks the refusal's code and that honest streams carry on."""
from __future__ import annotations

import time

import grpc
import pytest

from swarm.rpc import token_metadata
from swarm.v1 import dataset_pb2, dataset_pb2_grpc
from swarm_dataset.client import iter_chunk_messages, iter_chunk_samples
from swarm_dataset.server import start_server
from swarm_dataset.stream_guard import StreamGuard, StreamRefused

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def guarded(small_dataset, tmp_path):
    """(dataset service checking tokens with a real coordinator, honest token, coordinator db, tokens module)."""
    from swarm_coordinator import tokens
    from swarm_coordinator.server import start
    from swarm_coordinator.settings import CoordinatorSettings

    db_path = str(tmp_path / "coordinator.sqlite")
    coordinator = start(CoordinatorSettings(listen="127.0.0.1:0", db_path=db_path, metrics_port=None,
                                            token_cache_ttl=0.2))
    originals = tokens.create_token(db_path, name="host-originals")
    dataset = start_server(index_path=small_dataset["index_path"], listen="127.0.0.1:0", metrics_port=None,
                           coordinator=coordinator.address, token_ttl_s=0.3, streams_per_token=2,
                           originals_token=originals, lease_check=False)  # leases: test_stream_leases.py
    yield dataset, tokens.create_token(db_path, name="honest"), db_path, tokens, originals
    dataset.stop(grace=1)
    coordinator.stop(grace=0.5)


def refused(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_repeated_ids_and_originals_are_refused_and_honest_streams_go_on(guarded):
    dataset, token, *_, originals = guarded
    code, message = refused(lambda: list(iter_chunk_samples(dataset.address, [1, 1, 1], token=token, timeout=10)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "repeats an id" in message
    code, message = refused(lambda: list(iter_chunk_messages(dataset.address, [1], token=token, as_stored=True,
                                                             timeout=10)))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "originals token" in message
    assert [m.sample_id for m in iter_chunk_messages(dataset.address, [1], token=originals, as_stored=True,
                                                     timeout=10)] == [1]
    assert [s[2] for s in iter_chunk_samples(dataset.address, [1, 2], token=token, timeout=10)] == [1, 2]


def test_a_revoked_token_is_refused_within_seconds(guarded):
    dataset, token, db_path, tokens, _ = guarded
    mallory = tokens.create_token(db_path, name="mallory")
    with grpc.insecure_channel(dataset.address) as channel:
        stub = dataset_pb2_grpc.DatasetStub(channel)
        # (an open stream's recheck of the same token: test_stream_slots_per_token_and_the_recheck...)
        tokens.revoke_tokens(db_path, "mallory")
        deadline = time.monotonic() + 10
        while True:
            try:
                list(stub.StreamSamples(dataset_pb2.StreamSamplesRequest(sample_ids=[1]),
                                        metadata=token_metadata(mallory), timeout=10))
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in e.details()
                break
            assert time.monotonic() < deadline, "a revoked token still streams"
            time.sleep(0.1)
    assert [s[2] for s in iter_chunk_samples(dataset.address, [2], token=token, timeout=10)] == [2]


class _Context:
    """What the guard reads of a gRPC call: its metadata."""

    def __init__(self, token: str):
        self._metadata = token_metadata(token)

    def invocation_metadata(self):
        return self._metadata


def test_stream_slots_per_token_and_the_recheck_of_an_open_stream():
    verdicts = {"good": None, "other": None}
    guard = StreamGuard(token_check=lambda token: verdicts[token], max_streams_per_token=2, recheck_s=0.0)
    with guard.stream(_Context("good"), ids=[1], as_stored=False), \
            guard.stream(_Context("good"), ids=[2], as_stored=False) as still_allowed:
        with pytest.raises(StreamRefused) as info:
            with guard.stream(_Context("good"), ids=[3], as_stored=False):
                pass
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "2 concurrent streams" in info.value.message
        with guard.stream(_Context("other"), ids=[3], as_stored=False):  # another token is not held up
            pass
        assert still_allowed() is None
        verdicts["good"] = "the coordinator rejected this join token: it was revoked"
        ended = still_allowed()  # the stream's loop ends the stream on this
        assert ended.code == grpc.StatusCode.UNAUTHENTICATED and "revoked" in ended.message
    with guard.stream(_Context("good"), ids=[4], as_stored=False):  # slots came back
        pass
