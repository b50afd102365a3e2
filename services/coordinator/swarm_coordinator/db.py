"""The coordinator's SQLite schema (SQLAlchemy 2 Core) and how its connections are set up.

Durability: WAL journal with synchronous=NORMAL. A commit appends the transaction to the WAL with write(2) before
it returns, so once the coordinator has answered an RPC, the change lives in the OS page cache and survives a
SIGKILL of the process at any moment: no acknowledged report is lost and no lease is forgotten. What NORMAL gives up
(against FULL, which fsyncs every commit) is only the last few commits on an OS crash or power loss; the database
stays consistent even then, and the effect is bounded: a COUNTED report rolled back leaves its lease active, the
lease expires and the chunk is trained once more and counted once. Never twice. Hosts that want power-loss
durability too pass `--sqlite-synchronous full` (an fsync per commit: slower on real disks).

Writers use BEGIN IMMEDIATE so a transaction takes the write lock up front: with deferred transactions, a read that
later turns into a write can fail with "database is locked" when `swarm token create` or `swarm config set` (other
processes) write at the same time; immediate ones simply wait their turn (busy timeout).
"""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import sqlalchemy as sa

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 30.0
SYNCHRONOUS_MODES = ("normal", "full")

metadata = sa.MetaData()

config_versions = sa.Table(
    "config_versions", metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("config_json", sa.Text, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
)

chunks = sa.Table(
    "chunks", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("bucket_width", sa.Integer, nullable=False),
    sa.Column("bucket_height", sa.Integer, nullable=False),
    sa.Column("sample_ids", sa.Text, nullable=False),  # comma-separated dataset sample ids, in order
    sa.Column("n_samples", sa.Integer, nullable=False),
    sa.Column("times_trained", sa.Integer, nullable=False, default=0),
    sa.Column("created", sa.Float, nullable=False),
)

leases = sa.Table(
    "leases", metadata,
    sa.Column("id", sa.String(36), primary_key=True),  # uuid4
    sa.Column("chunk_id", sa.Integer, sa.ForeignKey("chunks.id"), nullable=False),
    sa.Column("peer_id", sa.String(128), nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("deadline", sa.Float, nullable=False),
    sa.Column("state", sa.String(10), nullable=False),  # rules.LeaseState
    sa.Column("times_trained", sa.Integer, nullable=False),  # the chunk's count when leased (its data epoch)
    sa.Column("ended", sa.Float, nullable=True),
    # Regularization samples riding along (regularization.py): comma-separated ids, and how many.
    sa.Column("reg_sample_ids", sa.Text, nullable=False, server_default=""),
    sa.Column("reg_samples", sa.Integer, nullable=False, server_default="0"),
    sa.Index("ix_leases_state", "state"),
    sa.Index("ix_leases_chunk_state", "chunk_id", "state"),
)

peers = sa.Table(
    "peers", metadata,
    sa.Column("peer_id", sa.String(128), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False, default=""),
    sa.Column("multiaddrs", sa.Text, nullable=False, default="[]"),  # JSON list
    sa.Column("client_mode", sa.Boolean, nullable=False, default=False),
    sa.Column("batch_size", sa.Integer, nullable=False, default=0),
    sa.Column("first_seen", sa.Float, nullable=False),
    sa.Column("last_seen", sa.Float, nullable=False),
    sa.Column("samples_contributed", sa.Integer, nullable=False, default=0),
    sa.Column("chunks_contributed", sa.Integer, nullable=False, default=0),
    sa.Column("global_epoch", sa.Integer, nullable=False, default=0),
    sa.Column("finished", sa.Boolean, nullable=False, default=False),
    sa.Column("loss", sa.Float, nullable=True),
    sa.Column("samples_per_s", sa.Float, nullable=False, default=0.0),
    sa.Column("token_hash", sa.String(64), nullable=True),  # the join token that registered it (its sha256)
)

tokens = sa.Table(
    "tokens", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),  # sha256 hex: the token itself is never kept
    sa.Column("prefix", sa.String(16), nullable=False),  # first characters, to tell tokens apart in `token list`
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("revoked", sa.Float, nullable=True),
)

# Dataset samples synced but not cut into a chunk yet (their bucket is waiting for more samples).
pending_samples = sa.Table(
    "pending_samples", metadata,
    sa.Column("sample_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("bucket_width", sa.Integer, nullable=False),
    sa.Column("bucket_height", sa.Integer, nullable=False),
)

# Regularization (class) samples synced from the dataset: not cut into chunks, they ride along with leases.
reg_samples = sa.Table(
    "reg_samples", metadata,
    sa.Column("sample_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("bucket_width", sa.Integer, nullable=False),
    sa.Column("bucket_height", sa.Integer, nullable=False),
)

# The status page's history of the run (swarm_coordinator.statuspage.history: bounded, downsampled as it ages).
status_history = sa.Table(
    "status_history", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("t", sa.Float, nullable=False),  # unix seconds of the newest raw sample the row stands for
    sa.Column("n", sa.Integer, nullable=False),  # raw samples merged into the row
    sa.Column("samples_done", sa.Integer, nullable=False),
    sa.Column("global_epoch", sa.Integer, nullable=False),
    sa.Column("peers_online", sa.Integer, nullable=False),
    sa.Column("samples_per_s", sa.Float, nullable=False),
    sa.Column("loss", sa.Float, nullable=True),
    sa.Index("ix_status_history_t", "t"),
)

meta = sa.Table(
    "meta", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)


def _on_connect(synchronous: str):
    def configure(dbapi_conn: sqlite3.Connection, _record) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy's "begin" event below issues BEGIN itself
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    return configure


def make_engine(db_path: str | os.PathLike, *, immediate: bool = True, synchronous: str = "normal") -> sa.Engine:
    """An engine on the database file; `immediate` makes every transaction take the write lock at BEGIN."""
    if synchronous not in SYNCHRONOUS_MODES:
        raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}, got {synchronous!r}")
    Path(db_path).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(f"sqlite:///{os.fspath(db_path)}",
                              connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False})
    sa.event.listen(engine, "connect", _on_connect(synchronous))
    begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"
    sa.event.listen(engine, "begin", lambda conn: conn.exec_driver_sql(begin))
    return engine


def create_schema(engine: sa.Engine) -> None:
    metadata.create_all(engine)
    with engine.begin() as conn:
        columns = {row[1] for row in conn.exec_driver_sql("PRAGMA table_info(peers)")}
        if "token_hash" not in columns:  # databases from before peers were bound to tokens
            conn.exec_driver_sql("ALTER TABLE peers ADD COLUMN token_hash VARCHAR(64)")
        lease_columns = {row[1] for row in conn.exec_driver_sql("PRAGMA table_info(leases)")}
        if "reg_samples" not in lease_columns:  # databases from before regularization images
            conn.exec_driver_sql("ALTER TABLE leases ADD COLUMN reg_sample_ids TEXT NOT NULL DEFAULT ''")
            conn.exec_driver_sql("ALTER TABLE leases ADD COLUMN reg_samples INTEGER NOT NULL DEFAULT 0")
        stored = conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).scalar()
        if stored is None:
            conn.execute(meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
        elif int(stored) > SCHEMA_VERSION:
            raise RuntimeError(f"the database was written by a newer coordinator (schema {stored}, this one knows "
                               f"{SCHEMA_VERSION}): upgrade swarm-diffusion")


def open_engine(db_path: str | os.PathLike, *, synchronous: str = "normal") -> sa.Engine:
    """A write engine on an existing or new coordinator database, schema created."""
    engine = make_engine(db_path, synchronous=synchronous)
    create_schema(engine)
    return engine


def get_meta(conn: sa.Connection, key: str) -> str | None:
    return conn.execute(sa.select(meta.c.value).where(meta.c.key == key)).scalar()


def set_meta(conn: sa.Connection, key: str, value: str) -> None:
    from sqlalchemy.dialects.sqlite import insert

    stmt = insert(meta).values(key=key, value=value)
    conn.execute(stmt.on_conflict_do_update(index_elements=[meta.c.key], set_={"value": value}))


# The hot path (lease, heartbeat, report, release: thousands a second) runs these precompiled statements directly on
# the DBAPI connection: SQLAlchemy Core's per-execute bookkeeping costs about four times what SQLite itself does for
# a one-row update. Every other query goes through SQLAlchemy. The store tests run each of these.
LEASE_INSERT = ("INSERT INTO leases (id, chunk_id, peer_id, created, deadline, state, times_trained, "
                "reg_sample_ids, reg_samples) VALUES (?, ?, ?, ?, ?, 'active', ?, ?, ?)")
LEASE_END = "UPDATE leases SET state = ?, ended = ? WHERE id = ? AND state = 'active'"
LEASE_EXTEND = "UPDATE leases SET deadline = ? WHERE id = ? AND state = 'active'"
LEASE_LOOKUP = "SELECT peer_id, state, deadline, chunk_id FROM leases WHERE id = ?"
CHUNK_TRAINED = "UPDATE chunks SET times_trained = times_trained + 1 WHERE id = ?"
PEER_HEARTBEAT = ("UPDATE peers SET last_seen = ?, global_epoch = ?, loss = ?, samples_per_s = ?, finished = ? "
                  "WHERE peer_id = ?")
PEER_CONTRIBUTED = ("UPDATE peers SET samples_contributed = samples_contributed + ?, "
                    "chunks_contributed = chunks_contributed + 1 WHERE peer_id = ?")
