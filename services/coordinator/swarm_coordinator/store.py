"""The coordinator's state: SQLite is the truth, memory is the index that makes each RPC a few dict operations.

Every change follows one pattern under one lock: decide with the pure rules on the in-memory view, write the
decision in one database transaction, and only after COMMIT returned apply it to memory. A failed write leaves
memory as it was; a SIGKILL between commit and apply loses nothing, since memory is rebuilt from the database at the
next start. One process owns a database (an flock on DB.lock): two coordinators on one file would each trust their
own memory and could lease a chunk twice.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import sqlalchemy as sa

from swarm.runconfig import RunConfig
from swarm_coordinator import configs, db
from swarm_coordinator.errors import (  # noqa: F401 (re-exported: callers import them from here)
    ConfigNotFound, DatabaseInUse, LeaseNotFound, NotLeaseOwner, PeerNotRegistered, PeerOfAnotherToken, StoreError,
    UnknownConfigVersion)
from swarm_coordinator.intake import IntakeMixin
from swarm_coordinator.peers import PeerRecord, PeerTable
from swarm_coordinator.progress import ProgressSnapshot, current_lr, lr_total_steps
from swarm_coordinator.queue import ChunkQueue
from swarm_coordinator.rules import (LeaseState, Outcome, SwarmEpochs, extended_deadline, lease_expired, may_act_for,
                                     may_register, report_outcome)


@dataclass(frozen=True)
class Grant:
    lease_id: str
    chunk_id: int
    sample_ids: list[int]
    deadline: float
    times_trained: int
    bucket_width: int
    bucket_height: int


@dataclass(frozen=True)
class ReportResult:
    outcome: Outcome
    samples_counted: int
    message: str


def _lock_database(db_path: str):
    lock_file = open(f"{db_path}.lock", "a+")
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.seek(0)
        owner = lock_file.read().strip() or "another process"
        lock_file.close()
        raise DatabaseInUse(f"{db_path} is in use by another coordinator ({owner}); stop it first, or use another "
                            f"--db") from None
    lock_file.truncate(0)
    lock_file.write(f"pid {os.getpid()}")
    lock_file.flush()
    return lock_file


class Store(IntakeMixin):
    def __init__(self, engine: sa.Engine, *, clock: Callable[[], float] = time.time, lease_ttl: float = 1200.0,
                 peer_ttl: float = 120.0, lock_file=None):
        self.engine, self.clock, self.lease_ttl = engine, clock, lease_ttl
        self.peers = PeerTable(peer_ttl=peer_ttl)
        self.queue = ChunkQueue()
        self._lock = threading.RLock()
        self._lock_file = lock_file
        self._conn = engine.connect()
        self._raw = self._conn.connection.driver_connection  # the same sqlite3 connection, for the hot path
        self._chunk_info: dict[int, tuple[int, int, str]] = {}  # id -> (bucket width, height, sample ids text)
        self._pending: dict[tuple[int, int], list[int]] = {}
        self._sync_cursor = 0
        self._versions: dict[int, configs.ConfigVersion] = {}
        self.config: configs.ConfigVersion | None = None
        self._load()

    @classmethod
    def open(cls, db_path: str, *, clock: Callable[[], float] = time.time, lease_ttl: float = 1200.0,
             peer_ttl: float = 120.0, synchronous: str = "normal") -> "Store":
        lock_file = _lock_database(db_path)
        try:
            engine = db.open_engine(db_path, synchronous=synchronous)
            return cls(engine, clock=clock, lease_ttl=lease_ttl, peer_ttl=peer_ttl, lock_file=lock_file)
        except BaseException:
            lock_file.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            self.engine.dispose()
            if self._lock_file is not None:
                self._lock_file.close()
                self._lock_file = None

    @contextlib.contextmanager
    def _write(self):
        """One write transaction on the DBAPI connection: BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""
        raw = self._raw
        raw.execute("BEGIN IMMEDIATE")
        try:
            yield raw
            raw.execute("COMMIT")
        except BaseException:
            if raw.in_transaction:
                raw.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------------------------------------------ loading

    def _load(self) -> None:
        now = self.clock()
        with self._lock, self._conn.begin():
            for row in self._conn.execute(sa.select(db.chunks).order_by(db.chunks.c.id)):
                self._chunk_info[row.id] = (row.bucket_width, row.bucket_height, row.sample_ids)
                self.queue.add_chunk(row.id, n_samples=row.n_samples, times_trained=row.times_trained)
            expired = []
            active = self._conn.execute(sa.select(db.leases).where(db.leases.c.state == LeaseState.ACTIVE.value)
                                        .order_by(db.leases.c.created.desc()))
            for row in active:
                slot = self.queue.chunks.get(row.chunk_id)
                if slot is None or slot.lease_id is not None or lease_expired(row.deadline, now=now):
                    expired.append((LeaseState.EXPIRED.value, now, row.id))
                else:
                    self.queue.hold(row.chunk_id, row.id, peer_id=row.peer_id, deadline=row.deadline)
            if expired:
                self._conn.exec_driver_sql(db.LEASE_END, expired)
            for row in self._conn.execute(sa.select(db.peers)):
                self.peers.load(row)
            for row in self._conn.execute(sa.select(db.pending_samples).order_by(db.pending_samples.c.sample_id)):
                self._pending.setdefault((row.bucket_width, row.bucket_height), []).append(row.sample_id)
            self._sync_cursor = int(db.get_meta(self._conn, "sync_after_id") or 0)
            self.config = configs.latest(self._conn)
            if self.config:
                self._versions[self.config.version] = self.config

    # ------------------------------------------------------------------------------------------------ leases

    def _require_peer(self, peer_id: str, caller: str | None) -> PeerRecord:
        peer = self.peers.get(peer_id)
        if peer is None:
            raise PeerNotRegistered(f"peer {peer_id} is not registered: call RegisterPeer first")
        if not may_act_for(owner=peer.owner, caller=caller):
            raise PeerOfAnotherToken(f"peer {peer_id} was registered with another join token: use your own peer id")
        return peer

    def _expire_due(self, now: float) -> list[str]:
        """Leases past their deadline, ended in the open transaction (applied to memory by the caller)."""
        due = [lease_id for lease_id, _ in self.queue.due_expired(now=now)]
        if due:
            self._raw.executemany(db.LEASE_END, [(LeaseState.EXPIRED.value, now, lid) for lid in due])
        return due

    def _free_all(self, lease_ids: Iterable[str]) -> None:
        for lease_id in lease_ids:
            self.queue.free(lease_id, trained=False)

    def lease(self, peer_id: str, count: int, *, caller: str | None = None) -> list[Grant]:
        """Lease up to `count` chunks to a registered peer: least-trained first; what is free, possibly nothing."""
        with self._lock:
            self._require_peer(peer_id, caller).last_seen = now = self.clock()
            with self._write() as raw:
                # Freed before picking so expired chunks are offered again at once. Freeing an expired lease in
                # memory is right even if this transaction fails: by the rules it is over whatever its stored state
                # says, and the next start treats an "active" row past its deadline as expired too.
                self._free_all(self._expire_due(now))
                picked = self.queue.peek_free(count, max_data_epochs=self.max_data_epochs)
                deadline = now + self.lease_ttl
                grants = [self._grant(cid, deadline) for cid in picked]
                if grants:
                    raw.executemany(db.LEASE_INSERT, [(g.lease_id, g.chunk_id, peer_id, now, deadline,
                                                       g.times_trained) for g in grants])
            for grant in grants:
                self.queue.hold(grant.chunk_id, grant.lease_id, peer_id=peer_id, deadline=deadline)
            return grants

    def _grant(self, chunk_id: int, deadline: float) -> Grant:
        width, height, sample_ids = self._chunk_info[chunk_id]
        return Grant(lease_id=str(uuid.uuid4()), chunk_id=chunk_id, sample_ids=[int(s) for s in sample_ids.split(",")],
                     deadline=deadline, times_trained=self.queue.chunks[chunk_id].times_trained,
                     bucket_width=width, bucket_height=height)

    def heartbeat(self, peer_id: str, lease_ids: Sequence[str], *, global_epoch: int = 0, loss: float | None = None,
                  samples_per_s: float = 0.0, finished: bool = False, caller: str | None = None
                  ) -> list[tuple[str, bool, float]]:
        """Record the peer alive and extend its valid leases; returns (lease id, valid, deadline) for each asked."""
        with self._lock:
            peer = self._require_peer(peer_id, caller)
            now = self.clock()
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
            with self._write() as raw:
                raw.execute(db.PEER_HEARTBEAT, (now, global_epoch, loss, samples_per_s, finished, peer_id))
                if extensions:
                    raw.executemany(db.LEASE_EXTEND, extensions)
            for deadline, lease_id in extensions:
                self.queue.extend(lease_id, deadline=deadline)
            self.peers.heartbeat(peer, now=now, global_epoch=global_epoch, loss=loss, samples_per_s=samples_per_s,
                                 finished=finished)
            return states

    def report(self, peer_id: str, lease_id: str, *, caller: str | None = None) -> ReportResult:
        """A peer reports its leased chunk trained: counted once, and only while the lease is the chunk's valid one."""
        with self._lock:
            peer = self._require_peer(peer_id, caller)
            peer.last_seen = now = self.clock()
            slot = self.queue.lease_chunk(lease_id)
            if slot is not None:
                if slot.peer_id != peer_id:
                    raise NotLeaseOwner(f"lease {lease_id} belongs to another peer")
                outcome = report_outcome(lease_state=LeaseState.ACTIVE, lease_deadline=slot.deadline, now=now,
                                         lease_is_current=True)
                state = LeaseState.DONE if outcome is Outcome.COUNTED else LeaseState.EXPIRED
                n_samples = slot.n_samples
                with self._write() as raw:
                    ended = raw.execute(db.LEASE_END, (state.value, now, lease_id))
                    if ended.rowcount != 1:  # memory and database disagree: refuse rather than count blindly
                        raise RuntimeError(f"lease {lease_id} is active in memory but not in the database")
                    if outcome is Outcome.COUNTED:
                        raw.execute(db.CHUNK_TRAINED, (slot.chunk_id,))
                        raw.execute(db.PEER_CONTRIBUTED, (n_samples, peer_id))
                self.queue.free(lease_id, trained=outcome is Outcome.COUNTED)
                if outcome is Outcome.COUNTED:
                    self.peers.contributed(peer, samples=n_samples)
                    return ReportResult(outcome, n_samples, f"chunk {slot.chunk_id} counted")
                return ReportResult(outcome, 0, f"lease {lease_id} expired before the report: not counted")
            # Not active: a finished lease (or none), looked up in the database (autocommit read, no transaction).
            row = self._raw.execute(db.LEASE_LOOKUP, (lease_id,)).fetchone()
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

    def release(self, peer_id: str, lease_ids: Sequence[str] = (), *, caller: str | None = None) -> int:
        """Give leases back at once (a graceful stop); no ids means every lease the peer holds."""
        with self._lock:
            self._require_peer(peer_id, caller)
            now = self.clock()
            if lease_ids:
                mine = [lid for lid in lease_ids
                        if (slot := self.queue.lease_chunk(lid)) is not None and slot.peer_id == peer_id]
            else:
                mine = self.queue.peer_leases(peer_id)
            if mine:
                with self._write() as raw:
                    raw.executemany(db.LEASE_END, [(LeaseState.RELEASED.value, now, lid) for lid in mine])
                self._free_all(mine)
            return len(mine)

    def reap(self) -> int:
        """End every lease past its deadline (the lease path also does this lazily)."""
        with self._lock:
            with self._write():
                due = self._expire_due(self.clock())
                self._free_all(due)
            return len(due)

    # ------------------------------------------------------------------------------------------------ peers

    def register(self, peer_id: str, *, name: str = "", multiaddrs: Sequence[str] = (), client_mode: bool = False,
                 batch_size: int = 0, caller: str | None = None) -> PeerRecord:
        """Add or update a peer; `caller` (its join token's hash) becomes its owner (rules.may_register)."""
        from sqlalchemy.dialects.sqlite import insert

        with self._lock:
            now = self.clock()
            known = self.peers.get(peer_id)
            if known is not None and not may_register(owner=known.owner, caller=caller, last_seen=known.last_seen,
                                                      now=now, peer_ttl=self.peers.peer_ttl):
                raise PeerOfAnotherToken(f"peer id {peer_id} is in use by a live peer registered with another join "
                                         f"token: use your own peer id")
            values = {"name": name, "multiaddrs": json.dumps(list(multiaddrs)), "client_mode": client_mode,
                      "batch_size": batch_size, "last_seen": now}
            if caller is not None:
                values["token_hash"] = caller
            stmt = insert(db.peers).values(peer_id=peer_id, first_seen=now, samples_contributed=0,
                                           chunks_contributed=0, global_epoch=0, finished=False,
                                           samples_per_s=0.0, **values)
            with self._conn.begin():
                self._conn.execute(stmt.on_conflict_do_update(index_elements=[db.peers.c.peer_id], set_=values))
            return self.peers.register(peer_id, now=now, name=name, multiaddrs=tuple(multiaddrs),
                                       client_mode=client_mode, batch_size=batch_size, owner=caller)

    # Reads of the in-memory tables take the lock too: handler threads run concurrently with writers, and iterating
    # a dict another thread is growing fails ("dictionary changed size during iteration").

    def run_complete(self) -> bool:
        with self._lock:
            return self.queue.run_complete(max_data_epochs=self.max_data_epochs)

    def epochs(self) -> SwarmEpochs:
        with self._lock:
            return self.peers.epochs(now=self.clock())

    def initial_peers(self, bootstrap: Sequence[str], *, exclude_peer_id: str | None = None) -> list[str]:
        with self._lock:
            return self.peers.initial_peers(list(bootstrap), now=self.clock(), exclude_peer_id=exclude_peer_id)

    def live_peers(self) -> list[PeerRecord]:
        with self._lock:
            return [dataclasses.replace(p) for p in self.peers.live(now=self.clock())]

    # ------------------------------------------------------------------------------------------------ progress

    def progress(self) -> ProgressSnapshot:
        with self._lock:
            now = self.clock()
            config = self.config.config if self.config else RunConfig()
            epochs = self.peers.epochs(now=now)
            states = self.queue.chunk_states(now=now, max_data_epochs=config.max_data_epochs)
            samples_total = self.queue.samples_total
            return ProgressSnapshot(
                samples_done=self.queue.samples_done, samples_total=samples_total,
                data_epochs_done=self.queue.data_epochs_done(), max_data_epochs=config.max_data_epochs,
                chunks_total=len(self.queue.chunks), chunks_queued=states["queued"], chunks_leased=states["leased"],
                chunks_done=states["done"], peers_alive=epochs.peers_alive, peers_training=epochs.peers_training,
                swarm_epoch=epochs.swarm_epoch, swarm_epoch_min=epochs.swarm_epoch_min,
                config_version=self.config.version if self.config else 0,
                run_complete=self.queue.run_complete(max_data_epochs=config.max_data_epochs),
                lr=current_lr(config, epoch=epochs.swarm_epoch, samples_total=samples_total),
                lr_total_steps=lr_total_steps(config, samples_total=samples_total),
                samples_pending=sum(len(ids) for ids in self._pending.values()),
                peers=[dataclasses.replace(p) for p in self.peers.all()],
                alive_peer_ids=frozenset(p.peer_id for p in self.peers.live(now=now)))
