"""Small pure pieces of the peer loop: the leases a peer holds, batching a chunk, the summary it writes."""
from __future__ import annotations

import json
import os
import threading
from collections import deque
from pathlib import Path
from typing import Any, Iterator, Sequence


class LeaseBook:
    """Leases this peer holds (leased, training or queued for training), shared by the loop and the heartbeat.

    `pending` keeps the order leases were handed to the prefetcher, so a chunk that failed to stream can be named.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._held: dict[str, Any] = {}
        self._invalid: set[str] = set()
        self._pending: deque[str] = deque()

    def add(self, lease) -> None:
        with self._lock:
            self._held[lease.lease_id] = lease
            self._pending.append(lease.lease_id)

    def delivered(self, lease_id: str) -> None:
        """The prefetcher handed this lease's samples to the loop."""
        with self._lock:
            if lease_id in self._pending:
                self._pending.remove(lease_id)

    def oldest_pending(self) -> str | None:
        with self._lock:
            return self._pending[0] if self._pending else None

    def drop(self, lease_id: str) -> None:
        """Reported, released or lost: no longer extended by heartbeats."""
        with self._lock:
            self._held.pop(lease_id, None)
            self._invalid.discard(lease_id)
            if lease_id in self._pending:
                self._pending.remove(lease_id)

    def invalidate(self, lease_id: str) -> None:
        """The coordinator says the lease expired: its chunk went back to the queue."""
        with self._lock:
            if lease_id in self._held:
                self._invalid.add(lease_id)

    def is_valid(self, lease_id: str) -> bool:
        with self._lock:
            return lease_id in self._held and lease_id not in self._invalid

    def ids(self) -> list[str]:
        """Leases worth extending (the valid ones)."""
        with self._lock:
            return [lid for lid in self._held if lid not in self._invalid]

    def clear(self) -> None:
        with self._lock:
            self._held.clear()
            self._invalid.clear()
            self._pending.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._held)


def batches(samples: Sequence, batch_size: int) -> Iterator[Sequence]:
    """Consecutive batches of `batch_size` (the last one may be smaller: a chunk is trained whole)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(samples), batch_size):
        yield samples[start:start + batch_size]


SUMMARY_KEYS = ("peer_id", "name", "samples_trained", "chunks_reported", "global_epoch", "loss_first", "loss_last",
                "losses", "samples_per_s", "checkpoint", "config_version")


def write_summary(path: str | os.PathLike, summary: dict[str, Any]) -> Path:
    """OUTPUT/summary.json (the demo and the e2e test read it); every contract key must be present."""
    missing = [key for key in SUMMARY_KEYS if key not in summary]
    if missing:
        raise ValueError(f"summary lacks {missing}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, path)
    return path
