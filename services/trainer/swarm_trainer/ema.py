"""EMA of the trained weights, updated once per global step (parameters only change at global steps).

A small EMA of our own rather than diffusers' EMAModel: the shadow weights can live on the CPU while the model trains
on the GPU (`offload`), which EMAModel's in-place update does not allow.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch


class ParameterEMA:
    def __init__(self, params: Sequence[torch.nn.Parameter], *, decay: float, offload: bool = False,
                 warmup: bool = True):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be between 0 and 1, got {decay}")
        self.decay, self.warmup, self.updates = decay, warmup, 0
        device = torch.device("cpu") if offload else None
        self.shadow = [p.detach().to(device=device or p.device, dtype=torch.float32, copy=True) for p in params]

    def current_decay(self) -> float:
        # Like diffusers' EMAModel: early on the average follows the weights closely, so a short run's EMA is not
        # stuck at the initial weights.
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, params: Sequence[torch.nn.Parameter]) -> None:
        weight = 1.0 - self.current_decay()
        for shadow, param in zip(self.shadow, params):
            shadow.lerp_(param.detach().to(shadow.device, torch.float32), weight)
        self.updates += 1

    @torch.no_grad()
    def copy_to(self, params: Sequence[torch.nn.Parameter]) -> None:
        for shadow, param in zip(self.shadow, params):
            param.copy_(shadow.to(param.device, param.dtype))

    def averaged_module(self, module: torch.nn.Module, *, params_of=None) -> torch.nn.Module:
        """A CPU copy of `module` holding the EMA weights (for saving), leaving the trained module untouched.

        `params_of(module)` lists the parameters the EMA follows, in its order (default: all of them; a LoRA's
        EMA follows only the adapter)."""
        clone = copy.deepcopy(module).to("cpu")
        self.copy_to(params_of(clone) if params_of is not None else list(clone.parameters()))
        return clone

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": [s.cpu() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError("EMA state does not match the model's parameters")
        self.updates = int(state["updates"])
        for shadow, saved in zip(self.shadow, state["shadow"]):
            shadow.copy_(saved.to(shadow.device))
