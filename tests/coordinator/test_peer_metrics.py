"""Per-peer progress from heartbeats on the coordinator's /metrics: live peers only, bounded by a cap (issue 12)."""
from __future__ import annotations

import math

import pytest

from swarm_coordinator.metrics import peer_progress_families, peer_progress_rows
from swarm_coordinator.peers import PeerRecord

pytestmark = pytest.mark.timeout(30)


def _peer(i: int, *, rate: float, loss: float | None = 0.5, epoch: int = 3) -> PeerRecord:
    return PeerRecord(peer_id=f"Qm{i:04d}", name=f"peer-{i}", multiaddrs=(), client_mode=False, batch_size=1,
                      first_seen=0.0, last_seen=0.0, global_epoch=epoch, loss=loss, samples_per_s=rate)


def test_only_live_peers_the_fastest_first_up_to_the_cap():
    peers = [_peer(i, rate=float(i)) for i in range(10)]
    alive = {p.peer_id for p in peers if p.peer_id != "Qm0009"}  # the fastest went silent: it drops out
    rows = peer_progress_rows(peers, alive, cap=3)
    assert [p.peer_id for p in rows] == ["Qm0008", "Qm0007", "Qm0006"]
    assert peer_progress_rows(peers, set(), cap=3) == []


def test_families_carry_rate_loss_and_epoch_by_peer_and_name():
    peers = [_peer(1, rate=2.5, loss=0.25, epoch=7), _peer(2, rate=1.0, loss=None), _peer(3, rate=0.5, loss=math.nan)]
    families = {f.name: f for f in peer_progress_families(peers, {p.peer_id for p in peers})}
    rate = {tuple(s.labels.values()): s.value for s in families["swarm_coordinator_peer_samples_per_second"].samples}
    assert rate == {("Qm0001", "peer-1"): 2.5, ("Qm0002", "peer-2"): 1.0, ("Qm0003", "peer-3"): 0.5}
    loss = {s.labels["name"]: s.value for s in families["swarm_coordinator_peer_loss"].samples}
    assert loss == {"peer-1": 0.25}, "no loss yet (None) or NaN: no sample rather than a bogus one"
    epoch = {s.labels["name"]: s.value for s in families["swarm_coordinator_peer_global_epoch"].samples}
    assert epoch == {"peer-1": 7, "peer-2": 3, "peer-3": 3}
