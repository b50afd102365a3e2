"""Benchmark: samples/s of the trainer's step vs a plain reference loop, tiny SD model on CPU, same run.

`make bench NAME=trainer_cpu` or `python -m bench.trainer_cpu [--steps N --batch-size B --resolution R]`.

Ours: swarm_trainer's TrainEngine (our SD step, caption handling, hivemind.Optimizer on a loopback DHT with a target
batch of one local batch, so every step is a global AdamW step as in the reference; alone, it averages with nobody).
Reference: the loop of diffusers' train_text_to_image (VAE latents x scaling factor, noise, timesteps, add_noise,
text embeddings, UNet, MSE, backward, AdamW step, zero_grad). Same seed-built model, same batch, same precision
(fp32). The two alternate in rounds so that load from other processes hits both alike.

Writes bench/results/trainer_cpu.json: ours and reference samples/s, their ratio, and the setup.
"""
from __future__ import annotations

import argparse
import json
import platform
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


def ours(models, images, captions, *, lr: float):
    import torch

    from swarm.runconfig import RunConfig
    from swarm_trainer.backend import make_backend
    from swarm_trainer.engine import TrainEngine
    from swarm_trainer.swarm import SwarmOptions, make_dht

    config = RunConfig(resolution=64, buckets_side_min=64, buckets_side_max=1024, lr=lr, ucg=0.0,
                       target_batch_size=len(images))
    options = SwarmOptions(host_maddrs=("/ip4/127.0.0.1/tcp/0",), matchmaking_time=1.0, averaging_timeout=5.0,
                           compression="none")
    dht = make_dht(initial_peers=[], options=options)
    engine = TrainEngine(models=models, config=config, device=torch.device("cpu"), batch_size=len(images),
                         backend_factory=lambda params: make_backend(dht=dht, run_id="bench-cpu", params=params,
                                                                     config=config, batch_size=len(images),
                                                                     options=options))

    def step():
        return engine.train_batch(images, captions)

    return step, engine, dht


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

    import torch

    from swarm_trainer.model import build_tiny
    from swarm_trainer.swarm import shutdown

    if args.threads:
        torch.set_num_threads(args.threads)
    images, captions = _batch(args.batch_size, args.resolution)
    ref_step = reference_loop(build_tiny(seed=42), images, captions, lr=1e-4)
    our_step, engine, dht = ours(build_tiny(seed=42), images, captions, lr=1e-4)
    try:
        _timed(ref_step, args.warmup)
        _timed(our_step, args.warmup)
        ref_s = our_s = 0.0
        for _ in range(args.rounds):
            ref_s += _timed(ref_step, args.steps)
            our_s += _timed(our_step, args.steps)
        epochs = engine.local_epoch
    finally:
        shutdown(engine.backend, dht)
    samples = args.rounds * args.steps * args.batch_size
    result = {
        "benchmark": "trainer_cpu",
        "ours_samples_per_s": round(samples / our_s, 3),
        "reference_samples_per_s": round(samples / ref_s, 3),
        "ratio": round(ref_s / our_s, 3),
        "ours_global_steps": epochs,
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
