"""`swarm demo`: a whole swarm on this machine, on embedded defaults.

Host services (coordinator, dataset service, bootstrap DHT) and N CPU trainers run as separate local processes on
loopback; a small real image set (the photographs scikit-image ships, with hand-written captions) is ingested into a
local folder used as object storage; a tiny randomly initialised SD-shaped model trains for a few global epochs.
The end-to-end test runs the very same function.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from swarm.logs import get_logger
from swarm.shutdown import interrupt_on_sigterm
from swarm_launcher.processes import ServiceProcess, start_service

logger = get_logger(__name__)

# The embedded run config: tiny model, tiny images, a global epoch every few local steps.
DEMO_CONFIG: dict[str, Any] = {
    "model": "tiny",
    "resolution": 64,
    "buckets_side_min": 64,
    "buckets_side_max": 128,
    "lr": 1e-3,
    "lr_scheduler": "constant",
    "ucg": 0.1,
    "chunk_size": 4,
    "target_batch_size": 8,
    "max_data_epochs": 3,
    "seed": 42,
    "opt_weight_decay": 1e-2,
}
# `swarm demo --lora`: the same run training a LoRA (issue 14); a LoRA learns with a larger LR than the full model.
DEMO_LORA_CONFIG: dict[str, Any] = {"train": "lora", "lora_rank": 4, "lr": 1e-2}


def coordinator_progress(address: str, token: str):
    import grpc

    from swarm.rpc import channel, token_metadata
    from swarm.v1 import coordinator_pb2, coordinator_pb2_grpc

    with channel(address) as ch:
        try:
            return coordinator_pb2_grpc.CoordinatorStub(ch).GetProgress(
                coordinator_pb2.GetProgressRequest(), metadata=token_metadata(token), timeout=5)
        except grpc.RpcError as e:
            logger.debug(f"progress poll failed: {e}")
            return None


def prepare_demo_data(workdir: Path, run_config: dict[str, Any]) -> tuple[Path, Path, str, int]:
    """Write the run config and the demo images, ingest them; returns (config path, index, storage URL, images)."""
    from swarm_launcher.demo_images import write_demo_folder

    config_path = workdir / "run.yaml"
    config_path.write_text(yaml.safe_dump(run_config))
    images = workdir / "images"
    n_images = write_demo_folder(images)
    logger.info(f"ingesting {n_images} demo images")
    index, objects = workdir / "host" / "dataset.sqlite", f"file://{workdir / 'host' / 'objects'}"
    (workdir / "host").mkdir(parents=True, exist_ok=True)
    ingest = subprocess.run([sys.executable, "-m", "swarm_launcher", "ingest", str(images), "--index", str(index),
                             "--storage", objects, "--config", str(config_path)],
                            capture_output=True, text=True, timeout=600)
    if ingest.returncode != 0:
        raise RuntimeError(f"swarm ingest failed:\n{ingest.stdout}\n{ingest.stderr}")
    return config_path, index, objects, n_images


def start_demo_host(workdir: Path, config_path: Path, index: Path, objects: str, *, lease_ttl: float = 120,
                    peer_ttl: float = 60, status_port: int | None = 0):
    from swarm_launcher.host import start_host

    return start_host(workdir / "host", config_path=str(config_path), run_id="demo", index_path=str(index),
                      storage=objects, bind_host="127.0.0.1", coordinator_port=0, dataset_port=0, dht_port=0,
                      metrics_ports=(0, 0, 0), lease_ttl=lease_ttl, peer_ttl=peer_ttl, heartbeat_interval=2,
                      status_port=status_port)


def start_demo_trainer(workdir: Path, index: int, *, coordinator: str, token: str, client_mode: bool = False,
                       extra_args: list[str] | None = None) -> ServiceProcess:
    """One CPU trainer on loopback with the short hivemind timeouts a one-machine swarm can afford."""
    return start_service(f"trainer-{index}", [
        "train", "--coordinator", coordinator, "--output-dir", str(workdir / f"trainer-{index}"),
        "--name", f"demo-peer-{index}", "--batch-size", "2", "--device", "cpu", "--precision", "fp32",
        "--host-maddrs", "/ip4/127.0.0.1/tcp/0", "--matchmaking-time", "2", "--averaging-timeout", "15",
        "--load-state-timeout", "30", "--compression", "none", "--barrier-timeout", "120",
        "--metrics-port", "0", *(["--client-mode"] if client_mode else []), *(extra_args or []),
    ], workdir=workdir / "logs", env={"SWARM_TOKEN": token})


def run_demo(workdir: str | Path, *, trainers: int = 2, config: dict[str, Any] | None = None,
             client_mode_peers: int = 1, timeout: float = 900.0, show_progress: bool = True,
             trainer_args: list[str] | None = None, prometheus_targets: str | Path | None = None
             ) -> dict[str, Any]:
    """Run a whole swarm to the end of its run config and return the summary written to WORKDIR/summary.json."""
    from swarm_coordinator.tokens import create_token

    started_at = time.monotonic()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    run_config = {**DEMO_CONFIG, **(config or {})}
    config_path, index, objects, n_images = prepare_demo_data(workdir, run_config)
    host = start_demo_host(workdir, config_path, index, objects)
    if host.status_url:
        logger.info(f"status page: {host.status_url} (open it while the swarm trains)")
    peers: list[ServiceProcess] = []
    try:
        token = create_token(str(host.workdir / "coordinator.sqlite"), name="demo-trainers")
        for i in range(trainers):
            client_mode = i >= trainers - client_mode_peers and i > 0  # peer 0 always listens
            peers.append(start_demo_trainer(workdir, i, coordinator=host.coordinator_address, token=token,
                                            client_mode=client_mode, extra_args=trainer_args))
        if prometheus_targets:
            _write_prometheus_targets(prometheus_targets, host, peers)
        wait_for_trainers(peers, host.coordinator_address, token, total=n_images * run_config["max_data_epochs"],
                          timeout=timeout, show_progress=show_progress)
        progress = coordinator_progress(host.coordinator_address, token)
    finally:
        for peer in peers:
            peer.stop(timeout=60)
        host.stop()

    summaries = [json.loads((workdir / f"trainer-{i}" / "summary.json").read_text()) for i in range(trainers)]
    summary = {
        "peers": trainers,
        "samples_trained": int(progress.samples_done) if progress else sum(s["samples_trained"] for s in summaries),
        "global_epochs": max(s["global_epoch"] for s in summaries),
        "data_epochs": int(progress.data_epochs_done) if progress else None,
        "loss_first": sum(s["loss_first"] for s in summaries) / trainers,
        "loss_last": sum(s["loss_last"] for s in summaries) / trainers,
        "checkpoint": summaries[0]["checkpoint"],
        "samples_per_s_per_trainer": [s["samples_per_s"] for s in summaries],
        "wall_time_s": round(time.monotonic() - started_at, 1),
        "trainers": summaries,
        "host": str(host.workdir),
    }
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _write_prometheus_targets(path: str | Path, host, peers: list[ServiceProcess]) -> None:
    """Prometheus file_sd targets for every process of the swarm, labelled by job as in deploy/prometheus."""
    targets = [{"targets": [f"127.0.0.1:{port}"], "labels": {"job": name}}
               for name, port in host.metrics_ports().items()]
    for peer in peers:
        info = peer.wait_ready(timeout=300)
        targets.append({"targets": [f"127.0.0.1:{info['metrics_port']}"],
                        "labels": {"job": "trainer", "peer": peer.name}})
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(targets))
    tmp.replace(path)


def wait_for_trainers(peers: list[ServiceProcess], coordinator: str, token: str, *, total: int, timeout: float,
                      show_progress: bool = False) -> None:
    """Until every trainer exits (an error if one fails), showing the swarm's progress from the coordinator."""
    from tqdm import tqdm

    deadline = time.monotonic() + timeout
    with tqdm(total=total, unit="sample", desc="swarm", disable=not show_progress, file=sys.stderr) as bar:
        while any(p.popen.poll() is None for p in peers):
            _raise_if_one_failed(peers)
            if time.monotonic() > deadline:
                raise TimeoutError(f"the swarm did not finish in {timeout:.0f} s; logs in {peers[0].log_path.parent}")
            progress = coordinator_progress(coordinator, token)
            if progress is not None:
                bar.n = min(total, progress.samples_done)
                bar.set_postfix(epoch=progress.swarm_epoch, data_epoch=progress.data_epochs_done,
                                peers=progress.peers_alive, leased=progress.chunks_leased, refresh=False)
                bar.refresh()
            time.sleep(1.0)
    _raise_if_one_failed(peers)


def _raise_if_one_failed(peers: list[ServiceProcess]) -> None:
    """A trainer that exited non-zero ends the run, with the tail of its log in the error."""
    for peer in peers:
        if peer.popen.poll() not in (None, 0):
            raise RuntimeError(f"{peer.name} exited with code {peer.popen.returncode}" + peer.log_tail())


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="run a whole swarm on this machine: host services + CPU trainers on a tiny model",
        description="Run the coordinator, dataset service, bootstrap DHT and N CPU trainers as local processes on "
                    "loopback; ingest a small real image set; train a tiny SD-shaped model for a few global epochs; "
                    "write WORKDIR/summary.json.")
    p.add_argument("--workdir", default="runs/demo", help="where everything goes (default: %(default)s)")
    p.add_argument("--trainers", type=int, default=2, help="number of trainer processes (default: %(default)s)")
    p.add_argument("--data-epochs", type=int, default=DEMO_CONFIG["max_data_epochs"],
                   help="passes over the demo images (default: %(default)s)")
    p.add_argument("--lora", action="store_true",
                   help="train a LoRA adapter (run config train: lora) instead of the full model; the checkpoint "
                        "is the adapter, and `swarm export` writes the kohya/A1111 and diffusers LoRA files")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from swarm.errors import UsageError

    if not 1 <= args.trainers <= 8:
        raise UsageError(f"--trainers must be between 1 and 8 on one machine, got {args.trainers}")
    if args.data_epochs < 1:
        raise UsageError(f"--data-epochs must be >= 1, got {args.data_epochs}")
    interrupt_on_sigterm()
    config = {"max_data_epochs": args.data_epochs, **(DEMO_LORA_CONFIG if args.lora else {})}
    summary = run_demo(args.workdir, trainers=args.trainers, config=config)
    print(f"\nDemo finished in {summary['wall_time_s']:.0f} s: {summary['peers']} peers trained "
          f"{summary['samples_trained']} samples over {summary['global_epochs']} global epochs; "
          f"loss {summary['loss_first']:.4f} -> {summary['loss_last']:.4f}; samples/s per trainer "
          f"{', '.join(f'{s:.2f}' for s in summary['samples_per_s_per_trainer'])}.\n"
          f"Checkpoint ({'LoRA adapter' if args.lora else 'diffusers folder'}): {summary['checkpoint']}\n"
          f"Summary: {Path(args.workdir) / 'summary.json'}")
    return 0
