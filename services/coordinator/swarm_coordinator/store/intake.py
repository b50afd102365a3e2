"""The store's chunk intake: samples synced from the dataset service become chunks.

It owns the sync cursor (the highest dataset sample id already taken in) and the pending samples (synced, waiting
for their aspect bucket to fill a chunk); full chunks go to the lease book. Cutting is the pure rule
rules.cut_chunks; this part stores its result and the cursor in one transaction, then applies it to memory.
Regularization samples are never cut: they go to the regularization pool (reg_pool.py) in the same transaction.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import sqlalchemy as sa

from swarm_coordinator import db
from swarm_coordinator.rules import cut_chunks
from swarm_coordinator.store.config_versions import ConfigVersions
from swarm_coordinator.store.connection import StoreConnection
from swarm_coordinator.store.leases import Bucket, LeaseBook
from swarm_coordinator.store.reg_pool import RegPool


class ChunkIntake:
    def __init__(self, db_conn: StoreConnection, *, configs: ConfigVersions, leases: LeaseBook, clock,
                 reg: RegPool | None = None):
        self._db, self._configs, self._leases, self._clock = db_conn, configs, leases, clock
        self._reg = reg if reg is not None else RegPool()
        self._pending: dict[Bucket, list[int]] = {}
        self._sync_cursor = 0

    def load(self, conn: sa.Connection) -> None:
        for row in conn.execute(sa.select(db.pending_samples).order_by(db.pending_samples.c.sample_id)):
            self._pending.setdefault((row.bucket_width, row.bucket_height), []).append(row.sample_id)
        self._sync_cursor = int(db.get_meta(conn, "sync_after_id") or 0)

    @property
    def sync_cursor(self) -> int:
        """Highest dataset sample id already synced (chunked or pending): the next ListSamples starts after it."""
        return self._sync_cursor

    @property
    def samples_pending(self) -> int:
        return sum(len(ids) for ids in self._pending.values())

    def add_samples(self, samples: Sequence[tuple[int, int, int]], *, flush: bool,
                    reg_samples: Sequence[tuple[int, int, int]] = ()) -> list[int]:
        """Cut newly synced training (sample_id, bucket width, bucket height) into chunks, and put the newly synced
        regularization ones in the pool; returns the new chunk ids."""
        with self._db.lock:
            fresh = [s for s in samples if s[0] > self._sync_cursor]
            fresh_reg = [s for s in reg_samples if s[0] > self._sync_cursor]
            if not fresh and not fresh_reg and not (flush and self._pending):
                return []
            new_chunks, pending = cut_chunks(self._pending, fresh, chunk_size=self._configs.config.chunk_size,
                                             flush=flush)
            cursor = max([self._sync_cursor, *(s[0] for s in fresh), *(s[0] for s in fresh_reg)])
            with self._db.transaction() as conn:
                self._reg.insert(conn, fresh_reg)
                ids = self._insert_chunks(conn, new_chunks)
                conn.execute(db.pending_samples.delete())
                rows = [{"sample_id": sid, "bucket_width": w, "bucket_height": h}
                        for (w, h), sids in pending.items() for sid in sids]
                if rows:
                    conn.execute(db.pending_samples.insert(), rows)
                db.set_meta(conn, "sync_after_id", str(cursor))
            self._pending, self._sync_cursor = pending, cursor
            self._reg.add(fresh_reg)
            self._queue(ids, new_chunks)
            return ids

    def add_chunks(self, chunks: Iterable[tuple[Bucket, Sequence[int]]]) -> list[int]:
        """Add ready-made chunks ((bucket width, height), sample ids): seeding for tests and benchmarks."""
        chunks = [(bucket, list(sample_ids)) for bucket, sample_ids in chunks]
        with self._db.lock:
            with self._db.transaction() as conn:
                ids = self._insert_chunks(conn, chunks)
            self._queue(ids, chunks)
            return ids

    def _insert_chunks(self, conn: sa.Connection, chunks: list[tuple[Bucket, list[int]]]) -> list[int]:
        first = self._leases.next_chunk_id()
        ids = list(range(first, first + len(chunks)))
        if chunks:
            now = self._clock()
            conn.execute(db.chunks.insert(), [
                {"id": cid, "bucket_width": w, "bucket_height": h, "sample_ids": ",".join(map(str, sids)),
                 "n_samples": len(sids), "times_trained": 0, "created": now}
                for cid, ((w, h), sids) in zip(ids, chunks)])
        return ids

    def _queue(self, ids: list[int], chunks: list[tuple[Bucket, list[int]]]) -> None:
        for cid, (bucket, sample_ids) in zip(ids, chunks):
            self._leases.add_chunk(cid, bucket=bucket, sample_ids=sample_ids)
