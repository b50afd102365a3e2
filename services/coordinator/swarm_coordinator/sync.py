"""Keeps the chunks in step with the dataset service: pages its index and cuts new samples into chunks.

A background thread: every `interval` seconds (at once when triggered) it asks swarm.v1.Dataset/ListSamples for the
samples after the highest id already synced, page by page, and hands them to the store, which cuts full chunks per
aspect bucket at once. A bucket's remainder waits for more samples until a pass finds nothing new (the dataset
stopped growing), then becomes a last, smaller chunk. If the dataset service is down the coordinator keeps
serving (with no chunks, nothing is leased and the run is not complete) and this loop keeps retrying.
Regularization samples (SampleRef.role) are not cut: they go to the store's regularization pool.
"""
from __future__ import annotations

import threading
import time

import grpc

from swarm.logs import get_logger
from swarm.rpc import channel, token_metadata
from swarm.v1 import dataset_pb2, dataset_pb2_grpc
from swarm_coordinator.store import Store

_ROLES = (dataset_pb2.SAMPLE_ROLE_TRAINING, dataset_pb2.SAMPLE_ROLE_REGULARIZATION)

logger = get_logger(__name__)

PAGE_SIZE = 1000
REG_WARNING_INTERVAL_S = 60.0


class DatasetSync:
    def __init__(self, store: Store, *, address: str, token: str | None, interval: float = 5.0,
                 retry_interval: float = 2.0, settle: float = 1.0, timeout: float = 15.0, page_size: int = PAGE_SIZE):
        self.store, self.address, self.token = store, address, token
        self.interval, self.retry_interval, self.settle = interval, retry_interval, settle
        self.timeout, self.page_size = timeout, page_size
        self.up = False  # whether the last pass reached the dataset service
        self.passes = 0
        self.last_success: float | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dataset-sync", daemon=True)
        self._channel = None
        self._reg_warned_at = float("-inf")

    def start(self) -> "DatasetSync":
        self._channel = channel(self.address)
        self._stub = dataset_pb2_grpc.DatasetStub(self._channel)
        self._thread.start()
        return self

    def trigger(self) -> None:
        """Sync now instead of at the next interval."""
        self._wake.set()

    def stop(self, *, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=timeout)
        if self._channel is not None:
            self._channel.close()

    def sync_once(self) -> tuple[int, int]:
        """One pass to the end of the dataset index: returns (new samples, new chunks)."""
        new_samples = new_chunks = 0
        while not self._stop.is_set():
            request = dataset_pb2.ListSamplesRequest(after_id=self.store.sync_cursor, limit=self.page_size)
            page = self._stub.ListSamples(request, metadata=token_metadata(self.token), timeout=self.timeout)
            usable = [s for s in page.samples if s.sample_id > request.after_id and s.bucket_width > 0
                      and s.bucket_height > 0 and s.role in _ROLES]
            refs = [(s.sample_id, s.bucket_width, s.bucket_height) for s in usable
                    if s.role == dataset_pb2.SAMPLE_ROLE_TRAINING]
            reg_refs = [(s.sample_id, s.bucket_width, s.bucket_height) for s in usable
                        if s.role == dataset_pb2.SAMPLE_ROLE_REGULARIZATION]
            if len(usable) != len(page.samples):
                logger.warning(f"dataset service at {self.address} sent {len(page.samples) - len(usable)} sample refs "
                               f"out of order, without a bucket or of an unknown role; skipped them")
            if usable:
                new_chunks += len(self.store.add_samples(refs, flush=False, reg_samples=reg_refs))
                new_samples += len(usable)
            if len(page.samples) < self.page_size or not usable:
                break
        if new_samples == 0:  # the dataset stopped growing: remainders become chunks of their own
            new_chunks += len(self.store.add_samples([], flush=True))
        return new_samples, new_chunks

    def _warn_reg_problem(self, *, quiet: bool) -> None:
        """reg_ratio > 0 and the synced dataset holds no regularization samples: nothing is leased; say why (once a
        minute, once the dataset stopped growing)."""
        problem = self.store.reg_problem()
        now = time.monotonic()
        if problem and quiet and now - self._reg_warned_at >= REG_WARNING_INTERVAL_S:
            self._reg_warned_at = now
            logger.error(f"no chunk is leased: {problem}")

    def _run(self) -> None:
        wait = 0.0  # the first pass runs at once
        while not self._stop.is_set():
            if wait:
                self._wake.wait(timeout=wait)
                self._wake.clear()
            if self._stop.is_set():
                break
            try:
                new_samples, new_chunks = self.sync_once()
            except grpc.RpcError as e:
                level = logger.warning if self.up or self.passes == 0 else logger.debug
                hint = (" (give the coordinator a join token of its own database: --dataset-token or "
                        "SWARM_DATASET_TOKEN, from `swarm token create`)"
                        if e.code() == grpc.StatusCode.UNAUTHENTICATED else "")
                level(f"cannot list samples from the dataset service at {self.address}: {e.code().name} "
                      f"{e.details()}{hint}; retrying every {self.retry_interval:.0f} s")
                self.up, wait = False, self.retry_interval
            except Exception:  # a store write failing must not end the loop: log it, retry later
                logger.exception("dataset sync failed; retrying")
                self.up, wait = False, self.retry_interval
            else:
                if not self.up:
                    logger.info(f"dataset service at {self.address} reachable; syncing its index")
                self.up, self.last_success = True, time.time()
                if new_samples or new_chunks:
                    logger.info(f"synced {new_samples} new samples into {new_chunks} new chunks "
                                f"({len(self.store.queue.chunks)} chunks in all)")
                # Right after new samples, look again soon: a quiet pass flushes the buckets' remainders.
                wait = self.settle if new_samples else self.interval
                self._warn_reg_problem(quiet=not new_samples)
            finally:
                self.passes += 1
