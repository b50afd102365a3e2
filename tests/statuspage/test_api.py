"""`/api/status` from plain snapshots: an empty run, a finished run, a peer gone stale, a history over its bound."""
from __future__ import annotations

import json
import math

import pytest

from swarm_coordinator.statuspage.api import (
    MAX_LEADERBOARD_ROWS,
    JoinInfo,
    PeerRow,
    ServiceHealth,
    StatusSnapshot,
    build_status,
)
from swarm_coordinator.statuspage.history import MAX_POINTS, Point

pytestmark = pytest.mark.timeout(30)

NOW = 1_800_000_000.0
JOIN = JoinInfo(coordinator="swarm.example.org:50051", image="swarm-diffusion/trainer:0.1.0",
                token_contact="ask in #swarm on the project's chat")


def _snapshot(**changes) -> StatusSnapshot:
    values = dict(now=NOW, run_name="demo", model="tiny", config_version=1, started=None, samples_done=0,
                  samples_total=0, data_epochs_done=0, max_data_epochs=3, run_complete=False, global_epoch=0,
                  lr=1e-3, peers_online=0, peers_training=0, join=JOIN)
    values.update(changes)
    return StatusSnapshot(**values)


def _peer(peer_id, *, samples=0, alive=True, last_seen=NOW - 5, first_seen=NOW - 3600, client_mode=False,
          name="", loss=0.25, rate=2.0, finished=False):
    return PeerRow(peer_id=peer_id, name=name, samples=samples, chunks=samples // 4, first_seen=first_seen,
                   last_seen=last_seen, alive=alive, client_mode=client_mode, finished=finished, loss=loss,
                   samples_per_s=rate)


def _roundtrip(doc):
    """What a client receives: strict JSON (no NaN), parsed back."""
    return json.loads(json.dumps(doc, allow_nan=False))


def test_an_empty_run():
    doc = _roundtrip(build_status(_snapshot()))
    run = doc["run"]
    assert run["samples_done"] == 0 and run["samples_target"] == 0 and run["progress"] == 0.0
    assert run["data_epochs_to_go"] == 3 and run["complete"] is False
    assert run["eta_s"] is None and doc["unknown"]["eta"] == "no data synced yet"
    assert run["mode"] is None and "mode" in doc["unknown"]
    assert doc["swarm"] == {"global_epoch": 0, "lr": 1e-3, "samples_per_s": 0.0, "loss": None, "peers_online": 0,
                            "peers_training": 0}
    assert doc["leaderboard"] == {"peers": [], "total": 0, "online": 0}
    assert all(series == [] for series in doc["history"].values())
    assert doc["artifacts"] == {"sample_grid_url": None, "checkpoint": None, "export": None}
    assert {"sample_grid", "checkpoint", "export"} <= set(doc["unknown"])
    assert doc["join"]["coordinator"] == "swarm.example.org:50051"
    assert "swarm train --coordinator swarm.example.org:50051" in doc["join"]["command"]
    assert JOIN.image in doc["join"]["command"]


def test_a_finished_run():
    history = [Point(t=NOW - 60 * i, samples_done=1200 - 10 * i, global_epoch=30, peers_online=2,
                     samples_per_s=8.0, loss=0.2) for i in range(5)]
    doc = _roundtrip(build_status(_snapshot(
        samples_done=1200, samples_total=400, data_epochs_done=3, run_complete=True, global_epoch=30,
        started=NOW - 7200, peers_online=2, peers_training=0, history=history,
        peers=[_peer("QmA" + "a" * 40, samples=700, name="alice", finished=True),
               _peer("QmB" + "b" * 40, samples=500, client_mode=True, finished=True)],
        services=[ServiceHealth("coordinator", True), ServiceHealth("dataset service", True)],
        bootstrap_addresses=["/dns4/swarm.example.org/tcp/31337/p2p/QmBoot"])))
    run = doc["run"]
    assert run["complete"] is True and run["progress"] == 1.0 and run["eta_s"] == 0.0
    assert run["data_epochs_to_go"] == 0 and run["samples_target"] == 1200 and run["started"] == NOW - 7200
    assert "eta" not in doc["unknown"]
    assert doc["swarm"]["samples_per_s"] == 0.0  # finished peers train no more
    assert len(doc["history"]["t"]) == 5 and doc["history"]["samples_done"][-1] == 1200
    names = [p["name"] for p in doc["leaderboard"]["peers"]]
    assert names == ["alice", "QmBbbb…bbbbbb"]  # no name: the short peer id
    assert [p["mode"] for p in doc["leaderboard"]["peers"]] == ["reachable", "client"]
    assert doc["leaderboard"]["peers"][0]["hours_online"] == pytest.approx(1.0, abs=0.01)
    assert doc["health"]["services"][1] == {"name": "dataset service", "up": True, "detail": ""}
    assert doc["health"]["bootstrap"] == ["/dns4/swarm.example.org/tcp/31337/p2p/QmBoot"]


def test_a_peer_gone_stale():
    live = _peer("live-peer", samples=40, name="bob", loss=0.5, rate=3.0)
    stale = _peer("stale-peer", samples=40, name="carol", alive=False, last_seen=NOW - 900, loss=9.0, rate=50.0)
    doc = _roundtrip(build_status(_snapshot(samples_done=80, samples_total=100, peers_online=1, peers_training=1,
                                            peers=[stale, live])))
    rows = doc["leaderboard"]["peers"]
    assert [r["name"] for r in rows] == ["bob", "carol"]  # equal samples: online first
    assert rows[1]["online"] is False and rows[1]["last_seen_ago_s"] == 900.0 and rows[1]["samples_per_s"] == 0.0
    assert doc["leaderboard"]["online"] == 1 and doc["leaderboard"]["total"] == 2
    # The stale peer's last loss and rate no longer speak for the swarm.
    assert doc["swarm"]["loss"] == 0.5 and doc["swarm"]["samples_per_s"] == 3.0


def test_a_history_longer_than_its_bound():
    history = [Point(t=NOW - 30 * 86400 + 60 * i, samples_done=i, global_epoch=i // 10, peers_online=3,
                     samples_per_s=1.0, loss=1.0 / (1 + i)) for i in range(30 * 24 * 60)]
    doc = _roundtrip(build_status(_snapshot(history=history, samples_done=len(history), samples_total=10 ** 6)))
    series = doc["history"]
    assert 0 < len(series["t"]) <= MAX_POINTS
    assert all(len(values) == len(series["t"]) for values in series.values())
    assert series["t"] == sorted(series["t"])
    assert series["t"][0] < NOW - 29 * 86400  # coarser, not cut: the start of the run is still on the chart
    assert series["samples_done"][-1] == len(history) - 1


def test_the_leaderboard_is_bounded_and_never_holds_addresses():
    peers = [_peer(f"peer-{i:03d}", samples=i) for i in range(MAX_LEADERBOARD_ROWS + 20)]
    doc = build_status(_snapshot(peers=peers))
    rows = doc["leaderboard"]["peers"]
    assert len(rows) == MAX_LEADERBOARD_ROWS and doc["leaderboard"]["total"] == len(peers)
    assert rows[0]["samples"] == len(peers) - 1
    assert not any(key in row for row in rows for key in ("multiaddrs", "address", "ip"))


def test_non_finite_numbers_become_null():
    peer = _peer("p", loss=math.nan, rate=math.inf)
    doc = _roundtrip(build_status(_snapshot(peers=[peer], lr=math.nan)))
    assert doc["swarm"]["lr"] is None and doc["swarm"]["loss"] is None and doc["swarm"]["samples_per_s"] == 0.0
    assert doc["leaderboard"]["peers"][0]["samples_per_s"] is None
