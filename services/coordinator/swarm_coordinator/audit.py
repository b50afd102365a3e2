"""Audit the chunk accounting in a coordinator database: is every counted report there exactly once?

The invariant the coordinator keeps: a chunk's times_trained equals the number of its leases in state "done" (each
one a report answered COUNTED), and a chunk is never held by two active leases at once. When the clients kept their
own ledger of COUNTED answers, it is checked too: every acknowledged report must be in the database (else it was
lost), and no lease may have been answered COUNTED twice.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

import sqlalchemy as sa

from swarm_coordinator import db
from swarm_coordinator.rules import LeaseState


def audit_chunks(db_path: str, *, counted_lease_ids: Iterable[str] | None = None) -> dict[str, Any]:
    """Returns chunks, samples, samples_done, times_trained ({count: chunks}), leases ({state: n}), lost,
    double_counted, double_leased, and (with a client ledger) acknowledged_not_stored / counted_twice."""
    engine = db.make_engine(db_path, immediate=False)
    try:
        with engine.connect() as conn:
            chunk_rows = conn.execute(sa.select(db.chunks.c.id, db.chunks.c.n_samples,
                                                db.chunks.c.times_trained)).all()
            done = dict(conn.execute(sa.select(db.leases.c.chunk_id, sa.func.count())
                                     .where(db.leases.c.state == LeaseState.DONE.value)
                                     .group_by(db.leases.c.chunk_id)).all())
            active = dict(conn.execute(sa.select(db.leases.c.chunk_id, sa.func.count())
                                       .where(db.leases.c.state == LeaseState.ACTIVE.value)
                                       .group_by(db.leases.c.chunk_id)).all())
            by_state = dict(conn.execute(sa.select(db.leases.c.state, sa.func.count())
                                         .group_by(db.leases.c.state)).all())
            done_ids = None
            if counted_lease_ids is not None:
                done_ids = set(conn.execute(sa.select(db.leases.c.id)
                                            .where(db.leases.c.state == LeaseState.DONE.value)).scalars())
    finally:
        engine.dispose()

    chunk_ids = {row.id for row in chunk_rows}
    under = sum(1 for row in chunk_rows if row.times_trained < done.get(row.id, 0))  # a counted report vanished
    over = sum(1 for row in chunk_rows if row.times_trained > done.get(row.id, 0))  # counted without a report
    orphans = sum(n for chunk_id, n in done.items() if chunk_id not in chunk_ids)
    result: dict[str, Any] = {
        "chunks": len(chunk_rows),
        "samples": sum(row.n_samples for row in chunk_rows),
        "samples_done": sum(row.n_samples * row.times_trained for row in chunk_rows),
        "times_trained": dict(sorted(Counter(row.times_trained for row in chunk_rows).items())),
        "leases": by_state,
        "lost": under + orphans,
        "double_counted": over,
        "double_leased": sum(1 for n in active.values() if n > 1),
    }
    if counted_lease_ids is not None:
        ledger = Counter(counted_lease_ids)
        not_stored = sum(1 for lease_id in ledger if lease_id not in done_ids)
        twice = sum(1 for n in ledger.values() if n > 1)
        result["acknowledged_not_stored"] = not_stored
        result["counted_twice"] = twice
        result["lost"] += not_stored
        result["double_counted"] += twice
    return result
