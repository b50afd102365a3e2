"""The one database connection every part of the store shares, with its lock and its two kinds of transaction.

One process owns a database (an flock on DB.lock): two coordinators on one file would each trust their own memory
and could lease a chunk twice. Inside the process one re-entrant lock serialises every part, so an operation that
spans parts (a report ends a lease and credits a peer) holds it across all of them.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
from typing import Callable, Iterator

import sqlalchemy as sa

from swarm_coordinator import db
from swarm_coordinator.errors import DatabaseInUse


def lock_database(db_path: str):
    """Take the database's owner lock (DB.lock, which says who holds it); DatabaseInUse if another process does."""
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


class Transaction:
    """An open write transaction on the DBAPI connection. Memory changes registered with `on_commit` run only after
    COMMIT returned, so a failed write leaves memory as it was."""

    def __init__(self, raw: sqlite3.Connection):
        self.raw = raw
        self._after_commit: list[Callable[[], object]] = []

    def execute(self, sql: str, params=()) -> sqlite3.Cursor:
        return self.raw.execute(sql, params)

    def executemany(self, sql: str, rows) -> sqlite3.Cursor:
        return self.raw.executemany(sql, rows)

    def on_commit(self, apply: Callable[[], object]) -> None:
        self._after_commit.append(apply)


class StoreConnection:
    """The engine, one SQLAlchemy connection and its DBAPI connection (for the hot path), and the store's lock."""

    def __init__(self, engine: sa.Engine, *, lock_file=None):
        self.engine = engine
        self.lock = threading.RLock()
        self.conn = engine.connect()
        self.raw: sqlite3.Connection = self.conn.connection.driver_connection  # same connection, no SQLAlchemy
        self._lock_file = lock_file

    @classmethod
    def open(cls, db_path: str, *, synchronous: str = "normal") -> "StoreConnection":
        lock_file = lock_database(db_path)
        try:
            return cls(db.open_engine(db_path, synchronous=synchronous), lock_file=lock_file)
        except BaseException:
            lock_file.close()
            raise

    @property
    def closed(self) -> bool:
        return self.conn.closed

    def close(self) -> None:
        with self.lock:
            self.conn.close()
            self.engine.dispose()
            if self._lock_file is not None:
                self._lock_file.close()
                self._lock_file = None

    @contextlib.contextmanager
    def write(self) -> Iterator[Transaction]:
        """BEGIN IMMEDIATE ... COMMIT on the DBAPI connection (rolled back on any error), then the on_commit
        changes; the hot path (lease, heartbeat, report, release) writes through this."""
        with self.lock:
            raw = self.raw
            raw.execute("BEGIN IMMEDIATE")
            tx = Transaction(raw)
            try:
                yield tx
                raw.execute("COMMIT")
            except BaseException:
                if raw.in_transaction:
                    raw.execute("ROLLBACK")
                raise
            for apply in tx._after_commit:
                apply()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        """A SQLAlchemy transaction (BEGIN IMMEDIATE too, see db.make_engine) for the colder paths: loading, config
        versions, synced chunks, registrations. The caller applies its memory change after the block."""
        with self.lock, self.conn.begin():
            yield self.conn
