"""One real trainer peer for test_two_peers.py: a DHT on 127.0.0.1, hivemind.Optimizer, real tiny-SD steps.

Run as a separate process: `python hivemind_peer.py --workdir W --name a [--initial-peers-file F] [--client-mode]`.
It trains until its optimizer reaches --epochs, then meets the other peer(s) at a file barrier (laggards download the
swarm state), dumps its parameters and epoch, and keeps its DHT up until the other peers have dumped too.

A late joiner (`--join-after-epoch N`, named in the others' `--late`) builds its model, waits until the others
reached epoch N, downloads the swarm's state as a real joiner does (session.join: wait_for_swarm_progress,
behind_swarm, load_state_from_peers) and records what the download carried (`NAME.download.pt`), then trains along.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)


def wait_for(predicate, *, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--other", required=True, help="the other peers' names, comma-separated")
    parser.add_argument("--late", default="", help="names among --other that join late (not waited for at start)")
    parser.add_argument("--join-after-epoch", type=int, default=0,
                        help="a late joiner: download the swarm's state once the others reached this epoch")
    parser.add_argument("--initial-peers-file")
    parser.add_argument("--client-mode", action="store_true")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--image-seed", type=int, default=0)
    parser.add_argument("--target-batch-size", type=int, default=16)
    parser.add_argument("--lora", action="store_true", help="train: lora (only the adapter trains and is averaged)")
    args = parser.parse_args()

    from conftest import make_images

    from swarm.runconfig import RunConfig
    from swarm_trainer.backend import make_backend
    from swarm_trainer.engine import TrainEngine
    from swarm_trainer.model import build_tiny
    from swarm_trainer.swarm import SwarmOptions, make_dht, shutdown, visible_multiaddrs

    workdir = Path(args.workdir)
    config = RunConfig(resolution=64, buckets_side_min=64, buckets_side_max=64,
                       target_batch_size=args.target_batch_size, lr=1e-2 if args.lora else 1e-3, ucg=0.0,
                       train="lora" if args.lora else "full")
    options = SwarmOptions(host_maddrs=("/ip4/127.0.0.1/tcp/0",), client_mode=args.client_mode,
                           matchmaking_time=1.0, averaging_timeout=5.0, load_state_timeout=20.0, compression="none",
                           verbose=True)
    initial_peers = json.loads(Path(args.initial_peers_file).read_text()) if args.initial_peers_file else []
    dht = make_dht(initial_peers=initial_peers, options=options)
    models = build_tiny(seed=config.seed)
    if args.lora:
        from swarm_trainer.lora import add_lora

        add_lora(models, config)
    torch.manual_seed(1000 + args.image_seed)  # identical weights, but each peer its own noise and timesteps
    engine = TrainEngine(models=models, config=config, device=torch.device("cpu"), batch_size=1,
                         backend_factory=lambda params: make_backend(
                             dht=dht, run_id="two-peers-test", params=params, config=config, batch_size=1,
                             options=options))
    me = {"peer_id": dht.peer_id.to_base58(), "client_mode": args.client_mode}
    (workdir / f"{args.name}.peer.json").write_text(json.dumps(me))
    (workdir / f"{args.name}.maddrs.json").write_text(json.dumps(visible_multiaddrs(dht)))
    others = [name for name in args.other.split(",") if name]
    late = set(args.late.split(",")) - {""}
    # Start together, or the first peer would run through every epoch alone before the second one is built.
    for name in others:
        if name not in late:
            wait_for((workdir / f"{name}.peer.json").exists, timeout=300, what=f"peer {name} to start")
    if args.join_after_epoch:
        join_late(engine, workdir=workdir, name=args.name, others=others, epoch=args.join_after_epoch)

    images = make_images(8, seed=args.image_seed)
    captions = [f"pattern number {i}" for i in range(len(images))]
    step, max_peers, epoch_file = 0, 0, workdir / f"{args.name}.epoch"
    while engine.local_epoch < args.epochs:
        i = step % len(images)
        engine.train_batch([images[i]], [captions[i]])
        max_peers = max(max_peers, engine.backend.peers_in_last_round())
        step += 1
        epoch_file.write_text(str(engine.local_epoch))  # what a late joiner waits for
        if step > 400:
            raise RuntimeError(f"no progress: local_epoch {engine.local_epoch} after {step} steps")

    # Barrier (the coordinator's job in a real run): all peers done; one behind downloads the swarm state.
    (workdir / f"{args.name}.done.json").write_text(json.dumps({"epoch": engine.local_epoch}))
    for name in others:
        wait_for((workdir / f"{name}.done.json").exists, timeout=300, what=f"peer {name} to finish")
    other_epoch = max(json.loads((workdir / f"{name}.done.json").read_text())["epoch"] for name in others)
    if engine.local_epoch < other_epoch:
        engine.load_state_from_peers()
    participants = [(me["peer_id"], me["client_mode"])] + [
        (peer["peer_id"], peer["client_mode"])
        for peer in (json.loads((workdir / f"{name}.peer.json").read_text()) for name in others)]
    sync = engine.backend.final_sync(peer_id=me["peer_id"], participants=participants, timeout=60)

    torch.save({"epoch": engine.local_epoch, "params": engine.parameters_vector(), "steps": step,
                "max_peers": max_peers, "sync": sync,
                "losses": engine.stats.losses, "client_mode": args.client_mode,
                "all_unet": torch.cat([p.detach().reshape(-1) for p in models.unet.parameters()]),
                "dht_client_mode": dht.client_mode, "optimizer_client_mode": engine.backend.client_mode},
               workdir / f"{args.name}.result.pt")
    # Stay up until the other peers have their results: they may still need to download state from this one.
    for name in others:
        wait_for((workdir / f"{name}.result.pt").exists, timeout=300, what=f"peer {name}'s result")
    (workdir / f"{args.name}.exit").touch()
    for name in others:
        wait_for((workdir / f"{name}.exit").exists, timeout=30, what=f"peer {name} to exit")
    shutdown(engine.backend, dht)
    return 0


def join_late(engine, *, workdir: Path, name: str, others: list[str], epoch: int) -> None:
    """Wait until the swarm reached `epoch`, then catch up as session.join does, recording every state download
    (hivemind's DecentralizedAverager.load_state_from_peers result: metadata and the tensors received)."""
    from hivemind.averaging.averager import DecentralizedAverager

    def swarm_epoch() -> int:
        files = [workdir / f"{other}.epoch" for other in others]
        return max((int(f.read_text() or 0) for f in files if f.exists()), default=0)

    wait_for(lambda: swarm_epoch() >= epoch, timeout=240, what=f"the swarm to reach epoch {epoch}")
    downloads = []
    download = DecentralizedAverager.load_state_from_peers

    def recording_download(self, *args, **kwargs):
        started = time.monotonic()
        result = download(self, *args, **kwargs)
        if result is not None:
            metadata, tensors = result
            downloads.append({"averager": type(self).__name__, "seconds": time.monotonic() - started,
                              "epoch": metadata.get("epoch"), "tensors": [t.clone() for t in tensors]})
        return result

    DecentralizedAverager.load_state_from_peers = recording_download
    try:
        assert engine.backend.wait_for_swarm_progress(timeout=30), "the joiner never saw the swarm's progress"
        epoch_before = engine.local_epoch
        behind = engine.behind_swarm()
        if behind:
            engine.load_state_from_peers()
    finally:
        DecentralizedAverager.load_state_from_peers = download
    torch.save({"behind": behind, "epoch_before": epoch_before, "epoch_after": engine.local_epoch,
                "swarm_epoch": engine.backend.swarm_epoch, "params": engine.parameters_vector(),
                "downloads": downloads}, workdir / f"{name}.download.pt")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
