"""CheckedTensorPartContainer: which groupmate answers are used, set aside without blame, or refused as garbage."""
from __future__ import annotations

import torch
from hivemind.averaging.partition import TensorPartContainer

from swarm.trust.reducer import CheckedTensorPartContainer
from swarm.trust.robust import RobustRules


def _container(sent: torch.Tensor, *, group_size: int, own_weight: float = 1.0) -> CheckedTensorPartContainer:
    """A live hivemind container whose peer 1 reduces all of `sent` (as RobustAllReduceRunner installs it)."""
    fractions = [0.0] * group_size
    fractions[1] = 1.0
    container = TensorPartContainer([sent.clone()], fractions, return_deltas=True)
    container.__class__ = CheckedTensorPartContainer
    container.rules, container.refused_reducers, container.unused_reducers = RobustRules(), set(), set()
    container.excluded_reducers, container.own_weight = set(), own_weight
    return container


def _judge(sent: torch.Tensor, answer: torch.Tensor, *, group_size: int,
           own_weight: float = 1.0) -> tuple[str, torch.Tensor]:
    container = _container(sent, group_size=group_size, own_weight=own_weight)
    container.register_processed_part(1, 0, answer - sent)  # hivemind's reducers answer average - what we sent
    kind = "garbage" if container.refused_reducers else "unused" if container.unused_reducers else "used"
    return kind, container._output_parts_by_peer[1][0]


def test_garbage_answers_are_refused_and_plausible_suspect_ones_set_aside_without_blame():
    sent = torch.tensor([1.0, 2.0, 2.0])
    honest = (sent + torch.tensor([2.0, 1.0, 2.0])) / 2
    for group_size in (2, 3):
        kind, delta = _judge(sent, honest, group_size=group_size)
        assert kind == "used" and torch.equal(delta, honest - sent)
        for garbage in (sent * 1e6, torch.full((3,), float("nan")), torch.full((3,), float("inf"))):
            kind, delta = _judge(sent, garbage, group_size=group_size)
            assert kind == "garbage" and torch.equal(delta, torch.zeros(3))  # our own part is used: delta 0
    # Pointing against ours: in a group of 3+ used when no longer than ours (an honest average of noisy gradients
    # often does that), not used when longer (a poisoned reducer's flipped answer), never a ban; in a pair not used.
    assert _judge(sent, -0.5 * sent, group_size=3)[0] == "used"
    assert _judge(sent, -3.0 * sent, group_size=3)[0] == "unused"
    assert _judge(sent, -0.5 * sent, group_size=2)[0] == "unused"
    # In a pair, over 2x our norm is suspect (a poisoned reducer trusting its own part), inside 10x not garbage.
    assert _judge(sent, 3 * sent, group_size=2)[0] == "unused"
    assert _judge(sent, 3 * sent, group_size=3)[0] == "used"


def test_when_our_own_part_is_not_finite_no_reducer_is_blamed():
    sent = torch.tensor([1.0, float("inf"), 2.0])
    kind, _ = _judge(sent, torch.tensor([1.0, 2.0, 2.0]), group_size=3)
    assert kind == "used"  # nothing to judge it against; an overflowed step of ours contributes nothing anyway


def test_with_no_weight_of_our_own_our_part_is_no_yardstick():
    """A peer that accumulated no samples this round (just after a state download) sends a part that is not its
    gradient: an answer 20x as long is not used but its reducer is not blamed (it may be honest); NaN still is."""
    sent = torch.tensor([0.01, 0.02, 0.0])
    partner = torch.tensor([0.2, 0.4, -0.1])
    assert _judge(sent, partner, group_size=2, own_weight=0.0)[0] == "unused"
    assert _judge(sent, partner, group_size=3, own_weight=0.0)[0] == "unused"
    assert _judge(sent, torch.full((3,), float("nan")), group_size=2, own_weight=0.0)[0] == "garbage"
    assert _judge(sent, partner, group_size=2, own_weight=1.0)[0] == "garbage"  # 20x ours, with weight: refused
