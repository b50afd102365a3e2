"""The status page's history rules alone: merging, downsampling as points age, the bound, the ETA."""
from __future__ import annotations

import math

import pytest

from swarm_coordinator.statuspage.history import (
    DEFAULT_TIERS,
    MAX_POINTS,
    Point,
    Tier,
    downsample,
    eta_seconds,
    merge,
    recent_rate,
    tier_of,
)

pytestmark = pytest.mark.timeout(30)


def _point(t, samples=0, *, peers=2, rate=4.0, loss=0.5, epoch=0, n=1):
    return Point(t=t, samples_done=samples, global_epoch=epoch, peers_online=peers, samples_per_s=rate, loss=loss, n=n)


def test_merge_keeps_last_counters_and_weights_means_by_raw_samples():
    merged = merge([_point(10, 100, peers=2, rate=2.0, loss=1.0, epoch=3, n=3),
                    _point(20, 180, peers=4, rate=6.0, loss=None, epoch=4, n=1)])
    assert merged.t == 20 and merged.samples_done == 180 and merged.global_epoch == 4
    assert merged.n == 4
    assert merged.samples_per_s == pytest.approx((2.0 * 3 + 6.0) / 4)
    assert merged.peers_online == round((2 * 3 + 4) / 4)
    assert merged.loss == 1.0  # a point with no loss reported does not drag the mean to zero


def test_merge_of_points_without_loss_has_no_loss():
    assert merge([_point(1, loss=None), _point(2, loss=None)]).loss is None


def test_merge_refuses_nothing():
    with pytest.raises(ValueError):
        merge([])


def test_tier_by_age():
    assert tier_of(0) == 0
    assert tier_of(-5) == 0  # a clock step back: treated as new
    assert tier_of(600) == 1
    assert tier_of(3600) == 2
    assert tier_of(10 * 86400) == 3
    assert tier_of(400 * 86400) == len(DEFAULT_TIERS) - 1


def test_recent_points_stay_at_full_resolution():
    now = 100_000.0
    points = [_point(now - 15 * i, 1000 - i) for i in range(10)]
    assert downsample(points, now=now) == sorted(points, key=lambda p: p.t)


def test_old_points_merge_into_coarser_buckets():
    now = 1_000_000.0
    tiers = (Tier(100.0, 10.0), Tier(math.inf, 100.0))
    points = [_point(now - age, samples=int(now - age)) for age in range(0, 1000, 5)]  # 200 points, 5 s apart
    kept = downsample(points, now=now, tiers=tiers)
    recent = [p for p in kept if now - p.t < 100]
    old = [p for p in kept if now - p.t >= 100]
    assert len(recent) <= 11 and len(old) <= 10
    assert sum(p.n for p in kept) == len(points)  # every raw sample is still accounted for
    assert kept[-1].samples_done == points[0].samples_done  # the newest count survives
    assert [p.t for p in kept] == sorted(p.t for p in kept)


def test_downsampling_is_idempotent():
    now = 10_000_000.0
    points = [_point(now - 37 * i, i) for i in range(3000)]
    once = downsample(points, now=now)
    assert downsample(once, now=now) == once


def test_history_longer_than_its_bound_keeps_the_newest():
    now = 1_000.0
    tiers = (Tier(math.inf, 1.0),)
    points = [_point(float(t), t) for t in range(500)]
    kept = downsample(points, now=now, tiers=tiers, max_points=50)
    assert len(kept) == 50
    assert [p.t for p in kept] == [float(t) for t in range(450, 500)]


def test_a_months_long_run_sampled_every_15_s_fits_the_default_bound():
    now = 90 * 86400.0
    points, t = [], 0.0
    while t <= now:  # sampled and downsampled as the coordinator does: append, then compact every 20 samples
        points.append(_point(t, int(t)))
        if len(points) % 20 == 0:
            points = downsample(points, now=t)
        t += 15.0 * 40  # coarse steps keep the test fast; the tiers do not care
    kept = downsample(points, now=now)
    assert len(kept) <= MAX_POINTS
    assert kept[0].t < 10 * 86400  # the start of the run is still on the chart


def test_max_points_must_be_positive():
    with pytest.raises(ValueError):
        downsample([], now=0, max_points=0)


def test_rate_and_eta_from_counted_samples():
    now = 1000.0
    points = [_point(now - 600, 400), _point(now - 300, 700)]
    assert recent_rate(points, now=now, samples_done=1000) == pytest.approx(1.0)
    assert eta_seconds(points, now=now, samples_done=1000, samples_target=1600, complete=False) == pytest.approx(600)


def test_eta_unknown_without_progress_or_data_and_zero_when_complete():
    now = 1000.0
    flat = [_point(now - 600, 500), _point(now - 60, 500)]
    assert eta_seconds(flat, now=now, samples_done=500, samples_target=900, complete=False) is None
    assert eta_seconds([], now=now, samples_done=0, samples_target=900, complete=False) is None
    assert eta_seconds(flat, now=now, samples_done=0, samples_target=0, complete=False) is None
    assert eta_seconds([_point(now - 5, 10)], now=now, samples_done=20, samples_target=900, complete=False) is None
    assert eta_seconds(flat, now=now, samples_done=900, samples_target=900, complete=True) == 0.0
