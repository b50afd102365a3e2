"""The coordinator's state: SQLite is the truth, memory is the index that makes each RPC a few dict operations.

`Store` is composed of parts that each own their state and their tables:

| part | module | owns |
| --- | --- | --- |
| `connection` | connection.py | the database connection, its owner lock (DB.lock) and the one in-process lock |
| `configs` | config_versions.py | run config versions: the current one, older ones peers name, refresh |
| `leases` | leases.py | every chunk's contents and the lease queue: grant, extend, report, release, expire |
| `intake` | intake.py | samples synced from the dataset: sync cursor, pending samples, new chunks |
| `reg` | reg_pool.py | the regularization samples synced, by bucket, and which of them ride along with a lease |
| `peers` | peer_registry.py | the peer table and who may act for a peer |
| `history` | status_history.py | the status page's bounded history of the run |

Every change follows one pattern under the one lock: decide with the pure rules on the in-memory view, write the
decision in one database transaction, and only after COMMIT returned apply it to memory (Transaction.on_commit). A
failed write leaves memory as it was; a SIGKILL between commit and apply loses nothing, since memory is rebuilt from
the database at the next start. An operation that spans parts (a report ends a lease and credits its peer) is one
transaction here; parts never touch each other's state, only each other's methods.

A new part (say, admission credentials or a history of progress) gets its table in db.py, its module here with a
`load(conn)` and methods that write into a Transaction, and one line in `Store.__init__` and `Store._load`.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import sqlalchemy as sa

from swarm_coordinator import configs as config_rows
from swarm_coordinator import limits as limit_rules
from swarm_coordinator.errors import ConfigNotFound as ConfigNotFound  # re-exported: callers import them from here
from swarm_coordinator.errors import DatabaseInUse as DatabaseInUse
from swarm_coordinator.errors import LeaseNotFound as LeaseNotFound
from swarm_coordinator.errors import NotLeaseOwner as NotLeaseOwner
from swarm_coordinator.errors import PeerNotRegistered as PeerNotRegistered
from swarm_coordinator.errors import PeerOfAnotherToken as PeerOfAnotherToken
from swarm_coordinator.errors import StoreError as StoreError
from swarm_coordinator.errors import UnknownConfigVersion as UnknownConfigVersion
from swarm_coordinator.limits import Limits, ReportPace
from swarm_coordinator.peers import PeerRecord
from swarm_coordinator.progress import ProgressSnapshot, current_lr, lr_total_steps, planned_epochs
from swarm_coordinator.regularization import reg_ratio_problem
from swarm_coordinator.rules import Outcome, SwarmEpochs, lease_expired, unleased_samples
from swarm_coordinator.store.config_versions import ConfigVersions
from swarm_coordinator.store.connection import StoreConnection
from swarm_coordinator.store.intake import ChunkIntake
from swarm_coordinator.store.leases import Grant as Grant  # re-exported
from swarm_coordinator.store.leases import LeaseBook, ReportResult
from swarm_coordinator.store.peer_registry import PeerRegistry
from swarm_coordinator.store.reg_pool import RegPool
from swarm_coordinator.store.status_history import StatusHistory


class Store:
    def __init__(self, connection: StoreConnection, *, clock: Callable[[], float] = time.time,
                 lease_ttl: float = 1200.0, peer_ttl: float = 120.0, limits: Limits | None = None):
        self.connection, self.clock = connection, clock
        self.limits = limits or Limits()
        self.pace = ReportPace(self.limits)  # per-peer report budgets (monotonic time, not the store's clock)
        self.configs = ConfigVersions(connection, clock=clock)
        self.leases = LeaseBook(lease_ttl=lease_ttl)
        self.reg = RegPool()
        self.intake = ChunkIntake(connection, configs=self.configs, leases=self.leases, clock=clock, reg=self.reg)
        self.peers = PeerRegistry(connection, peer_ttl=peer_ttl, peers_per_token=self.limits.peers_per_token)
        self.history = StatusHistory(connection)
        self._lock = connection.lock
        self._load()

    @classmethod
    def open(cls, db_path: str, *, clock: Callable[[], float] = time.time, lease_ttl: float = 1200.0,
             peer_ttl: float = 120.0, synchronous: str = "normal", limits: Limits | None = None) -> "Store":
        connection = StoreConnection.open(db_path, synchronous=synchronous)
        try:
            return cls(connection, clock=clock, lease_ttl=lease_ttl, peer_ttl=peer_ttl, limits=limits)
        except BaseException:
            connection.close()
            raise

    def _load(self) -> None:
        with self.connection.transaction() as conn:
            self.leases.load(conn, now=self.clock())
            self.peers.load(conn)
            self.intake.load(conn)
            self.reg.load(conn)
            self.configs.load(conn)
            self.history.load(conn)

    def close(self) -> None:
        self.connection.close()

    @property
    def engine(self) -> sa.Engine:
        return self.connection.engine

    @property
    def queue(self):
        return self.leases.queue

    @property
    def lease_ttl(self) -> float:
        return self.leases.lease_ttl

    # ------------------------------------------------------------------------------------------------ config

    @property
    def config(self) -> config_rows.ConfigVersion | None:
        return self.configs.current

    @property
    def max_data_epochs(self) -> int:
        return self.configs.config.max_data_epochs

    def ensure_config(self, config, *, run_id: str,
                      source_digest: str | None = None) -> tuple[config_rows.ConfigVersion, bool]:
        return self.configs.ensure(config, run_id=run_id, source_digest=source_digest)

    def refresh_config(self) -> bool:
        return self.configs.refresh()

    def get_config(self, version: int = 0) -> config_rows.ConfigVersion | None:
        return self.configs.get(version)

    def check_config_version(self, version: int) -> None:
        self.configs.check(version)

    # ------------------------------------------------------------------------------------------------ intake

    @property
    def sync_cursor(self) -> int:
        return self.intake.sync_cursor

    def add_samples(self, samples: Sequence[tuple[int, int, int]], *, flush: bool,
                    reg_samples: Sequence[tuple[int, int, int]] = ()) -> list[int]:
        return self.intake.add_samples(samples, flush=flush, reg_samples=reg_samples)

    def reg_problem(self) -> str | None:
        """Why no chunk can be leased for want of regularization samples (None: nothing is missing)."""
        with self._lock:
            return reg_ratio_problem(self.configs.config.reg_ratio, reg_samples=self.reg.total)

    def add_chunks(self, chunks) -> list[int]:
        return self.intake.add_chunks(chunks)

    # ------------------------------------------------------------------------------------------------ leases

    def lease(self, peer_id: str, count: int, *, caller: str | None = None) -> list[Grant]:
        """Lease up to `count` chunks to a registered peer: least-trained first; what is free, possibly nothing.

        With reg_ratio > 0 each lease carries its regularization samples; while none are synced nothing is leased
        (a run never trains without the prior its config asks for; the dataset sync logs why)."""
        with self._lock:
            self.peers.require(peer_id, caller).last_seen = now = self.clock()
            count = limit_rules.leases_allowed(held=len(self.leases.owned(peer_id)), asked=count,
                                               limit=self.limits.leases_per_peer)
            config = self.configs.config
            if reg_ratio_problem(config.reg_ratio, reg_samples=self.reg.total):
                count = 0

            def reg_for(chunk_id, bucket, n_train, times_trained):
                return self.reg.for_lease(self.leases.pools, chunk_id, bucket, n_train, times_trained,
                                          reg_ratio=config.reg_ratio, chunk_size=config.chunk_size)
            with self.connection.write() as tx:
                return self.leases.grant(tx, peer_id, count, now=now, max_data_epochs=self.max_data_epochs,
                                         reg_for=reg_for if config.reg_ratio > 0 else None)

    def heartbeat(self, peer_id: str, lease_ids: Sequence[str], *, global_epoch: int = 0, loss: float | None = None,
                  samples_per_s: float = 0.0, finished: bool = False, caller: str | None = None
                  ) -> list[tuple[str, bool, float]]:
        """Record the peer alive and extend its valid leases; returns (lease id, valid, deadline) for each asked."""
        with self._lock:
            peer = self.peers.require(peer_id, caller)
            now = self.clock()
            limit_rules.check_epoch(global_epoch, bound=limit_rules.max_plausible_epoch(
                planned_epochs=planned_epochs(self.configs.config, samples_total=self.queue.samples_total),
                swarm_epoch=self.peers.table.epochs(now=now).swarm_epoch, slack=self.limits.epoch_slack))
            with self.connection.write() as tx:
                self.peers.heartbeat(tx, peer, now=now, global_epoch=global_epoch, loss=loss,
                                     samples_per_s=samples_per_s, finished=finished)
                return self.leases.extend(tx, peer_id, lease_ids, now=now)

    def report(self, peer_id: str, lease_id: str, *, caller: str | None = None) -> ReportResult:
        """A peer reports its leased chunk trained: counted once, and only while the lease is the chunk's valid one."""
        with self._lock:
            peer = self.peers.require(peer_id, caller)
            peer.last_seen = now = self.clock()
            if not self.leases.is_active(lease_id):
                return self.leases.report_ended(self.connection.raw, peer_id, lease_id, now=now)
            slot = self.queue.lease_chunk(lease_id)
            charged = slot.n_samples if slot.peer_id == peer_id else 0
            if charged:
                self.pace.spend(peer_id, charged, measured_samples_per_s=peer.samples_per_s)
            try:
                with self.connection.write() as tx:
                    result = self.leases.report_active(tx, peer_id, lease_id, now=now)
                    if result.outcome is Outcome.COUNTED:
                        # Every sample it trained, regularization ones too: what its averaging weight may claim.
                        self.peers.credit(tx, peer, samples=result.samples_counted + result.reg_samples_counted)
            except BaseException:
                self.pace.refund(peer_id, charged)
                raise
            if result.outcome is not Outcome.COUNTED:
                self.pace.refund(peer_id, charged)
            return result

    def release(self, peer_id: str, lease_ids: Sequence[str] = (), *, caller: str | None = None) -> int:
        """Give leases back at once (a graceful stop); no ids means every lease the peer holds."""
        with self._lock:
            self.peers.require(peer_id, caller)
            mine = self.leases.owned(peer_id, lease_ids)
            if mine:
                with self.connection.write() as tx:
                    self.leases.release(tx, mine, now=self.clock())
            return len(mine)

    def unleased_samples(self, sample_ids: Sequence[int], *, caller: str | None) -> list[int]:
        """Of `sample_ids`, those no active, unexpired lease of a live peer registered by `caller` (its join token's
        hash) contains: what that token may not stream (rules.unleased_samples)."""
        with self._lock:
            now = self.clock()
            mine = {p.peer_id for p in self.peers.table.live(now=now) if caller is not None and p.owner == caller}
            held = [(lease_id, slot.chunk_id) for lease_id, slot in
                    ((lid, self.queue.chunks[cid]) for lid, cid in self.queue.leases.items())
                    if slot.peer_id in mine and not lease_expired(slot.deadline, now=now)]
            leased = [ids for lease_id, chunk_id in held  # a lease's chunk, and its regularization samples
                      for ids in (self.leases.contents(chunk_id)[1], self.leases.reg_sample_ids(lease_id))]
            return unleased_samples(sample_ids, leased)

    def samples_leased(self) -> dict[str, int]:
        """Samples in each peer's active, unexpired leases (regularization samples riding along included): with its
        credited samples, the most weight its averaging claims may add up to (swarm.trust.budget)."""
        with self._lock:
            now = self.clock()
            out: dict[str, int] = {}
            for lease_id, chunk_id in self.queue.leases.items():
                slot = self.queue.chunks[chunk_id]
                if slot.peer_id is not None and not lease_expired(slot.deadline, now=now):
                    riding = len(self.leases.reg_sample_ids(lease_id))
                    out[slot.peer_id] = out.get(slot.peer_id, 0) + slot.n_samples + riding
            return out

    def reap(self) -> int:
        """End every lease past its deadline (the lease path also does this lazily)."""
        with self.connection.write() as tx:
            return len(self.leases.expire_due(tx, now=self.clock()))

    # ------------------------------------------------------------------------------------------------ peers

    def register(self, peer_id: str, *, name: str = "", multiaddrs: Sequence[str] = (), client_mode: bool = False,
                 batch_size: int = 0, caller: str | None = None) -> PeerRecord:
        """Add or update a peer; `caller` (its join token's hash) becomes its owner (rules.may_register)."""
        with self._lock:
            return self.peers.register(peer_id, now=self.clock(), name=name, multiaddrs=multiaddrs,
                                       client_mode=client_mode, batch_size=batch_size, caller=caller)

    # Reads of the in-memory tables take the lock too: handler threads run concurrently with writers, and iterating
    # a dict another thread is growing fails ("dictionary changed size during iteration").

    def run_complete(self) -> bool:
        with self._lock:
            return self.queue.run_complete(max_data_epochs=self.max_data_epochs)

    def epochs(self) -> SwarmEpochs:
        with self._lock:
            return self.peers.table.epochs(now=self.clock())

    def initial_peers(self, bootstrap: Sequence[str], *, exclude_peer_id: str | None = None) -> list[str]:
        with self._lock:
            return self.peers.table.initial_peers(list(bootstrap), now=self.clock(), exclude_peer_id=exclude_peer_id)

    def live_peers(self) -> list[PeerRecord]:
        with self._lock:
            return [dataclasses.replace(p) for p in self.peers.table.live(now=self.clock())]

    # ------------------------------------------------------------------------------------------------ progress

    def progress(self) -> ProgressSnapshot:
        with self._lock:
            now = self.clock()
            version, config, queue = self.configs.current, self.configs.config, self.queue
            epochs = self.peers.table.epochs(now=now)
            states = queue.chunk_states(now=now, max_data_epochs=config.max_data_epochs)
            samples_total = queue.samples_total
            return ProgressSnapshot(
                samples_done=queue.samples_done, samples_total=samples_total,
                data_epochs_done=queue.data_epochs_done(), max_data_epochs=config.max_data_epochs,
                chunks_total=len(queue.chunks), chunks_queued=states["queued"], chunks_leased=states["leased"],
                chunks_done=states["done"], peers_alive=epochs.peers_alive, peers_training=epochs.peers_training,
                swarm_epoch=epochs.swarm_epoch, swarm_epoch_min=epochs.swarm_epoch_min,
                config_version=version.version if version else 0,
                run_complete=queue.run_complete(max_data_epochs=config.max_data_epochs),
                lr=current_lr(config, epoch=epochs.swarm_epoch, samples_total=samples_total),
                lr_total_steps=lr_total_steps(config, samples_total=samples_total),
                samples_pending=self.intake.samples_pending,
                reg_samples_done=self.leases.reg_samples_done, reg_samples_total=self.reg.total,
                peers=[dataclasses.replace(p) for p in self.peers.table.all()],
                alive_peer_ids=frozenset(p.peer_id for p in self.peers.table.live(now=now)))
