"""`swarm dataset serve`: the gRPC Dataset service (StreamSamples, ListSamples, GetStats) over the ingested index.

By default a sample is sent from the copy that ingest already resized and centre-cropped to its bucket (JPEG q95):
no CPU here. Other encodings or qualities, random crops, and samples without such a copy are resized on the fly.

StreamSamples is a generator the gRPC runtime pulls from as the client reads: gRPC's flow control stops the pull when
the peer is slow, so the server never queues more than `read_ahead` samples per stream. The read-ahead runs on a
bounded worker pool shared by all streams (storage GET + decode/resize/encode), so S3 latency overlaps and every core
resizes, while memory stays bounded by workers and read-ahead, not by chunk size or by how slow a peer is.
"""
from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from prometheus_client import Counter, Gauge, Histogram

from swarm import rpc
from swarm.cliargs import check_port
from swarm.logs import get_logger
from swarm.metrics import MetricsServer
from swarm.procs import write_ready_file
from swarm.shutdown import stop_event_on_signals
from swarm.v1 import dataset_pb2, dataset_pb2_grpc
from swarm_dataset import imaging
from swarm_dataset.index import REGULARIZATION, ROLES, TRAINING, Index, SampleInfo
from swarm_dataset.storage import StorageError, open_storage
from swarm_dataset.stream_guard import DEFAULT_STREAMS_PER_TOKEN, StreamGuard, StreamRefused

logger = get_logger(__name__)

SERVICE_NAME = "swarm.v1.Dataset"
MAX_IDS_PER_STREAM = 10_000
MAX_LIST_LIMIT = 10_000
DEFAULT_LIST_LIMIT = 1000
_PROTO_ROLES = {TRAINING: dataset_pb2.SAMPLE_ROLE_TRAINING, REGULARIZATION: dataset_pb2.SAMPLE_ROLE_REGULARIZATION}

SAMPLES_STREAMED = Counter("swarm_dataset_samples_streamed", "Samples sent by StreamSamples")
BYTES_STREAMED = Counter("swarm_dataset_bytes_streamed", "Image bytes sent by StreamSamples")
STREAM_ERRORS = Counter("swarm_dataset_stream_errors", "Failed or refused StreamSamples calls", ["reason"])
STREAM_SECONDS = Histogram("swarm_dataset_stream_seconds", "Duration of StreamSamples calls",
                           buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
ACTIVE_STREAMS = Gauge("swarm_dataset_active_streams", "StreamSamples calls in progress")
INDEX_SAMPLES = Gauge("swarm_dataset_index_samples", "Samples in the dataset index")


class _StreamFailure(Exception):
    def __init__(self, code: grpc.StatusCode, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def _prepare(storage, sample: SampleInfo, *, as_stored: bool, encoding: str, quality: int,
             rng: random.Random | None) -> dataset_pb2.Sample:
    """Runs on the worker pool: fetch the stored bytes and (unless as_stored) resize them to the sample's bucket."""
    if (not as_stored and rng is None and sample.bucket_key and encoding == "jpeg"
            and quality == imaging.PREPARED_QUALITY):
        try:  # the default request: the copy made at ingest is exactly what was asked for
            image = storage.get(sample.bucket_key)
            return dataset_pb2.Sample(sample_id=sample.id, image=image, caption=sample.caption,
                                      width=sample.bucket_width, height=sample.bucket_height,
                                      bucket_width=sample.bucket_width, bucket_height=sample.bucket_height,
                                      encoding="jpeg")
        except (KeyError, StorageError) as e:
            logger.warning(f"sample {sample.id}: its bucket copy {sample.bucket_key} is unavailable ({e}); "
                           f"resizing the stored image instead")
    try:
        data = storage.get(sample.key)
    except KeyError:
        raise _StreamFailure(
            grpc.StatusCode.DATA_LOSS, "missing_object",
            f"sample {sample.id}: its object {sample.key} is missing from storage; re-ingest") from None
    except StorageError as e:
        raise _StreamFailure(grpc.StatusCode.UNAVAILABLE, "storage_unavailable",
                             f"sample {sample.id}: storage is unavailable, try again: {e}") from None
    if as_stored:
        extension = sample.key.rsplit(".", 1)[-1]
        return dataset_pb2.Sample(sample_id=sample.id, image=data, caption=sample.caption, width=sample.width,
                                  height=sample.height, bucket_width=sample.bucket_width,
                                  bucket_height=sample.bucket_height,
                                  encoding="jpeg" if extension == "jpg" else extension)
    try:
        image = imaging.bucket_bytes(data, sample.bucket_width, sample.bucket_height, encoding=encoding,
                                     quality=quality, crop="random" if rng else "center", rng=rng)
    except (OSError, ValueError, SyntaxError) as e:
        raise _StreamFailure(grpc.StatusCode.DATA_LOSS, "corrupt_object",
                             f"sample {sample.id}: its stored object {sample.key} cannot be decoded: {e}") from None
    return dataset_pb2.Sample(sample_id=sample.id, image=image, caption=sample.caption, width=sample.bucket_width,
                              height=sample.bucket_height, bucket_width=sample.bucket_width,
                              bucket_height=sample.bucket_height, encoding=encoding)


def _describe_missing(missing: list[int]) -> str:
    shown = ", ".join(str(i) for i in missing[:10])
    more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
    return f"unknown sample id(s) {shown}{more}: not in the dataset index (ListSamples gives the valid ids)"


class DatasetServicer(dataset_pb2_grpc.DatasetServicer):
    def __init__(self, *, index: Index, storage, pool: ThreadPoolExecutor, read_ahead: int = 8,
                 default_encoding: str = "jpeg", default_quality: int = imaging.DEFAULT_QUALITY,
                 guard: StreamGuard | None = None):
        imaging.check_encoding(default_encoding, default_quality)
        self.index, self.storage, self.pool = index, storage, pool
        self.guard = guard  # per-token stream rules (stream_guard.py); None: an open service
        self.read_ahead = max(1, read_ahead)
        self.default_encoding, self.default_quality = default_encoding, default_quality

    def _refuse(self, context, code: grpc.StatusCode, reason: str, message: str):
        STREAM_ERRORS.labels(reason=reason).inc()
        context.abort(code, message)

    def StreamSamples(self, request, context):  # noqa: N802 (gRPC's name)
        ids = list(request.sample_ids)
        if not ids:
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "invalid_argument",
                         "sample_ids is empty: name the samples to stream (a leased chunk's sample_ids)")
        if len(ids) > MAX_IDS_PER_STREAM:
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "invalid_argument",
                         f"{len(ids)} sample ids in one call; at most {MAX_IDS_PER_STREAM}: split the request")
        encoding = request.encoding or self.default_encoding
        quality = request.quality or self.default_quality
        try:
            imaging.check_encoding(encoding, quality)
        except ValueError as e:
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "invalid_argument", str(e))
        found = self.index.samples_by_ids(ids)
        missing = [i for i in dict.fromkeys(ids) if i not in found]
        if missing:
            self._refuse(context, grpc.StatusCode.NOT_FOUND, "not_found", _describe_missing(missing))
        rng = random.Random() if request.random_crop else None
        guard = (self.guard.stream(context, ids=ids, as_stored=request.as_stored) if self.guard is not None
                 else contextlib.nullcontext(None))
        try:
            with guard as still_allowed:
                yield from self._stream([found[i] for i in ids], context=context, as_stored=request.as_stored,
                                        encoding=encoding, quality=quality, rng=rng, still_allowed=still_allowed)
        except StreamRefused as refusal:
            self._refuse(context, refusal.code, refusal.reason, refusal.message)

    def _stream(self, samples: list[SampleInfo], *, context, as_stored: bool, encoding: str, quality: int,
                rng: random.Random | None, still_allowed=None):
        started = time.monotonic()
        ACTIVE_STREAMS.inc()
        pending: deque[Future] = deque()
        todo = iter(samples)
        finished = False  # completed, or failed with its own counted reason: anything else is a cancelled stream
        try:
            for sample in todo:
                pending.append(self.pool.submit(_prepare, self.storage, sample, as_stored=as_stored,
                                                encoding=encoding, quality=quality, rng=rng))
                if len(pending) >= self.read_ahead:
                    break
            while pending:
                try:
                    message = pending.popleft().result()
                except _StreamFailure as failure:
                    logger.warning(failure.message)
                    finished = True
                    self._refuse(context, failure.code, failure.reason, failure.message)
                if still_allowed is not None and (ended := still_allowed()) is not None:
                    finished = True  # a revoked token's or an ended lease's open stream ends here, within seconds
                    self._refuse(context, ended.code, ended.reason, ended.message)
                next_sample = next(todo, None)  # keep the window full before blocking on the send
                if next_sample is not None:
                    pending.append(self.pool.submit(_prepare, self.storage, next_sample, as_stored=as_stored,
                                                    encoding=encoding, quality=quality, rng=rng))
                yield message  # returns only when gRPC wants the next one: that is the backpressure
                SAMPLES_STREAMED.inc()
                BYTES_STREAMED.inc(len(message.image))
            finished = True
        finally:
            for future in pending:  # a cancelled or failed stream leaves no work behind
                future.cancel()
            if not finished:  # the client went away (or its deadline passed) mid-stream
                STREAM_ERRORS.labels(reason="cancelled").inc()
            ACTIVE_STREAMS.dec()
            STREAM_SECONDS.observe(time.monotonic() - started)

    def ListSamples(self, request, context):  # noqa: N802
        limit = request.limit or DEFAULT_LIST_LIMIT
        if not 1 <= limit <= MAX_LIST_LIMIT:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"limit must be between 1 and {MAX_LIST_LIMIT}, got "
                                                            f"{request.limit}")
        if request.after_id < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"after_id must be >= 0, got {request.after_id}")
        rows = self.index.list_refs(after_id=request.after_id, limit=limit + 1)
        return dataset_pb2.ListSamplesResponse(
            samples=[dataset_pb2.SampleRef(sample_id=i, bucket_width=w, bucket_height=h, role=_PROTO_ROLES[role])
                     for i, w, h, role in rows[:limit]],
            has_more=len(rows) > limit)

    def GetStats(self, request, context):  # noqa: N802
        stats = self.index.stats()
        return dataset_pb2.DatasetStats(
            samples=stats.samples, skipped=stats.skipped, roles={r: stats.roles.get(r, 0) for r in ROLES},
            buckets=[dataset_pb2.BucketCount(width=w, height=h, count=n)
                     for (w, h), n in sorted(stats.buckets.items())])


def default_workers() -> int:
    """Threads that fetch and resize: mostly waiting on storage (S3 first-byte latency is tens of ms), so several
    per core; PIL releases the GIL while it decodes, resizes and encodes."""
    return min(64, max(8, 4 * (os.cpu_count() or 1)))


def default_read_ahead(workers: int) -> int:
    """Samples prepared ahead per stream: enough to hide storage latency, few enough to bound memory per stream."""
    return min(workers, 16)


@dataclass
class DatasetServer:
    """A running service (in-process): `address` and `metrics_port` are what was actually bound."""

    server: grpc.Server
    address: str
    metrics: MetricsServer | None
    pool: ThreadPoolExecutor
    index: Index
    servicer: DatasetServicer
    health: object
    token_check: object | None = None

    @property
    def metrics_port(self) -> int | None:
        return self.metrics.port if self.metrics else None

    def stop(self, *, grace: float = 5.0) -> None:
        self.health.enter_graceful_shutdown()  # health checks say NOT_SERVING while streams finish
        self.server.stop(grace).wait(grace + 5)
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.metrics:
            self.metrics.close()
        if self.token_check is not None:
            self.token_check.close()
        self.index.close()


def start_server(*, index_path: str, listen: str = "0.0.0.0:50052", storage_url: str | None = None,
                 s3_endpoint_url: str | None = None, coordinator: str | None = None, metrics_port: int | None = 9101,
                 metrics_host: str | None = None, workers: int | None = None, read_ahead: int | None = None,
                 default_encoding: str = "jpeg",
                 default_quality: int = imaging.DEFAULT_QUALITY, grpc_threads: int = 32,
                 token_ttl_s: float = 5.0, streams_per_token: int = DEFAULT_STREAMS_PER_TOKEN,
                 originals_token: str | None = None, tls_cert: str | None = None,
                 tls_key: str | None = None, lease_check: bool = True) -> DatasetServer:
    """Open the index and storage, start serving; returns at once. `metrics_port=None` serves no /metrics.
    With `coordinator`, a token streams only samples its peers hold active leases on, unless `lease_check=False`
    (tests of the other token rules)."""
    for name, value, low, high in (("workers", workers, 1, 256), ("read-ahead", read_ahead, 1, 1024)):
        if value is not None and not low <= value <= high:
            raise ValueError(f"{name} must be between {low} and {high}, got {value}")
    if metrics_port is not None:
        check_port(metrics_port, name="metrics port")
    imaging.check_encoding(default_encoding, default_quality)
    # Before the first ingest there is no index: serve an empty one (ingest fills the same file) instead of exiting,
    # so a container host does not crash-loop until someone ingests.
    fresh = not os.path.isfile(os.path.expanduser(index_path))
    if fresh and not storage_url:
        # Checked before Index() creates the file: a mistyped --index must not leave an empty index behind.
        raise ValueError(f"no dataset index at {index_path}: run `swarm ingest FOLDER --index {index_path}` first, "
                         f"or pass --storage URL to serve an empty index until an ingest fills it")
    index = Index(index_path)
    if fresh:
        logger.warning(f"no dataset index at {index_path} yet: serving an empty one until `swarm ingest` fills it")
    storage_url = storage_url or index.get_meta("storage_url")
    if not storage_url:
        raise ValueError(f"the index {index_path} does not say where its objects are: pass --storage URL")
    storage = open_storage(storage_url, endpoint_url=s3_endpoint_url, create=fresh)
    workers = workers or default_workers()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dataset-io")
    token_check, guard = None, None
    interceptors = []
    if coordinator:
        from swarm_dataset.auth import CoordinatorTokenCheck

        token_check = CoordinatorTokenCheck(coordinator, ttl_s=token_ttl_s)
        interceptors.append(rpc.TokenAuthInterceptor(token_check))
        guard = StreamGuard(token_check=token_check, max_streams_per_token=streams_per_token,
                            originals_token=originals_token,
                            lease_check=token_check.samples_leased if lease_check else None)
    else:
        logger.warning("no --coordinator given: the dataset service is open to anyone who can reach it")
    server, health = rpc.make_server(max_workers=grpc_threads, interceptors=interceptors)
    servicer = DatasetServicer(index=index, storage=storage, pool=pool,
                               read_ahead=read_ahead or default_read_ahead(workers),
                               default_encoding=default_encoding, default_quality=default_quality, guard=guard)
    dataset_pb2_grpc.add_DatasetServicer_to_server(servicer, server)
    address = rpc.bind(server, listen, tls_cert=tls_cert, tls_key=tls_key)
    server.start()
    rpc.set_serving(health, SERVICE_NAME)
    INDEX_SAMPLES.set_function(index.count)
    metrics = MetricsServer(host=metrics_host, port=metrics_port) if metrics_port is not None else None
    logger.info(f"dataset service on {address} ({index.count()} samples, storage {storage.url}, {workers} workers"
                + (f", metrics on :{metrics.port}" if metrics else "") + ")")
    return DatasetServer(server=server, address=address, metrics=metrics, pool=pool, index=index,
                         servicer=servicer, health=health, token_check=token_check)


def serve(*, ready_file: str | None = None, stop_event: threading.Event | None = None, **kwargs) -> int:
    """Serve until SIGTERM/SIGINT (or `stop_event`); the CLI's entry point. kwargs are `start_server`'s."""
    running = start_server(**kwargs)
    stop_event = stop_event_on_signals(stop_event, doing="stopping the dataset service")
    write_ready_file(ready_file, grpc_address=running.address, metrics_port=running.metrics_port)
    try:
        stop_event.wait()
    finally:
        logger.info("dataset service stopping")
        running.stop()
    return 0
