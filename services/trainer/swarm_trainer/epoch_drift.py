"""A client-mode peer ahead of every listening peer: hivemind never brings it back, so it goes back by itself.

hivemind's progress tracker takes the swarm's epoch from listening peers only, plus the peer's own: a client-mode
peer serves no state, so nobody could catch up with it. A client-mode peer that once stepped without the listening
peers (its round failed or timed out while theirs had not ended) is one epoch ahead for good:
- its own tracker takes its own epoch for the swarm's, so it counts only its own samples toward the next step;
- the listening peers' trackers ignore its epoch, and they count only their own samples.
Each side then steps alone every epoch, both see themselves in sync, and the run's end barrier can never pass:
the listening peers behind would have to download a state that only a client-mode peer holds. (Seen in CI: a
two-peer demo, one of them in client mode, ended at epochs 4 and 6 after 120 s at the barrier.)

So a client-mode peer that stays ahead of every listening peer for longer than one round can take (AheadOfListeners)
goes back: it takes the listening peers' epoch and downloads their state (HivemindOptimizerBackend.rejoin_listeners).
The samples it trained alone since are lost from the model, as a failed round's are; the coordinator has credited
them all the same.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable

# A client-mode peer further ahead than this does not go back: the listening peers then never shared its history (a
# listener that joined a swarm in which only client-mode peers held the newest state found no state to download and
# trains from its seed), and going back would throw the swarm's training away. A split-off client is found within
# the grace, at a lead of 1 or 2.
MAX_LEAD_EPOCHS = 3
# A client-mode peer ahead for less than this is not split off: it may just have left a round that the listening
# peers are still finishing (their epoch changes only when their round ends).
MIN_GRACE_S = 5.0


def ahead_grace_s(*, matchmaking_time: float, averaging_timeout: float) -> float:
    """How long a client-mode peer may be ahead of every listening peer before it counts as split off: longer than
    one round can last (matchmaking, then the all-reduce), so the listening peers' round has surely ended."""
    return max(MIN_GRACE_S, float(matchmaking_time) + float(averaging_timeout))


def listening_epoch(records: Iterable[dict]) -> int | None:
    """The newest epoch among the listening (non-client) peers' progress records; None when no listening peer has a
    record (nobody to go back to)."""
    epochs = [r["epoch"] for r in records
              if isinstance(r, dict) and not r.get("client_mode") and isinstance(r.get("epoch"), int)]
    return max(epochs) if epochs else None


class AheadOfListeners:
    """Successive looks at the swarm's progress records, for a client-mode peer: `observe` returns the epoch to go
    back to once this peer has been ahead of every listening peer (by at most MAX_LEAD_EPOCHS) for `grace_s` without
    a break, else None."""

    def __init__(self, *, grace_s: float, clock: Callable[[], float] = time.monotonic):
        if grace_s < 0:
            raise ValueError(f"grace_s must be >= 0, got {grace_s}")
        self.grace_s = grace_s
        self._clock = clock
        self._ahead_since: float | None = None

    def observe(self, *, local_epoch: int, records: Iterable[dict]) -> int | None:
        listeners = listening_epoch(records)
        if listeners is None or not 0 < local_epoch - listeners <= MAX_LEAD_EPOCHS:
            self._ahead_since = None
            return None
        now = self._clock()
        if self._ahead_since is None:
            self._ahead_since = now
        if now - self._ahead_since < self.grace_s:
            return None
        self._ahead_since = None  # a new look starts after going back
        return listeners
