"""The phases of a peer's run around the lease path (chunks.py): join, the end barrier, leave. On a loop.PeerRun."""
from __future__ import annotations

import json
import os
import time
from functools import partial

import torch

from swarm.logs import get_logger
from swarm.procs import write_ready_file
from swarm_trainer import metrics
from swarm_trainer.chunks import release_leases
from swarm_trainer.leases import write_summary

logger = get_logger(__name__)


# How long a client-mode peer waits for a listening peer to train before it trains alone (wait_for_a_listening_peer).
LISTENER_WAIT_S = 300.0


def join(run) -> None:
    """Coordinator -> DHT -> registration -> config -> models and optimizer -> catch up -> metrics and ready file."""
    from swarm.metrics import MetricsServer
    from swarm_trainer.backend import make_backend
    from swarm_trainer.checkpoints import resume
    from swarm_trainer.coordinator_client import CoordinatorClient
    from swarm_trainer.engine import TrainEngine
    from swarm_trainer.features import optimizer_class
    from swarm_trainer.lora import maybe_add_lora
    from swarm_trainer.model import build_models
    from swarm_trainer.options import cuda_bf16_supported, default_precision, parse_config, resolve_device
    from swarm_trainer.reachability import check_reachability
    from swarm_trainer.swarm import make_dht

    options = run.options
    device = resolve_device(options.device)
    precision = default_precision(options.precision, device, bf16_supported=cuda_bf16_supported(device))
    if options.precision == "bf16" and precision != "bf16":
        logger.warning(f"this GPU has no native bf16: training in {precision} instead")
    run.client = CoordinatorClient(options.coordinator, token=options.token, timeout=options.rpc_timeout,
                                   stop=run.stop)
    # Initial peers first (bootstrap DHT, then live peers): the DHT's peer id is what we register under.
    initial_peers = list(run.client.list_peers().initial_peers)
    logger.info(f"joining the swarm through {len(initial_peers)} initial peer(s)")
    trust, authorizer, swarm_options = None, None, options.swarm
    if options.swarm.trust_checks:
        # The credential binds the peer id, so the identity and the credential come before the DHT (admission.py).
        from dataclasses import replace

        from swarm_trainer.admission import Admission, contributions

        run.admission = Admission(run.client, output_dir=run.output_dir, identity_path=options.swarm.identity_path,
                                  stop=run.stop)
        trust = run.admission.obtain()
        authorizer = run.admission.authorizer()
        swarm_options = replace(options.swarm, identity_path=run.admission.identity_path)
    run.dht = make_dht(initial_peers=initial_peers, options=swarm_options, authorizer=authorizer)
    run.peer_id = run.dht.peer_id.to_base58()
    if trust is not None:
        run.admission.start(run.dht)
        run.client.contributions_source = lambda: contributions(
            run.engine.backend.trust_stats() if getattr(run, "engine", None) is not None else {})
    registration = run.register()
    run.config = parse_config(registration.config)
    run.config_version = int(registration.config.version)
    run.run_id = registration.config.run_id
    run.dataset_address = registration.dataset_address
    logger.info(f"peer {run.peer_id} joined run {run.run_id!r} (config version {run.config_version}); "
                f"dataset at {run.dataset_address}")
    # Before any model is built: a volunteer behind a NAT learns now that no one can dial it, and how to fix that.
    check_reachability(run.client, peer_id=run.peer_id, client_mode=options.swarm.client_mode,
                       required=options.require_reachable, host_maddrs=options.swarm.host_maddrs)
    first_beat = run.heartbeat_once()  # also brings the LR decay span before the first step
    # Heartbeats from now on, not once the model is built: a join can take longer than the peer TTL, and peers at
    # the end barrier must see this one as alive (at epoch 0, training) and wait for it, so that it can download the
    # final state from them instead of finding everyone gone.
    run.start_heartbeat(registration.heartbeat_interval_s or 30.0)

    from swarm_trainer.diloco.fused import check_memory_options

    check_memory_options(fused_backward=options.features.fused_backward, bf16_weights=options.features.bf16_weights,
                         precision=precision, mode=run.config.mode)
    models = build_models(run.config.model, seed=run.config.seed)
    maybe_add_lora(models, run.config)  # train: lora: the adapter (identical on every peer) is what trains
    # Before the optimizer exists: hivemind's offloaded optimizer copies the weights it starts from.
    resumed = resume(models, run.output_dir, text_encoder=run.config.train_text_encoder)
    # Identical initial weights come from the seed; noise, timesteps and caption dropout must differ per peer.
    torch.manual_seed(int.from_bytes(os.urandom(8), "little") & ((1 << 63) - 1))
    backend_factory = partial(make_backend, dht=run.dht, run_id=run.run_id, config=run.config,
                              batch_size=options.batch_size, options=options.swarm, trust=trust,
                              fused_backward=options.features.fused_backward,
                              optimizer_cls=optimizer_class(use_8bit_adam=options.features.use_8bit_adam,
                                                            device=device))
    run.engine = TrainEngine(models=models, backend_factory=lambda params: backend_factory(params=params),
                             config=run.config, device=device, precision=precision, batch_size=options.batch_size,
                             lr_total_steps=(first_beat.lr_total_steps or None) if first_beat else None,
                             features=options.features)
    if resumed is not None:
        run.engine.resume(epoch=resumed[0], ema_state=resumed[2])
    if options.swarm.client_mode:
        wait_for_a_listening_peer(run, timeout=LISTENER_WAIT_S)
    # A late joiner starts from the swarm's current state, not from the seed (nor from an older checkpoint).
    run.engine.backend.wait_for_swarm_progress(timeout=30)
    if run.engine.behind_swarm():
        logger.info(f"the swarm is at epoch {run.engine.backend.swarm_epoch}; downloading its state")
        run.engine.load_state_from_peers()

    if options.upload_checkpoints:
        from swarm_trainer.uploads import CheckpointUploader

        run.uploader = CheckpointUploader(options.upload_checkpoints, endpoint_url=options.s3_endpoint_url)
    if options.wandb_project:
        import wandb  # optional dependency, checked when the flags were parsed

        run.wandb_run = wandb.init(project=options.wandb_project, name=options.name, config={
            "run_id": run.run_id, "config_version": run.config_version, "peer_id": run.peer_id,
            "batch_size": options.batch_size, "precision": precision, **json.loads(run.config.to_json())})
    run.metrics_server = MetricsServer(host=options.metrics_host, port=options.metrics_port)
    write_ready_file(options.ready_file, **run.ready_info())
    if getattr(run, "admission", None) is not None:  # weight budgets for the guarded averagers (swarm.trust.budget)
        run.admission.start_budgets(run, interval=registration.heartbeat_interval_s or 30.0)
    logger.info(f"training on {device} ({precision}), batch size {options.batch_size}; metrics on port "
                f"{run.metrics_server.port}")


def end_barrier(run) -> None:
    """Every chunk is done: wait until every live peer finished at the swarm's epoch and the swarm owes no more global
    step, then sync parameters.

    The coordinator's view (peers_training, swarm_epoch, swarm_epoch_min) is what peers reported in their last
    heartbeats; it cannot see samples still accumulated toward the next epoch (e.g. after a SIGKILLed peer's lost
    batches left the count off the target's multiple). hivemind steps them once its ETA passes, which idle ticks keep
    pushing away, so it came only after a peer had left (its record aged): to the peers still ticking, and the one
    that left was an epoch behind while the others waited for it forever. So a peer also asks the swarm's progress
    records (backend.swarm_settled) and, with every live peer at the barrier, takes the owed step now
    (backend.step_owed_now, then idle ticks) until no step is owed.
    """
    from swarm_trainer.endgame import Participant, joined_a_finished_run

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
                if engine.stats.samples_trained == 0 and joined_a_finished_run(
                        samples_trained=engine.stats.samples_trained, chunks_reported=run.chunks_reported,
                        other_live_peers=len({p.peer_id for p in run.client.list_peers().peers} - {run.peer_id})):
                    run.joined_finished_run = True
                    logger.warning(f"run {run.run_id!r} was already complete when this peer joined, and no peer that "
                                   f"trained it is up to serve its final state: nothing to train or save here (the "
                                   f"result is in the training peers' checkpoints); leaving")
                    return
                if engine.backend.swarm_settled():
                    break
                # Every live peer is here, so nobody adds samples: the owed step is taken now (by every peer at the
                # barrier, in the idle ticks below), not when hivemind's ETA for a target never reached passes.
                engine.backend.step_owed_now()
            # Behind the swarm: download its state (once per swarm epoch seen, in case no listening peer has it).
            elif engine.local_epoch < beat.swarm_epoch and last_load_target != beat.swarm_epoch:
                last_load_target = beat.swarm_epoch
                logger.info(f"at epoch {engine.local_epoch}, the swarm is at {beat.swarm_epoch}: downloading state")
                engine.load_state_from_peers()
                continue
        if time.monotonic() > deadline:
            logger.warning(f"end barrier: gave up after {run.options.barrier_timeout:.0f} s (last heartbeat: "
                           f"{beat}); leaving with epoch {engine.local_epoch}")
            return
        run.idle(1.0)  # idle ticks: this peer takes part in any step the swarm still owes
    if run.stop.is_set():
        return
    participants = [Participant(p.peer_id, p.client_mode, p.samples_contributed)
                    for p in run.client.list_peers().peers if p.finished]
    remaining = max(30.0, deadline - time.monotonic())
    run.final_sync = engine.backend.final_sync(peer_id=run.peer_id, participants=participants, timeout=remaining)
    logger.info(f"final sync: {run.final_sync}; leaving at epoch {engine.local_epoch}")


def wait_for_a_listening_peer(run, *, timeout: float) -> bool:
    """A client-mode peer starts training once a listening peer has. Client-mode peers neither average with each
    other nor serve their state, so one that trained first held a branch that no listening peer could download (in
    CI a client-mode volunteer trained a whole short run before the listening one's first batch, and the two left at
    different epochs). After `timeout` it trains anyway, with a warning: a swarm of client-mode peers only."""
    deadline = time.monotonic() + timeout
    logged = False
    while not run.stop.is_set():
        if run.engine.backend.a_listening_peer_trains():
            return True
        if time.monotonic() >= deadline:
            logger.warning(f"no listening peer trained in {timeout:.0f} s: training anyway, alone. Client-mode peers "
                           f"cannot average with each other or serve their state; the swarm needs at least one peer "
                           f"without --client-mode that others can dial")
            return False
        if not logged:
            logger.info("client mode: waiting for a listening peer to train first (client-mode peers cannot average "
                        "with each other or serve their state)")
            logged = True
        run.stop.wait(1.0)
    return False


def leave(run) -> None:
    """Always runs: release leases, save, write summary.json, stop threads, DHT and optimizer."""
    from swarm_trainer.swarm import shutdown

    run.stop_heartbeat()
    if getattr(run, "admission", None) is not None:
        run.admission.stop()
    if run.client is not None and run.peer_id:
        release_leases(run)
    if run.engine is not None:
        if not run.joined_finished_run:  # a finished run's joiner holds only the seed: no checkpoint of it
            try:
                run.save()
            except Exception as e:  # noqa: BLE001
                logger.error(f"saving the final checkpoint failed: {e!r}")
        _write_summary(run)
    if run.uploader is not None and not run.uploader.close(timeout=600):
        logger.warning("checkpoint uploads did not finish in 600 s; the local checkpoints are complete")
    if run.metrics_server is not None:
        run.metrics_server.close()
    if run.wandb_run is not None:
        run.wandb_run.finish()
    shutdown(run.engine.backend if run.engine else None, run.dht)
    if run.client is not None:
        run.client.close()


def _write_summary(run) -> None:
    engine, stats = run.engine, run.engine.stats
    path = write_summary(run.output_dir / "summary.json", {
        "peer_id": run.peer_id, "name": run.options.name, "run_id": run.run_id,
        "client_mode": run.options.swarm.client_mode, "samples_trained": stats.samples_trained,
        "chunks_reported": run.chunks_reported, "global_epoch": engine.local_epoch,
        "local_steps": stats.local_steps, "loss_first": stats.loss_first(), "loss_last": stats.loss_last(),
        "losses": stats.losses, "samples_per_s": stats.mean_samples_per_s,
        "checkpoint": str(run.checkpoint) if run.checkpoint else None, "config_version": run.config_version,
        "run_complete": run.run_complete, "final_sync": run.final_sync,
        "joined_finished_run": run.joined_finished_run,
    })
    logger.info(f"wrote {path}")
