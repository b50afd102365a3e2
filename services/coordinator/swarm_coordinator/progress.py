"""Global progress of a run, and the LR the schedule gives at the swarm's epoch (pure functions)."""
from __future__ import annotations

from dataclasses import dataclass, field

from swarm.lr_schedule import lr_for, schedule_step_at_epoch, total_steps_for
from swarm.runconfig import RunConfig
from swarm_coordinator.peers import PeerRecord


def lr_total_steps(config: RunConfig, *, samples_total: int) -> int:
    """Global epochs the LR decay spans: the config's lr_total_steps, else derived from the dataset size.

    0 while the dataset is empty (linear and cosine then behave as constant: there is nothing to decay over yet).
    """
    if config.lr_total_steps > 0:
        return config.lr_total_steps
    if samples_total <= 0:
        return 0
    return total_steps_for(total_samples=samples_total, max_data_epochs=config.max_data_epochs,
                           target_batch_size=config.target_batch_size)


def planned_epochs(config: RunConfig, *, samples_total: int) -> int:
    """Global epochs the run is planned to take (the larger of the configured LR span and what the dataset size and
    data-epoch limit give); 0 while the dataset is empty. Bounds the epochs a heartbeat may claim (limits.py)."""
    derived = 0 if samples_total <= 0 else total_steps_for(
        total_samples=samples_total, max_data_epochs=config.max_data_epochs, target_batch_size=config.target_batch_size)
    return max(config.lr_total_steps, derived)


def current_lr(config: RunConfig, *, epoch: int, samples_total: int) -> float:
    """The LR every peer uses at the start of global epoch `epoch` (in diloco mode: of outer round `epoch`, whose
    first inner step is round * inner_steps): a late joiner starts at exactly this value."""
    return lr_for(config, epoch=schedule_step_at_epoch(config, epoch=max(0, epoch)),
                  total_steps=lr_total_steps(config, samples_total=samples_total))


@dataclass(frozen=True)
class ProgressSnapshot:
    samples_done: int
    samples_total: int
    data_epochs_done: int
    max_data_epochs: int
    chunks_total: int
    chunks_queued: int
    chunks_leased: int
    chunks_done: int
    peers_alive: int
    peers_training: int
    swarm_epoch: int
    swarm_epoch_min: int
    config_version: int
    run_complete: bool
    lr: float
    lr_total_steps: int
    samples_pending: int = 0  # synced from the dataset, waiting to fill a chunk
    reg_samples_done: int = 0  # regularization samples of counted chunks (not in samples_done)
    reg_samples_total: int = 0  # regularization samples synced
    peers: list[PeerRecord] = field(default_factory=list)  # copies, every peer ever registered
    alive_peer_ids: frozenset[str] = frozenset()
