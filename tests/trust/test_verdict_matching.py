"""The bad-peer test's matching of logged verdicts to the bad peer's rounds (full_swarm.match_verdicts), alone."""
from __future__ import annotations

from tests.trust.full_swarm import match_verdicts


def _everyone(_round: dict) -> list[str]:
    return ["a", "b"]


def test_a_groupmate_one_epoch_behind_is_matched():
    # The bad peer recorded epoch 2; its groupmate was at step #1 when it dropped the NaN part (seen in a CI run).
    rounds = [{"epoch": 0, "attack": "x1e6"}, {"epoch": 2, "attack": "nan"}]
    matched = match_verdicts(rounds, {"a": [(0, "dropped"), (1, "dropped")]}, lambda r: ["a"])
    assert matched == [{"a": "dropped"}, {"a": "dropped"}]


def test_one_verdict_never_counts_for_two_rounds():
    rounds = [{"epoch": 0, "attack": "x1e6"}, {"epoch": 1, "attack": "flip_x10"}]
    matched = match_verdicts(rounds, {"a": [(0, "dropped")], "b": []}, _everyone)
    assert matched == [{"a": "dropped"}, {}]


def test_only_part_verdicts_within_the_window_and_the_group_count():
    rounds = [{"epoch": 5, "attack": "flip_x10"}]
    events = {"a": [(3, "dropped"), (5, "answer unused"), (8, "clipped")], "b": [(5, "clipped")]}
    assert match_verdicts(rounds, events, lambda r: ["a"]) == [{}]  # b was not in the group
    assert match_verdicts(rounds, events, _everyone) == [{"b": "clipped"}]
