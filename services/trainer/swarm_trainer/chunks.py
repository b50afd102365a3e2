"""The lease path, top to bottom: lease a chunk -> stream its samples -> train them -> report the chunk done.

`train` runs it until the coordinator says the run is complete or the peer is stopped; each step is one function:
lease_chunks (prefetcher's thread), stream_chunks, train_chunk, report_chunk. After each chunk: periodic
checkpoint and sample grid. Leases that cannot be trained are released (release_leases) so another peer takes them.
A lease's regularization samples (reg_sample_ids) are streamed and trained with its chunk (prior.py).
"""
from __future__ import annotations

import sys

import grpc

from swarm.logs import get_logger
from swarm_trainer import metrics
from swarm_trainer.prior import chunk_batches, stream_order

logger = get_logger(__name__)


def train(run) -> None:
    """Train leased chunks until the run is complete or we are stopped."""
    from tqdm import tqdm

    from swarm_dataset.client import ChunkPrefetcher

    engine, options = run.engine, run.options
    bar = tqdm(desc=f"peer {options.name or run.peer_id[-8:]}", unit="sample", file=sys.stderr, mininterval=1.0,
               disable=not options.progress or None)
    last_saved_epoch = engine.local_epoch
    try:
        # The prefetcher leases (in its thread) and streams the next chunk while this one trains.
        with ChunkPrefetcher(run.dataset_address, chunks=lease_chunks(run), token=options.token,
                             timeout=max(60.0, options.rpc_timeout * 4), depth=1) as prefetcher:
            for lease, samples in stream_chunks(run, prefetcher):
                run.apply_pending_config()
                if not run.leases.is_valid(lease.lease_id):
                    logger.warning(f"lease {lease.lease_id} expired before training; skipping chunk {lease.chunk_id}")
                    run.leases.drop(lease.lease_id)
                    continue
                if engine.behind_swarm():
                    engine.load_state_from_peers()
                if not train_chunk(run, lease, samples, bar):
                    break
                report_chunk(run, lease)
                if run.stop.is_set():
                    break
                last_saved_epoch = _maybe_save_periodic(run, last_saved_epoch)
                reg = set(lease.reg_sample_ids)
                _maybe_sample(run, [sample for sample in samples if sample[2] not in reg])
    finally:
        bar.close()


def lease_chunks(run):
    """1. Lease, in the prefetcher's thread: one chunk at a time; wait (poll) while none is free yet.

    Yields (lease, sample ids) for the prefetcher to stream, the lease's regularization samples spread among its
    chunk's (prior.stream_order); returns when the run is complete or the peer stops.
    """
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
                yield lease, stream_order(list(lease.sample_ids), list(lease.reg_sample_ids))
        elif response.run_complete:
            run.run_complete = True
            return
        else:
            run.stop.wait(run.options.lease_poll_s)


def stream_chunks(run, prefetcher):
    """2. Stream: (lease, samples) as the prefetcher delivers them.

    While nothing has arrived the peer idles in step with the swarm; a chunk that failed to stream has its lease
    released (another peer retrains it). Ends when the leases end or the peer stops.
    """
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
            release_leases(run, [failed])
            continue
        if item is None:
            return
        lease, samples = item
        run.leases.delivered(lease.lease_id)
        yield lease, samples


def train_chunk(run, lease, samples, bar) -> bool:
    """3. Train: the chunk's samples (and regularization samples) in local batches; False when the peer was stopped
    before it finished."""
    engine = run.engine
    for batch, prior in chunk_batches(samples, run.options.batch_size, reg_ids=lease.reg_sample_ids):
        images = [image for image, _, _ in batch]
        captions = [caption for _, caption, _ in batch]
        loss = engine.train_batch(images, captions, sample_ids=[sample_id for _, _, sample_id in batch],
                                  prior=prior if any(prior) else None)
        bar.update(len(batch))
        if run.wandb_run is not None:
            run.wandb_run.log({"loss": loss, "lr": engine.backend.lr, "global_epoch": engine.local_epoch,
                               "samples_per_s": engine.stats.samples_per_s,
                               "samples_trained": engine.stats.samples_trained}, step=engine.stats.local_steps)
        bar.set_postfix(epoch=engine.local_epoch, loss=f"{loss:.4f}", sps=f"{engine.stats.samples_per_s:.2f}",
                        refresh=False)
        if run.stop.is_set():
            logger.info(f"stopping mid-chunk {lease.chunk_id}; its lease is released, another peer retrains it")
            return False
    return True


def report_chunk(run, lease) -> None:
    """4. Report: tell the coordinator the chunk is trained (counted once); a failed report lets the lease expire."""
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


def release_leases(run, lease_ids=()) -> None:
    """Give leases back at once (all this peer holds when none are named); failures only log: leases expire."""
    try:
        released = run.client.release(peer_id=run.peer_id, lease_ids=list(lease_ids))
        logger.info(f"released {released} lease(s)")
    except Exception as e:  # noqa: BLE001 - leaving anyway; the leases expire on their own
        logger.warning(f"releasing leases failed ({e!r}); they will expire after their TTL")
    for lease_id in lease_ids or run.leases.ids():
        run.leases.drop(lease_id)
    if not lease_ids:
        run.leases.clear()


def _maybe_save_periodic(run, last_saved_epoch: int) -> int:
    """A checkpoint every save_every_epochs global epochs; returns the epoch last saved at (or tried to).

    A failed save (disk full, say) logs and training goes on: the swarm needs this peer's gradients more than its
    checkpoint, the older checkpoints stay whole, and the next period tries again.
    """
    every = run.config.save_every_epochs
    epoch = run.engine.local_epoch
    if every > 0 and epoch // every > last_saved_epoch // every:
        try:
            run.save()
        except Exception as e:  # noqa: BLE001 - any failure to save must leave training running
            logger.error(f"saving the checkpoint at epoch {epoch} failed ({e!r}); training on, the next save is "
                         f"at epoch {(epoch // every + 1) * every}")
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
