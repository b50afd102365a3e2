"""Benchmark: the training modes on an emulated WAN (issue 11). `make bench NAME=wan` (root: network namespaces).

4 `swarm train` peers, each in its own network namespace; the host services (coordinator, dataset service, bootstrap
DHT) in another (bench/_wan_net.py). Modes, each a fresh swarm on the same data, seed and sample budget:
- solo:   the 4 peers train at the same time, never averaging (a target batch no swarm reaches): the throughput
          reference, same CPU share. It takes no optimizer step, so its final_loss is the untrained model's;
- dp:     fp32 gradients averaged after every local batch (target batch = 4 x per-peer batch, no compression, no
          state averaging), unshaped links: the reference for traffic and convergence, measured;
- sync:   today's mode at its default target batch and flags, on shaped links;
- diloco: `mode: diloco` with its defaults, on shaped links.
The shaped rate keeps SD 1.5's ratio of gradient bytes to compute (1.72 GB at 100 Mbit/s over a 0.5 s step): with P
the bench model's parameters and t its local step time measured in solo, rate = P x 2 bytes / (ratio x t).

Per mode: per-peer samples/s over the training window (every peer training -> 95% of the budget), utilization against
solo, bytes_per_sample from the peers' wan interface counters (sent + received, all peers, whole run, divided by the
samples the swarm trained), final_loss of peer 0's final checkpoint on fixed images, noise and timesteps.
`python -m bench.wan --modes diloco` re-runs some modes and keeps the others' results from bench/results/wan.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from bench._wan_figures import (
    control_bytes_per_s,
    counted_bytes,
    eval_loss,
    interpolate,
    load_eval_set,
    per_peer_rates,
    scale_arithmetic,
    training_window,
)
from bench._wan_net import Wan, bytes_between, can_make_namespaces
from bench._wan_swarm import ModeRun, ingest, run_mode, write_dataset

RESULTS = Path(__file__).resolve().parent / "results" / "wan.json"
MODES = ("solo", "dp", "sync", "diloco")
UNREACHABLE_TARGET = 1_000_000_000
GOALS = {"diloco_utilization": 0.9, "reduction_vs_dp": 400, "loss_ratio": 1.05}


def base_config(*, data_epochs: int, seed: int) -> dict:
    return {"model": "tiny", "resolution": 64, "buckets_side_min": 64, "buckets_side_max": 64, "lr": 1e-3,
            "lr_scheduler": "constant", "ucg": 0.0, "chunk_size": 8, "max_data_epochs": data_epochs, "seed": seed}


def mode_setup(mode: str, *, peers: int, batch_size: int, link_rate: float | None, params: int) -> dict:
    """Run-config changes, trainer flags and shaping of one mode."""
    common = ["--load-state-timeout", "600", "--barrier-timeout", "600", "--cache-latents"]
    if mode in ("solo", "dp"):
        fast = ["--matchmaking-time", "1", "--averaging-timeout", "60"]
        if mode == "solo":
            return {"config": {"target_batch_size": UNREACHABLE_TARGET}, "args": [*common, *fast], "shaped": False}
        return {"config": {"target_batch_size": peers * batch_size},
                "args": [*common, *fast, "--compression", "none", "--average-state-every", str(UNREACHABLE_TARGET)],
                "shaped": False}
    if link_rate is None:
        raise ValueError(f"mode {mode} runs on shaped links: run solo first (it measures the step time)")
    # The slowest exchange on the shaped link: an fp32 all-reduce (each peer sends and receives 2 x (n-1)/n of it).
    allreduce_s = 2 * (peers - 1) / peers * params * 4 / link_rate
    slow = ["--matchmaking-time", "5", "--averaging-timeout", str(round(max(120.0, 2 * allreduce_s)))]
    config = {} if mode == "sync" else {"mode": "diloco"}
    return {"config": config, "args": [*common, *slow], "shaped": True}


def summarize(run: ModeRun, *, peers: int, budget: int, eval_set: dict) -> dict:
    t_first, t_done, s_first, s_done = training_window(run.progress, peers=peers, budget=budget)
    swarm_rate = (s_done - s_first) / (t_done - t_first)
    samples = sum(s["samples_trained"] for s in run.summaries)
    start, end = run.links[0][1], run.links[-1][1]
    wan_bytes = bytes_between(start, end, "wan")
    wan_series = [(t, bytes_between(start, reading, "wan")) for t, reading in run.links]
    window_bytes = interpolate(wan_series, t_done) - interpolate(wan_series, t_first)
    checkpoint = run.summaries[0].get("checkpoint")
    return {
        "per_peer_samples_per_s": round(swarm_rate / peers, 3),
        "per_peer_samples_per_s_each": [round(r, 3) if r is not None else None
                                        for r in per_peer_rates(run.progress, t_first=t_first, t_done=t_done,
                                                                peers=peers)],
        "samples_trained": samples,
        "training_window_s": round(t_done - t_first, 1),
        "wall_s": round(run.wall_s, 1),
        "bytes_per_sample": round(wan_bytes / samples, 1),
        "bytes_per_sample_training_window": round(window_bytes / (s_done - s_first), 1),
        "wan_bytes": wan_bytes,
        "wan_bytes_per_s_per_peer": round(window_bytes / (t_done - t_first) / peers, 1),
        "svc_bytes_per_sample": round(bytes_between(start, end, "svc") / samples, 1),
        "hivemind_bytes_counted_by_trainers": counted_bytes(run.progress, peers=peers),
        "global_epochs": max(s["global_epoch"] for s in run.summaries),
        "final_loss": round(eval_loss(Path(checkpoint) / "unet" if checkpoint else None, eval_set), 5),
        "train_loss_last": round(sum(s["loss_last"] for s in run.summaries) / peers, 5),
    }


def net_reduction(modes: dict) -> float | None:
    """dp / diloco bytes per sample over the training window, each less solo's (control traffic, no averaging)."""
    if not all(m in modes for m in ("solo", "dp", "diloco")):
        return None
    key = "bytes_per_sample_training_window"
    extra = modes["diloco"][key] - modes["solo"][key]
    return round((modes["dp"][key] - modes["solo"][key]) / extra, 1) if extra > 0 else None


def top_level(result: dict) -> dict:
    modes = result["modes"]

    def ratio(a: str, b: str, key: str):
        if a in modes and b in modes and modes[b].get(key):
            return round(modes[a][key] / modes[b][key], 4)
        return None

    out = {"reduction_vs_dp": ratio("dp", "diloco", "bytes_per_sample"),
           "reduction_vs_dp_training_window": ratio("dp", "diloco", "bytes_per_sample_training_window"),
           "reduction_vs_dp_net_of_control": net_reduction(modes),
           "diloco_utilization": modes.get("diloco", {}).get("utilization"),
           "loss_ratio": ratio("diloco", "dp", "final_loss"),
           "sync_loss_ratio": ratio("sync", "dp", "final_loss")}
    out["goals"] = {key: {"goal": goal, "measured": out[key],
                          "met": None if out[key] is None else (out[key] <= goal if key == "loss_ratio"
                                                                else out[key] >= goal)}
                    for key, goal in GOALS.items()}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--data-epochs", type=int, default=0, help="passes over the data (0: budget / dataset)")
    # 4 data epochs of 224 images: one full DiLoCo round (H = 100 at batch 2) and the final one; dp, which averages
    # after every batch, already takes ~25 minutes of it on a shared 2-core machine.
    parser.add_argument("--budget", type=int, default=896, help="samples the swarm trains in each mode")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-control-allowance", dest="control_allowance", action="store_false",
                        help="shape to the payload rate alone (hivemind's control traffic then competes for it)")
    parser.add_argument("--crops-per-photo", type=int, default=8, help="dataset: random 64x64 crops of each photo")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one mode may take")
    parser.add_argument("--workdir", default="runs/bench-wan")
    parser.add_argument("--results", default=str(RESULTS), help="(default: %(default)s)")
    args = parser.parse_args()
    results = Path(args.results)

    why_not = can_make_namespaces()
    if why_not:
        print(f"bench wan skipped: it {why_not}", file=sys.stderr)
        return 0
    from swarm.shutdown import on_shutdown_signals, raise_keyboard_interrupt
    from swarm_trainer.model import build_tiny

    workdir = Path(args.workdir).resolve()
    images = workdir / "images"
    n_images = write_dataset(images, crops_per_photo=args.crops_per_photo, size=64, seed=args.seed)
    data_epochs = args.data_epochs or max(1, round(args.budget / n_images))
    budget = n_images * data_epochs
    params = sum(p.numel() for p in build_tiny(seed=args.seed).unet.parameters())
    index, storage = workdir / "dataset.sqlite", f"file://{workdir / 'objects'}"
    config_path = workdir / "ingest.yaml"
    import yaml

    config_path.write_text(yaml.safe_dump(base_config(data_epochs=data_epochs, seed=args.seed)))
    if not index.exists():
        ingest(images, index=index, storage=storage, config_path=config_path)
    eval_set = load_eval_set(images, size=64, seed=args.seed)

    previous = json.loads(results.read_text()) if results.exists() else {}
    same_setup = previous.get("setup", {}).get("budget") == budget and \
        previous.get("setup", {}).get("batch_size") == args.batch_size
    result = {"benchmark": "wan", "modes": dict(previous.get("modes", {})) if same_setup else {},
              "scale": previous.get("scale") if same_setup else None}
    _rescale(result, args=args, params=params)
    wan = Wan(peers=args.peers)
    on_shutdown_signals(raise_keyboard_interrupt)  # SIGTERM too: the namespaces must go whatever happens
    try:
        wan.create()
        for mode in [m for m in MODES if m in args.modes]:
            link_rate = result["scale"]["bench"]["link_bytes_per_s"] if result["scale"] else None
            setup = mode_setup(mode, peers=args.peers, batch_size=args.batch_size, link_rate=link_rate,
                               params=params)
            wan.shape(link_rate if setup["shaped"] else None)
            print(f"--- mode {mode}: budget {budget} samples, link "
                  f"{f'{link_rate * 8 / 1000:.1f} kbit/s' if setup['shaped'] else 'unshaped'}", flush=True)
            started = time.monotonic()
            run = run_mode(wan, name=mode, workdir=workdir / mode, index=index, storage=storage,
                           run_config={**base_config(data_epochs=data_epochs, seed=args.seed), **setup["config"]},
                           trainer_args=setup["args"], batch_size=args.batch_size, timeout=args.timeout)
            figures = summarize(run, peers=args.peers, budget=budget, eval_set=eval_set)
            figures.update(link="shaped" if setup["shaped"] else "unshaped",
                           link_bytes_per_s=round(link_rate, 1) if setup["shaped"] else None,
                           run_config=setup["config"], trainer_flags=setup["args"])
            result["modes"][mode] = figures
            _rescale(result, args=args, params=params)
            print(f"    {mode}: {json.dumps(figures)} ({time.monotonic() - started:.0f} s)", flush=True)
            _write(result, results, args=args, budget=budget, data_epochs=data_epochs, n_images=n_images,
                   params=params)
    finally:
        wan.destroy()
    result = json.loads(results.read_text()) if results.exists() else result
    print(json.dumps({k: v for k, v in result.items() if k not in ("modes", "setup")}, indent=2))
    return 0


def _rescale(result: dict, *, args, params: int) -> None:
    """The shaped link from solo's figures (its step time and its control traffic), whenever solo has run."""
    solo = result["modes"].get("solo")
    if solo:
        allowance = control_bytes_per_s(solo) if args.control_allowance else 0.0
        result["scale"] = scale_arithmetic(params=params, step_s=args.batch_size / solo["per_peer_samples_per_s"],
                                           batch_size=args.batch_size, control_allowance=allowance)


def _write(result: dict, path: Path, *, args, budget: int, data_epochs: int, n_images: int, params: int) -> None:
    solo = result["modes"].get("solo", {}).get("per_peer_samples_per_s")
    for figures in result["modes"].values():
        figures["utilization"] = round(figures["per_peer_samples_per_s"] / solo, 3) if solo else None
    result.update(top_level(result))
    result["setup"] = {
        "peers": args.peers, "batch_size": args.batch_size, "budget": budget, "data_epochs": data_epochs,
        "dataset": f"{n_images} images: {args.crops_per_photo} random 64x64 crops of each demo photograph "
                   f"(scikit-image) with its caption", "seed": args.seed,
        "model": f"tiny SD-shaped (diffusers test UNet, {params} parameters), fp32 on CPU, 1 torch thread per peer",
        "bytes_per_sample": "all peers' wan interface bytes (tx + rx) over the whole run / samples the swarm trained",
        "svc_bytes_per_sample": "the same on the unshaped link to the coordinator and dataset service (data)",
        "final_loss": "peer 0's final checkpoint: SD loss on 64 of the images (fixed latents), 4 fixed draws of "
                      "noise and timesteps",
        "host": platform.platform(), "cpu_count": __import__("os").cpu_count(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
