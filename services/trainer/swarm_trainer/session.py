"""The phases of a peer's run (join, train, end barrier, leave), operating on a loop.PeerRun."""
from __future__ import annotations

import json
import os
import sys
import time
from functools import partial

import grpc
import torch

from swarm.logs import get_logger
from swarm.procs import write_ready_file
from swarm_trainer import metrics
from swarm_trainer.leases import batches, write_summary

logger = get_logger(__name__)


def join(run) -> None:
    """Coordinator -> DHT -> registration -> config -> models and optimizer -> catch up -> metrics and ready file."""
    from swarm.metrics import MetricsServer
    from swarm_trainer.coordinator_client import CoordinatorClient
    from swarm_trainer.engine import TrainEngine
    from swarm_trainer.features import optimizer_class
    from swarm_trainer.loop import parse_config, resolve_device
    from swarm_trainer.model import build_models
    from swarm_trainer.swarm import make_dht, make_optimizer

    options = run.options
    device = resolve_device(options.device)
    precision = options.precision or ("bf16" if device.type == "cuda" else "fp32")
    run.client = CoordinatorClient(options.coordinator, token=options.token, timeout=options.rpc_timeout,
                                   stop=run.stop)
    # Initial peers first (bootstrap DHT, then live peers): the DHT's peer id is what we register under.
    initial_peers = list(run.client.list_peers().initial_peers)
    logger.info(f"joining the swarm through {len(initial_peers)} initial peer(s)")
    run.dht = make_dht(initial_peers=initial_peers, options=options.swarm)
    run.peer_id = run.dht.peer_id.to_base58()
    registration = run.register()
    run.config = parse_config(registration.config)
    run.config_version = int(registration.config.version)
    run.run_id = registration.config.run_id
    run.dataset_address = registration.dataset_address
    logger.info(f"peer {run.peer_id} joined run {run.run_id!r} (config version {run.config_version}); "
                f"dataset at {run.dataset_address}")
    first_beat = run.heartbeat_once()  # also brings the LR decay span before the first step

    from swarm_trainer.checkpoints import resume

    models = build_models(run.config.model, seed=run.config.seed)
    # Before the optimizer exists: hivemind's offloaded optimizer copies the weights it starts from.
    resumed = resume(models, run.output_dir, text_encoder=run.config.train_text_encoder)
    # Identical initial weights come from the seed; noise, timesteps and caption dropout must differ per peer.
    torch.manual_seed(int.from_bytes(os.urandom(8), "little") & ((1 << 63) - 1))
    optimizer_factory = partial(make_optimizer, dht=run.dht, run_id=run.run_id, config=run.config,
                                batch_size=options.batch_size, options=options.swarm,
                                optimizer_cls=optimizer_class(use_8bit_adam=options.features.use_8bit_adam,
                                                              device=device))
    run.engine = TrainEngine(models=models, optimizer_factory=lambda params: optimizer_factory(params=params),
                             config=run.config, device=device, precision=precision, batch_size=options.batch_size,
                             lr_total_steps=(first_beat.lr_total_steps or None) if first_beat else None,
                             features=options.features)
    if resumed is not None:
        run.engine.resume(epoch=resumed[0], ema_state=resumed[2])
    # A late joiner starts from the swarm's current state, not from the seed (nor from an older checkpoint).
    run.engine.optimizer.tracker.fetched_global_progress_this_epoch.wait(timeout=30)
    if run.engine.behind_swarm():
        logger.info(f"the swarm is at epoch {run.engine.optimizer.tracker.global_epoch}; downloading its state")
        run.engine.load_state_from_peers()

    if options.upload_checkpoints:
        from swarm_trainer.uploads import CheckpointUploader

        run.uploader = CheckpointUploader(options.upload_checkpoints, endpoint_url=options.s3_endpoint_url)
    if options.wandb_project:
        import wandb  # optional dependency, checked when the flags were parsed

        run.wandb_run = wandb.init(project=options.wandb_project, name=options.name, config={
            "run_id": run.run_id, "config_version": run.config_version, "peer_id": run.peer_id,
            "batch_size": options.batch_size, "precision": precision, **json.loads(run.config.to_json())})
    run.metrics_server = MetricsServer(port=options.metrics_port)
    write_ready_file(options.ready_file, **run.ready_info())
    run.start_heartbeat(registration.heartbeat_interval_s or 30.0)
    logger.info(f"training on {device} ({precision}), batch size {options.batch_size}; metrics on port "
                f"{run.metrics_server.port}")


def _lease_source(run):
    """Runs in the prefetcher's thread: lease one chunk at a time; wait (poll) when none is free yet."""
    while not run.stop.is_set():
        try:
            response = run.client.lease(peer_id=run.peer_id, max_chunks=1, config_version=run.config_version)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                logger.info(f"lease refused ({e.details()}); fetching the current config")
                run.refresh_config()
                continue
            raise
        if response.config_version > run.config_version:
            # Older versions stay leasable, so a newer one shows only here (and in heartbeats): fetch it now; the
            # training loop applies it at the next chunk boundary.
            run.refresh_config()
        if response.leases:
            for lease in response.leases:
                run.leases.add(lease)
                yield lease, list(lease.sample_ids)
        elif response.run_complete:
            run.run_complete = True
            return
        else:
            run.stop.wait(run.options.lease_poll_s)


def train(run) -> None:
    """Train leased chunks until the run is complete or we are stopped."""
    from swarm_dataset.client import ChunkPrefetcher
    from tqdm import tqdm

    engine, options = run.engine, run.options
    bar = tqdm(desc=f"peer {options.name or run.peer_id[-8:]}", unit="sample", file=sys.stderr, mininterval=1.0,
               disable=not options.progress or None)
    last_saved_epoch = engine.local_epoch
    try:
        with ChunkPrefetcher(run.dataset_address, chunks=_lease_source(run), token=options.token,
                             timeout=max(60.0, options.rpc_timeout * 4), depth=1) as prefetcher:
            while not run.stop.is_set():
                try:
                    item = prefetcher.get(timeout=run.tick_interval)
                except TimeoutError:
                    run.idle(0)  # no data right now: one idle tick keeps this peer in step with the swarm
                    continue
                except grpc.RpcError as e:
                    failed = run.leases.oldest_pending()
                    if failed is None:
                        raise
                    logger.warning(f"streaming lease {failed} failed ({e.code().name}: {e.details()}); releasing it")
                    _release(run, [failed])
                    continue
                if item is None:
                    break
                lease, samples = item
                run.leases.delivered(lease.lease_id)
                run.apply_pending_config()
                if not run.leases.is_valid(lease.lease_id):
                    logger.warning(f"lease {lease.lease_id} expired before training; skipping chunk {lease.chunk_id}")
                    run.leases.drop(lease.lease_id)
                    continue
                if engine.behind_swarm():
                    engine.load_state_from_peers()
                _train_chunk(run, lease, samples, bar)
                if run.stop.is_set():
                    break
                last_saved_epoch = _maybe_save_periodic(run, last_saved_epoch)
                _maybe_sample(run, samples)
    finally:
        bar.close()


def _train_chunk(run, lease, samples, bar) -> None:
    engine = run.engine
    for batch in batches(samples, run.options.batch_size):
        images = [image for image, _, _ in batch]
        captions = [caption for _, caption, _ in batch]
        loss = engine.train_batch(images, captions, sample_ids=[sample_id for _, _, sample_id in batch])
        bar.update(len(batch))
        if run.wandb_run is not None:
            run.wandb_run.log({"loss": loss, "lr": engine.optimizer.opt.param_groups[0]["lr"],
                               "global_epoch": engine.local_epoch, "samples_per_s": engine.stats.samples_per_s,
                               "samples_trained": engine.stats.samples_trained}, step=engine.stats.local_steps)
        bar.set_postfix(epoch=engine.local_epoch, loss=f"{loss:.4f}", sps=f"{engine.stats.samples_per_s:.2f}",
                        refresh=False)
        if run.stop.is_set():
            logger.info(f"stopping mid-chunk {lease.chunk_id}; its lease is released, another peer retrains it")
            return
    try:
        response = run.client.report_done(peer_id=run.peer_id, lease_id=lease.lease_id)
    except grpc.RpcError as e:
        logger.warning(f"reporting chunk {lease.chunk_id} failed ({e.code().name}: {e.details()}); its lease will "
                       f"expire and the chunk will be trained again")
        run.leases.drop(lease.lease_id)
        return
    run.leases.drop(lease.lease_id)
    outcome = response.Outcome.Name(response.outcome)
    metrics.CHUNKS_REPORTED.labels(outcome).inc()
    if outcome == "COUNTED":
        run.chunks_reported += 1
    else:
        logger.warning(f"chunk {lease.chunk_id} report was {outcome}: {response.message}")


def _maybe_save_periodic(run, last_saved_epoch: int) -> int:
    every = run.config.save_every_epochs
    epoch = run.engine.local_epoch
    if every > 0 and epoch // every > last_saved_epoch // every:
        save(run)
        return epoch
    return last_saved_epoch


def _maybe_sample(run, samples) -> None:
    """A sample grid every sample_every_epochs global epochs (prompts from the config, else this chunk's captions)."""
    every, epoch = run.config.sample_every_epochs, run.engine.local_epoch
    if every <= 0 or epoch // every <= run.last_sample_epoch // every:
        return
    run.last_sample_epoch = epoch
    from swarm_trainer.samples import save_sample_grid

    prompts = list(run.config.sample_prompts) or [caption for _, caption, _ in samples[:4]]
    try:
        save_sample_grid(run.engine.models, run.output_dir, epoch=epoch, prompts=prompts,
                         width=run.config.resolution, height=run.config.resolution, unet=run.engine.ema_unet())
    except Exception as e:  # noqa: BLE001 - a failed preview must not stop training
        logger.warning(f"sample grid at epoch {epoch} failed: {e!r}")


def end_barrier(run) -> None:
    """Every chunk is done: wait until every live peer finished at the swarm's epoch, then sync parameters."""
    from swarm_trainer.endgame import final_sync

    engine = run.engine
    run.finished = True
    metrics.FINISHED.set(1)
    deadline = time.monotonic() + run.options.barrier_timeout
    last_load_target = None
    logger.info("run complete: waiting at the end barrier for the other peers")
    while not run.stop.is_set():
        beat = run.heartbeat_once()
        if beat is not None:
            if beat.peers_training == 0 and beat.swarm_epoch_min == beat.swarm_epoch == engine.local_epoch:
                break
            # Behind the swarm: download its state (once per swarm epoch seen, in case no listening peer has it).
            if engine.local_epoch < beat.swarm_epoch and last_load_target != beat.swarm_epoch:
                last_load_target = beat.swarm_epoch
                logger.info(f"at epoch {engine.local_epoch}, the swarm is at {beat.swarm_epoch}: downloading state")
                engine.load_state_from_peers()
                continue
        if time.monotonic() > deadline:
            logger.warning(f"end barrier: gave up after {run.options.barrier_timeout:.0f} s (last heartbeat: "
                           f"{beat}); leaving with epoch {engine.local_epoch}")
            return
        run.idle(1.0)
    if run.stop.is_set():
        return
    participants = [(p.peer_id, p.client_mode) for p in run.client.list_peers().peers if p.finished]
    remaining = max(30.0, deadline - time.monotonic())
    run.final_sync = final_sync(optimizer=engine.optimizer, dht=run.dht, run_id=run.run_id, peer_id=run.peer_id,
                                participants=participants, params=engine.params, timeout=remaining)
    logger.info(f"final sync: {run.final_sync}; leaving at epoch {engine.local_epoch}")


def save(run):
    from swarm_trainer.checkpoints import save_checkpoint

    run.checkpoint = save_checkpoint(run.engine.models, run.output_dir, epoch=run.engine.local_epoch,
                                     keep=run.config.keep_checkpoints, ema_unet=run.engine.ema_unet())
    if run.uploader is not None:
        run.uploader.submit(run.checkpoint)
    return run.checkpoint


def _release(run, lease_ids=()) -> None:
    try:
        released = run.client.release(peer_id=run.peer_id, lease_ids=list(lease_ids))
        logger.info(f"released {released} lease(s)")
    except Exception as e:  # noqa: BLE001 - leaving anyway; the leases expire on their own
        logger.warning(f"releasing leases failed ({e!r}); they will expire after their TTL")
    for lease_id in lease_ids or run.leases.ids():
        run.leases.drop(lease_id)
    if not lease_ids:
        run.leases.clear()


def leave(run) -> None:
    """Always runs: release leases, save, write summary.json, stop threads, DHT and optimizer."""
    from swarm_trainer.swarm import shutdown

    run.stop_heartbeat()
    if run.client is not None and getattr(run, "peer_id", None):
        _release(run)
    if run.engine is not None:
        try:
            save(run)
        except Exception as e:  # noqa: BLE001
            logger.error(f"saving the final checkpoint failed: {e!r}")
        _write_summary(run)
    if run.uploader is not None and not run.uploader.close(timeout=600):
        logger.warning("checkpoint uploads did not finish in 600 s; the local checkpoints are complete")
    if run.metrics_server is not None:
        run.metrics_server.close()
    if run.wandb_run is not None:
        run.wandb_run.finish()
    shutdown(run.engine.optimizer if run.engine else None, run.dht)
    if run.client is not None:
        run.client.close()


def _write_summary(run) -> None:
    engine, stats = run.engine, run.engine.stats
    checkpoint = getattr(run, "checkpoint", None)
    path = write_summary(run.output_dir / "summary.json", {
        "peer_id": run.peer_id, "name": run.options.name, "run_id": run.run_id,
        "client_mode": run.options.swarm.client_mode, "samples_trained": stats.samples_trained,
        "chunks_reported": run.chunks_reported, "global_epoch": engine.local_epoch,
        "local_steps": stats.local_steps, "loss_first": stats.loss_first(), "loss_last": stats.loss_last(),
        "losses": stats.losses, "samples_per_s": stats.mean_samples_per_s,
        "checkpoint": str(checkpoint) if checkpoint else None, "config_version": run.config_version,
        "run_complete": run.run_complete, "final_sync": getattr(run, "final_sync", None),
    })
    logger.info(f"wrote {path}")
