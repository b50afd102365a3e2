"""DiLoCoBackend: backend.SwarmBackend over a DiLoCoOptimizer (run config `mode: diloco`).

What the swarm's epochs are here: completed outer rounds. The LR schedule is evaluated at the inner step
(round * inner_steps + inner step, `schedule_step`), the same on every peer.

Idle peers (waiting for a chunk, or done) take part in every round the busy peers finish: when the swarm has moved
past this peer's round, idle_step ends the round with what the peer trained so far (often nothing: a zero
pseudo-gradient with a negligible weight), so it receives the average and stays identical to the others, and
nobody waits for it. Only a peer two or more rounds behind (or one that never synced, like a new joiner) downloads
the outer state instead.
"""
from __future__ import annotations

from typing import Sequence

import torch

from swarm.logs import get_logger
from swarm.runconfig import RunConfig
from swarm_trainer.diloco.optimizer import DiLoCoOptimizer
from swarm_trainer.optimizer_backend import OptimizerBackendBase

logger = get_logger(__name__)


class DiLoCoBackend(OptimizerBackendBase):
    def __init__(self, optimizer: DiLoCoOptimizer, *, dht, run_id: str, params: Sequence[torch.nn.Parameter]):
        super().__init__(optimizer, dht=dht, run_id=run_id, params=params)
        # False until this peer ended a round or downloaded the outer state: a new joiner one round behind with
        # nothing trained yet must download the state rather than average with the wrong outer parameters.
        self.synced = False

    @property
    def schedule_step(self) -> int:
        """Where the LR schedule is evaluated for the next step: round * inner_steps + inner step."""
        return self.optimizer.lr_step

    def apply_config(self, config: RunConfig) -> None:
        """The inner optimizer's keys; every DiLoCo key is a restart key (peers must agree on the outer rule)."""
        self.apply_optimizer_keys(config)

    def step(self, *, batch_size: int, grad_scaler=None) -> bool:
        ended = self.optimizer.step(batch_size=batch_size, grad_scaler=grad_scaler)
        self.synced = self.synced or ended
        return ended

    def a_listening_peer_trains(self) -> bool:
        """Not held back in DiLoCo mode (not built): a client-mode peer that ends rounds before any listening peer
        trains holds outer parameters that no joiner can download, as in sync mode before session.join waited."""
        return True

    def rejoin_listeners(self) -> bool:
        """Rounds wait for every peer still in them, clients included (rounds.py): no peer steps ahead alone."""
        return False

    def swarm_is_stepping(self) -> bool:
        """The swarm finished this peer's round (it waits for us) or ran further ahead."""
        return self.optimizer.tracker.global_epoch > self.optimizer.local_epoch

    def swarm_settled(self) -> bool:
        """Nobody ended a round this peer has not (idle_step catches up); the last round is final_sync's."""
        return not self.swarm_is_stepping()

    def step_owed_now(self) -> None:
        """Nothing to hurry: idle_step ends a round the swarm finished, and the last round is final_sync's."""

    def idle_step(self, *, grad_scaler=None) -> bool:
        if not self.swarm_is_stepping():
            return False
        self.load_state_from_peers()  # ends this peer's round with the others, or downloads when far behind
        return True

    def resume(self, epoch: int) -> None:
        self.optimizer.resume(epoch)

    def wait_for_swarm_progress(self, timeout: float) -> bool:
        return self.optimizer.tracker.fetched_global_progress_this_epoch.wait(timeout=timeout)

    def behind_swarm(self) -> bool:
        """Two or more rounds behind; one behind is normal (the others wait for this peer to end its round),
        except for a peer that never synced and has trained nothing yet (a new joiner): it downloads the state."""
        behind_by = self.optimizer.tracker.global_epoch - self.optimizer.local_epoch
        fresh = not self.synced and self.optimizer.inner_step == 0
        return behind_by >= 2 or (behind_by >= 1 and fresh)

    def load_state_from_peers(self) -> None:
        """Catch up with the swarm. One round behind (not a fresh joiner), the others are waiting for this peer in
        that round: it ends the round with them (the same result, no download; a download would wait for their
        all-reduce, which waits for this peer). Further behind, or fresh: download the outer state."""
        if self.swarm_is_stepping() and not self.behind_swarm():
            self.optimizer.end_round()
            self.synced = True
            return
        if self.optimizer.load_state_from_peers():
            self.synced = True

    def final_sync(self, *, peer_id: str, participants: Sequence, timeout: float) -> str:
        """One last round over what every peer trained since its last round (all peers are at the barrier
        together), the outer step applied, local parameters set to the outer ones; then endgame's check that
        every peer leaves with the anchor's parameters (downloading them where not)."""
        from swarm_trainer.endgame import final_sync

        self.optimizer.finish()
        return final_sync(optimizer=EndgameView(self.optimizer), dht=self.dht, run_id=self.run_id,
                          peer_id=peer_id, participants=participants, params=self.params, timeout=timeout)

    def peers_in_last_round(self) -> int:
        return int(self.optimizer.last_group_size)

    def trust_stats(self) -> dict[str, dict]:
        """Per groupmate: accepted/clipped/dropped/refused as the trust guard counted (empty without checks)."""
        stats = getattr(self.optimizer.averager, "trust_stats", None)
        return stats() if stats is not None else {}

    def shutdown(self) -> None:
        self.optimizer.shutdown()


class EndgameView:
    """What endgame.final_sync uses of a hivemind.Optimizer, over a DiLoCoOptimizer: a state averager that can
    stop serving, a no-op 'finish delayed updates' (finish() already ran) and load_state_from_peers."""

    def __init__(self, optimizer: DiLoCoOptimizer):
        self._optimizer = optimizer
        self.state_averager = _StateAveragerView(optimizer)
        self.grad_averager = None

    def load_state_from_peers(self) -> None:
        self._optimizer.load_state_from_peers()


class _StateAveragerView:
    def __init__(self, optimizer: DiLoCoOptimizer):
        self._averager = optimizer.averager

    def step(self, **_kwargs) -> None:
        """Nothing delayed is left after DiLoCoOptimizer.finish()."""

    @property
    def client_mode(self) -> bool:
        return self._averager.client_mode

    @property
    def allow_state_sharing(self) -> bool:
        return self._averager.allow_state_sharing

    @allow_state_sharing.setter
    def allow_state_sharing(self, value: bool) -> None:
        self._averager.allow_state_sharing = value


def make_diloco_backend(*, config: RunConfig, dht, run_id: str, params: Sequence[torch.nn.Parameter],
                        options, optimizer_cls=None, fused_backward: bool = False, trust=None,
                        tracker_key=None) -> DiLoCoBackend:
    """Build the inner optimizer (fused into backward when asked), the DiLoCo optimizer and its averager (with the
    trust layer's guard when `trust` settings are given and enabled). `tracker_key`: see DiLoCoOptimizer (only
    for several peers in one process)."""
    from functools import partial

    from swarm_trainer.diloco.fused import FusedInnerOptimizer
    from swarm_trainer.diloco.optimizer import DiLoCoSettings, Timeouts

    params = list(params)
    optimizer_cls = optimizer_cls or torch.optim.AdamW
    inner_kwargs = dict(lr=config.lr, betas=(config.opt_betas_one, config.opt_betas_two), eps=config.opt_epsilon,
                        weight_decay=config.opt_weight_decay)
    if fused_backward:
        inner = FusedInnerOptimizer(params, optimizer_cls, **inner_kwargs)
    else:
        inner = optimizer_cls(params, **inner_kwargs)
    averager_class, averager_kwargs = None, None
    if trust is not None and getattr(trust, "enabled", False):
        from swarm.trust import averager_class as guarded_class
        from swarm_trainer.diloco.averager import PseudoGradientAverager

        averager_class = partial(guarded_class(PseudoGradientAverager, trust), trust=trust)
    optimizer = DiLoCoOptimizer(
        dht=dht, run_id=run_id, params=params, inner_optimizer=inner, settings=DiLoCoSettings.from_config(config),
        timeouts=Timeouts(matchmaking=options.matchmaking_time, averaging=options.averaging_timeout,
                          load_state=options.load_state_timeout),
        client_mode=options.client_mode, fused=fused_backward, averager_class=averager_class,
        averager_kwargs=averager_kwargs, tracker_key=tracker_key)
    return DiLoCoBackend(optimizer, dht=dht, run_id=run_id, params=params)
