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


def test_a_groupmate_that_missed_one_round_keeps_its_verdict_for_the_next():
    # A CI run: h0 was in the NaN round's group but never received the bad part (its reducer got 50% of the parts), so
    # it logged no verdict there; its verdict at epoch 3 belongs to the Inf round, whose only honest groupmate it was.
    rounds = [{"epoch": 2, "attack": "nan", "names": ["h0", "h1"]}, {"epoch": 3, "attack": "inf", "names": ["h0"]}]
    events = {"h0": [(3, "dropped")], "h1": [(2, "dropped")]}
    matched = match_verdicts(rounds, events, lambda r: r["names"])
    assert matched == [{"h1": "dropped"}, {"h0": "dropped"}]


def test_a_round_takes_the_closest_verdict_of_each_other_groupmate_left():
    rounds = [{"epoch": 4, "attack": "x1e6"}]
    events = {"a": [(3, "clipped"), (4, "dropped")], "b": [(6, "clipped")]}
    assert match_verdicts(rounds, events, _everyone) == [{"a": "dropped", "b": "clipped"}]
