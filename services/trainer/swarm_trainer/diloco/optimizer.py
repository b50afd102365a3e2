"""DiLoCoOptimizer: the inner optimizer on every batch, and every `inner_steps` batches one outer round.

A round, on each peer:
1. (overlap on) the PREVIOUS round's all-reduce, which ran in the background during this round's inner steps, is
   awaited (normally long finished) and its average applied to the outer parameters with the Nesterov rule;
2. pseudo-gradient = outer parameters (as they now are) - local parameters (see end_round);
3. this round's pseudo-gradient is handed to the averager, and a background thread waits for the peers still
   training this round (progress tracker), then all-reduces it through hivemind, keyed by the round number;
4. the local parameters restart from the outer parameters.
With overlap off, step 3's all-reduce is awaited and applied before step 4 (classic DiLoCo). With overlap on (the
default, as in Streaming DiLoCo and INTELLECT-1) every pseudo-gradient is applied one round late: the GPU never
waits for the link unless one all-reduce takes longer than a whole round of inner steps.

The outer parameters and momentum are flat fp32 CPU buffers, identical on every peer that averaged every round
(same start, same averages, same rule). A peer whose all-reduce failed, or brought back only part of the average,
downloads the swarm's outer state; only when nobody serves one does it apply what it has and go on.
A late joiner downloads the outer state, including an average still waiting to be applied (state_sharing.py).
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Sequence

import torch

from swarm.dht_process import read_records
from swarm.logs import get_logger
from swarm_trainer.diloco.averager import build_averager
from swarm_trainer.diloco.compression import (
    BLOCK,
    TOPK_FRACTION,
    block_count,
    block_scores,
    blocks_to_send,
    padded_length,
    round_seed,
    scatter_blocks,
    select_blocks,
    topk_with_error_feedback,
    wire_compression,
)
from swarm_trainer.diloco.consistent import WIRE_PROTOCOL
from swarm_trainer.diloco.outer import (
    OUTER_LR,
    OUTER_MOMENTUM,
    flatten,
    nesterov_outer_step,
    pseudo_gradient,
    unflatten_into,
)
from swarm_trainer.diloco.rounds import (
    ALONE,
    AVERAGED,
    FAILED,
    INCOMPLETE,
    RELOADED,
    PeerProgress,
    averaging_weight,
    group_bits,
    lr_step,
    peers_still_in_round,
    round_broke,
)
from swarm_trainer.diloco.state_sharing import OuterStateSharing

logger = get_logger(__name__)

POLL_S = 0.2  # how often a peer waiting for the rest of its round re-reads the swarm's progress
PROGRESS_READ_TIMEOUT = 10.0  # seconds for one DHT read of the swarm's progress


@dataclass(frozen=True)
class DiLoCoSettings:
    """The swarm-wide DiLoCo settings (from the run config: every peer must use the same ones)."""
    inner_steps: int = 100
    outer_lr: float = OUTER_LR
    outer_momentum: float = OUTER_MOMENTUM
    compression: str = "int8"
    topk_fraction: float = TOPK_FRACTION
    overlap: bool = True
    seed: int = 42

    @classmethod
    def from_config(cls, config) -> "DiLoCoSettings":
        return cls(inner_steps=config.inner_steps, outer_lr=config.outer_lr, outer_momentum=config.outer_momentum,
                   compression=config.pseudo_grad_compression, topk_fraction=config.topk_fraction,
                   overlap=config.outer_overlap, seed=config.seed)


@dataclass(frozen=True)
class Timeouts:
    matchmaking: float = 15.0
    averaging: float = 120.0  # the whole wait for a round's peers plus its all-reduce
    load_state: float = 600.0


class DiLoCoOptimizer(OuterStateSharing):
    """Call step() after each backward pass (or after a fused backward that already stepped, see fused.py)."""

    def __init__(self, *, dht, run_id: str, params: Sequence[torch.nn.Parameter], inner_optimizer,
                 settings: DiLoCoSettings = DiLoCoSettings(), timeouts: Timeouts = Timeouts(),
                 client_mode: bool = False, fused: bool = False, averager_class: type | None = None,
                 averager_kwargs: dict | None = None, tracker_key=None):
        from hivemind.optim.progress_tracker import ProgressTracker

        self.params, self.opt, self.settings, self.timeouts = list(params), inner_optimizer, settings, timeouts
        self.client_mode, self.fused, self.dht = client_mode, fused, dht
        self.local_epoch = 0  # completed rounds
        self.inner_step = 0
        self.samples_in_round = 0
        self.rounds_averaged = 0  # rounds whose all-reduce included another peer
        self.incomplete_rounds = 0  # rounds whose average arrived only in part
        self.state_downloads = 0  # outer states downloaded from peers (joined, or fell out of step)
        self.stepped_ever = False
        self._end_round_early = False  # see load_state_from_peers
        self.last_group_size = 0
        self.outer = flatten(self.params)
        self.numel = self.outer.numel()
        self.momentum = torch.zeros_like(self.outer)
        self.topk = settings.compression == "topk"
        self.residual = self.blocks = None
        if self.topk:
            self.k_blocks = blocks_to_send(block_count(self.numel), fraction=settings.topk_fraction)
            self.residual = torch.zeros(padded_length(self.numel))  # what was not sent yet (error feedback)
            buffer = torch.zeros(self.k_blocks * BLOCK)
        else:
            buffer = torch.zeros(self.numel)
        self._lock = threading.RLock()  # the outer state: main thread (rounds) vs hivemind's state-serving thread
        self._pending: Future | None = None  # the all-reduce of the last round, until applied
        self._pending_blocks: torch.Tensor | None = None
        self._stopping = threading.Event()
        # Calls into the averager's process go through one pipe; the main thread (new round, state download) and the
        # all-reduce thread both send on it, and interleaved messages would corrupt it.
        self._pipe_lock = threading.Lock()
        self.prefix = f"{run_id}_diloco_{WIRE_PROTOCOL}"  # peers group only with peers speaking the same protocol
        self.averager = build_averager(
            buffer=buffer, dht=dht, prefix=self.prefix, state_source=self._served_state, reference_tensors=[self.outer],
            compression=wire_compression(settings.compression), client_mode=client_mode,
            matchmaking_time=timeouts.matchmaking, averaging_timeout=timeouts.averaging,
            initial_group_bits=group_bits(0), state_check=self._served_state_check(),
            averager_class=averager_class, extra_kwargs=averager_kwargs)
        # Epochs here are rounds; "samples" reported to the tracker are inner steps, so the swarm's progress reads
        # as steps toward the next round.
        # tracker_key: the RSA key that signs this peer's progress record; None is the process-wide key (one peer
        # per process). Two peers in one process (tests) need one each, or they overwrite each other's record.
        self.tracker = ProgressTracker(dht, self.prefix, target_batch_size=settings.inner_steps,
                                       client_mode=client_mode, private_key=tracker_key, start=True)

    # ---- the inner loop --------------------------------------------------------------------------------------
    @property
    def lr_step(self) -> int:
        """The step the inner LR schedule is evaluated at for the next inner step."""
        return lr_step(round_index=self.local_epoch, inner_step=self.inner_step, inner_steps=self.settings.inner_steps)

    def step(self, *, batch_size: int, grad_scaler=None) -> bool:
        """One inner step over the gradients in .grad (skipped when fused: it already ran in backward); True when
        it ended a round."""
        if not self.fused:
            if grad_scaler is not None:
                grad_scaler.step(self.opt)
            else:
                self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        self.inner_step += 1
        self.samples_in_round += batch_size
        self.stepped_ever = True
        self.tracker.report_local_progress(self.local_epoch, self.inner_step)
        if self.inner_step >= self.settings.inner_steps or self._end_round_early:
            self.end_round()
            return True
        epoch = self.local_epoch
        return self._reload_if_last_round_broke() and self.local_epoch != epoch

    def _reload_if_last_round_broke(self) -> bool:
        """(overlap) The last round's all-reduce ended FAILED or INCOMPLETE: download the swarm's state now and
        restart this round from it. At this round's end it came too late: the groupmates serve their state once their
        all-reduce of this round is done, which waits for this peer, which waited for their state."""
        pending = self._pending
        if not self.settings.overlap or pending is None or not pending.done():
            return False
        return round_broke(pending) and self._apply_pending() == RELOADED

    # ---- rounds ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def end_round(self) -> None:
        """End the current round now (after H inner steps, or early: no data while the swarm moved on, the end)."""
        if self.settings.overlap and self._apply_pending() == RELOADED:
            return  # this peer missed the last round: it restarted from the swarm's state, this round's work is gone
        # The pseudo-gradient: outer parameters - local ones, both as they are NOW, the late average applied just
        # above. With overlap this round's inner steps started from outer parameters without the last round's
        # average, and mostly re-learned what that round moved; measured from where the round started, both rounds'
        # moves got applied and Nesterov diverged (test_overlap_converges_like_classic_diloco).
        delta = flatten(self.params)
        pseudo_gradient(self.outer, delta, out=delta)
        finished_round, weight = self.local_epoch, averaging_weight(self.samples_in_round)
        with self._lock:
            with self.averager.get_tensors() as (buffer,):
                if self.topk:
                    self._pending_blocks = select_blocks(scores=block_scores(self.momentum), k=self.k_blocks,
                                                         seed=round_seed(self.settings.seed, finished_round))
                    buffer.copy_(topk_with_error_feedback(delta, self.residual, self._pending_blocks))
                else:
                    buffer.copy_(delta)
            del delta
            self._pending = in_background(self._average_round, finished_round, weight)
            self._next_round(finished_round + 1)
        if not self.settings.overlap and self._apply_pending() == RELOADED:
            return
        unflatten_into(self.outer, self.params)

    def _next_round(self, epoch: int) -> None:
        self.local_epoch, self.inner_step, self.samples_in_round = epoch, 0, 0
        self._end_round_early = False  # see load_state_from_peers
        with self.tracker.pause_updates():
            self.tracker.update_epoch(epoch)
        if not self.client_mode:
            with self._pipe_lock:
                self.averager.state_sharing_priority = epoch

    @torch.no_grad()
    def _apply_pending(self) -> str | None:
        """Wait for the last all-reduce (it bounds its own time) and apply its average with the outer step.

        Returns the all-reduce's outcome. When it FAILED although other peers were in the round (a timeout, a peer
        that averaged without us), stepping alone would leave this peer's outer parameters off the swarm's for
        good, so it downloads the swarm's state instead (RELOADED); the same when it was INCOMPLETE. Only when no
        peer serves a state with this round's average does this peer step with what it has.
        """
        pending = self._pending
        if pending is None:
            return None
        try:
            outcome = pending.result()
        except Exception as e:  # noqa: BLE001 - _average_round catches hivemind's errors; anything else lands here
            logger.warning(f"DiLoCo all-reduce failed: {e!r}")
            outcome = FAILED
        if outcome in (FAILED, INCOMPLETE) and self.load_state_from_peers(with_round=self.local_epoch - 1):
            return RELOADED
        with self._lock:
            with self.averager.get_tensors() as (buffer,):
                if self.topk:
                    grad = scatter_blocks(buffer, self._pending_blocks, numel=self.numel)
                else:
                    grad = buffer
                nesterov_outer_step(self.outer, self.momentum, grad, lr=self.settings.outer_lr,
                                    momentum_coef=self.settings.outer_momentum)
            self._pending = self._pending_blocks = None
        if outcome == AVERAGED:
            self.rounds_averaged += 1
        return outcome

    def _average_round(self, finished_round: int, weight: float) -> bool:
        """In the background: wait for the peers still in this round, then all-reduce. AVERAGED: the buffer holds
        the average; ALONE (nobody else in this round) or FAILED: it still holds this peer's own part."""
        from hivemind.utils import get_dht_time

        deadline = time.monotonic() + self.timeouts.averaging
        me = self.dht.peer_id.to_bytes()
        while True:
            progress = self.swarm_progress()
            # A read counts once it shows this peer past the round (so the others can see that too); a failed or
            # stale DHT read on a busy machine must not look like an empty swarm.
            # (hivemind's tracker publishes nothing for a peer that never trained: then there is nothing to see.)
            current = self.stepped_ever is False or any(p.peer == me and p.epoch > finished_round for p in progress)
            waiting = peers_still_in_round(progress, finished_round=finished_round, me=me)
            if (current and not waiting) or time.monotonic() >= deadline:
                break
            if self._stopping.wait(POLL_S):
                return FAILED
        partners = [p for p in progress if p.peer != me and p.epoch > finished_round]
        if current and not partners:
            logger.info(f"DiLoCo round {finished_round}: no other peer in this round; stepping alone")
            self.last_group_size = 1
            return ALONE
        remaining = deadline - time.monotonic()
        if remaining <= self.timeouts.matchmaking:
            remaining = self.timeouts.matchmaking * 2  # the wait used it all up; still give matchmaking a chance
        try:
            with self._pipe_lock:
                self.averager.reset_missing_share()
                self.averager.set_group_bits(group_bits(finished_round))
                control = self.averager.step(gather=finished_round, weight=weight, timeout=remaining,
                                             scheduled_time=get_dht_time() + self.timeouts.matchmaking,
                                             allow_retries=True, wait=False)
            gathered = control.result()
        except Exception as e:  # noqa: BLE001 - a failed round must not stop training
            logger.warning(f"DiLoCo round {finished_round}: all-reduce failed ({e!r})")
            self.last_group_size = 1
            return FAILED
        rounds = set((gathered or {}).values())
        self.last_group_size = len(gathered or {})
        if rounds - {finished_round}:
            logger.warning(f"DiLoCo round {finished_round}: averaged with peers of rounds {sorted(rounds)}")
        missing = self.averager.missing_share
        if missing > 0:
            # A groupmate that reduced a slice failed to send it back: this peer holds its own values there, the
            # others the average, so its outer parameters would stay off theirs for good.
            logger.warning(f"DiLoCo round {finished_round}: {missing:.1%} of the average never arrived (a groupmate "
                           f"failed to send its slice back); this peer will download the swarm's state instead")
            self.incomplete_rounds += 1
            return INCOMPLETE
        logger.info(f"DiLoCo round {finished_round}: averaged in a group of {self.last_group_size}")
        return AVERAGED if self.last_group_size > 1 else ALONE

    def swarm_progress(self) -> list[PeerProgress]:
        """Every live peer's round, from the progress tracker's DHT record (empty when it could not be read)."""
        records = read_records(self.dht, self.tracker.training_progress_key, timeout=PROGRESS_READ_TIMEOUT) or {}
        return [PeerProgress(bytes(value["peer_id"]), int(value["epoch"]), bool(value.get("client_mode", False)))
                for value in records.values() if "peer_id" in value and "epoch" in value]

    def finish(self) -> None:
        """At the end of the run (every peer at the barrier, in the same round): one last round over what each
        trained since its last round (possibly nothing: then a zero pseudo-gradient with a negligible weight, so
        every peer takes part and nobody waits for a missing one), its average applied, and the local parameters
        set to the outer parameters (what checkpoints, export and the final sync see)."""
        self.end_round()
        self._apply_pending()
        unflatten_into(self.outer, self.params)

    def resume(self, epoch: int) -> None:
        """Continue at a checkpoint's round: the loaded weights become the outer parameters (momentum restarts)."""
        with self._lock:
            flatten(self.params, out=self.outer)
            self.momentum.zero_()
            self._next_round(epoch)

    def shutdown(self, *, timeout: float = 10.0) -> None:
        """Let a running all-reduce finish (bounded: peers may be waiting for our part), then stop."""
        self._stopping.set()
        if self._pending is not None:
            try:
                self._pending.result(timeout=timeout)
            except Exception:  # noqa: BLE001 - leaving anyway
                pass
        self.tracker.shutdown(timeout=5)
        self.averager.shutdown()


def in_background(fn, *args) -> Future:
    """Run fn(*args) in a daemon thread (an all-reduce stuck on a dead peer must not keep the process alive)."""
    future: Future = Future()

    def run():
        try:
            future.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed to whoever waits on the future
            future.set_exception(e)

    threading.Thread(target=run, name="diloco-allreduce", daemon=True).start()
    return future
