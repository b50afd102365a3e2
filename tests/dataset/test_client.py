"""Trainer-side client against a real service: chunk streaming, the prefetcher, join tokens via the coordinator."""
from __future__ import annotations

import socket
import time

import grpc
import pytest

from swarm import rpc
from swarm_dataset.client import ChunkPrefetcher, fetch_chunk, iter_chunk_samples
from swarm_dataset.server import start_server

pytestmark = pytest.mark.timeout(90)


def test_prefetcher_yields_chunks_in_order_and_fetches_ahead(dataset_server):
    pulled = []

    def chunks():
        for key, ids in (("first", [1, 2]), ("second", [3, 4, 5]), ("third", [6]), ("fourth", [1])):
            pulled.append(key)
            yield key, ids

    with ChunkPrefetcher(dataset_server.address, chunks=chunks(), depth=1, timeout=30) as prefetcher:
        key, samples = prefetcher.get(timeout=30)
        assert key == "first" and [s[2] for s in samples] == [1, 2]
        # While "first" trains, "second" is fetched into the queue and "third" is being fetched, but no further:
        deadline = time.monotonic() + 10
        while len(pulled) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pulled == ["first", "second", "third"]
        rest = [(key, [s[2] for s in samples]) for key, samples in prefetcher]
        assert rest == [("second", [3, 4, 5]), ("third", [6]), ("fourth", [1])]
        assert prefetcher.get(timeout=5) is None


def test_prefetcher_hands_fetch_errors_to_the_consumer_at_that_chunk(dataset_server):
    chunks = [("good", [1]), ("bad", [1, 777]), ("after", [2])]
    with ChunkPrefetcher(dataset_server.address, chunks=chunks, timeout=30) as prefetcher:
        assert prefetcher.get(timeout=30)[0] == "good"
        with pytest.raises(grpc.RpcError) as error:
            prefetcher.get(timeout=30)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND and "777" in error.value.details()
        assert error.value.chunk_key == "bad"
        key, samples = prefetcher.get(timeout=30)  # the consumer decides; fetching goes on
        assert key == "after" and samples[0][2] == 2


def test_prefetcher_close_stops_a_blocked_producer(dataset_server):
    endless = ((i, [1 + i % 6]) for i in range(10**9))
    prefetcher = ChunkPrefetcher(dataset_server.address, chunks=endless, depth=2, timeout=30)
    assert prefetcher.get(timeout=30)[0] == 0
    prefetcher.close()
    assert not prefetcher._thread.is_alive()


def test_prefetcher_close_cancels_a_stream_in_flight(dataset_server):
    from prometheus_client import REGISTRY

    prefetcher = ChunkPrefetcher(dataset_server.address, chunks=[("big", [4] * 9000)], as_stored=True, timeout=60)
    deadline = time.monotonic() + 10  # wait until the server is streaming it
    while not REGISTRY.get_sample_value("swarm_dataset_active_streams"):
        assert time.monotonic() < deadline, "the chunk never started streaming"
        time.sleep(0.02)
    started = time.monotonic()
    prefetcher.close()
    assert time.monotonic() - started < 5 and not prefetcher._thread.is_alive()


def test_fetch_chunk_retries_while_the_server_is_down_then_fails(small_dataset):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as error:
        fetch_chunk(f"127.0.0.1:{port}", [1], retries=2, backoff_s=0.1, timeout=2)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - started >= 0.3  # two backoffs happened


@pytest.fixture
def coordinator(tmp_path):
    """A real coordinator (in-process) with one join token, when the coordinator service is available."""
    server = pytest.importorskip("swarm_coordinator.server")
    settings = pytest.importorskip("swarm_coordinator.settings")
    tokens = pytest.importorskip("swarm_coordinator.tokens")
    db_path = str(tmp_path / "coordinator.sqlite")
    running = server.start(settings.CoordinatorSettings(listen="127.0.0.1:0", db_path=db_path, metrics_port=None))
    token = tokens.create_token(db_path, name="trainer")
    yield {"address": running.address, "token": token, "db_path": db_path, "tokens": tokens}
    running.stop()


def test_join_tokens_are_checked_with_the_coordinator(small_dataset, coordinator):
    running = start_server(index_path=small_dataset["index_path"], listen="127.0.0.1:0", metrics_port=None,
                           coordinator=coordinator["address"], token_ttl_s=0.5, lease_check=False)
    try:
        rpc.wait_healthy(running.address, timeout=10)  # health needs no token
        for token, words in ((None, "join token is required"), ("not-a-token", "rejected this join token")):
            with pytest.raises(grpc.RpcError) as error:
                list(iter_chunk_samples(running.address, [1], token=token, timeout=10))
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED and words in error.value.details()
        good = coordinator["token"]
        assert [s[2] for s in iter_chunk_samples(running.address, [1, 2], token=good, timeout=10)] == [1, 2]
        coordinator["tokens"].revoke_tokens(coordinator["db_path"], "trainer")
        deadline = time.monotonic() + 20  # the cached answer lives token_ttl_s here (60 s by default)
        while True:
            try:
                list(iter_chunk_samples(running.address, [1], token=good, timeout=10))
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in error.details()
                break
            assert time.monotonic() < deadline, "a revoked token still works after its cache time"
            time.sleep(0.2)
    finally:
        running.stop(grace=1)


def test_unreachable_coordinator_refuses_calls_with_a_clear_message(small_dataset):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    running = start_server(index_path=small_dataset["index_path"], listen="127.0.0.1:0", metrics_port=None,
                           coordinator=dead)
    running.token_check.timeout_s = 1.0
    try:
        with pytest.raises(grpc.RpcError) as error:
            list(iter_chunk_samples(running.address, [1], token="anything", timeout=10))
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert dead in error.value.details() and "try again" in error.value.details()
    finally:
        running.stop(grace=1)
