"""The learning rate as a pure function of the swarm's global epoch.

The 2022 swarm trainer stepped its scheduler once per local batch while hivemind steps the optimizer once per global
epoch, so peers with different batch sizes drifted apart. Here the LR is computed from the global epoch
(`hivemind.Optimizer.local_epoch` after sync) alone: every peer gets the same LR at the same epoch, and a late joiner
starts at the LR of the epoch it joins in.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the schedule needs nothing from runconfig at run time
    from swarm.runconfig import RunConfig


def lr_at_epoch(epoch: int, *, base_lr: float, scheduler: str = "constant", warmup_steps: int = 0,
                total_steps: int = 0) -> float:
    """LR for the optimizer step that takes the swarm from `epoch` to `epoch + 1`.

    Warmup rises linearly from base_lr / (warmup_steps + 1) to base_lr. After warmup, "linear" and "cosine" decay to
    0 at `total_steps` (and stay at 0 after it); with total_steps 0 they behave like "constant".
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if warmup_steps > 0 and epoch < warmup_steps:
        return base_lr * (epoch + 1) / (warmup_steps + 1)
    if scheduler == "constant" or total_steps <= 0:
        return base_lr
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (epoch - warmup_steps) / decay_steps)
    if scheduler == "linear":
        return base_lr * (1.0 - progress)
    if scheduler == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr_scheduler {scheduler!r}; use constant, linear or cosine")


def lr_for(config: RunConfig, *, epoch: int, total_steps: int) -> float:
    """THE LR of a run at global epoch `epoch`: the coordinator (status, heartbeats) and every trainer call this.

    `total_steps` is the decay span in global epochs: the config's lr_total_steps when set, else derived from the
    dataset size by the coordinator (see total_steps_for), which tells the trainers in its heartbeat answers.
    """
    return lr_at_epoch(epoch, base_lr=config.lr, scheduler=config.lr_scheduler, warmup_steps=config.lr_warmup_steps,
                       total_steps=total_steps)


def schedule_step_at_epoch(config: RunConfig, *, epoch: int) -> int:
    """The schedule step at the start of global epoch `epoch`: the epoch itself in sync mode; in diloco mode an epoch
    is an outer round and the schedule counts inner steps (round * inner_steps), as every DiLoCo trainer does."""
    return epoch * config.inner_steps if config.mode == "diloco" else epoch


def total_steps_for(*, total_samples: int, max_data_epochs: int, target_batch_size: int) -> int:
    """Global epochs a run of `max_data_epochs` passes over `total_samples` takes (the decay span when not given)."""
    return max(1, math.ceil(total_samples * max_data_epochs / target_batch_size))
