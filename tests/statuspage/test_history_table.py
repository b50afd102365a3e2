"""The status history in the coordinator's real SQLite database: it survives a restart and stays bounded."""
from __future__ import annotations

import math

import pytest
import sqlalchemy as sa

from swarm_coordinator import db
from swarm_coordinator.statuspage.history import Point, Tier
from swarm_coordinator.store.connection import StoreConnection
from swarm_coordinator.store.status_history import StatusHistory

pytestmark = pytest.mark.timeout(60)


def _open(path, **kw) -> tuple[StoreConnection, StatusHistory]:
    connection = StoreConnection.open(str(path))
    history = StatusHistory(connection, **kw)
    with connection.transaction() as conn:
        history.load(conn)
    return connection, history


def _point(t, samples=0, loss=0.5):
    return Point(t=t, samples_done=samples, global_epoch=int(t) // 100, peers_online=2, samples_per_s=1.5, loss=loss)


def test_history_survives_a_restart(tmp_path):
    path = tmp_path / "coordinator.sqlite"
    connection, history = _open(path)
    for i in range(5):
        history.record(_point(1000.0 + 5 * i, samples=10 * i, loss=None if i == 0 else 1.0 / i))
    connection.close()
    connection, history = _open(path)
    try:
        points = history.points()
        assert [p.samples_done for p in points] == [0, 10, 20, 30, 40]
        assert points[0].loss is None and points[2].loss == 0.5
    finally:
        connection.close()


def test_the_table_stays_bounded_as_samples_keep_coming(tmp_path):
    path = tmp_path / "coordinator.sqlite"
    tiers = (Tier(50.0, 1.0), Tier(math.inf, 25.0))
    connection, history = _open(path, tiers=tiers, max_points=30, compact_every=10)
    try:
        for i in range(400):
            history.record(_point(float(i), samples=i))
        with connection.transaction() as conn:
            rows = conn.execute(sa.select(sa.func.count()).select_from(db.status_history)).scalar()
            total = conn.execute(sa.select(sa.func.sum(db.status_history.c.n))).scalar()
        assert rows <= 30 + 10 and len(history.points()) == rows
        assert total <= 400  # merged rows stand for the samples they replaced; the oldest beyond the bound went
        assert history.points()[-1].samples_done == 399
    finally:
        connection.close()
    connection, reopened = _open(path, tiers=tiers, max_points=30, compact_every=10)
    try:
        assert reopened.points() == history.points()
    finally:
        connection.close()


def test_compact_every_must_be_positive(tmp_path):
    connection = StoreConnection.open(str(tmp_path / "c.sqlite"))
    try:
        with pytest.raises(ValueError):
            StatusHistory(connection, compact_every=0)
    finally:
        connection.close()
