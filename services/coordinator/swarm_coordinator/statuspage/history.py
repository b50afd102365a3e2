"""The status page's history of the run: a bounded series of points, downsampled as they age (pure functions).

A point is sampled every few seconds. Recent points are kept at full resolution; older ones are merged into coarser
buckets (a tier's resolution), so a week-long run still fits in about a thousand rows and its chart still shows the
whole run. Merging keeps what each column means: counters (samples done, global epoch) take the bucket's last value,
rates and gauges (samples/s, peers online, loss) its mean weighted by how many raw samples each point stands for.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence


@dataclass(frozen=True)
class Point:
    t: float  # unix seconds of the newest raw sample merged into this point
    samples_done: int
    global_epoch: int
    peers_online: int
    samples_per_s: float
    loss: float | None  # mean loss of the live peers that reported one; None while none has
    n: int = 1  # raw samples this point stands for (the weight when merged again)


@dataclass(frozen=True)
class Tier:
    """Points younger than `max_age_s` are kept at most one per `resolution_s` seconds."""
    max_age_s: float
    resolution_s: float


# 5 s for the last 10 minutes, 30 s for the hour, 10 min for the day, 1 h for two weeks, 6 h beyond: 120 + 100 +
# 138 + 312 points, and the rest of MAX_POINTS covers another ~2.5 months before the oldest points are dropped.
DEFAULT_TIERS: tuple[Tier, ...] = (Tier(600.0, 5.0), Tier(3600.0, 30.0), Tier(86400.0, 600.0),
                                   Tier(14 * 86400.0, 3600.0), Tier(math.inf, 6 * 3600.0))
MAX_POINTS = 1000


def merge(points: Sequence[Point]) -> Point:
    """One point standing for all of `points` (sorted oldest first): last counters, weighted mean of the rest."""
    if not points:
        raise ValueError("merge needs at least one point")
    last = points[-1]
    if len(points) == 1:
        return last
    weight = sum(p.n for p in points)
    with_loss = [p for p in points if p.loss is not None]
    loss_weight = sum(p.n for p in with_loss)
    return Point(t=last.t, samples_done=last.samples_done, global_epoch=last.global_epoch,
                 peers_online=round(sum(p.peers_online * p.n for p in points) / weight),
                 samples_per_s=sum(p.samples_per_s * p.n for p in points) / weight,
                 loss=sum(p.loss * p.n for p in with_loss) / loss_weight if with_loss else None,
                 n=weight)


def tier_of(age_s: float, tiers: Sequence[Tier] = DEFAULT_TIERS) -> int:
    """Index of the tier a point of this age belongs to (a point from the future counts as new)."""
    for index, tier in enumerate(tiers):
        if age_s < tier.max_age_s:
            return index
    return len(tiers) - 1


def downsample(points: Iterable[Point], *, now: float, tiers: Sequence[Tier] = DEFAULT_TIERS,
               max_points: int = MAX_POINTS) -> list[Point]:
    """The history to keep: points merged per (tier, bucket of the tier's resolution), then the newest `max_points`.

    Idempotent (downsampling its own output at the same `now` changes nothing), so it can run after every append.
    """
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    groups: dict[tuple[int, int], list[Point]] = {}
    for point in sorted(points, key=lambda p: p.t):
        index = tier_of(now - point.t, tiers)
        groups.setdefault((index, math.floor(point.t / tiers[index].resolution_s)), []).append(point)
    kept = [merge(group) for group in groups.values()]
    kept.sort(key=lambda p: p.t)
    return kept[-max_points:]


def recent_rate(points: Sequence[Point], *, now: float, samples_done: int, window_s: float = 900.0,
                min_span_s: float = 20.0) -> float | None:
    """Samples per second over the last `window_s`, from the history and the current count; None when unknown.

    Measured from counted samples rather than the peers' own samples/s, so it is what moves the run forward.
    """
    inside = [p for p in points if now - window_s <= p.t < now]
    if not inside:
        return None
    first = min(inside, key=lambda p: p.t)
    span = now - first.t
    if span < min_span_s:
        return None
    return max(0.0, (samples_done - first.samples_done) / span)


def eta_seconds(points: Sequence[Point], *, now: float, samples_done: int, samples_target: int,
                complete: bool) -> float | None:
    """Seconds until every sample of every data epoch is trained at the recent rate; 0 once complete.

    None while the rate is unknown or zero (nothing trained lately), or the run has no data yet.
    """
    if complete:
        return 0.0
    if samples_target <= 0:
        return None
    rate = recent_rate(points, now=now, samples_done=samples_done)
    if not rate:
        return None
    return max(0, samples_target - samples_done) / rate
