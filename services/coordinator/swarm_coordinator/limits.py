"""What one join token may use, as pure rules: peers per token, leases per peer, the pace of reports, epochs.

Each refusal is a `LimitExceeded` (RESOURCE_EXHAUSTED) whose message names the limit and its value, so an honest
host who hits one knows which flag raises it. The numbers are generous for honest peers (a trainer leases one chunk
at a time and reports after training it) and small against one token that leases a run's every chunk in ten calls
or reports thousands of samples a second without training.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Callable

from swarm_coordinator.errors import LimitExceeded
from swarm_coordinator.rules import InvalidRequest


@dataclass(frozen=True)
class Limits:
    peers_per_token: int = 64  # live peers registered with one join token
    leases_per_peer: int = 64  # active leases one peer holds at once
    # A peer may report samples at max(floor, slack x its own measured samples/s) on average, plus a burst.
    report_pace_floor: float = 256.0
    report_pace_slack: float = 4.0
    report_burst: float = 1024.0
    # Heartbeat epochs above twice the run's planned global epochs plus this many are refused.
    epoch_slack: int = 16

    def __post_init__(self) -> None:
        for name in ("peers_per_token", "leases_per_peer", "epoch_slack"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("report_pace_floor", "report_pace_slack", "report_burst"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


def check_peers_per_token(live_peers_of_token: int, *, limit: int) -> None:
    """A token registering one more peer while `live_peers_of_token` others live (re-registering one is free)."""
    if live_peers_of_token >= limit:
        raise LimitExceeded(f"limit of {limit} live peers per join token reached: stop a peer (or wait for a dead "
                            f"one to time out), or ask the host for another token or a higher --max-peers-per-token")


def leases_allowed(*, held: int, asked: int, limit: int) -> int:
    """How many of `asked` chunks a peer holding `held` active leases gets: what fits under the limit; refused
    when none fits (an honest trainer holds one or two)."""
    if held >= limit:
        raise LimitExceeded(f"limit of {limit} active leases per peer reached: report or release some first")
    return min(asked, limit - held)


def plausible_pace(measured_samples_per_s: float, *, floor: float, slack: float) -> float:
    """Samples per second a peer may report: its own measured throughput with slack, never less than the floor."""
    measured = measured_samples_per_s if math.isfinite(measured_samples_per_s) else 0.0
    return max(floor, slack * max(0.0, measured))


def refilled(budget: float, *, elapsed: float, pace: float, burst: float) -> float:
    """A report budget (samples) after `elapsed` seconds at `pace`, capped at `burst` (a token bucket)."""
    return min(burst, budget + max(0.0, elapsed) * pace)


def check_report_pace(budget: float, *, samples: int, pace: float) -> None:
    if samples > budget:
        raise LimitExceeded(f"reports faster than a plausible pace ({pace:.0f} samples/s from this peer's measured "
                            f"throughput, with slack): report chunks as they are trained")


def max_plausible_epoch(*, planned_epochs: int, swarm_epoch: int, slack: int) -> int:
    """The highest global epoch a heartbeat may claim: twice the run's planned global epochs once the dataset is
    known, else the live swarm's epoch, plus `slack`. An epoch of 2**63-1 would stall every trainer's end barrier."""
    if planned_epochs > 0:
        return 2 * planned_epochs + slack
    return swarm_epoch + slack


def check_epoch(global_epoch: int, *, bound: int) -> None:
    if global_epoch > bound:
        raise InvalidRequest(f"global_epoch {global_epoch} is not plausible: this run goes to at most {bound}")


class ReportPace:
    """Per-peer report budgets (in memory: a restart starts every peer with a full burst, which is what a fresh peer
    gets anyway). Thread-safe; `clock` is monotonic seconds."""

    def __init__(self, limits: Limits, *, clock: Callable[[], float] = time.monotonic):
        self.limits, self._clock = limits, clock
        self._budgets: dict[str, tuple[float, float]] = {}  # peer id -> (budget, when)
        self._lock = threading.Lock()

    def spend(self, peer_id: str, samples: int, *, measured_samples_per_s: float) -> None:
        """Take `samples` from the peer's budget, or raise LimitExceeded and take nothing."""
        limits = self.limits
        pace = plausible_pace(measured_samples_per_s, floor=limits.report_pace_floor, slack=limits.report_pace_slack)
        with self._lock:
            now = self._clock()
            budget, when = self._budgets.get(peer_id, (limits.report_burst, now))
            budget = refilled(budget, elapsed=now - when, pace=pace, burst=max(limits.report_burst, pace))
            check_report_pace(budget, samples=samples, pace=pace)
            self._budgets[peer_id] = (budget - samples, now)

    def refund(self, peer_id: str, samples: int) -> None:
        """A report that was not counted costs nothing."""
        with self._lock:
            if peer_id in self._budgets:
                budget, when = self._budgets[peer_id]
                self._budgets[peer_id] = (budget + samples, when)
