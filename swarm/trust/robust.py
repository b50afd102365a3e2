"""Robust aggregation rules: how one part of an all-reduce is combined from its senders (pure torch, tested alone).

hivemind adds what it receives with a plain weighted mean, using the weight each sender claims. Here, before a
sender's part counts:
1. a part with NaN/Inf (or a non-finite / negative weight), or one absurdly far from the others (x1e6), is dropped
   and counted;
2. the claimed weight is capped: by what is left of the peer's weight budget (swarm.trust.budget: samples the
   coordinator credited and leased it, less the weight already accepted from it), by its credential's `max_weight`
   (one round's target batch) and by a multiple of the round's median claim, so no peer can claim a million samples;
3. the parts are combined with CenteredClip (Gorbunov et al., "Secure Distributed Training at Scale", ICML 2022):
   start from the coordinate-wise median, then a few times move the centre by the weighted mean of each input's
   difference from it, each difference clipped to norm tau. tau is a multiple of the median distance of the inputs
   from the starting centre, so it scales with the round's honest spread and needs no tuning per model.

Why CenteredClip rather than clipping each part to a multiple of the median norm: norm clipping still lets a
sign-flipped x10 gradient pull the mean back by a whole median norm (with 4 peers the honest step shrinks to ~1/2),
while CenteredClip bounds an outlier's pull by tau/n per iteration around the honest cluster. With only honest peers
and tau at twice the median distance it leaves the mean nearly unchanged (few honest parts are that far out).

The rules see one part (a slice of the flattened tensors) at a time, as hivemind's reducer does, so a sender is
judged per part; `RoundVerdicts` folds that into one verdict per sender and round (worst part wins).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import torch

ACCEPTED, CLIPPED, DROPPED = "accepted", "clipped", "dropped"
# A far outlier is dropped too (and counted as dropped), but its sender is not banned for it: an honest peer with a
# tiny batch can be far from the others; a non-finite part or a garbage answer cannot be honest.
OUTLIER = "outlier"
VERDICTS = (ACCEPTED, CLIPPED, DROPPED)
_SEVERITY = {ACCEPTED: 0, CLIPPED: 1, OUTLIER: 2, DROPPED: 3}


@dataclass(frozen=True)
class RobustRules:
    """Knobs of the robust average. The defaults keep honest rounds a plain weighted mean in practice."""
    tau_multiple: float = 2.0  # CenteredClip radius = this x the median distance of inputs from the median
    iterations: int = 3  # CenteredClip iterations (the paper converges in a few when tau is set from the data)
    weight_cap_multiple: float = 4.0  # a claim above this x the round's median claim is cut down to it
    outlier_multiple: float = 5.0  # a part this x farther from the median than the median distance is dropped
    result_norm_multiple: float = 10.0  # a reducer's answer above this x the norm of what we sent it is refused
    # With two senders there is no majority; the reducer trusts only its own part and cuts the other's norm to this
    # x its own (see clip_to_trusted): the worst a poisoned partner can do is cancel that slice's step.
    pair_norm_multiple: float = 1.0
    pair_answer_multiple: float = 2.0  # in a pair, an answer above this x our part's norm is not used (pair_result_ok)

    def __post_init__(self):
        if not self.tau_multiple > 0:
            raise ValueError(f"tau_multiple must be > 0, got {self.tau_multiple}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if not self.weight_cap_multiple >= 1:
            raise ValueError(f"weight_cap_multiple must be >= 1, got {self.weight_cap_multiple}")
        if not self.outlier_multiple > self.tau_multiple:
            raise ValueError(f"outlier_multiple must exceed tau_multiple, got {self.outlier_multiple}")
        if not self.result_norm_multiple >= 1:
            raise ValueError(f"result_norm_multiple must be >= 1, got {self.result_norm_multiple}")
        if not self.pair_norm_multiple > 0:
            raise ValueError(f"pair_norm_multiple must be > 0, got {self.pair_norm_multiple}")


def is_finite_part(part: torch.Tensor) -> bool:
    """True when every value is finite.

    The sum first: NaN and Inf carry into it, and it is one pass with no bool copy of the part (isfinite().all() was
    most of the reducer's time on a CPU). Only a sum that overflows from huge finite values needs the exact check."""
    if math.isfinite(float(part.sum(dtype=torch.float64 if part.dtype == torch.float64 else torch.float32))):
        return True
    return bool(torch.isfinite(part).all())


def first_non_finite(named_tensors) -> str | None:
    """The name of the first tensor holding NaN or Inf among (name, tensor) pairs, or None when all are finite.

    Guards what must never hold a poisoned model: a checkpoint is not written with non-finite weights, so keep-last-K
    never prunes a good checkpoint to make room for a bad one."""
    for name, tensor in named_tensors:
        if tensor.is_floating_point() and not is_finite_part(tensor.detach()):
            return name
    return None


def capped_weights(weights: Sequence[float], *, caps: Sequence[float | None], rules: RobustRules) -> list[float]:
    """Each claimed weight cut to its cap and to `weight_cap_multiple` x the median claim.

    A cap is the most that sender may claim (swarm.trust.budget and the credential's max_weight; 0 is a real cap: an
    exhausted budget); None or inf means no cap. Only usable claims (finite, >= 0) are passed in; the median is over
    the claims, so one huge claim cannot raise it.
    """
    if not weights:
        return []
    median = _median([float(w) for w in weights])
    relative_cap = rules.weight_cap_multiple * median if median > 0 else math.inf
    return [min(float(w), _cap(cap), relative_cap) for w, cap in zip(weights, caps)]


def _cap(cap: float | None) -> float:
    if cap is None or math.isnan(cap):
        return math.inf
    return max(0.0, float(cap))


def far_outliers(parts: Sequence[torch.Tensor], *, rules: RobustRules) -> list[bool]:
    """Which parts lie more than `outlier_multiple` x the round's spread from the medoid (see `_medoid`).

    Such a part is no noisy honest gradient (x1e6, a wrong model): it is dropped outright rather than clipped, so it
    cannot pull the clipped average by tau every iteration. Needs 3 or more parts (with 2 there is no majority).
    """
    if len(parts) < 3:
        return [False] * len(parts)
    return _outliers(_pairwise_distances(torch.stack([p.float() for p in parts])), rules=rules)


def _outliers(distances: torch.Tensor, *, rules: RobustRules) -> list[bool]:
    medoid, spread = _medoid(distances)
    limit = rules.outlier_multiple * spread
    return [bool(d > limit) for d in distances[medoid]] if limit > 0 else [False] * distances.shape[0]


def centered_clip(parts: Sequence[torch.Tensor], weights: Sequence[float], *,
                  rules: RobustRules) -> tuple[torch.Tensor, list[bool]]:
    """(robust weighted centre, whether each input was clipped in the final iteration).

    Starts from the medoid (the input with the smallest median distance to the others: as robust as a coordinate
    median, and one small Gram matrix instead of a sort of every coordinate); tau = `tau_multiple` x the medoid's
    median distance to the others. All parts must be finite and of one shape; weights >= 0. With zero total weight
    the inputs count equally (hivemind would divide by zero and return NaN).
    """
    return _centered_clip(torch.stack([p.float() for p in parts]), weights, rules=rules)


def _centered_clip(stacked: torch.Tensor, weights: Sequence[float], *, rules: RobustRules,
                   distances: torch.Tensor | None = None) -> tuple[torch.Tensor, list[bool]]:
    n = stacked.shape[0]
    w = torch.tensor([float(x) for x in weights], dtype=torch.float32)
    if not float(w.sum()) > 0:
        w = torch.ones(n)
    w = w / w.sum()
    view = (n,) + (1,) * (stacked.dim() - 1)
    if n <= 2:  # no majority to clip toward: the weighted mean (non-finite parts and weights are handled before)
        return (w.view(view) * stacked).sum(dim=0), [False] * n
    distances = _pairwise_distances(stacked) if distances is None else distances
    medoid, spread = _medoid(distances)
    centre = stacked[medoid].clone()
    tau = rules.tau_multiple * spread
    if tau <= 0:  # most inputs coincide with the medoid: that is the answer
        return centre, [bool(d > 0) for d in distances[medoid]]
    flat = stacked.flatten(1)
    norms = distances[medoid].float()  # the first iteration's distances from the centre are already known
    clipped, previous_clipped = [False] * n, [True]
    for iteration in range(rules.iterations):
        if iteration:
            norms = (flat - centre.flatten()).norm(dim=1)
        scale = torch.clamp(tau / torch.clamp(norms, min=1e-30), max=1.0)
        clipped = [bool(s < 1.0) for s in scale]
        if not any(clipped) and not any(previous_clipped):
            break  # the last step clipped no one, so the centre is the weighted mean, and it still clips no one
        # centre + sum_i c_i (x_i - centre), as one matrix-vector product instead of an n x d difference
        coefficients = w * scale
        centre = (centre.flatten() * (1.0 - float(coefficients.sum())) + coefficients @ flat).view(centre.shape)
        previous_clipped = clipped
    return centre, clipped


def clip_to_trusted(part: torch.Tensor, trusted: torch.Tensor, *, multiple: float) -> tuple[torch.Tensor, bool]:
    """(`part` with its norm cut to `multiple` x the norm of `trusted`, whether it was cut).

    For a group of two, where CenteredClip has no majority and the weighted mean would take a x1e6 or a sign-flipped
    x10 part as it is: the reducer's own part is the one input it knows to be honest, so the other may pull the
    slice at most as hard as that one pushes. A trusted part of norm 0 (an idle peer) gives no scale: nothing is cut.
    """
    limit = multiple * float(trusted.float().norm())
    norm = float(part.float().norm())
    if limit <= 0.0 or norm <= limit:
        return part, False
    return part * (limit / norm), True


def robust_average(parts: Sequence[torch.Tensor], weights: Sequence[float], *,
                   caps: Sequence[float | None] | None = None, trusted: int | None = None,
                   rules: RobustRules = RobustRules()) -> tuple[torch.Tensor | None, list[str]]:
    """Combine one part from every sender: (average or None when no sender is usable, verdict per sender).

    `trusted`: the index of the reducer's own part, if it is among them (used when only two parts are usable: the
    other's norm is cut to ours, see clip_to_trusted). verdicts: "dropped" (non-finite values or weight), "outlier"
    (far from the others), "clipped" (CenteredClip or the pair rule cut it), else "accepted".
    """
    caps = list(caps) if caps is not None else [None] * len(parts)
    if len(caps) != len(parts) or len(weights) != len(parts):
        raise ValueError("parts, weights and caps must have one entry per sender")
    verdicts = [ACCEPTED] * len(parts)
    kept = []
    for i, (part, weight) in enumerate(zip(parts, weights)):
        if not (math.isfinite(weight) and weight >= 0) or not is_finite_part(part):
            verdicts[i] = DROPPED
        else:
            kept.append(i)
    if not kept:
        return None, verdicts
    stacked = torch.stack([parts[i].float() for i in kept])
    distances = _pairwise_distances(stacked) if len(kept) >= 3 else None
    if distances is not None:
        outliers = _outliers(distances, rules=rules)
        if any(outliers):
            for i, outlier in zip(list(kept), outliers):
                if outlier:
                    verdicts[i] = OUTLIER
            inliers = [j for j, outlier in enumerate(outliers) if not outlier]
            kept = [kept[j] for j in inliers]
            stacked, distances = stacked[inliers], distances[inliers][:, inliers]
    if len(kept) == 2 and trusted in kept and weights[trusted] > 0:
        other = kept[1 - kept.index(trusted)]
        row = kept.index(other)
        stacked[row], was_cut = clip_to_trusted(stacked[row], stacked[kept.index(trusted)],
                                                multiple=rules.pair_norm_multiple)
        if was_cut:
            verdicts[other] = CLIPPED
    kept_weights = capped_weights([weights[i] for i in kept], caps=[caps[i] for i in kept], rules=rules)
    average, clipped = _centered_clip(stacked, kept_weights, rules=rules,
                                      distances=distances if len(kept) >= 3 else None)
    for i, was_clipped in zip(kept, clipped):
        if was_clipped:
            verdicts[i] = CLIPPED
    return average.to(parts[kept[0]].dtype), verdicts


def pair_result_ok(sent: torch.Tensor, delta: torch.Tensor, *, rules: RobustRules) -> bool:
    """In a pair, whether the other reducer's answer for its slice looks like an honest pair's average: not pointing
    against what we sent, and at most `pair_answer_multiple` x its norm. An honest reducer of a pair cuts our part to
    its own norm (clip_to_trusted) and averages, so its answer stays near both; a poisoned reducer trusts its own
    poisoned part (a flipped x10 part gives about -5x ours, inside the general 10x bound)."""
    return reducer_result_ok(sent, delta, rules=replace(rules, result_norm_multiple=rules.pair_answer_multiple),
                             check_direction=True)


def group_result_ok(sent: torch.Tensor, delta: torch.Tensor) -> bool:
    """In a group of 3+, whether an answer that passed `reducer_result_ok`'s norm bound may be used: not both
    pointing against what we sent and longer than it.

    Small-batch diffusion gradients are noisy enough that an honest robust average often points against one honest
    member's part (full-trainer runs: every few rounds, a peer's own reducer's answer included); it is short then,
    since averaging shrinks noise. Leaving such answers out made that peer step on its own gradient and drift (one
    run: loss 1.4 after its first step). A poisoned reducer's flipped answer is long (a flipped x10 part); not
    judging direction at all let one through and took that run's honest loss to 3.9x the clean run's. A flipped
    answer no longer than ours still passes: the bias a bad reducer can add to its slice is bounded by our own part.
    """
    sent, result = sent.float(), sent.float() + delta.float()
    return float((result * sent).sum()) >= 0.0 or float(result.norm()) <= float(sent.norm())


def reducer_result_ok(sent: torch.Tensor, delta: torch.Tensor, *, rules: RobustRules,
                      check_direction: bool = True) -> bool:
    """Whether a groupmate's answer for the slice it reduced can be used. hivemind returns `delta` = average - sent;
    the average must be finite, within `result_norm_multiple` x the norm of what we sent, and with `check_direction`
    not point against it.

    A robust average of honest parts is never much longer than one of them (averaging shortens noise), so the norm
    bound only refuses garbage: NaN, Inf, x1e6. Direction is weaker evidence, judged by pair_result_ok and
    group_result_ok (see there). When what we sent is exactly zero there is no scale to compare with and only
    finiteness is checked. None of this catches a reducer that answers with a plausible wrong value (see the README's
    threat model). A refused answer is replaced by our own part, as hivemind does for a reducer that fails.
    """
    if not is_finite_part(delta):
        return False
    sent, result = sent.float(), sent.float() + delta.float()
    sent_norm = float(sent.norm())
    if sent_norm == 0.0:  # nothing to compare with (a slice whose gradient is exactly zero): finite is all we ask
        return True
    if float(result.norm()) > rules.result_norm_multiple * sent_norm + 1e-12:
        return False
    return not check_direction or float((result * sent).sum()) >= 0.0


class RoundVerdicts:
    """One verdict per sender for a whole round: the worst over that sender's parts."""

    def __init__(self, num_senders: int):
        self._worst = [ACCEPTED] * num_senders
        self._seen = [False] * num_senders

    def record(self, verdicts: Sequence[str | None]) -> None:
        """Fold in one part's verdicts (None: that sender did not take part in this part)."""
        for i, verdict in enumerate(verdicts):
            if verdict is None:
                continue
            self._seen[i] = True
            if _SEVERITY[verdict] > _SEVERITY[self._worst[i]]:
                self._worst[i] = verdict

    def result(self) -> list[str | None]:
        """Verdict per sender, None for a sender none of whose parts were judged (it failed or sent nothing)."""
        return [v if seen else None for v, seen in zip(self._worst, self._seen)]


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _pairwise_distances(stacked: torch.Tensor) -> torch.Tensor:
    """(n, n) Euclidean distances between the rows, through a float64 Gram matrix."""
    flat = stacked.flatten(1).double()  # float32 would cancel away small distances between big inputs
    squares = (flat * flat).sum(dim=1)
    gram = flat @ flat.T
    return (squares[:, None] + squares[None, :] - 2 * gram).clamp(min=0).sqrt()


def _medoid(distances: torch.Tensor) -> tuple[int, float]:
    """(index of the input with the smallest median distance to the others, that distance). The lower median, so
    with 3 inputs two that coincide make the spread 0."""
    n = distances.shape[0]
    others = distances.masked_fill(torch.eye(n, dtype=torch.bool), float("inf")).sort(dim=1).values[:, :n - 1]
    medians = others[:, (n - 2) // 2]
    medoid = int(medians.argmin())
    return medoid, float(medians[medoid])


def downloaded_state_problem(tensors: Sequence[torch.Tensor], reference: Sequence[torch.Tensor], *,
                             max_distance: float) -> str | None:
    """Why a state downloaded from a peer must not be used, or None. Any non-finite floating tensor refuses it; then
    the leading tensors that match `reference` (the local tensors) in shape and dtype kind (parameters come first in
    hivemind's states) must lie within `max_distance` x the local norm of the local copy: a peer may be ahead, but a
    state that far away was not trained from this run's parameters."""
    for i, tensor in enumerate(tensors):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return f"tensor {i} is not finite"
    distance_sq, norm_sq = 0.0, 0.0
    for remote, local in zip(tensors, reference):
        if remote.shape != local.shape or not remote.is_floating_point():
            break
        local = local.detach().float().cpu()
        distance_sq += float((remote.float() - local).pow(2).sum())
        norm_sq += float(local.pow(2).sum())
    ratio = distance_sq ** 0.5 / norm_sq ** 0.5 if norm_sq > 0 else 0.0
    if ratio > max_distance:
        return f"its parameters are {ratio:.3g} x the local norm away (limit {max_distance})"
    return None
