"""The store's lease book: every chunk's contents, and the lease queue over them (queue.ChunkQueue).

Each change decides with the pure rules on the in-memory queue, writes the decision into the caller's transaction,
and changes the queue only once that transaction committed (Transaction.on_commit). A SIGKILL between commit and
apply loses nothing: memory is rebuilt from the database at the next start.

A lease may carry regularization samples beside its chunk (regularization.py picks them; the caller passes a
`reg_for` function to `grant`). They are stored with the lease row, so a restart knows them, and counted apart: a
counted report adds them to `reg_samples_done`, never to the chunk's data epochs.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import sqlalchemy as sa

from swarm_coordinator import db
from swarm_coordinator.errors import LeaseNotFound, NotLeaseOwner
from swarm_coordinator.queue import ChunkQueue, ChunkSlot
from swarm_coordinator.regularization import ChunkPools
from swarm_coordinator.rules import LeaseState, Outcome, extended_deadline, lease_expired, report_outcome
from swarm_coordinator.store.connection import Transaction

Bucket = tuple[int, int]


@dataclass(frozen=True)
class Grant:
    lease_id: str
    chunk_id: int
    sample_ids: list[int]
    deadline: float
    times_trained: int
    bucket_width: int
    bucket_height: int
    reg_sample_ids: list[int] = field(default_factory=list)  # regularization samples riding along


@dataclass(frozen=True)
class ReportResult:
    outcome: Outcome
    samples_counted: int
    message: str
    reg_samples_counted: int = 0


# (chunk id, bucket, training samples in it, times trained) -> the regularization sample ids of its lease
RegFor = Callable[[int, Bucket, int, int], list[int]]


def _ids_text(ids: Sequence[int]) -> str:
    return ",".join(map(str, ids))


def _ids(text: str | None) -> list[int]:
    return [int(s) for s in text.split(",")] if text else []


class LeaseBook:
    def __init__(self, *, lease_ttl: float):
        self.lease_ttl = lease_ttl
        self.queue = ChunkQueue()
        self._contents: dict[int, tuple[int, int, str]] = {}  # chunk id -> (bucket width, height, sample ids text)
        self.pools = ChunkPools()  # chunk ids per bucket: a chunk's position in its regularization pool
        self._reg: dict[str, list[int]] = {}  # active lease id -> its regularization sample ids (when it has any)
        self.reg_samples_done = 0  # regularization samples of counted reports

    # ------------------------------------------------------------------------------------------------ chunks

    def load(self, conn: sa.Connection, *, now: float) -> None:
        """Read every chunk and active lease (in the store's loading transaction); an active lease past its deadline,
        or a second one on the same chunk (only the newest holds it), is ended as expired."""
        for row in conn.execute(sa.select(db.chunks).order_by(db.chunks.c.id)):
            self._contents[row.id] = (row.bucket_width, row.bucket_height, row.sample_ids)
            self.queue.add_chunk(row.id, n_samples=row.n_samples, times_trained=row.times_trained)
            self.pools.add(row.id, (row.bucket_width, row.bucket_height))
        self.reg_samples_done = int(conn.execute(sa.select(sa.func.coalesce(sa.func.sum(db.leases.c.reg_samples), 0))
                                                 .where(db.leases.c.state == LeaseState.DONE.value)).scalar())
        expired = []
        active = conn.execute(sa.select(db.leases).where(db.leases.c.state == LeaseState.ACTIVE.value)
                              .order_by(db.leases.c.created.desc()))
        for row in active:
            slot = self.queue.chunks.get(row.chunk_id)
            if slot is None or slot.lease_id is not None or lease_expired(row.deadline, now=now):
                expired.append((LeaseState.EXPIRED.value, now, row.id))
            else:
                self.queue.hold(row.chunk_id, row.id, peer_id=row.peer_id, deadline=row.deadline)
                if row.reg_sample_ids:
                    self._reg[row.id] = _ids(row.reg_sample_ids)
        if expired:
            conn.exec_driver_sql(db.LEASE_END, expired)

    def next_chunk_id(self) -> int:
        return max(self.queue.chunks, default=0) + 1  # one writer process (flock), so ids cannot collide

    def add_chunk(self, chunk_id: int, *, bucket: Bucket, sample_ids: Sequence[int]) -> None:
        """A chunk just committed to the database joins the queue, untrained."""
        self._contents[chunk_id] = (bucket[0], bucket[1], _ids_text(sample_ids))
        self.queue.add_chunk(chunk_id, n_samples=len(sample_ids))
        self.pools.add(chunk_id, bucket)

    def contents(self, chunk_id: int) -> tuple[Bucket, list[int]]:
        """A chunk's (bucket width, height) and sample ids."""
        width, height, sample_ids = self._contents[chunk_id]
        return (width, height), _ids(sample_ids)

    def reg_sample_ids(self, lease_id: str) -> list[int]:
        """The regularization samples of an active lease (none when it has none or is not active)."""
        return self._reg.get(lease_id, [])

    # ------------------------------------------------------------------------------------------------ leases

    def is_active(self, lease_id: str) -> bool:
        return self.queue.lease_chunk(lease_id) is not None

    def owned(self, peer_id: str, lease_ids: Sequence[str] = ()) -> list[str]:
        """Of `lease_ids` (none: every lease), the active ones `peer_id` holds."""
        if not lease_ids:
            return self.queue.peer_leases(peer_id)
        return [lid for lid in lease_ids
                if (slot := self.queue.lease_chunk(lid)) is not None and slot.peer_id == peer_id]

    def expire_due(self, tx: Transaction, *, now: float) -> list[str]:
        """End every lease past its deadline in `tx`, and free its chunk in memory at once: by the rules the lease is
        over whatever its stored state says, and the next start treats an "active" row past its deadline as expired
        too, so this is right even if `tx` fails. Expired chunks are then offered again at once."""
        due = [lease_id for lease_id, _ in self.queue.due_expired(now=now)]
        if due:
            tx.executemany(db.LEASE_END, [(LeaseState.EXPIRED.value, now, lid) for lid in due])
        self._free(due, trained=False)
        return due

    def grant(self, tx: Transaction, peer_id: str, count: int, *, now: float, max_data_epochs: int,
              reg_for: RegFor | None = None) -> list[Grant]:
        """Lease up to `count` chunks to `peer_id`: least-trained first; what is free, possibly nothing. With
        `reg_for`, each lease also carries the regularization samples it names."""
        self.expire_due(tx, now=now)
        deadline = now + self.lease_ttl
        grants = [self._grant(cid, deadline, reg_for)
                  for cid in self.queue.peek_free(count, max_data_epochs=max_data_epochs)]
        if grants:
            tx.executemany(db.LEASE_INSERT, [(g.lease_id, g.chunk_id, peer_id, now, deadline, g.times_trained,
                                              _ids_text(g.reg_sample_ids), len(g.reg_sample_ids)) for g in grants])

        def hold() -> None:
            for grant in grants:
                self.queue.hold(grant.chunk_id, grant.lease_id, peer_id=peer_id, deadline=deadline)
                if grant.reg_sample_ids:
                    self._reg[grant.lease_id] = grant.reg_sample_ids
        tx.on_commit(hold)
        return grants

    def _grant(self, chunk_id: int, deadline: float, reg_for: RegFor | None) -> Grant:
        (width, height), sample_ids = self.contents(chunk_id)
        times_trained = self.queue.chunks[chunk_id].times_trained
        reg = reg_for(chunk_id, (width, height), len(sample_ids), times_trained) if reg_for is not None else []
        return Grant(lease_id=str(uuid.uuid4()), chunk_id=chunk_id, sample_ids=sample_ids, deadline=deadline,
                     times_trained=times_trained, bucket_width=width, bucket_height=height, reg_sample_ids=reg)

    def extend(self, tx: Transaction, peer_id: str, lease_ids: Sequence[str], *, now: float
               ) -> list[tuple[str, bool, float]]:
        """A heartbeat: extend the peer's valid leases; (lease id, valid, deadline) for each asked."""
        states, extensions = [], []
        for lease_id in lease_ids:
            slot = self.queue.lease_chunk(lease_id)
            deadline = None
            if slot is not None and slot.peer_id == peer_id:
                deadline = extended_deadline(slot.deadline, now=now, ttl=self.lease_ttl)
            if deadline is None:
                states.append((lease_id, False, 0.0))
            else:
                states.append((lease_id, True, deadline))
                extensions.append((deadline, lease_id))
        if extensions:
            tx.executemany(db.LEASE_EXTEND, extensions)

        def apply() -> None:
            for deadline, lease_id in extensions:
                self.queue.extend(lease_id, deadline=deadline)
        tx.on_commit(apply)
        return states

    def report_active(self, tx: Transaction, peer_id: str, lease_id: str, *, now: float) -> ReportResult:
        """Report an active lease trained: counted once, unless it expired first."""
        slot = self.queue.lease_chunk(lease_id)
        if slot.peer_id != peer_id:
            raise NotLeaseOwner(f"lease {lease_id} belongs to another peer")
        outcome = report_outcome(lease_state=LeaseState.ACTIVE, lease_deadline=slot.deadline, now=now,
                                 lease_is_current=True)
        counted = outcome is Outcome.COUNTED
        ended = tx.execute(db.LEASE_END, ((LeaseState.DONE if counted else LeaseState.EXPIRED).value, now, lease_id))
        if ended.rowcount != 1:  # memory and database disagree: refuse rather than count blindly
            raise RuntimeError(f"lease {lease_id} is active in memory but not in the database")
        if counted:
            tx.execute(db.CHUNK_TRAINED, (slot.chunk_id,))
        reg = len(self._reg.get(lease_id, ())) if counted else 0

        def apply() -> None:
            self.reg_samples_done += reg
            self._free([lease_id], trained=counted)
        tx.on_commit(apply)
        if counted:
            return ReportResult(outcome, slot.n_samples, f"chunk {slot.chunk_id} counted", reg_samples_counted=reg)
        return ReportResult(outcome, 0, f"lease {lease_id} expired before the report: not counted")

    def report_ended(self, raw, peer_id: str, lease_id: str, *, now: float) -> ReportResult:
        """Report a lease that is not active (finished, or unknown): looked up in the database, never counted."""
        row = raw.execute(db.LEASE_LOOKUP, (lease_id,)).fetchone()  # autocommit read, no transaction
        if row is None:
            raise LeaseNotFound(f"lease {lease_id} does not exist: report the lease_id LeaseChunks returned")
        owner, state, deadline, chunk_id = row
        if owner != peer_id:
            raise NotLeaseOwner(f"lease {lease_id} belongs to another peer")
        outcome = report_outcome(lease_state=LeaseState(state), lease_deadline=deadline, now=now,
                                 lease_is_current=False)
        message = (f"lease {lease_id} was already reported; chunk {chunk_id} counted once"
                   if outcome is Outcome.DUPLICATE else
                   f"lease {lease_id} is {state}: chunk {chunk_id} was (or will be) counted for another lease")
        return ReportResult(outcome, 0, message)

    def release(self, tx: Transaction, lease_ids: Sequence[str], *, now: float) -> None:
        """Give active leases back at once (a graceful stop); their chunks are queued again."""
        if lease_ids:
            tx.executemany(db.LEASE_END, [(LeaseState.RELEASED.value, now, lid) for lid in lease_ids])
            tx.on_commit(lambda: self._free(lease_ids, trained=False))

    def _free(self, lease_ids: Iterable[str], *, trained: bool) -> list[ChunkSlot]:
        slots = []
        for lease_id in lease_ids:
            slots.append(self.queue.free(lease_id, trained=trained))
            self._reg.pop(lease_id, None)
        return slots
