"""One real trainer peer for test_two_peers.py: a DHT on 127.0.0.1, hivemind.Optimizer, real tiny-SD steps.

Run as a separate process: `python hivemind_peer.py --workdir W --name a [--initial-peers-file F] [--client-mode]`.
It trains until its optimizer reaches --epochs, then meets the other peer at a file barrier (laggards download the
swarm state), dumps its parameters and epoch, and keeps its DHT up until the other peer has dumped too.
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
    parser.add_argument("--other", required=True)
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
    # Start together, or the first peer would run through every epoch alone before the second one is built.
    other_file = workdir / f"{args.other}.peer.json"
    wait_for(other_file.exists, timeout=120, what="the other peer to start")
    other = json.loads(other_file.read_text())

    images = make_images(8, seed=args.image_seed)
    captions = [f"pattern number {i}" for i in range(len(images))]
    step, max_peers = 0, 0
    while engine.local_epoch < args.epochs:
        i = step % len(images)
        engine.train_batch([images[i]], [captions[i]])
        max_peers = max(max_peers, engine.backend.peers_in_last_round())
        step += 1
        if step > 400:
            raise RuntimeError(f"no progress: local_epoch {engine.local_epoch} after {step} steps")

    # Barrier (the coordinator's job in a real run): both peers done; the one behind downloads the swarm state.
    (workdir / f"{args.name}.done.json").write_text(json.dumps({"epoch": engine.local_epoch}))
    other_done = workdir / f"{args.other}.done.json"
    wait_for(other_done.exists, timeout=120, what="the other peer to finish")
    other_epoch = json.loads(other_done.read_text())["epoch"]
    if engine.local_epoch < other_epoch:
        engine.load_state_from_peers()
    participants = [(me["peer_id"], me["client_mode"]), (other["peer_id"], other["client_mode"])]
    sync = engine.backend.final_sync(peer_id=me["peer_id"], participants=participants, timeout=60)

    torch.save({"epoch": engine.local_epoch, "params": engine.parameters_vector(), "steps": step,
                "max_peers": max_peers, "sync": sync,
                "losses": engine.stats.losses, "client_mode": args.client_mode,
                "all_unet": torch.cat([p.detach().reshape(-1) for p in models.unet.parameters()]),
                "dht_client_mode": dht.client_mode, "optimizer_client_mode": engine.backend.client_mode},
               workdir / f"{args.name}.result.pt")
    # Stay up until the other peer has its result: it may still need to download state from this one.
    wait_for((workdir / f"{args.other}.result.pt").exists, timeout=120, what="the other peer's result")
    (workdir / f"{args.name}.exit").touch()
    wait_for((workdir / f"{args.other}.exit").exists, timeout=30, what="the other peer to exit")
    shutdown(engine.backend, dht)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
