"""The hivemind.Optimizer backend (synchronous gradient averaging) and what every backend shares: the DHT.

`HivemindOptimizerBackend` implements backend.SwarmBackend around one hivemind.Optimizer; backend.make_backend picks
it by run config. Everything hivemind-internal the trainer touches (progress tracker, averagers, the wrapped torch
optimizer's param groups) is here and in endgame.py, nowhere else.

Two hivemind facts shape this module:
- hivemind.Optimizer ignores its own `client_mode` argument in places and follows the DHT's, so the same explicit
  value goes to both, and a client-mode peer is tested.
- `Optimizer.param_groups` returns copies; the LR must be written into the wrapped torch optimizer's groups
  (`optimizer.opt.param_groups`). The engine computes it from the swarm's epoch (never a local step count), so
  every peer uses the same LR at the same epoch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from typing import Sequence

import torch

from swarm.logs import get_logger
from swarm.lr_schedule import lr_for
from swarm.runconfig import RunConfig
from swarm_trainer.endgame import Participant, final_sync, read_progress_records, swarm_step_pending
from swarm_trainer.epoch_drift import MIN_GRACE_S, AheadOfListeners, listening_epoch
from swarm_trainer.optimizer_backend import OptimizerBackendBase
from swarm_trainer.state_download import AppliedStates, download_timeout, load_with_retries, state_bytes

logger = get_logger(__name__)

COMPRESSIONS = ("none", "fp16", "8bit", "adaptive")
# Tensors smaller than this go as fp16 under "adaptive": quantizing small tensors (norms, biases) saves little and
# costs the most accuracy.
ADAPTIVE_THRESHOLD = 2 ** 16 + 1
# A client-mode peer looks at the listening peers' epochs at most this often (one DHT read, bounded by the timeout).
DRIFT_CHECK_INTERVAL_S = 5.0
DRIFT_READ_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class SwarmOptions:
    """Per-peer hivemind settings. The defaults are meant for the internet; tests shrink the timeouts."""
    host_maddrs: Sequence[str] = ("/ip4/0.0.0.0/tcp/0",)
    announce_maddrs: Sequence[str] = ()
    client_mode: bool = False
    use_relay: bool = True
    use_auto_relay: bool = False
    identity_path: str | None = None
    matchmaking_time: float = 15.0
    averaging_timeout: float = 120.0
    load_state_timeout: float = 600.0
    compression: str = "fp16"
    # Parameters are identical on every peer that joined every gradient round, so averaging them each epoch re-sent
    # the whole model for nothing; every 10th still pulls a peer that stepped alone (a failed round) back in.
    average_state_every: int = 10
    # hivemind's delay_grad_averaging + delay_optimizer_step: average and step in the background during the next
    # batch (one step of staleness); needs offload_optimizer.
    delay_grad_averaging: bool = False
    offload_optimizer: bool = True
    verbose: bool = False  # hivemind's own progress lines (matchmaking, averaging) at INFO instead of DEBUG
    extra_initial_peers: Sequence[str] = field(default_factory=tuple)
    # Admission and robust aggregation (swarm.trust): a credential from the coordinator, the DHT authorizer and the
    # guarded averagers. Every peer of a swarm must agree (a checking DHT ignores a non-checking one).
    trust_checks: bool = True


def make_compression(name: str):
    """(gradient compression, state compression) for a --compression choice.

    State (parameters, optimizer statistics) never goes below fp16: 8-bit parameters would visibly damage the model.
    """
    from hivemind.compression import BlockwiseQuantization, Float16Compression, NoCompression, SizeAdaptiveCompression

    if name == "none":
        return NoCompression(), NoCompression()
    if name == "fp16":
        return Float16Compression(), Float16Compression()
    if name == "8bit":
        return BlockwiseQuantization(), Float16Compression()
    if name == "adaptive":
        return (SizeAdaptiveCompression(threshold=ADAPTIVE_THRESHOLD, less=Float16Compression(),
                                        greater_equal=BlockwiseQuantization()), Float16Compression())
    raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {name!r}")


def make_dht(*, initial_peers: Sequence[str], options: SwarmOptions, authorizer=None):
    """The peer's DHT; `authorizer` (swarm.trust.dht_auth.CredentialAuthorizer) makes every DHT request carry this
    peer's credential and refuses peers without one."""
    from swarm.dht_process import SwarmDHT
    from swarm_trainer import traffic

    traffic.install()  # before the DHT and the averagers fork: they inherit the byte counters
    kwargs = dict(host_maddrs=list(options.host_maddrs), client_mode=options.client_mode,
                  use_relay=options.use_relay, use_auto_relay=options.use_auto_relay)
    if authorizer is not None:
        kwargs["authorizer"] = authorizer
    if options.announce_maddrs:
        kwargs["announce_maddrs"] = list(options.announce_maddrs)
    if options.identity_path:
        kwargs["identity_path"] = options.identity_path
    return SwarmDHT(initial_peers=dialable_initial_peers(initial_peers), start=True, **kwargs)


def dialable_initial_peers(initial_peers: Sequence[str]) -> list[str]:
    """The initial peers hivemind can parse; the others are dropped with a warning (one bad address from the
    coordinator must not stop this peer's p2p daemon from starting)."""
    from hivemind.utils.multiaddr import Multiaddr

    good = []
    for addr in initial_peers:
        try:
            Multiaddr(addr)
        except Exception as e:  # noqa: BLE001 (the parser raises several kinds; any means "not dialable")
            logger.warning(f"ignoring initial peer {addr[:120]!r}: not a multiaddr ({e})")
        else:
            good.append(addr)
    return good


def visible_multiaddrs(dht) -> list[str]:
    """Addresses other peers can dial (empty for a client-mode peer, which takes no inbound connections)."""
    if getattr(dht, "client_mode", False):
        return []
    return [str(addr) for addr in dht.get_visible_maddrs()]


def own_rpc_handler_caches() -> None:
    """hivemind caches a servicer class's RPC handlers (and stub) on first use, and finds that cache through
    inheritance: once a plain DecentralizedAverager had collected its own in this process, hivemind.Optimizer's
    averagers called their peers under "DecentralizedAverager.rpc_*" while serving under their own class names, so no
    state download ever arrived. Each averager class hivemind.Optimizer builds gets its own cache (the DiLoCo averager
    declares one in its class)."""
    from hivemind.optim.grad_averager import GradientAverager
    from hivemind.optim.state_averager import TrainingStateAverager

    for cls in (TrainingStateAverager, GradientAverager):
        if "_rpc_handlers" not in vars(cls):
            cls._rpc_handlers = cls._stub_type = None


def make_optimizer(*, dht, run_id: str, params: Sequence[torch.nn.Parameter], config: RunConfig,
                   batch_size: int, options: SwarmOptions, optimizer_cls=None, trust=None):
    """hivemind.Optimizer averaging gradients toward the run's target batch (use_local_updates=False).

    Call it once per batch: loss.backward() (scaled by a hivemind.GradScaler for fp16), set the LR, step().

    Must be created in the main thread (hivemind's averagers fork helpers and install signal-sensitive state).
    """
    from hivemind.compression import NoCompression

    own_rpc_handler_caches()
    params = list(params)
    grad_compression, state_compression = make_compression(options.compression)
    optimizer_cls = optimizer_cls or torch.optim.AdamW
    optimizer_factory = partial(optimizer_cls, lr=lr_for(config, epoch=0, total_steps=config.lr_total_steps),
                                betas=(config.opt_betas_one, config.opt_betas_two), eps=config.opt_epsilon,
                                weight_decay=config.opt_weight_decay)
    from swarm.trust.guard import optimizer_class

    # hivemind.Optimizer itself when `trust` is None; else its averagers admit only credentialed peers and combine
    # gradients robustly (swarm.trust.guard).
    return optimizer_class(trust)(
        dht=dht,
        run_id=run_id,
        params=params,
        optimizer=optimizer_factory,
        target_batch_size=config.target_batch_size,
        batch_size_per_step=batch_size,
        matchmaking_time=options.matchmaking_time,
        averaging_timeout=options.averaging_timeout,
        # A whole download's limit: hivemind starts a slower one over from scratch (state_download.py).
        load_state_timeout=download_timeout(configured=options.load_state_timeout, state_size=state_bytes(params)),
        average_state_every=options.average_state_every,
        offload_optimizer=options.offload_optimizer,
        delay_grad_averaging=options.delay_grad_averaging,
        delay_optimizer_step=options.delay_grad_averaging,
        # The model's .grad buffers are the accumulators: no second full-size copy of the gradients on the device,
        # and hivemind.GradScaler (fp16) unscales exactly the buffers that get averaged. The trainer therefore never
        # calls zero_grad(); hivemind zeroes the buffers after each global step.
        reuse_grad_buffers=True,
        use_local_updates=False,
        client_mode=options.client_mode,
        grad_compression=grad_compression,
        state_averaging_compression=state_compression,
        # State downloads (late joiners, laggards, the end barrier) are exact: fp16 would round the parameters away
        # from the swarm's and flush Adam's tiny second moments to zero (then m / (sqrt(0) + eps) explodes).
        load_state_compression=NoCompression(),
        verbose=options.verbose,
    )


class HivemindOptimizerBackend(OptimizerBackendBase):
    """backend.SwarmBackend over one hivemind.Optimizer: every local step accumulates gradients, the swarm averages
    them once the run's target batch is reached (a global step, one epoch), and the peers step together."""

    def __init__(self, optimizer, *, ahead_grace_s: float = MIN_GRACE_S, **kwargs):
        super().__init__(optimizer, **kwargs)
        self.applied_states = AppliedStates(optimizer.opt)  # tells a download that arrived from one that did not
        self.ahead = AheadOfListeners(grace_s=ahead_grace_s)
        self._next_drift_check = 0.0
        grad_averager = getattr(optimizer, "grad_averager", None)
        if grad_averager is not None and not grad_averager.client_mode:
            # hivemind's load_state_from_peers also downloads the gradient averager's buffers and throws them away
            # (the accumulators are reset right after): a third more bytes for a full UNet. Serve the state only.
            grad_averager.allow_state_sharing = False

    def trust_stats(self) -> dict[str, dict]:
        """Per groupmate: accepted/clipped/dropped/refused as this peer's averagers counted (empty without checks)."""
        stats = getattr(self.optimizer, "trust_stats", None)
        return stats() if stats is not None else {}

    @property
    def schedule_step(self) -> int:
        """The LR schedule counts global epochs in sync mode."""
        return self.optimizer.local_epoch

    def apply_config(self, config: RunConfig) -> None:
        """The optimizer keys a running peer may change (the LR is set before each step), and the target batch."""
        self.apply_optimizer_keys(config)
        self.optimizer.target_batch_size = config.target_batch_size
        self.optimizer.tracker.target_batch_size = config.target_batch_size

    def step(self, *, batch_size: int, grad_scaler=None) -> bool:
        """One local step over gradients already in the .grad buffers; True when it was a global step."""
        epoch_before = self.optimizer.local_epoch
        self.optimizer.step(batch_size=batch_size, grad_scaler=grad_scaler)
        return self.optimizer.local_epoch != epoch_before

    def _fresh_progress_records(self, *, timeout: float = 10.0) -> list[dict] | None:
        """Every peer's hivemind progress record, read now (the tracker refetches only every few seconds); None when
        the DHT did not answer within `timeout`."""
        return read_progress_records(self.dht, self.optimizer.tracker.training_progress_key, timeout=timeout)

    def a_listening_peer_trains(self) -> bool:
        """True for a listening peer; a client-mode peer reads the progress records (a listening peer has one once it
        trained)."""
        optimizer = self.optimizer
        if not optimizer.client_mode:
            return True
        records = self._fresh_progress_records(timeout=DRIFT_READ_TIMEOUT_S)
        return records is not None and listening_epoch(records) is not None

    def rejoin_listeners(self) -> bool:
        """A client-mode peer that stayed ahead of every listening peer (epoch_drift.py) takes their epoch and
        downloads their state; True when it went back. Looks at most every DRIFT_CHECK_INTERVAL_S."""
        optimizer = self.optimizer
        now = time.monotonic()
        if not optimizer.client_mode or now < self._next_drift_check:
            return False
        self._next_drift_check = now + DRIFT_CHECK_INTERVAL_S
        records = self._fresh_progress_records(timeout=DRIFT_READ_TIMEOUT_S)
        epoch = None if records is None else self.ahead.observe(local_epoch=optimizer.local_epoch, records=records)
        if epoch is None:
            return False
        logger.warning(f"this client-mode peer has been at epoch {optimizer.local_epoch}, ahead of every listening "
                       f"peer (at {epoch}), for {self.ahead.grace_s:.0f} s: hivemind never counts a client-mode "
                       f"peer's epoch, so it would step alone from here on; going back to their epoch and state")
        # hivemind refuses a state older than the local epoch, and its catch-up after a download moves a peer one
        # epoch behind the tracker's view forward again without a state: both must see the listeners' epoch first.
        optimizer.state_averager.local_epoch = epoch
        optimizer.tracker.report_local_progress(epoch, 0)
        optimizer.tracker.global_progress.epoch = epoch
        self.load_state_from_peers()
        return True

    def swarm_is_stepping(self) -> bool:
        """Somebody accumulated samples this epoch, or the swarm is ahead: an idle step would take part in a round."""
        tracker = self.optimizer.tracker
        return tracker.global_progress.samples_accumulated > 0 or tracker.global_epoch > self.optimizer.local_epoch

    def swarm_settled(self) -> bool:
        """No global step is owed: nobody (this peer included) holds samples toward the next epoch and nobody is
        ahead, from a fresh read of the progress records (the tracker refetches only every few seconds)."""
        optimizer = self.optimizer
        if optimizer.tracker.local_progress.samples_accumulated > 0:
            return False
        records = self._fresh_progress_records()
        if records is None:
            return False
        return swarm_step_pending(records, local_epoch=optimizer.local_epoch) == (optimizer.local_epoch, 0)

    def step_owed_now(self) -> None:
        """The run is over and every live peer is at the barrier: the samples accumulated toward the next epoch will
        never reach the target, and hivemind would step them only once its ETA passes, which every idle tick pushes
        away again (a tick refreshes this peer's progress record, and the ETA counts time since each record). So the
        ETA is set to now: the next idle tick takes the step, at about the time the other peers at the barrier do, so
        they meet in one round (or step alone, and the final sync aligns them)."""
        from hivemind.utils import get_dht_time

        progress = self.optimizer.tracker.global_progress
        progress.eta_next_epoch = min(progress.eta_next_epoch, get_dht_time())

    def idle_step(self, *, grad_scaler=None) -> bool:
        """A zero-sample step (see TrainEngine.idle_tick); True when it moved this peer to a new epoch."""
        optimizer = self.optimizer
        grad_averager = optimizer.grad_averager
        epoch_before = optimizer.local_epoch
        # hivemind divides the accumulated gradients by the number of step() calls: a zero-sample call must not
        # count, or it would dilute the real gradients this peer accumulated before it ran out of data (also when
        # this very call runs the global step). The zero-sample accumulate inside step() adds the one back.
        grad_averager.local_times_accumulated -= 1
        try:
            optimizer.step(batch_size=0, grad_scaler=grad_scaler)
        finally:
            grad_averager.local_times_accumulated = max(0, grad_averager.local_times_accumulated)
        return optimizer.local_epoch != epoch_before

    def resume(self, epoch: int) -> None:
        """Continue at a checkpoint's epoch (weights already loaded), and offer that state to others at its epoch."""
        self.optimizer.state_averager.local_epoch = epoch
        self.optimizer.tracker.report_local_progress(epoch, 0)
        if not self.optimizer.client_mode:
            self.optimizer.state_averager.state_sharing_priority = epoch

    def wait_for_swarm_progress(self, timeout: float) -> bool:
        """Wait until the swarm's progress was fetched once (so behind_swarm() means something); False on timeout."""
        return self.optimizer.tracker.fetched_global_progress_this_epoch.wait(timeout=timeout)

    def behind_swarm(self) -> bool:
        """True when listening peers are already in a later epoch than this one."""
        return self.optimizer.tracker.global_epoch > self.optimizer.local_epoch

    def load_state_from_peers(self) -> bool:
        """Download the swarm's newest parameters and optimizer state (exact: see make_optimizer), asking again
        when no peer served it (hivemind returns as if it had loaded); whether a state arrived."""
        return load_with_retries(self.optimizer.load_state_from_peers, self.applied_states)

    def final_sync(self, *, peer_id: str, participants: Sequence[Participant], timeout: float) -> str:
        """Leave with the same parameters as every other finished peer (endgame.py); returns the outcome."""
        return final_sync(optimizer=self.optimizer, dht=self.dht, run_id=self.run_id, peer_id=peer_id,
                          participants=participants, params=self.params, timeout=timeout)

    def peers_in_last_round(self) -> int:
        """Peers the progress tracker saw in the swarm's current epoch (hivemind does not expose group sizes)."""
        try:
            return int(self.optimizer.tracker.global_progress.num_peers)
        except Exception:  # noqa: BLE001 - a metric must never stop training
            return 0

    def shutdown(self) -> None:
        self.optimizer.shutdown()

def shutdown(backend, dht) -> None:
    """The backend (or a bare hivemind.Optimizer) first: it says goodbye through the DHT; then the DHT.

    Each step logs and carries on.
    """
    if backend is not None:
        try:
            backend.shutdown()
        except Exception as e:  # noqa: BLE001
            logger.warning(f"optimizer shutdown failed: {e!r}")
    if dht is not None:
        try:
            dht.shutdown()
        except Exception as e:  # noqa: BLE001
            logger.warning(f"DHT shutdown failed: {e!r}")
