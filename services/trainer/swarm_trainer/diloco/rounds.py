"""Round bookkeeping of DiLoCo mode, as pure functions.

A round is `inner_steps` local batches followed by one all-reduce of pseudo-gradients. A peer's epoch (what the
progress tracker, the coordinator and checkpoints see) is the number of rounds it has completed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

ROUND_BITS = 16  # the round number's low bits go into the matchmaking key
# Outcomes of a round's all-reduce. INCOMPLETE: averaged, but part of the average never arrived (a groupmate that
# reduced a slice failed to send it back); RELOADED: the round broke and the swarm's outer state was downloaded.
AVERAGED, ALONE, FAILED, INCOMPLETE, RELOADED = "averaged", "alone", "failed", "incomplete", "reloaded"


def group_bits(round_index: int) -> str:
    """The matchmaking group bits for averaging round `round_index`.

    hivemind matches any two averagers with the same key and averages whatever they hold. Putting the round into
    the key means a peer averaging round 7 can never be matched with one averaging round 8 (a fast peer that ran
    ahead, or a laggard), which would mix pseudo-gradients measured from different outer parameters.
    """
    if round_index < 0:
        raise ValueError(f"round index must be >= 0, got {round_index}")
    return format(round_index % (1 << ROUND_BITS), f"0{ROUND_BITS}b")


def lr_step(*, round_index: int, inner_step: int, inner_steps: int) -> int:
    """The step index the inner LR schedule is evaluated at: round * H + inner step, the same on every peer."""
    if not 0 <= inner_step <= inner_steps:
        raise ValueError(f"inner step must be between 0 and {inner_steps}, got {inner_step}")
    return round_index * inner_steps + inner_step


@dataclass(frozen=True)
class PeerProgress:
    """One peer's entry in the progress tracker: which round it is in (its epoch), and whether it is a client."""
    peer: bytes
    epoch: int
    client_mode: bool = False


def peers_still_in_round(progress: Iterable[PeerProgress], *, finished_round: int, me: bytes) -> list[bytes]:
    """Peers the averaging of `finished_round` should wait for: those still training that round.

    Peers already past it are in matchmaking (or done); peers further behind will download the state and cannot
    contribute to this round, so nobody waits for them.
    """
    return [p.peer for p in progress if p.peer != me and p.epoch == finished_round]


def averaging_weight(samples: int) -> float:
    """The weight of a peer's pseudo-gradient: the samples behind it.

    A peer that ended a round without training (it had no data) has an all-zero pseudo-gradient; it still joins
    the all-reduce to receive the average, with a weight so small it changes nothing, because a group whose weights
    are all exactly zero would divide by zero.
    """
    return float(samples) if samples > 0 else 1e-6


def holds_round_average(*, served_round: int, broken_round: int) -> bool:
    """Whether a served outer state includes the average of `broken_round` (this peer's all-reduce of it broke).

    A peer serves round r+1 once round r's average is in hand (applied, or pending with the state), and round r
    while round r's all-reduce still runs or broke (the state round r started from). Only the former helps: the
    latter would throw round r's training away, on every peer when everyone's all-reduce broke.
    """
    return served_round > broken_round


def round_broke(done) -> bool:
    """Whether a finished round (the done Future of its all-reduce) broke: it raised, or ended FAILED or INCOMPLETE.
    Such a round's buffer holds this peer's own values (all or in part), never the swarm's average."""
    return done.exception() is not None or done.result() in (FAILED, INCOMPLETE)
