"""Weight budgets: no peer's claims add up to more samples than the coordinator let it train (issue 10, section 2).

hivemind weighs each sender's gradients by the number of samples it claims to have accumulated. A peer can only have
trained on samples it leased, so over the run the weight a receiver accepts from a sender cannot honestly exceed
  what the coordinator credited it (samples of chunks it reported done)
  + what it holds in active leases now
  + a slack for chunks it leased (and trained) since this receiver last asked the coordinator.
That sum is the sender's *allowance*. Every guarded averager keeps a `WeightLedger` of the weight it accepted from each
sender and caps the sender's claim in the next round by what is left (`remaining_budget`). The per-round caps of
robust.py (the credential's `max_weight`, a multiple of the round's median claim) still apply on top.

Trainers learn allowances from the coordinator's ListPeers (`samples_contributed`, `samples_leased`) once per
heartbeat and write them as a `WeightBudgets` to a small JSON file (`write_budgets`, atomic); each averager, a process
hivemind forked, re-reads it when it changed (`BudgetFile`, one stat per round), named by TrustSettings.budgets_path.
A file rather than the averager's control pipe: hivemind already writes that pipe from several threads, and a message
over PIPE_BUF bytes from one more thread could interleave with them. Budgets older than `valid_s` mean the
coordinator could not be reached: the averagers then fall back to the per-round caps alone (logged once), rather than
starving honest peers on stale numbers.

The slack is max(target batch, 2 chunks): one round's worth, or the chunk being trained plus the one prefetched. A
newcomer the coordinator has not told us about yet therefore gets a small, non-zero budget for its first chunk, and an
honest peer, which trains far less than a whole target batch between two heartbeats, is never cut. A peer claiming
1e6 every round gets at most its allowance in total (then weight 0: its parts still count toward CenteredClip's
median start, but move nothing).

A receiver counts only what it accepted itself (each sender's whole claim in every round the two shared), and a
restarted receiver starts from zero: the bound is per receiver lifetime, which is what one receiver can enforce.
The rules and the ledger are pure (no hivemind, no torch; `write_budgets`/`BudgetFile` are the file transport),
tested alone in tests/trust/test_budget.py.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

# Budgets fetched longer ago than this many heartbeat intervals are stale (the coordinator is unreachable).
STALE_AFTER_HEARTBEATS = 4.0


@dataclass(frozen=True)
class WeightBudgets:
    """Allowances a trainer learned from the coordinator, as its averagers use them.

    :param allowances: peer id (base58, the coordinator's and hivemind's id alike) -> credited + leased samples.
    :param slack: added to every allowance (also to a peer missing from `allowances`: a newcomer).
    :param fetched_at: Unix time of the ListPeers answer.
    :param valid_s: after fetched_at + valid_s the budgets are stale and not used.
    """
    allowances: Mapping[str, float] = field(default_factory=dict)
    slack: float = 0.0
    fetched_at: float = 0.0
    valid_s: float = 120.0

    def __post_init__(self):
        if not (math.isfinite(self.slack) and self.slack >= 0):
            raise ValueError(f"slack must be a finite number >= 0, got {self.slack}")
        if not self.valid_s > 0:
            raise ValueError(f"valid_s must be > 0, got {self.valid_s}")

    def fresh(self, *, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return now <= self.fetched_at + self.valid_s

    def allowance_of(self, peer_id: str) -> float:
        """The peer's allowance; a peer the coordinator did not list (a newcomer) has the slack alone."""
        return allowance(credited=self.allowances.get(peer_id, 0.0), leased=0.0, slack=self.slack)


def allowance(*, credited: float, leased: float, slack: float) -> float:
    """The most weight a peer may have claimed so far: samples credited + samples leased now + slack.

    Negative or non-finite inputs (a malformed answer) count as 0, so they can only shrink a budget to the slack."""
    return sum(x if math.isfinite(x) and x > 0 else 0.0 for x in (float(credited), float(leased), float(slack)))


def remaining_budget(*, allowance: float, accepted: float) -> float:
    """What a peer may still claim: its allowance less the weight already accepted from it, never below 0."""
    return max(0.0, allowance - max(0.0, accepted))


def budget_slack(*, target_batch_size: int, chunk_size: int) -> float:
    """The slack added to every allowance: one round's worth (target batch) or two chunks, whichever is more."""
    return float(max(int(target_batch_size), 2 * int(chunk_size), 1))


def budgets_from_peers(peers: Iterable, *, slack: float, fetched_at: float, heartbeat_interval_s: float
                       ) -> WeightBudgets:
    """WeightBudgets from ListPeers' PeerInfo messages (or anything with peer_id, samples_contributed and
    samples_leased); stale after STALE_AFTER_HEARTBEATS heartbeat intervals."""
    allowances = {}
    for peer in peers:
        if peer.peer_id:
            allowances[peer.peer_id] = allowance(credited=peer.samples_contributed,
                                                 leased=getattr(peer, "samples_leased", 0), slack=0.0)
    return WeightBudgets(allowances=allowances, slack=slack, fetched_at=fetched_at,
                         valid_s=max(1.0, STALE_AFTER_HEARTBEATS * heartbeat_interval_s))


def write_budgets(path: str | os.PathLike, budgets: WeightBudgets) -> None:
    """Write budgets as JSON, atomically (a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"allowances": dict(budgets.allowances), "slack": budgets.slack,
                               "fetched_at": budgets.fetched_at, "valid_s": budgets.valid_s}))
    os.replace(tmp, path)


class BudgetFile:
    """The budgets in a file `write_budgets` keeps current; re-read only when it changed. None when there is none
    yet or it cannot be read (the caller then uses the per-round caps)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._stamp, self._budgets = None, None

    def load(self) -> WeightBudgets | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            try:
                fields = json.loads(self.path.read_text())
                self._budgets = WeightBudgets(allowances={str(k): float(v) for k, v in fields["allowances"].items()},
                                              slack=float(fields["slack"]), fetched_at=float(fields["fetched_at"]),
                                              valid_s=float(fields["valid_s"]))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                self._budgets = None
            self._stamp = stamp
        return self._budgets


class WeightLedger:
    """Weight accepted from each sender by one averager, and the caps that leaves (one per averager process)."""

    def __init__(self, *, max_peers: int = 100_000):
        self.accepted: dict[str, float] = {}
        self._max_peers = max_peers

    def caps(self, peer_ids: Iterable[str], budgets: WeightBudgets | None, *, now: float | None = None
             ) -> dict[str, float] | None:
        """{peer id: most weight it may claim this round}, or None when there are no fresh budgets (fall back to the
        per-round caps)."""
        if budgets is None or not budgets.fresh(now=now):
            return None
        return {peer: remaining_budget(allowance=budgets.allowance_of(peer), accepted=self.accepted.get(peer, 0.0))
                for peer in peer_ids}

    def charge(self, peer_id: str, weight: float) -> None:
        """Add a weight this averager accepted from `peer_id` (what it claimed, after the caps)."""
        if not (math.isfinite(weight) and weight > 0):
            return
        if peer_id not in self.accepted and len(self.accepted) >= self._max_peers:
            return  # a flood of fresh peer ids must not grow this forever; they are refused admission anyway
        self.accepted[peer_id] = self.accepted.get(peer_id, 0.0) + float(weight)
