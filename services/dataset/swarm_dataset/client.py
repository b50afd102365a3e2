"""Trainer side of the dataset service: stream a chunk's samples, and prefetch the next chunk while one trains.

    for image, caption, sample_id in iter_chunk_samples(address, lease.sample_ids, token=token, timeout=120):
        ...

    with ChunkPrefetcher(address, chunks=leases_as_pairs(), token=token) as prefetcher:
        for lease, samples in prefetcher:      # samples: list of (PIL.Image RGB, caption, sample_id)
            train(samples)                     # meanwhile the next chunk is already streaming in

Memory is bounded on this side too: the stream is read as it is consumed (gRPC flow control holds the server back),
and the prefetcher holds at most `depth` finished chunks plus the one being fetched.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Any, Iterable, Iterator, Sequence

import grpc
from PIL import Image

from swarm import rpc
from swarm.logs import get_logger
from swarm.tls import TlsUnreachable
from swarm.v1 import dataset_pb2, dataset_pb2_grpc
from swarm_dataset import imaging

logger = get_logger(__name__)

# Worth another try: the server or its storage was briefly unreachable, or the deadline hit on a slow link.
# Between tries to reach a dataset service whose pinned certificate could not be fetched (it was down).
RECONNECT_PAUSE_S = 5.0
RETRYABLE_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)

Sample = tuple[Image.Image, str, int]


def iter_chunk_messages(address: str, sample_ids: Sequence[int], *, token: str | None = None, timeout: float = 300.0,
                        as_stored: bool = False, encoding: str = "", quality: int = 0, random_crop: bool = False,
                        channel: grpc.Channel | None = None) -> Iterator[dataset_pb2.Sample]:
    """The raw `Sample` messages of one StreamSamples call, in the order asked. `timeout` covers the whole stream."""
    request = dataset_pb2.StreamSamplesRequest(sample_ids=list(sample_ids), as_stored=as_stored, encoding=encoding,
                                               quality=quality, random_crop=random_crop)
    own_channel = channel is None
    channel = channel or rpc.channel(address)
    try:
        stub = dataset_pb2_grpc.DatasetStub(channel)
        yield from stub.StreamSamples(request, metadata=rpc.token_metadata(token), timeout=timeout)
    finally:
        if own_channel:
            channel.close()


def iter_chunk_samples(address: str, sample_ids: Sequence[int], *, token: str | None = None, timeout: float = 300.0,
                       as_stored: bool = False, encoding: str = "", quality: int = 0, random_crop: bool = False,
                       channel: grpc.Channel | None = None) -> Iterator[Sample]:
    """Decoded samples of one chunk: (PIL.Image in RGB, caption, sample_id), in the order asked.

    Resized and cropped to each sample's aspect bucket by the server unless `as_stored`. Raises grpc.RpcError with
    the server's status (NOT_FOUND names unknown ids, INVALID_ARGUMENT says what is wrong with the request).
    """
    for message in iter_chunk_messages(address, sample_ids, token=token, timeout=timeout, as_stored=as_stored,
                                       encoding=encoding, quality=quality, random_crop=random_crop, channel=channel):
        yield imaging.decode_rgb(message.image), message.caption, message.sample_id


def fetch_chunk(address: str, sample_ids: Sequence[int], *, retries: int = 3, backoff_s: float = 1.0,
                stop: threading.Event | None = None, **kwargs) -> list[Sample]:
    """All samples of a chunk, retrying transient failures (the whole chunk again, with backoff)."""
    attempt = 0
    while True:
        try:
            return list(iter_chunk_samples(address, sample_ids, **kwargs))
        except grpc.RpcError as e:
            attempt += 1
            if e.code() not in RETRYABLE_CODES or attempt > retries or (stop is not None and stop.is_set()):
                raise
            delay = backoff_s * 2 ** (attempt - 1)
            logger.warning(f"streaming a chunk from {address} failed ({e.code().name}: {e.details()}); "
                           f"retry {attempt}/{retries} in {delay:.1f} s")
            if stop is not None:
                if stop.wait(delay):
                    raise
            else:
                time.sleep(delay)


_DONE = object()


def _tag(error: Exception, key: Any) -> None:
    """Say which chunk an error belongs to (`error.chunk_key`; None when the chunk source itself failed)."""
    try:
        error.chunk_key = key
    except AttributeError:  # an exception type with __slots__: the consumer still gets the error itself
        pass


class ChunkPrefetcher:
    """Fetches chunks in a background thread into a bounded queue while the caller trains on the current one.

    `chunks` yields (key, sample_ids) pairs; `key` is anything (a lease) and comes back with the samples. Iterating
    the prefetcher yields (key, samples) in order; an error while fetching is raised to the caller at that chunk,
    with `error.chunk_key` set to the chunk's key (None when iterating `chunks` itself failed).
    `depth` finished chunks are held at most (plus the one being streamed), so memory stays bounded.
    """

    def __init__(self, address: str, *, chunks: Iterable[tuple[Any, Sequence[int]]], token: str | None = None,
                 timeout: float = 300.0, depth: int = 1, retries: int = 3, as_stored: bool = False,
                 encoding: str = "", quality: int = 0, random_crop: bool = False):
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self.address = address
        self._chunks = iter(chunks)
        self._options = dict(token=token, timeout=timeout, as_stored=as_stored, encoding=encoding, quality=quality,
                             random_crop=random_crop)
        self._retries = retries
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        try:
            self._channel = rpc.channel(address)
        except TlsUnreachable as e:
            # A pinned certificate is fetched before the channel exists: a dataset service that is down now (a
            # restart) is waited for in the background, as a plaintext channel would reconnect by itself. Any other
            # TLS error (no TLS, another certificate) is raised here: retrying would not help.
            logger.warning(f"{e}; trying again in the background")
            self._channel = None
        self._channel_ready = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="chunk-prefetcher", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _connect(self) -> bool:
        """Make the channel when the constructor could not (see there); False if stopped first."""
        while self._channel is None:
            if self._stop.wait(RECONNECT_PAUSE_S):
                return False
            try:
                channel = rpc.channel(self.address)
            except TlsUnreachable as e:
                logger.warning(f"{e}; trying again in {RECONNECT_PAUSE_S:.0f} s")
                continue
            with self._channel_ready:
                if self._stop.is_set():
                    channel.close()
                    return False
                self._channel = channel
        return True

    def _run(self) -> None:
        try:
            if not self._connect():
                return
            for key, sample_ids in self._chunks:
                if self._stop.is_set():
                    return
                try:
                    samples = fetch_chunk(self.address, sample_ids, retries=self._retries, stop=self._stop,
                                          channel=self._channel, **self._options)
                    item: tuple = (key, samples, None)
                except Exception as e:  # noqa: BLE001 - handed to the consumer, who decides (skip the lease, stop, ...)
                    _tag(e, key)
                    item = (key, None, e)
                if not self._put(item):
                    return
        except Exception as e:  # noqa: BLE001 - the chunk source itself failed (e.g. leasing from the coordinator)
            logger.warning(f"chunk source failed: {e}")
            _tag(e, None)
            self._put((None, None, e))
            return
        self._put(_DONE)

    def __iter__(self) -> Iterator[tuple[Any, list[Sample]]]:
        while True:
            item = self.get()
            if item is None:
                return
            yield item

    def get(self, timeout: float | None = None) -> tuple[Any, list[Sample]] | None:
        """The next (key, samples), None when the chunk source is exhausted; raises what fetching it raised."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"no chunk arrived within {timeout} s")
            try:
                item = self._queue.get(timeout=0.2 if remaining is None else min(0.2, remaining))
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    return None
        if item is _DONE:
            self._queue.put(_DONE)  # later calls see the end too
            return None
        key, samples, error = item
        if error is not None:
            raise error
        return key, samples

    def close(self) -> None:
        self._stop.set()
        with self._channel_ready:
            if self._channel is not None:
                self._channel.close()  # cancels a stream in flight: the thread ends now rather than after the chunk
        self._thread.join(timeout=10)

    def __enter__(self) -> "ChunkPrefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
