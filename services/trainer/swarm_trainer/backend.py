"""The seam between a peer and "the swarm": how its local steps become the swarm's steps.

The engine (engine.py) and the peer's lifecycle (session.py) talk to the swarm only through a `SwarmBackend`; the
one place that builds hivemind objects for training is `make_backend` (the DHT, shared by every backend, comes
from swarm.make_dht, built before the run config is known because the peer id is what the peer registers under).

Backends:
- "sync" (today's only mode): swarm.HivemindOptimizerBackend, hivemind.Optimizer averaging gradients to the run's
  target batch size, one global step per epoch.
A second mode (e.g. DiLoCo: local inner steps, pseudo-gradients averaged every H steps) implements the same
protocol in its own module and gets a branch in `make_backend`, chosen by a run-config key. Whatever builds
averagers (admission checks, robust aggregation) plugs in inside the backend's module, not in the engine.
"""
from __future__ import annotations

from typing import Protocol, Sequence

import torch

from swarm.runconfig import RunConfig
from swarm_trainer.epoch_drift import ahead_grace_s
from swarm_trainer.swarm import HivemindOptimizerBackend, SwarmOptions, make_optimizer


class SwarmBackend(Protocol):
    """What a peer needs from the swarm. The engine sets the LR before every step; epochs are the swarm's epochs
    (the LR schedule and checkpoints count them), so every backend must keep peers in the same epoch."""

    @property
    def local_epoch(self) -> int:
        """The swarm epoch this peer's parameters are at."""

    @property
    def swarm_epoch(self) -> int:
        """The newest epoch seen among the swarm's peers."""

    @property
    def client_mode(self) -> bool:
        """True when this peer takes no inbound connections (and so serves no state)."""

    @property
    def schedule_step(self) -> int:
        """Where the run's LR schedule is evaluated for the next step: the swarm epoch in sync mode, the inner step
        (round * inner_steps + step) in DiLoCo mode. The same on every peer."""

    @property
    def lr(self) -> float:
        """The LR the next step uses."""

    def set_lr(self, lr: float) -> None:
        """Set the LR of the next step (the engine computes it with swarm.lr_schedule.lr_for)."""

    def apply_config(self, config: RunConfig) -> None:
        """A new run config version: apply the optimizer keys a running peer may change."""

    def step(self, *, batch_size: int, grad_scaler=None) -> bool:
        """One local step over the gradients in the parameters' .grad; True when it completed a swarm epoch."""

    def a_listening_peer_trains(self) -> bool:
        """True for a listening peer; for a client-mode peer, once a listening peer has trained in this run (has a
        progress record). session.join holds a client-mode peer until then (epoch_drift.py)."""

    def rejoin_listeners(self) -> bool:
        """Called after every step and idle tick: a client-mode peer that got ahead of every listening peer for good
        goes back to their epoch and state (epoch_drift.py); True when it did. A backend without the problem: False."""

    def swarm_is_stepping(self) -> bool:
        """Whether an idle peer should take part (idle_step) now: somebody accumulated samples, or it fell behind."""

    def swarm_settled(self) -> bool:
        """At the end barrier: the swarm owes no more step (nobody holds samples toward the next epoch, nobody is
        ahead), from a fresh look. A peer that left before such a step would end an epoch behind."""

    def step_owed_now(self) -> None:
        """At the end barrier, every live peer there: let the step the swarm owes happen at the next idle tick rather
        than when the swarm's throughput estimate says the target batch would be reached (it never will be)."""

    def idle_step(self, *, grad_scaler=None) -> bool:
        """A step with no samples of its own, to move through epochs with the busy peers; True when it did."""

    def resume(self, epoch: int) -> None:
        """Continue from a checkpoint's epoch (the weights are already loaded)."""

    def wait_for_swarm_progress(self, timeout: float) -> bool:
        """Wait until the swarm's epoch is known (late joiners compare with it); False on timeout."""

    def behind_swarm(self) -> bool:
        """True when the swarm is at a later epoch than this peer."""

    def load_state_from_peers(self) -> None:
        """Download the swarm's current parameters and optimizer state (exactly, not compressed)."""

    def final_sync(self, *, peer_id: str, participants: Sequence, timeout: float) -> str:
        """At the end barrier: leave with the same parameters as every finished peer (endgame.py; participants are
        endgame.Participant: peer id, client mode, samples the coordinator credited); the outcome."""

    def peers_in_last_round(self) -> int:
        """For the metrics: peers seen in the current round (0 when unknown)."""

    def shutdown(self) -> None:
        """Stop the backend's own hivemind objects (the DHT is shut down by its owner afterwards)."""


def make_backend(*, config: RunConfig, dht, run_id: str, params: Sequence[torch.nn.Parameter], batch_size: int,
                 options: SwarmOptions, optimizer_cls=None, trust=None, fused_backward: bool = False) -> SwarmBackend:
    """The backend the run config asks for, built in the caller's (main) thread: hivemind's averagers fork."""
    # One mode so far; a new mode adds a run-config key (validated in swarm/runconfig.py) and a branch here.
    if config.mode == "diloco":
        from swarm_trainer.diloco.backend import make_diloco_backend

        return make_diloco_backend(config=config, dht=dht, run_id=run_id, params=params, options=options,
                                   optimizer_cls=optimizer_cls, fused_backward=fused_backward, trust=trust)
    optimizer = make_optimizer(dht=dht, run_id=run_id, params=params, config=config, batch_size=batch_size,
                               options=options, optimizer_cls=optimizer_cls, trust=trust)
    grace = ahead_grace_s(matchmaking_time=options.matchmaking_time, averaging_timeout=options.averaging_timeout)
    return HivemindOptimizerBackend(optimizer, dht=dht, run_id=run_id, params=params, ahead_grace_s=grace)
