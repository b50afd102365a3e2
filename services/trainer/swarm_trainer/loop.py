"""A peer's life: join, lease and train chunks, heartbeat, report, meet the swarm at the end barrier, save, leave.

Threads: the main thread owns the models and the hivemind.Optimizer (created here, never elsewhere); a heartbeat
thread keeps leases alive and tells the coordinator this peer's epoch; the dataset client's prefetcher leases and
streams the next chunk while the current one trains. Between batches the main thread checks for SIGTERM/SIGINT.
While it has no data (waiting for a chunk, or finished), the peer keeps ticking the optimizer with zero samples so it
moves through epochs together with the busy peers (see TrainEngine.idle_tick).
"""
from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import torch

from swarm.logs import get_logger
from swarm.runconfig import ConfigError, RunConfig, restart_needed
from swarm_trainer import metrics
from swarm_trainer.coordinator_client import CoordinatorClient
from swarm_trainer.features import PeerFeatures
from swarm_trainer.leases import LeaseBook
from swarm_trainer.swarm import SwarmOptions

logger = get_logger(__name__)

EXIT_OK, EXIT_ERROR, EXIT_RESTART_NEEDED = 0, 1, 3


class RestartNeeded(Exception):
    """The coordinator's new config changes keys a running peer cannot apply."""


@dataclass
class TrainerOptions:
    coordinator: str
    token: str | None = None
    output_dir: Path = Path("runs/train")
    name: str = ""
    batch_size: int = 1
    device: str = "auto"
    precision: str | None = None
    swarm: SwarmOptions = field(default_factory=SwarmOptions)
    features: PeerFeatures = field(default_factory=PeerFeatures)
    barrier_timeout: float = 300.0
    metrics_port: int = 9102
    ready_file: str | None = None
    rpc_timeout: float = 30.0
    lease_poll_s: float = 2.0  # how often to ask again when no chunk is free yet
    upload_checkpoints: str | None = None  # s3://bucket/prefix
    s3_endpoint_url: str | None = None
    wandb_project: str | None = None
    progress: bool = True


def parse_config(message) -> RunConfig:
    """A RunConfig message -> RunConfig; a config this trainer does not understand is refused, never guessed."""
    try:
        return RunConfig.from_json(message.config_json)
    except (ConfigError, ValueError) as e:
        raise ConfigError(f"this trainer cannot use run config version {message.version} of run {message.run_id!r}: "
                          f"{e}. Update swarm-diffusion, or ask the host to fix the config.") from None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but CUDA is not available here; use --device cpu or auto")
    return torch.device(name)


class PeerRun:
    def __init__(self, options: TrainerOptions):
        self.options = options
        self.output_dir = Path(options.output_dir).resolve()
        self.stop = threading.Event()
        self.leases = LeaseBook()
        self.finished = False
        self.chunks_reported = 0
        self.run_complete = False
        self.pending_config: tuple[int, RunConfig] | None = None
        self.last_heartbeat = None
        self.dht = self.engine = self.client = self.metrics_server = self.uploader = None
        self.peer_id = self.run_id = self.config_version = None
        self.last_sample_epoch = 0
        self.wandb_run = None
        self._heartbeat_thread: threading.Thread | None = None
        self._heartbeat_stop = threading.Event()
        self._last_tick = 0.0

    # ---- lifecycle -------------------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        main_pid = os.getpid()

        def handle(signum, frame):
            if os.getpid() != main_pid:
                # A hivemind process forked from this one (DHT, averagers) inherited the handler. SIGTERM must kill
                # it as usual, or the parent's shutdown (which terminates it) would wait on it forever; Ctrl-C's
                # SIGINT reaches the whole process group and is left to the parent, which still needs its DHT.
                if signum == signal.SIGTERM:
                    signal.signal(signum, signal.SIG_DFL)
                    os.kill(os.getpid(), signum)
                else:
                    signal.signal(signum, signal.SIG_IGN)
                return
            logger.info(f"received {signal.Signals(signum).name}: finishing the current batch, then leaving")
            self.stop.set()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def run(self) -> int:
        from swarm_trainer import session

        self.output_dir.mkdir(parents=True, exist_ok=True)
        try:
            session.join(self)
            if not self.stop.is_set():
                session.train(self)
            if not self.stop.is_set() and self.run_complete:
                session.end_barrier(self)
            return EXIT_OK
        except RestartNeeded as e:
            logger.error(f"{e}; restart `swarm train` to pick up the new config")
            return EXIT_RESTART_NEEDED
        finally:
            session.leave(self)

    # ---- heartbeat -------------------------------------------------------------------------------------------
    def start_heartbeat(self, interval: float) -> None:
        def loop():
            while not self._heartbeat_stop.wait(interval):
                self.heartbeat_once()

        self._heartbeat_thread = threading.Thread(target=loop, name="heartbeat", daemon=True)
        self._heartbeat_thread.start()

    def stop_heartbeat(self) -> None:
        self._heartbeat_stop.set()
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(timeout=self.options.rpc_timeout + 5)

    def heartbeat_once(self):
        """One heartbeat; returns the response (None when the coordinator could not be reached: logged, retried)."""
        engine = self.engine
        try:
            response = self.client.heartbeat(
                peer_id=self.peer_id, lease_ids=self.leases.ids(),
                global_epoch=engine.local_epoch if engine else 0,
                loss=engine.stats.last_loss if engine else 0.0,
                samples_per_s=engine.stats.samples_per_s if engine else 0.0, finished=self.finished)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                logger.warning(f"the coordinator does not know this peer ({e.details()}); registering again")
                self.register()
            else:
                logger.warning(f"heartbeat failed ({e.code().name}: {e.details()}); will retry")
            return None
        except Exception as e:  # noqa: BLE001 - the heartbeat thread must survive anything
            logger.warning(f"heartbeat failed: {e!r}; will retry")
            return None
        for state in response.leases:
            if not state.valid:
                self.leases.invalidate(state.lease_id)
        if engine is not None and response.lr_total_steps > 0:
            engine.lr_total_steps = int(response.lr_total_steps)
        if self.config_version is not None and response.config_version > self.config_version:
            try:
                self.refresh_config()
            except Exception as e:  # noqa: BLE001 - the next heartbeat or lease tries again
                logger.warning(f"could not fetch run config version {response.config_version}: {e!r}")
        self.last_heartbeat = response
        return response

    def register(self):
        from swarm_trainer.swarm import visible_multiaddrs

        options = self.options
        multiaddrs = list(options.swarm.announce_maddrs) or visible_multiaddrs(self.dht)
        if options.swarm.client_mode:
            multiaddrs = []
        return self.client.register(peer_id=self.peer_id, multiaddrs=multiaddrs, client_mode=options.swarm.client_mode,
                                    name=options.name, batch_size=options.batch_size)

    # ---- config ----------------------------------------------------------------------------------------------
    def refresh_config(self) -> None:
        """The coordinator moved to a new config version: fetch it (from the prefetcher thread); applied later."""
        message = self.client.get_config(0)
        new = parse_config(message)
        self.pending_config = (int(message.version), new)
        self.config_version = int(message.version)
        logger.info(f"run config is now version {message.version}")

    def apply_pending_config(self) -> None:
        """Between chunks, in the main thread: adopt a new config version, or stop if it needs a restart."""
        if self.pending_config is None:
            return
        version, new = self.pending_config
        self.pending_config = None
        changed = restart_needed(self.config, new)
        if changed:
            raise RestartNeeded(f"run config version {version} changes {', '.join(changed)}, which a running peer "
                                f"cannot apply")
        self.config = new
        self.engine.config = new
        for group in self.engine.optimizer.opt.param_groups:
            group.update(betas=(new.opt_betas_one, new.opt_betas_two), eps=new.opt_epsilon,
                         weight_decay=new.opt_weight_decay)
        self.engine.optimizer.target_batch_size = new.target_batch_size
        self.engine.optimizer.tracker.target_batch_size = new.target_batch_size
        logger.info(f"applied run config version {version}")

    # ---- idle ticking ----------------------------------------------------------------------------------------
    @property
    def tick_interval(self) -> float:
        # Often enough to join a pre-scheduled matchmaking round in time.
        return max(0.1, min(1.0, self.options.swarm.matchmaking_time / 4))

    def idle(self, seconds: float) -> None:
        """Wait up to `seconds` (less if stopped) while keeping in step with the swarm."""
        deadline = time.monotonic() + seconds
        while not self.stop.is_set():
            if self.engine is not None and time.monotonic() - self._last_tick >= self.tick_interval:
                self._last_tick = time.monotonic()
                try:
                    self.engine.idle_tick()
                except Exception as e:  # noqa: BLE001 - a failed round must not kill the peer
                    logger.warning(f"idle optimizer step failed: {e!r}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self.stop.wait(min(remaining, self.tick_interval))

    def ready_info(self) -> dict:
        return dict(peer_id=self.peer_id, metrics_port=self.metrics_server.port if self.metrics_server else None,
                    multiaddrs=[] if self.options.swarm.client_mode else
                    [str(a) for a in self.dht.get_visible_maddrs()],
                    client_mode=self.options.swarm.client_mode, output_dir=str(self.output_dir),
                    name=self.options.name, pid=os.getpid())


def count_report(outcome_name: str) -> None:
    metrics.CHUNKS_REPORTED.labels(outcome_name).inc()
