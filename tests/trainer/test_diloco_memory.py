"""DiLoCo's memory options on CPU: the optimizer step fused into backward, and bf16 weights (tiny SD models)."""
from __future__ import annotations

import copy

import pytest
import torch

from swarm.errors import ConfigError
from swarm_trainer.diloco.fused import FusedInnerOptimizer, cast_weights, check_memory_options
from swarm_trainer.model import build_tiny, prepare_for_training
from swarm_trainer.step import StepOptions, compute_loss, pil_to_pixels, tokenize


def _loss(models, images, captions, *, precision="fp32", seed=0):
    generator = torch.Generator().manual_seed(seed)
    return compute_loss(models, pil_to_pixels(images), tokenize(models.tokenizer, captions),
                        options=StepOptions(precision=precision), generator=generator)


def test_fused_backward_steps_every_parameter_like_a_plain_step_and_frees_gradients(tiny_images):
    models = build_tiny(seed=1)
    prepare_for_training(models, device=torch.device("cpu"))
    reference = copy.deepcopy(models)
    captions = ["red", "blue", "green", "grey"]
    fused = FusedInnerOptimizer(models.unet.parameters(), torch.optim.AdamW, lr=1e-3, weight_decay=1e-2)
    plain = torch.optim.AdamW(reference.unet.parameters(), lr=1e-3, weight_decay=1e-2)
    for group in fused.param_groups:
        group["lr"] = 2e-3  # the backend sets the LR through param_groups; it must reach every parameter
    for group in plain.param_groups:
        group["lr"] = 2e-3
    for step in range(2):
        _loss(models, tiny_images, captions, seed=step).backward()
        assert all(p.grad is None for p in models.unet.parameters()), "gradients are freed during backward"
        fused.step()
        _loss(reference, tiny_images, captions, seed=step).backward()
        plain.step()
        plain.zero_grad(set_to_none=True)
    for a, b in zip(models.unet.parameters(), reference.unet.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    moved = max((a - b).abs().max() for a, b in zip(models.unet.parameters(), build_tiny(seed=1).unet.parameters()))
    assert moved > 1e-4
    fused.remove_hooks()


def test_bf16_weights_train_on_cpu(tiny_images):
    models = build_tiny(seed=1)
    prepare_for_training(models, device=torch.device("cpu"))
    cast_weights([models.unet], torch.bfloat16)
    params = list(models.unet.parameters())
    assert all(p.dtype == torch.bfloat16 for p in params)
    optimizer = FusedInnerOptimizer(params, torch.optim.AdamW, lr=1e-3)
    before = [p.detach().clone() for p in params]
    loss = _loss(models, tiny_images, ["a", "b", "c", "d"], precision="bf16")
    assert torch.isfinite(loss)
    loss.backward()
    assert any((p - b).abs().max() > 0 for p, b in zip(params, before))
    assert all(p.dtype == torch.bfloat16 for p in params)
    assert sum(len(s) for s in optimizer.state_dict().values()) > 0


def test_memory_options_refuse_what_cannot_work():
    check_memory_options(fused_backward=True, bf16_weights=True, precision="bf16", mode="diloco")
    with pytest.raises(ConfigError, match="mode to be diloco"):
        check_memory_options(fused_backward=True, bf16_weights=False, precision="bf16", mode="sync")
    with pytest.raises(ConfigError, match="fp16"):
        check_memory_options(fused_backward=True, bf16_weights=False, precision="fp16", mode="diloco")
    with pytest.raises(ConfigError, match="mode to be diloco"):
        check_memory_options(fused_backward=False, bf16_weights=True, precision="bf16", mode="sync")
    with pytest.raises(ConfigError, match="precision bf16"):
        check_memory_options(fused_backward=False, bf16_weights=True, precision="fp32", mode="diloco")
