"""The store's regularization pool: the regularization (class) samples synced from the dataset, by aspect bucket.

They are never cut into chunks; the intake stores them here (in its own sync transaction) and each lease names some
of them by the pure rules of regularization.py, so a chunk's data epochs stay those of its training samples.
"""
from __future__ import annotations

import bisect
from typing import Sequence

import sqlalchemy as sa

from swarm_coordinator import db
from swarm_coordinator.regularization import (
    ANY_BUCKET,
    Bucket,
    ChunkPools,
    pool_key,
    pools_by_bucket,
    reg_samples_for_lease,
)


class RegPool:
    def __init__(self) -> None:
        self._pools: dict[Bucket, list[int]] = {}

    def load(self, conn: sa.Connection) -> None:
        rows = conn.execute(sa.select(db.reg_samples.c.sample_id, db.reg_samples.c.bucket_width,
                                      db.reg_samples.c.bucket_height))
        self._pools = pools_by_bucket((row.sample_id, row.bucket_width, row.bucket_height) for row in rows)

    @property
    def total(self) -> int:
        """Regularization samples synced."""
        return len(self._pools.get(ANY_BUCKET, ()))

    def insert(self, conn: sa.Connection, samples: Sequence[tuple[int, int, int]]) -> None:
        """Write newly synced (sample id, bucket width, height) in the caller's transaction; `add` them after."""
        if samples:
            conn.execute(db.reg_samples.insert().prefix_with("OR IGNORE"),
                         [{"sample_id": sid, "bucket_width": w, "bucket_height": h} for sid, w, h in samples])

    def add(self, samples: Sequence[tuple[int, int, int]]) -> None:
        """Apply committed samples to memory."""
        for sample_id, width, height in samples:
            for bucket in ((width, height), ANY_BUCKET):
                ids = self._pools.setdefault(bucket, [])
                at = bisect.bisect_left(ids, sample_id)
                if at == len(ids) or ids[at] != sample_id:
                    ids.insert(at, sample_id)

    def for_lease(self, chunk_pools: ChunkPools, chunk_id: int, bucket: Bucket, n_train: int, times_trained: int, *,
                  reg_ratio: float, chunk_size: int) -> list[int]:
        """The regularization samples that ride along with this lease of a chunk (none while the pool is empty)."""
        if reg_ratio <= 0 or not self.total:
            return []
        position, pool_chunks = chunk_pools.position(chunk_id, bucket, self._pools)
        return reg_samples_for_lease(pool=self._pools[pool_key(bucket, self._pools)], n_train=n_train,
                                     times_trained=times_trained, position=position, pool_chunks=pool_chunks,
                                     reg_ratio=reg_ratio, chunk_size=chunk_size)
