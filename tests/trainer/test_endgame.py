"""The final-sync rules: fingerprints see real divergence but not rounding; the anchor choice is deterministic."""
from __future__ import annotations

import torch

from swarm_trainer.endgame import choose_anchor, fingerprints_match, parameter_fingerprint


def _params(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(64, 32, generator=g) * 0.05, torch.randn(32, generator=g) * 0.01, torch.randn(3, 3, 8, 8)]


def test_identical_and_rounding_level_differences_match():
    params = _params()
    assert fingerprints_match(parameter_fingerprint(params), parameter_fingerprint([p.clone() for p in params]))
    nudged = [p * (1 + 1e-7) for p in params]  # a few ulps, as an all-reduce round trip leaves
    assert fingerprints_match(parameter_fingerprint(params), parameter_fingerprint(nudged))


def test_divergence_in_one_tensor_is_seen_even_when_sums_agree():
    params = _params()
    diverged = [p.clone() for p in params]
    # Zero-mean noise of 1e-4 per element keeps the tensor's sum nearly unchanged but is 10x over the e2e tolerance.
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(diverged[0].shape, generator=g) * 1e-4
    diverged[0] += noise - noise.mean()
    assert not fingerprints_match(parameter_fingerprint(params), parameter_fingerprint(diverged))


def test_shape_mismatch_never_matches():
    params = _params()
    assert not fingerprints_match(parameter_fingerprint(params), parameter_fingerprint(params[:2]))


def test_anchor_is_smallest_listening_peer():
    assert choose_anchor([("QmB", False), ("QmA", True), ("QmC", False)]) == "QmB"
    assert choose_anchor([("QmA", True)]) is None
    assert choose_anchor([]) is None
