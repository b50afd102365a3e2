"""Memory savers for DiLoCo mode, where the inner optimizer steps on every batch (no gradient accumulation).

- FusedInnerOptimizer: the optimizer step fused into the backward pass, as kohya's `fused_backward_pass`: each
  parameter is stepped by its own optimizer from its post-accumulate-grad hook and its gradient freed at once, so
  the gradients of the whole model never exist at the same time (for SD 1.5's UNet: 1.7 GB in bf16 saved).
  It cannot work with gradient accumulation (sync mode) nor with fp16 loss scaling (the inf check and unscale need
  every gradient before any step), so it is DiLoCo-only and refuses fp16.
- bf16 weights: the trained model is held in bf16 (half of fp32's memory, and the optimizer states follow the
  parameters' dtype). DiLoCo keeps its outer parameters and momentum in fp32 on the CPU, so the swarm's copy of
  the weights does not drift with bf16 rounding; only each round's local steps run in bf16.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch


class FusedInnerOptimizer:
    """One optimizer per parameter, stepped inside loss.backward(). Looks like a torch optimizer to the backend:
    `param_groups` (LR and the other keys are set there), step() (a no-op: the steps already ran) and zero_grad()."""

    def __init__(self, params: Iterable[torch.nn.Parameter], optimizer_cls, **kwargs):
        self.params = [p for p in params if p.requires_grad]
        self.optimizers = {p: optimizer_cls([p], **kwargs) for p in self.params}
        # The same dict objects as the per-parameter optimizers' groups: writing group["lr"] reaches all of them.
        self.param_groups = [group for opt in self.optimizers.values() for group in opt.param_groups]
        self.enabled = True
        self._handles = [p.register_post_accumulate_grad_hook(self._step_parameter) for p in self.params]

    def _step_parameter(self, param: torch.nn.Parameter) -> None:
        if not self.enabled or param.grad is None:
            return
        self.optimizers[param].step()
        param.grad = None  # freed now, not at the end of the backward pass

    def step(self) -> None:
        """Nothing left to do: every parameter was stepped during backward."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def state_dict(self) -> dict:
        return {i: opt.state_dict() for i, opt in enumerate(self.optimizers.values())}

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def check_memory_options(*, fused_backward: bool, bf16_weights: bool, precision: str, mode: str) -> None:
    """Refuse combinations that cannot work, saying what to change."""
    from swarm.errors import ConfigError

    if fused_backward and mode != "diloco":
        raise ConfigError("--fused-backward needs the run's mode to be diloco: in sync mode gradients accumulate "
                          "over the swarm's target batch before any step, so they cannot be freed during backward")
    if fused_backward and precision == "fp16":
        raise ConfigError("--fused-backward cannot be used with --precision fp16 (loss scaling must see every "
                          "gradient before stepping); use --precision bf16")
    if bf16_weights and mode != "diloco":
        raise ConfigError("--bf16-weights needs the run's mode to be diloco (hivemind's sync optimizer keeps fp32 "
                          "master weights; in diloco mode the fp32 copy is the outer parameters)")
    if bf16_weights and precision != "bf16":
        raise ConfigError(f"--bf16-weights needs --precision bf16 (bf16 weights compute in bf16), got {precision}")


def cast_weights(modules: Sequence[torch.nn.Module], dtype: torch.dtype) -> None:
    """Cast the trained modules' weights (bf16 weights); call before the optimizers are built."""
    for module in modules:
        module.to(dtype)
