"""What every SwarmBackend over a hivemind-style optimizer shares: the optimizer, the epochs it tracks, its LR.

The sync backend (swarm.HivemindOptimizerBackend) and the DiLoCo backend (diloco.backend.DiLoCoBackend) both wrap an
object with `local_epoch`, `tracker.global_epoch`, `client_mode` and a torch optimizer in `opt`; only how a step,
a catch-up and the final sync work differs between them.
"""
from __future__ import annotations

from typing import Sequence

import torch

from swarm.runconfig import RunConfig


class OptimizerBackendBase:
    def __init__(self, optimizer, *, dht, run_id: str, params: Sequence[torch.nn.Parameter]):
        self.optimizer, self.dht, self.run_id, self.params = optimizer, dht, run_id, list(params)

    @property
    def local_epoch(self) -> int:
        return self.optimizer.local_epoch

    @property
    def swarm_epoch(self) -> int:
        """The newest epoch the progress tracker saw among the swarm's peers."""
        return self.optimizer.tracker.global_epoch

    @property
    def client_mode(self) -> bool:
        return self.optimizer.client_mode

    @property
    def lr(self) -> float:
        """The LR the next step uses (what the wrapped torch optimizer holds)."""
        return float(self.optimizer.opt.param_groups[0]["lr"])

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.opt.param_groups:
            group["lr"] = lr

    def apply_optimizer_keys(self, config: RunConfig) -> None:
        """The torch optimizer's keys a running peer may change (the LR is set before each step)."""
        for group in self.optimizer.opt.param_groups:
            group.update(betas=(config.opt_betas_one, config.opt_betas_two), eps=config.opt_epsilon,
                         weight_decay=config.opt_weight_decay)
