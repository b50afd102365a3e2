"""DiLoCo's pure rules alone: the outer Nesterov step, top-k blocks with error feedback, round bookkeeping."""
from __future__ import annotations

import pytest
import torch

from swarm_trainer.diloco.compression import (
    BLOCK,
    block_count,
    block_scores,
    blocks_to_send,
    padded_length,
    round_seed,
    scatter_blocks,
    select_blocks,
    topk_with_error_feedback,
)
from swarm_trainer.diloco.outer import flatten, nesterov_outer_step, pseudo_gradient, unflatten_into
from swarm_trainer.diloco.rounds import PeerProgress, averaging_weight, group_bits, lr_step, peers_still_in_round


def test_outer_step_equals_its_formula_on_a_hand_computed_example():
    theta = torch.tensor([1.0, -2.0])
    m = torch.zeros(2)
    # Round 1: g = [0.5, -1]. m = g = [0.5, -1]; theta -= 0.7 * (g + 0.9 m) = 0.7 * [0.95, -1.9]
    nesterov_outer_step(theta, m, torch.tensor([0.5, -1.0]), lr=0.7, momentum_coef=0.9)
    torch.testing.assert_close(m, torch.tensor([0.5, -1.0]))
    torch.testing.assert_close(theta, torch.tensor([1.0 - 0.665, -2.0 + 1.33]))
    # Round 2: g = [0.2, 0]. m = 0.9 * [0.5, -1] + [0.2, 0] = [0.65, -0.9];
    # theta -= 0.7 * ([0.2, 0] + 0.9 * [0.65, -0.9]) = 0.7 * [0.785, -0.81] = [0.5495, -0.567]
    nesterov_outer_step(theta, m, torch.tensor([0.2, 0.0]), lr=0.7, momentum_coef=0.9)
    torch.testing.assert_close(m, torch.tensor([0.65, -0.9]))
    torch.testing.assert_close(theta, torch.tensor([0.335 - 0.5495, -0.67 + 0.567]))


def test_outer_step_matches_torch_nesterov_sgd():
    torch.manual_seed(0)
    start = torch.randn(50)
    grads = [torch.randn(50) for _ in range(4)]
    theta, m = start.clone(), torch.zeros(50)
    reference = torch.nn.Parameter(start.clone())
    sgd = torch.optim.SGD([reference], lr=0.7, momentum=0.9, nesterov=True)
    for g in grads:
        nesterov_outer_step(theta, m, g)
        reference.grad = g.clone()
        sgd.step()
    torch.testing.assert_close(theta, reference.detach())


def test_outer_step_refuses_bad_hyperparameters():
    with pytest.raises(ValueError, match="outer lr"):
        nesterov_outer_step(torch.zeros(1), torch.zeros(1), torch.zeros(1), lr=0)
    with pytest.raises(ValueError, match="outer momentum"):
        nesterov_outer_step(torch.zeros(1), torch.zeros(1), torch.zeros(1), momentum_coef=1.0)


def test_pseudo_gradient_is_round_start_minus_local_and_flatten_round_trips():
    params = [torch.randn(3, 2), torch.randn(5)]
    flat = flatten(params)
    assert flat.shape == (11,) and flat.dtype == torch.float32
    moved = [p - 0.1 for p in params]
    torch.testing.assert_close(pseudo_gradient(flat, flatten(moved)), torch.full((11,), 0.1))
    copies = [torch.zeros_like(p) for p in params]
    unflatten_into(flat, copies)
    for a, b in zip(copies, params):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError):
        pseudo_gradient(flat, torch.zeros(3))


def test_error_feedback_loses_nothing_over_rounds():
    """sum of what was sent + the residual == sum of every pseudo-gradient, round after round."""
    numel = 1000  # not a whole number of blocks: the padding must stay zero and unused
    generator = torch.Generator().manual_seed(3)
    residual = torch.zeros(padded_length(numel))
    momentum = torch.zeros(numel)
    total_delta = torch.zeros(numel, dtype=torch.float64)
    total_sent = torch.zeros(numel, dtype=torch.float64)
    num_blocks = block_count(numel)
    k = blocks_to_send(num_blocks, fraction=0.2)
    for round_index in range(12):
        delta = torch.randn(numel, generator=generator)
        blocks = select_blocks(scores=block_scores(momentum), k=k, seed=round_seed(42, round_index))
        assert blocks.numel() == k and len(set(blocks.tolist())) == k
        sent = topk_with_error_feedback(delta, residual, blocks)
        assert sent.numel() == k * BLOCK
        dense = scatter_blocks(sent, blocks, numel=numel)
        momentum = 0.9 * momentum + dense
        total_delta += delta.double()
        total_sent += dense.double()
        torch.testing.assert_close(total_sent + residual[:numel].double(), total_delta, rtol=0, atol=1e-4)
        assert residual[numel:].abs().max() == 0
    # The chosen blocks left nothing behind in the residual.
    assert residual.view(-1, BLOCK)[blocks].abs().max() == 0


def test_block_selection_is_shared_and_follows_the_momentum():
    scores = torch.zeros(100)
    scores[[3, 50, 77]] = torch.tensor([5.0, 9.0, 7.0])
    a = select_blocks(scores=scores, k=6, seed=round_seed(1, 4))
    b = select_blocks(scores=scores.clone(), k=6, seed=round_seed(1, 4))
    assert torch.equal(a, b), "same shared inputs, same blocks on every peer"
    assert {50, 77, 3} <= set(a.tolist()), "the top k // 2 blocks by momentum are always sent"
    c = select_blocks(scores=scores, k=6, seed=round_seed(1, 5))
    assert not torch.equal(a, c), "the random half changes with the round"
    # With no momentum yet (round 0) every block is drawn at random.
    assert select_blocks(scores=torch.zeros(100), k=10, seed=1).numel() == 10
    with pytest.raises(ValueError):
        select_blocks(scores=scores, k=0, seed=1)
    with pytest.raises(ValueError):
        blocks_to_send(10, fraction=0)


def test_round_rules():
    assert group_bits(0) == "0" * 16 and group_bits(5) == "0" * 13 + "101"
    assert group_bits(5) != group_bits(6)
    assert lr_step(round_index=3, inner_step=7, inner_steps=10) == 37
    with pytest.raises(ValueError):
        lr_step(round_index=0, inner_step=11, inner_steps=10)
    progress = [PeerProgress(b"me", 4), PeerProgress(b"slow", 3), PeerProgress(b"ahead", 4),
                PeerProgress(b"laggard", 1)]
    assert peers_still_in_round(progress, finished_round=3, me=b"me") == [b"slow"]
    assert averaging_weight(8) == 8.0 and 0 < averaging_weight(0) < 1e-3


def test_run_config_diloco_keys_are_validated_and_need_a_restart():
    from swarm.runconfig import ConfigError, RunConfig, restart_needed, validate

    config = validate({"mode": "diloco", "inner_steps": 50, "pseudo_grad_compression": "topk",
                       "topk_fraction": 0.05, "outer_overlap": False})
    assert (config.mode, config.inner_steps, config.outer_lr, config.outer_momentum) == ("diloco", 50, 0.7, 0.9)
    from swarm_trainer.diloco.optimizer import DiLoCoSettings

    settings = DiLoCoSettings.from_config(config)
    assert (settings.compression, settings.topk_fraction, settings.overlap) == ("topk", 0.05, False)
    for bad, words in [({"mode": "async"}, "mode must be one of sync, diloco"),
                       ({"inner_steps": 0}, "inner_steps"), ({"outer_lr": -1}, "outer_lr"),
                       ({"outer_momentum": 1.0}, "outer_momentum"),
                       ({"pseudo_grad_compression": "2bit"}, "none, fp16, int8, topk"),
                       ({"topk_fraction": 1.5}, "topk_fraction"),
                       ({"mode": "diloco", "lr_scheduler": "cosine"}, "needs lr_total_steps")]:
        with pytest.raises(ConfigError, match=words):
            validate(bad)
    assert restart_needed(RunConfig(), RunConfig(mode="diloco")) == ["mode"]
    assert restart_needed(RunConfig(mode="diloco"), RunConfig(mode="diloco", outer_lr=0.5)) == ["outer_lr"]


def test_a_downloaded_outer_state_is_checked_before_it_is_used():
    """A peer of another version, or a hostile one, must not crash the downloader or hand it the wrong shapes."""
    from swarm_trainer.diloco.state_sharing import served_state_problem

    def problem(metadata, tensors, **kw):
        return served_state_problem(metadata, tensors, numel=kw.get("numel", 10), compression="none",
                                    blocks=kw.get("blocks"))

    outer, momentum = torch.zeros(10), torch.zeros(10)
    good = dict(round=3, numel=10, compression="none", pending=False)
    assert problem(good, [outer, momentum]) is None
    assert problem(dict(good, pending=True), [outer, momentum, torch.ones(10)]) is None
    assert problem(dict(good, averaging=True, round=2), [outer, momentum]) is None
    assert "numel" in problem(dict(good, numel=11), [outer, momentum])
    assert "compression" in problem(dict(good, compression="int8"), [outer, momentum])
    assert "round" in problem(dict(good, round=-1), [outer, momentum])
    assert "round" in problem(dict(good, round="3"), [outer, momentum])
    assert "shapes" in problem(dict(good, pending=True), [outer, momentum])  # the pending average is missing
    assert "shapes" in problem(good, [outer, torch.zeros(9)])
    assert "non-finite" in problem(good, [outer, torch.full((10,), float("nan"))])
    assert "dict" in problem(["not", "a", "dict"], [outer, momentum])
    # top-k: the pending buffer holds the blocks sent, plus their indices, each within the vector's blocks
    topk = dict(good, pending=True, compression="none")
    blocks = (1, 2)
    assert problem(topk, [outer, momentum, torch.zeros(64), torch.tensor([1])], blocks=blocks) is None
    assert "outside" in problem(topk, [outer, momentum, torch.zeros(64), torch.tensor([2])], blocks=blocks)
    assert "shapes" in problem(topk, [outer, momentum, torch.zeros(10)], blocks=blocks)


def test_a_peer_whose_round_broke_takes_only_a_state_that_holds_that_round():
    from swarm_trainer.diloco.rounds import holds_round_average

    assert holds_round_average(served_round=4, broken_round=3)  # round 4 with round 3's average pending or applied
    assert holds_round_average(served_round=6, broken_round=3)
    assert not holds_round_average(served_round=3, broken_round=3)  # round 3's start: its all-reduce broke or runs
    assert not holds_round_average(served_round=2, broken_round=3)
