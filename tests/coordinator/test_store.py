"""The store on a real SQLite file: exact accounting, expiry, restarts, incremental chunking, config versions."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from swarm.runconfig import RunConfig
from swarm_coordinator import configs, db
from swarm_coordinator.audit import audit_chunks
from swarm_coordinator.rules import Outcome
from swarm_coordinator.store import DatabaseInUse, LeaseNotFound, NotLeaseOwner, PeerNotRegistered, Store

pytestmark = pytest.mark.timeout(60)


def _seed(store, n=4, size=3):
    return store.add_chunks([((64, 64), range(i * size + 1, (i + 1) * size + 1)) for i in range(n)])


def test_lease_least_trained_first_and_report_counts_once(open_store):
    store = open_store()
    _seed(store, n=3)
    store.register("a")
    first = store.lease("a", 1)
    assert [g.chunk_id for g in first] == [1] and first[0].sample_ids == [1, 2, 3]
    assert store.report("a", first[0].lease_id).outcome is Outcome.COUNTED
    assert store.report("a", first[0].lease_id).outcome is Outcome.DUPLICATE
    # Chunk 1 is now trained once: the untrained ones go first, and asking for more than is free gives what is free.
    rest = store.lease("a", 10)
    assert [g.chunk_id for g in rest] == [2, 3, 1]
    assert store.lease("a", 1) == []
    assert store.progress().samples_done == 3
    assert store.peers.get("a").samples_contributed == 3


def test_expired_lease_requeues_its_chunk_and_late_report_is_stale(open_store, clock):
    store = open_store(lease_ttl=10)
    _seed(store, n=1)
    store.register("slow")
    store.register("fast")
    (old,) = store.lease("slow", 1)
    assert store.lease("fast", 1) == []
    clock.advance(10.5)
    (new,) = store.lease("fast", 1)
    assert new.chunk_id == old.chunk_id
    assert store.report("slow", old.lease_id).outcome is Outcome.STALE
    assert store.report("fast", new.lease_id).outcome is Outcome.COUNTED
    assert store.report("slow", old.lease_id).outcome is Outcome.STALE
    audit = audit_chunks(store.engine.url.database)
    assert audit["times_trained"] == {1: 1} and audit["lost"] == audit["double_counted"] == 0


def test_expired_but_not_reaped_lease_reports_stale(open_store, clock):
    store = open_store(lease_ttl=10)
    _seed(store, n=1)
    store.register("a")
    (lease,) = store.lease("a", 1)
    clock.advance(11)
    assert store.report("a", lease.lease_id).outcome is Outcome.STALE
    (again,) = store.lease("a", 1)  # its chunk is back in the queue
    assert again.times_trained == 0


def test_heartbeat_extends_valid_leases_only(open_store, clock):
    store = open_store(lease_ttl=10)
    _seed(store, n=2)
    store.register("a")
    store.register("b")
    mine, theirs = store.lease("a", 1)[0], store.lease("b", 1)[0]
    clock.advance(8)
    states = dict((lid, (valid, deadline)) for lid, valid, deadline in
                  store.heartbeat("a", [mine.lease_id, theirs.lease_id], global_epoch=3, loss=0.25))
    assert states[mine.lease_id] == (True, clock.now + 10)
    assert states[theirs.lease_id][0] is False  # not the asker's lease
    clock.advance(8)  # past the original deadline, inside the extended one
    assert store.report("a", mine.lease_id).outcome is Outcome.COUNTED
    assert store.report("b", theirs.lease_id).outcome is Outcome.STALE
    assert store.peers.get("a").global_epoch == 3 and store.peers.get("a").loss == 0.25


def test_release_all_frees_chunks_at_once(open_store):
    store = open_store()
    _seed(store, n=3)
    store.register("a")
    store.register("b")
    leases = store.lease("a", 3)
    assert store.release("b") == 0
    assert store.release("a", [leases[0].lease_id]) == 1
    assert store.release("a") == 2
    assert [g.chunk_id for g in store.lease("b", 5)] == [1, 2, 3]
    assert store.report("a", leases[1].lease_id).outcome is Outcome.STALE


def test_errors_for_unknown_peers_leases_and_owners(open_store):
    store = open_store()
    _seed(store, n=1)
    with pytest.raises(PeerNotRegistered, match="RegisterPeer"):
        store.lease("nobody", 1)
    store.register("a")
    store.register("b")
    (lease,) = store.lease("a", 1)
    with pytest.raises(NotLeaseOwner):
        store.report("b", lease.lease_id)
    with pytest.raises(LeaseNotFound):
        store.report("a", "00000000-0000-4000-8000-000000000000")
    store.report("a", lease.lease_id)
    with pytest.raises(NotLeaseOwner):
        store.report("b", lease.lease_id)  # also once done: nobody learns about other peers' leases


def test_data_epoch_limit_and_run_complete(open_store):
    store = open_store(config=RunConfig(max_data_epochs=2))
    assert not store.run_complete()  # no chunks yet
    _seed(store, n=2)
    store.register("a")
    for _ in range(2):
        for grant in store.lease("a", 5):
            assert store.report("a", grant.lease_id).outcome is Outcome.COUNTED
    assert store.run_complete() and store.lease("a", 5) == []
    assert store.progress().data_epochs_done == 2


def test_restart_keeps_counts_and_honours_unexpired_leases(open_store, db_path, clock):
    store = open_store(lease_ttl=50)
    _seed(store, n=3)
    store.register("a", multiaddrs=["/ip4/1.2.3.4/tcp/5"])
    kept, short = store.lease("a", 2)
    done = store.lease("a", 1)[0]
    store.report("a", done.lease_id)
    clock.advance(30)
    store.heartbeat("a", [kept.lease_id])  # kept lives to +80, short dies at +50
    store.close()

    clock.advance(30)  # the coordinator was down for 30 s
    store = Store.open(db_path, clock=clock, lease_ttl=50, peer_ttl=60)
    try:
        assert store.peers.get("a").multiaddrs == ("/ip4/1.2.3.4/tcp/5",)
        assert store.queue.chunks[done.chunk_id].times_trained == 1
        assert store.report("a", done.lease_id).outcome is Outcome.DUPLICATE
        assert store.report("a", short.lease_id).outcome is Outcome.STALE
        # kept is still held; short's chunk is free again and goes before the one trained already
        assert [g.chunk_id for g in store.lease("a", 5)] == [short.chunk_id, done.chunk_id]
        assert store.report("a", kept.lease_id).outcome is Outcome.COUNTED
    finally:
        store.close()
    audit = audit_chunks(db_path)
    assert audit["lost"] == audit["double_counted"] == audit["double_leased"] == 0
    assert audit["times_trained"] == {0: 1, 1: 2}
    assert audit["leases"] == {"done": 2, "expired": 1, "active": 2}


def test_one_coordinator_per_database(open_store, db_path, clock):
    open_store()
    with pytest.raises(DatabaseInUse, match="another coordinator"):
        Store.open(db_path, clock=clock)


def test_incremental_chunking_survives_restarts(open_store, db_path, clock):
    store = open_store(config=RunConfig(chunk_size=2))
    assert store.add_samples([(1, 64, 64), (2, 64, 128), (3, 64, 64)], flush=False) == [1]
    assert store.sync_cursor == 3
    store.close()
    store = Store.open(db_path, clock=clock)
    try:
        assert store.add_samples([(2, 64, 128), (4, 64, 128), (5, 64, 64)], flush=False) == [2]  # 2 seen: skipped
        assert store.add_samples([], flush=True) == [3]
        info = {cid: store.leases.contents(cid) for cid in store.queue.chunks}
        assert info == {1: ((64, 64), [1, 3]), 2: ((64, 128), [2, 4]), 3: ((64, 64), [5])}
        assert store.add_samples([], flush=True) == []
    finally:
        store.close()


def test_config_versions_bump_only_on_change(open_store, db_path, clock):
    store = open_store(config=RunConfig(lr=1e-4))
    assert store.config.version == 1
    assert store.ensure_config(RunConfig(lr=1e-4), run_id="test-run")[1] is False
    assert store.ensure_config(None, run_id="test-run")[0].version == 1  # no file: keep the stored one
    assert store.ensure_config(RunConfig(lr=2e-4), run_id="test-run")[0].version == 2
    # `swarm config set` from another process: the running store picks it up.
    previous, current, created = configs.set_config(db_path, assignments=["lr=5e-5", "lr_scheduler=cosine"])
    assert created and current.version == 3 and current.config.lr == 5e-5
    assert store.refresh_config() and store.config.version == 3 and not store.refresh_config()
    assert store.get_config(1).config.lr == 1e-4 and store.get_config(99) is None


def test_audit_catches_a_tampered_database(open_store, db_path):
    store = open_store()
    _seed(store, n=2)
    store.register("a")
    for grant in store.lease("a", 2):
        store.report("a", grant.lease_id)
    counted = [row for row in store.connection.conn.execute(sa.select(db.leases.c.id)).scalars()]
    store.close()
    assert audit_chunks(db_path, counted_lease_ids=counted)["lost"] == 0
    engine = db.make_engine(db_path)
    with engine.begin() as conn:
        conn.execute(db.chunks.update().where(db.chunks.c.id == 1).values(times_trained=2))
        conn.execute(db.chunks.update().where(db.chunks.c.id == 2).values(times_trained=0))
    engine.dispose()
    audit = audit_chunks(db_path, counted_lease_ids=counted + counted[:1])
    assert audit["double_counted"] == 2 and audit["lost"] == 1


def test_schema_upgrade_adds_the_peer_token_column(db_path):
    engine = db.open_engine(db_path)
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE peers DROP COLUMN token_hash")
    db.create_schema(engine)
    with engine.connect() as conn:
        assert "token_hash" in {row[1] for row in conn.exec_driver_sql("PRAGMA table_info(peers)")}
    engine.dispose()


def test_full_synchronous_mode_for_power_loss_durability(db_path, clock):
    store = Store.open(db_path, clock=clock, synchronous="full")
    try:
        assert store.connection.raw.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert store.connection.raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        store.close()
