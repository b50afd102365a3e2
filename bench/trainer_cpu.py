"""Benchmark: samples/s of the trainer's step vs a plain reference loop, tiny SD model on CPU, same run.

`make bench NAME=trainer_cpu` or `python -m bench.trainer_cpu [--steps N --batch-size B --resolution R]`.

Ours: swarm_trainer's TrainEngine (our SD step, caption handling, hivemind.Optimizer on a loopback DHT with a target
batch of one local batch, so every step is a global AdamW step as in the reference; alone, it averages with nobody).
Reference: the loop of diffusers' train_text_to_image (VAE latents x scaling factor, noise, timesteps, add_noise,
text embeddings, UNet, MSE, backward, AdamW step, zero_grad). Same seed-built model, same batch, same precision
(fp32). The two alternate in rounds so that load from other processes hits both alike.

A third loop is ours with the trust checks on (swarm.trust: a coordinator-signed credential, the DHT authorizer on
every DHT request, the guarded averagers); `checks_overhead` is 1 - (checks on samples/s) / (checks off samples/s),
measured in the same rounds, steps interleaved one by one, from the median step time (`overhead_from_totals`: from
the totals). Alone, a peer runs no all-reduce, so `robust_reducer` adds the reducer's own cost: one
2^19-byte part from 4 senders combined robustly vs hivemind's weighted sum.

A fourth loop is ours training a LoRA (run config `train: lora`, rank 4, diffusers' default targets) on the same
model: `lora_samples_per_s`. `lora_bytes_per_round` and `full_bytes_per_round` are MEASURED: the bytes one peer sends
in one gradient-averaging round of two real hivemind peers (averagers holding tensors shaped like the trainable
parameters each loop handed to hivemind, the default fp16 compression), counted where hivemind hands messages to its
p2p daemon, as swarm_trainer_network_bytes_total counts them (swarm_trainer.traffic); matchmaking and DHT messages
included. The `*_computed` twins are what goes into the averager: trainable parameters x 2 bytes (in a 2-peer round
each peer sends half of it to the other and the averaged other half back, the same total).

Writes bench/results/trainer_cpu.json: ours and reference samples/s, their ratio, checks_overhead, the LoRA row and
the setup.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "trainer_cpu.json"


def _batch(batch_size: int, resolution: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (resolution, resolution, 3), dtype=np.uint8))
              for _ in range(batch_size)]
    captions = [f"a photograph of thing number {i}, high quality" for i in range(batch_size)]
    return images, captions


def reference_loop(models, images, captions, *, lr: float):
    """A step as diffusers' examples/text_to_image/train_text_to_image.py writes it (fp32, no accelerate)."""
    import numpy as np
    import torch
    import torch.nn.functional as F  # noqa: N812 (torch's own convention)

    unet, vae, text_encoder, tokenizer, noise_scheduler = (models.unet, models.vae, models.text_encoder,
                                                           models.tokenizer, models.noise_scheduler)
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    unet.train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)

    def step():
        pixel_values = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
                                    for im in images])
        input_ids = tokenizer(captions, max_length=tokenizer.model_max_length, padding="max_length",
                              truncation=True, return_tensors="pt").input_ids
        latents = vae.encode(pixel_values).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],)).long()
        noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
        encoder_hidden_states = text_encoder(input_ids, return_dict=False)[0]
        target = noise
        model_pred = unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
        loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss.item()

    return step


def _trust_for_bench(workdir: Path):
    """A one-peer swarm's admission, as a trainer gets it: identity, a credential signed by a coordinator key, the DHT
    authorizer and the trust settings (swarm_trainer.admission does the same through the coordinator's RPC)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from swarm.trust.admission import TrustSettings
    from swarm.trust.credentials import issue_credential, public_key_bytes
    from swarm.trust.dht_auth import CredentialAuthorizer, CredentialFile, load_or_create_identity

    key = Ed25519PrivateKey.generate()
    identity = workdir / "identity.key"
    peer_id, rsa_key = load_or_create_identity(identity)
    CredentialFile.write(workdir / "credential", issue_credential(
        key, token_name="bench", peer_id=peer_id, dht_public_key=rsa_key.get_public_key().to_bytes()))
    authorizer = CredentialAuthorizer(coordinator_public_key=public_key_bytes(key), local_private_key=rsa_key,
                                      credential_source=CredentialFile(workdir / "credential"))
    return TrustSettings(run_id="bench-cpu-trust", coordinator_public_key=public_key_bytes(key)), authorizer, identity


def ours(models, images, captions, *, lr: float, trust_dir: Path | None = None, lora: bool = False):
    import torch

    from swarm.runconfig import RunConfig
    from swarm_trainer.backend import make_backend
    from swarm_trainer.engine import TrainEngine
    from swarm_trainer.swarm import SwarmOptions, make_dht

    config = RunConfig(resolution=64, buckets_side_min=64, buckets_side_max=1024, lr=lr, ucg=0.0,
                       target_batch_size=len(images), train="lora" if lora else "full")
    if lora:
        from swarm_trainer.lora import add_lora

        add_lora(models, config)
    options = SwarmOptions(host_maddrs=("/ip4/127.0.0.1/tcp/0",), matchmaking_time=1.0, averaging_timeout=5.0,
                           compression="none", trust_checks=trust_dir is not None)
    trust, authorizer, run_id = None, None, "bench-cpu"
    if trust_dir is not None:
        from dataclasses import replace

        from swarm.trust.admission import publish_credential

        trust, authorizer, identity = _trust_for_bench(trust_dir)
        options, run_id = replace(options, identity_path=str(identity)), trust.run_id
    dht = make_dht(initial_peers=[], options=options, authorizer=authorizer)
    if trust is not None:
        publish_credential(dht, trust, (trust_dir / "credential").read_text())
    engine = TrainEngine(models=models, config=config, device=torch.device("cpu"), batch_size=len(images),
                         backend_factory=lambda params: make_backend(dht=dht, run_id=run_id, params=params,
                                                                     config=config, batch_size=len(images),
                                                                     options=options, trust=trust))

    def step():
        return engine.train_batch(images, captions)

    return step, engine, dht


def robust_reducer_cost(repeats: int = 20) -> dict:
    """Seconds to combine one hivemind-sized part (2^19 bytes fp32) from 4 senders: robust rules vs a weighted sum."""
    import torch

    from swarm.trust.robust import robust_average

    parts = [torch.randn(2 ** 17) for _ in range(4)]
    weights = [1.0, 2.0, 1.0, 1.0]

    def plain():
        acc = torch.zeros(2 ** 17)
        for part, weight in zip(parts, weights):
            acc.add_(part, alpha=weight)
        return acc / sum(weights)

    def robust():
        return robust_average(parts, weights)

    out = {}
    for name, fn in (("plain_mean_s", plain), ("robust_s", robust)):
        fn()
        started = time.perf_counter()
        for _ in range(repeats):
            fn()
        out[name] = round((time.perf_counter() - started) / repeats, 6)
    return out


def bytes_per_round(shapes, *, compression: str = "fp16", timeout: float = 60.0) -> int:
    """Bytes one peer sends in one averaging round of two hivemind peers averaging tensors of these shapes.

    Both peers live in this process (their averagers fork), so the shared counters hold both peers' traffic: the
    sent bytes of the round are halved. Call it with no other hivemind peer of this process busy.
    """
    import concurrent.futures

    import hivemind
    import torch

    from swarm_trainer import traffic
    from swarm_trainer.swarm import make_compression

    traffic.install()
    grad_compression, _ = make_compression(compression)
    dhts, averagers = [], []
    try:
        first = hivemind.DHT(host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True)
        dhts.append(first)
        dhts.append(hivemind.DHT(host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True,
                                 initial_peers=[str(a) for a in first.get_visible_maddrs()]))
        for dht in dhts:
            averagers.append(hivemind.averaging.DecentralizedAverager(
                [torch.randn(shape) for shape in shapes], dht, prefix="bench-bytes", target_group_size=2,
                min_group_size=2, min_matchmaking_time=1.0, request_timeout=1.0, compression=grad_compression,
                start=True))
        before = traffic.totals()["sent"]
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            groups = list(pool.map(lambda averager: averager.step(timeout=timeout), averagers))
        sent = traffic.totals()["sent"] - before
        if not all(group is not None and len(group) == 2 for group in groups):
            raise RuntimeError(f"the two bench peers did not average together: {groups}")
    finally:
        for averager in averagers:
            averager.shutdown()
        for dht in dhts:
            dht.shutdown()
    return sent // 2


def _timed(step, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        step()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round and loop")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()

    import tempfile

    import torch

    from swarm_trainer.model import build_tiny
    from swarm_trainer.swarm import shutdown

    if args.threads:
        torch.set_num_threads(args.threads)
    images, captions = _batch(args.batch_size, args.resolution)
    ref_step = reference_loop(build_tiny(seed=42), images, captions, lr=1e-4)
    our_step, engine, dht = ours(build_tiny(seed=42), images, captions, lr=1e-4)
    trust_dir = tempfile.TemporaryDirectory()
    checked_step, checked_engine, checked_dht = ours(build_tiny(seed=42), images, captions, lr=1e-4,
                                                     trust_dir=Path(trust_dir.name))
    lora_step, lora_engine, lora_dht = ours(build_tiny(seed=42), images, captions, lr=1e-4, lora=True)
    try:
        _timed(ref_step, args.warmup)
        _timed(our_step, args.warmup)
        _timed(checked_step, args.warmup)
        _timed(lora_step, args.warmup)
        ref_s = lora_s = 0.0
        off_steps, on_steps = [], []
        for _ in range(args.rounds):
            ref_s += _timed(ref_step, args.steps)
            for _ in range(args.steps):  # checks off and on step by step, so a burst of load hits both alike
                off_steps.append(_timed(our_step, 1))
                on_steps.append(_timed(checked_step, 1))
            lora_s += _timed(lora_step, args.steps)
        our_s, checked_s = sum(off_steps), sum(on_steps)
        epochs = engine.local_epoch
        full_shapes = [tuple(p.shape) for p in engine.params]
        lora_shapes = [tuple(p.shape) for p in lora_engine.params]
    finally:
        shutdown(engine.backend, dht)
        shutdown(lora_engine.backend, lora_dht)
        shutdown(checked_engine.backend, checked_dht)
        trust_dir.cleanup()
    full_bytes, lora_bytes = bytes_per_round(full_shapes), bytes_per_round(lora_shapes)
    full_computed = 2 * sum(math.prod(shape) for shape in full_shapes)
    lora_computed = 2 * sum(math.prod(shape) for shape in lora_shapes)
    samples = args.rounds * args.steps * args.batch_size
    result = {
        "benchmark": "trainer_cpu",
        "ours_samples_per_s": round(samples / our_s, 3),
        "reference_samples_per_s": round(samples / ref_s, 3),
        "ratio": round(ref_s / our_s, 3),
        "ours_global_steps": epochs,
        "checks_overhead": {
            "checks_off_samples_per_s": round(samples / our_s, 3),
            "checks_on_samples_per_s": round(samples / checked_s, 3),
            # From the median step time: one stalled step (a DHT refresh, another process's burst) moves a total
            # by several % on this shared machine; the median of interleaved steps does not.
            "overhead": round(1.0 - statistics.median(off_steps) / statistics.median(on_steps), 4),
            "overhead_from_totals": round(1.0 - our_s / checked_s, 4),
            "robust_reducer": robust_reducer_cost(),
            "note": "one peer: the DHT authorizer and guarded averagers are on the path; no all-reduce runs alone, "
                    "so robust_reducer times the reducer's extra work per 0.5 MiB part separately",
        },
        "lora_samples_per_s": round(samples / lora_s, 3),
        "lora_vs_full_samples_per_s": round(our_s / lora_s, 3),
        "lora_bytes_per_round": lora_bytes,
        "full_bytes_per_round": full_bytes,
        "lora_bytes_per_round_computed": lora_computed,
        "full_bytes_per_round_computed": full_computed,
        "lora_traffic_ratio": round(full_bytes / lora_bytes, 1),
        "lora_note": "rank 4 on to_k/to_q/to_v/to_out.0. *_bytes_per_round: measured, bytes one peer sent in one "
                     "gradient-averaging round of 2 real hivemind peers with fp16 compression, counted where hivemind "
                     "hands messages to its p2p daemon (swarm_trainer.traffic), matchmaking included; *_computed: "
                     "trainable parameters x 2 bytes. Sync mode also averages parameters every 10th epoch "
                     "(average_state_every), adapter-sized too under LoRA.",
        "setup": {"model": "tiny (diffusers test UNet 32/64, AutoencoderKL 32/64, CLIP 32x5)",
                  "batch_size": args.batch_size, "resolution": args.resolution, "precision": "fp32",
                  "timed_steps_each": args.rounds * args.steps, "torch_threads": torch.get_num_threads(),
                  "torch": torch.__version__, "cpu": platform.processor() or platform.machine()},
        "note": "ours includes hivemind.Optimizer (offloaded AdamW, progress tracking) with a global step per batch",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
