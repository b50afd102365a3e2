"""Robust aggregation rules alone: non-finite parts dropped, weights capped, CenteredClip against outliers."""
from __future__ import annotations

import math

import pytest
import torch

from swarm.trust.robust import (
    ACCEPTED,
    CLIPPED,
    DROPPED,
    OUTLIER,
    RobustRules,
    RoundVerdicts,
    capped_weights,
    centered_clip,
    downloaded_state_problem,
    reducer_result_ok,
    robust_average,
)


def honest_parts(n=3, size=1000, seed=0):
    g = torch.Generator().manual_seed(seed)
    signal = torch.randn(size, generator=g)
    return signal, [signal + 0.1 * torch.randn(size, generator=g) for _ in range(n)]


def test_honest_round_is_the_weighted_mean():
    _, parts = honest_parts()
    average, verdicts = robust_average(parts, [1.0, 2.0, 1.0])
    expected = (parts[0] + 2 * parts[1] + parts[2]) / 4
    assert verdicts == [ACCEPTED] * 3
    assert torch.allclose(average, expected, atol=1e-5)


@pytest.mark.parametrize("attack", ["nan", "inf", "x1e6", "flip_x10"])
def test_one_bad_sender_among_three_honest(attack):
    signal, parts = honest_parts()
    bad = {"nan": torch.full_like(signal, math.nan), "inf": torch.full_like(signal, math.inf),
           "x1e6": signal * 1e6, "flip_x10": -10 * signal}[attack]
    if attack == "nan":
        bad[1:] = signal[1:]  # one NaN is enough to drop the part
    average, verdicts = robust_average(parts + [bad], [1.0] * 4)
    honest_mean = sum(parts) / 3
    assert torch.isfinite(average).all()
    expected = {"nan": (DROPPED,), "inf": (DROPPED,), "x1e6": (OUTLIER,), "flip_x10": (CLIPPED, OUTLIER)}
    assert verdicts[3] in expected[attack]
    # The bad sender moves the result by a small fraction of the signal; a plain mean would be ruined.
    assert (average - honest_mean).norm() < 0.15 * signal.norm()
    assert torch.nn.functional.cosine_similarity(average, signal, dim=0) > 0.95


def test_claimed_weight_is_capped_by_credential_and_by_median():
    rules = RobustRules(weight_cap_multiple=4.0)
    assert capped_weights([8.0, 8.0, 1e6], caps=[None, math.inf, None], rules=rules) == [8.0, 8.0, 32.0]
    assert capped_weights([8.0, 8.0, 20.0], caps=[None, None, 10.0], rules=rules) == [8.0, 8.0, 10.0]
    assert capped_weights([8.0, 8.0, 20.0], caps=[None, None, 0.0], rules=rules) == [8.0, 8.0, 0.0]  # no budget left
    # A huge claim with an honest-looking part: the result stays near the honest mean.
    _, parts = honest_parts()
    average, _ = robust_average(parts + [parts[0] * 3], [1.0, 1.0, 1.0, 1e6], caps=[None, None, None, 1.0])
    assert (average - sum(parts) / 3).norm() < 0.2 * parts[0].norm()


def test_bad_weights_and_edge_cases():
    _, parts = honest_parts(n=2)
    average, verdicts = robust_average(parts, [1.0, math.nan])
    assert verdicts == [ACCEPTED, DROPPED] and torch.equal(average, parts[0])
    average, verdicts = robust_average(parts, [0.0, 0.0])  # zero total weight: equal weights, not NaN
    assert torch.isfinite(average).all() and verdicts == [ACCEPTED, ACCEPTED]
    assert robust_average([torch.full((3,), math.inf)], [1.0]) == (None, [DROPPED])
    same = torch.ones(5)
    average, clipped = centered_clip([same, same, same * 7], [1, 1, 1], rules=RobustRules())
    assert torch.equal(average, same) and clipped == [False, False, True]
    with pytest.raises(ValueError):
        robust_average(parts, [1.0])
    with pytest.raises(ValueError):
        RobustRules(tau_multiple=0)


def test_fp16_parts_stay_fp16():
    _, parts = honest_parts()
    average, _ = robust_average([p.half() for p in parts], [1.0] * 3)
    assert average.dtype == torch.float16


def test_round_verdicts_keep_the_worst_part():
    rounds = RoundVerdicts(3)
    rounds.record([ACCEPTED, CLIPPED, None])
    rounds.record([DROPPED, ACCEPTED, None])
    assert rounds.result() == [DROPPED, CLIPPED, None]


def test_reducer_answer_checks():
    sent = torch.ones(8)
    rules = RobustRules()
    assert reducer_result_ok(sent, torch.full((8,), 0.5), rules=rules)  # a plausible average
    assert not reducer_result_ok(sent, torch.full((8,), math.nan), rules=rules)
    assert not reducer_result_ok(sent, sent * 1e6, rules=rules)  # far too long
    assert not reducer_result_ok(sent, -2.75 * sent, rules=rules)  # points against what we sent
    assert reducer_result_ok(torch.zeros(8), sent, rules=rules)  # nothing sent to compare with: finite is enough


def test_in_a_pair_the_reducer_trusts_its_own_part():
    """Two senders have no majority: the other part's norm is cut to the reducer's own, so a x1e6 part moves the slice
    no further than an honest one and a sign-flipped x10 part can at worst cancel it (issue 10, 2-peer groups)."""
    from swarm.trust.robust import CLIPPED, clip_to_trusted

    own = torch.tensor([1.0, 2.0, 2.0])  # norm 3
    poisoned, verdicts = robust_average([own, own * 1e6], [1.0, 1.0], trusted=0)
    assert verdicts == [ACCEPTED, CLIPPED]
    torch.testing.assert_close(poisoned, own)  # the x1e6 part, cut to norm 3, points the same way
    flipped, verdicts = robust_average([own * -10, own], [1.0, 1.0], trusted=1)
    assert verdicts == [CLIPPED, ACCEPTED]
    # At worst a cancelled slice. Not left out when it points against ours: slices of two honest peers' small-batch
    # diffusion gradients do point against each other (seen in the full-trainer test), and a pair in which each
    # peer used only its own part would drift apart.
    torch.testing.assert_close(flipped, torch.zeros(3))
    honest = torch.tensor([1.0, 1.0, 1.0])  # shorter than ours: taken as it is
    average, verdicts = robust_average([own, honest], [1.0, 3.0], trusted=0)
    assert verdicts == [ACCEPTED, ACCEPTED]
    torch.testing.assert_close(average, (own + 3 * honest) / 4)
    # Without knowing which part is ours (trusted=None), or with an idle own part (norm 0 or weight 0): plain mean.
    assert robust_average([own, own * 1e6], [1.0, 1.0])[1] == [ACCEPTED, ACCEPTED]
    assert robust_average([torch.zeros(3), own * 1e6], [1.0, 1.0], trusted=0)[1] == [ACCEPTED, ACCEPTED]
    assert robust_average([own, own * 1e6], [0.0, 1.0], trusted=0)[1] == [ACCEPTED, ACCEPTED]
    assert clip_to_trusted(own * 4, own, multiple=2.0)[1] and float(clip_to_trusted(own * 4, own, multiple=2.0)[0]
                                                                     .norm()) == pytest.approx(6.0)


def test_in_a_pair_an_answer_against_ours_or_much_longer_is_not_used():
    from swarm.trust.robust import pair_result_ok

    sent = torch.tensor([1.0, 2.0, 2.0])
    honest_average = (sent + torch.tensor([2.0, 1.0, 2.0])) / 2
    assert pair_result_ok(sent, honest_average - sent, rules=RobustRules())
    poisoned = (sent + sent * -10) / 2  # the bad reducer trusted its own flipped x10 part: -4.5x ours
    assert not pair_result_ok(sent, poisoned - sent, rules=RobustRules())
    assert not pair_result_ok(sent, sent * 3 - sent, rules=RobustRules())  # 3x ours, same direction


def test_a_downloaded_state_must_be_finite_and_near_the_local_parameters():
    local = [torch.ones(4, 4), torch.ones(3)]
    nearby = [t + 0.1 for t in local] + [torch.tensor(7)]  # a trailing integer (the step) is not compared
    assert downloaded_state_problem(nearby, local, max_distance=2.0) is None
    assert "tensor 1 is not finite" in downloaded_state_problem([local[0], torch.tensor([1.0, math.nan, 0.0])],
                                                                local, max_distance=2.0)
    far = [t * 5 for t in local]  # 4x the local norm away
    assert "4 x the local norm away (limit 2.0)" in downloaded_state_problem(far, local, max_distance=2.0)
    assert downloaded_state_problem(far, local, max_distance=5.0) is None
    # Comparison stops at the first tensor whose shape differs (a state laid out otherwise is compared no further).
    assert downloaded_state_problem([local[0] + 0.1, torch.zeros(9) + 100], local, max_distance=2.0) is None
    # All-zero local parameters: no norm to compare with, only finiteness counts.
    assert downloaded_state_problem([t + 100 for t in local], [torch.zeros(4, 4), torch.zeros(3)],
                                    max_distance=2.0) is None

