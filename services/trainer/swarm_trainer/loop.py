"""A peer's run: its state (PeerRun), the heartbeat thread, live config changes, idle ticking, signals.

The phases it goes through are elsewhere, each read top to bottom: session.join (coordinator, DHT, config, models,
backend), chunks.train (the lease path: lease -> stream -> train -> report), session.end_barrier, session.leave.

Threads: the main thread owns the models and the swarm backend (created in session.join, never elsewhere); a
heartbeat thread keeps leases alive and tells the coordinator this peer's epoch; the dataset client's prefetcher
leases and streams the next chunk while the current one trains. Between batches the main thread checks for
SIGTERM/SIGINT. While it has no data (waiting for a chunk, or finished), the peer keeps ticking the backend with zero
samples so it moves through epochs together with the busy peers (see TrainEngine.idle_tick).
"""
from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path

import grpc

from swarm.logs import get_logger
from swarm.runconfig import RunConfig, restart_needed
from swarm.shutdown import stop_event_on_signals
from swarm_trainer import chunks, session
from swarm_trainer.leases import LeaseBook
from swarm_trainer.options import EXIT_OK, EXIT_RESTART_NEEDED, RestartNeeded, TrainerOptions, parse_config

logger = get_logger(__name__)


class PeerRun:
    """Everything one peer's run holds. Set in session.join unless said otherwise; None until then."""

    def __init__(self, options: TrainerOptions):
        self.options = options
        self.output_dir = Path(options.output_dir).resolve()
        self.stop = threading.Event()  # SIGTERM/SIGINT: finish the batch, release, save, leave
        self.leases = LeaseBook()
        # From the coordinator's answers.
        self.client = None  # CoordinatorClient
        self.peer_id: str | None = None  # the DHT's peer id, registered with the coordinator
        self.run_id: str | None = None
        self.config: RunConfig | None = None  # the version training uses now
        self.config_version: int | None = None  # the newest version seen (may still be pending)
        self.pending_config: tuple[int, RunConfig] | None = None  # fetched, applied at the next chunk boundary
        self.dataset_address: str | None = None
        self.last_heartbeat = None
        # Built by session.join.
        self.dht = None
        self.engine = None  # TrainEngine (models + swarm backend)
        self.metrics_server = None
        self.uploader = None  # CheckpointUploader with --upload-checkpoints
        self.wandb_run = None  # with --wandb-project
        # Progress and outcome (summary.json).
        self.chunks_reported = 0
        self.run_complete = False  # the coordinator said every chunk is done
        self.finished = False  # at the end barrier (told to the coordinator in heartbeats)
        self.last_sample_epoch = 0
        self.checkpoint: Path | None = None  # the last checkpoint saved
        self.final_sync: str | None = None  # the final sync's outcome (endgame.final_sync)
        self.joined_finished_run = False  # the run was over before this peer trained anything: nothing saved
        self._heartbeat_thread: threading.Thread | None = None
        self._heartbeat_stop = threading.Event()
        self._last_tick = 0.0

    # ---- lifecycle -------------------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT set `stop`: the batch finishes, leases are released, a checkpoint saved, exit 0.

        Processes hivemind forks from this one still die on SIGTERM (swarm.shutdown explains why that matters).
        """
        stop_event_on_signals(self.stop, doing="finishing the current batch, then leaving")

    def run(self) -> int:
        """join -> train -> end barrier -> leave (always); the process's exit code."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        try:
            session.join(self)
            if not self.stop.is_set():
                chunks.train(self)
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
                loss=engine.stats.last_loss if engine else math.nan,  # NaN: no loss yet (not a loss of 0)
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
        """Register (again) with the coordinator under the DHT's peer id."""
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
        self.engine.apply_config(new)
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

    def save(self) -> Path:
        """A checkpoint of the current weights (and EMA) at the current epoch, uploaded too when asked."""
        from swarm_trainer.checkpoints import save_checkpoint

        self.checkpoint = save_checkpoint(self.engine.models, self.output_dir, epoch=self.engine.local_epoch,
                                          keep=self.config.keep_checkpoints, ema_unet=self.engine.ema_unet())
        if self.uploader is not None:
            self.uploader.submit(self.checkpoint)
        return self.checkpoint

    def ready_info(self) -> dict:
        return dict(peer_id=self.peer_id, metrics_port=self.metrics_server.port if self.metrics_server else None,
                    multiaddrs=[] if self.options.swarm.client_mode else
                    [str(a) for a in self.dht.get_visible_maddrs()],
                    client_mode=self.options.swarm.client_mode, output_dir=str(self.output_dir),
                    name=self.options.name, pid=os.getpid())

