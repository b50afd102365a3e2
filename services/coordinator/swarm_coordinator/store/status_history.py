"""The store's history of the run for the status page: the status_history table, kept bounded as it grows.

Each sample appends one row; every `compact_every` appends, the whole history (about a thousand rows at most) is
downsampled by the pure rules in statuspage/history.py and rewritten in the same transaction, so the chart survives
restarts and the table never grows without bound. The in-memory copy is replaced only after COMMIT.
"""
from __future__ import annotations

import sqlalchemy as sa

from swarm_coordinator import db
from swarm_coordinator.statuspage.history import DEFAULT_TIERS, MAX_POINTS, Point, Tier, downsample
from swarm_coordinator.store.connection import StoreConnection

COMPACT_EVERY = 20


def _row_values(point: Point) -> dict:
    return {"t": point.t, "n": point.n, "samples_done": point.samples_done, "global_epoch": point.global_epoch,
            "peers_online": point.peers_online, "samples_per_s": point.samples_per_s, "loss": point.loss}


class StatusHistory:
    def __init__(self, db_conn: StoreConnection, *, tiers: tuple[Tier, ...] = DEFAULT_TIERS,
                 max_points: int = MAX_POINTS, compact_every: int = COMPACT_EVERY):
        if compact_every < 1:
            raise ValueError(f"compact_every must be >= 1, got {compact_every}")
        self._db, self.tiers, self.max_points, self.compact_every = db_conn, tiers, max_points, compact_every
        self._points: list[Point] = []
        self._appended = 0

    def load(self, conn: sa.Connection) -> None:
        rows = conn.execute(sa.select(db.status_history).order_by(db.status_history.c.t, db.status_history.c.id))
        # By column name through _mapping: Row.t is SQLAlchemy's tuple view of the row, not the column t.
        self._points = [Point(t=m["t"], samples_done=m["samples_done"], global_epoch=m["global_epoch"],
                              peers_online=m["peers_online"], samples_per_s=m["samples_per_s"], loss=m["loss"],
                              n=m["n"]) for m in (r._mapping for r in rows)]

    def points(self) -> list[Point]:
        """The history, oldest first (a copy: callers build documents from it while samples keep coming)."""
        with self._db.lock:
            return list(self._points)

    def record(self, point: Point) -> None:
        """Append one sample; every `compact_every` samples, downsample and rewrite the table (one transaction)."""
        with self._db.lock:
            points = [*self._points, point]
            compact = self._appended + 1 >= self.compact_every
            if compact:
                points = downsample(points, now=point.t, tiers=self.tiers, max_points=self.max_points)
            with self._db.transaction() as conn:
                if compact:
                    conn.execute(db.status_history.delete())
                    if points:
                        conn.execute(db.status_history.insert(), [_row_values(p) for p in points])
                else:
                    conn.execute(db.status_history.insert().values(**_row_values(point)))
            self._points = points
            self._appended = 0 if compact else self._appended + 1
