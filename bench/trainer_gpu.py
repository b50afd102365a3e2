"""Benchmark: the trainer's step on the real SD 1.5 architecture (random weights) at 512 px, bf16, on CUDA.

`make bench NAME=trainer_gpu` or `python -m bench.trainer_gpu [--steps N --batch-size B] [--only lora]`. Only where
CUDA is present; elsewhere it says so and writes a result marked skipped. `--only lora` runs the LoRA variant alone
(what an 8 GB GPU can hold: the full-UNet variants need far more).

Models: SD 1.5's UNet (860 M parameters), VAE and CLIP ViT-L text encoder built from their published configs with
random weights (nothing is downloaded). Both loops train the full UNet with fp32 master weights and bf16 autocast.
- reference: diffusers' train_text_to_image loop (AdamW on the GPU, optimizer step every batch).
- ours: swarm_trainer's TrainEngine as a peer runs it: our SD step, PyTorch SDPA, hivemind.Optimizer with its
  optimizer offloaded to host RAM and gradients accumulated in the .grad buffers. In a swarm the global (optimizer)
  step happens once per target batch (thousands of samples) across all peers, so the per-sample cost is the local
  step; the bench times local steps and reports the global step's time separately.
- ours_lowmem: the same with gradient checkpointing.
- lora: ours training a LoRA (run config `train: lora`, rank 4, diffusers' targets) with gradient checkpointing, the
  setup of an 8 GB volunteer GPU; `peak_vram_gib` is its peak allocated memory (goal: <= 6 GiB at batch 1).
Reports images/s, peak GPU memory, and MFU from torch.utils.flop_counter (FLOPs of one forward+backward, divided by
the GPU's dense bf16 peak). Writes bench/results/trainer_gpu.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "trainer_gpu.json"

SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                   "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
SD15_VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4)
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=0,
              eos_token_id=2, pad_token_id=1)
# Dense bf16 tensor-core peaks (FLOP/s) by device name.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "4090": 165e12}


def _write(result: dict, path: Path = RESULTS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def build_sd15(seed: int = 0):
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from swarm_trainer.model import SDModels, build_tiny_tokenizer, make_noise_scheduler

    torch.manual_seed(seed)
    return SDModels(unet=UNet2DConditionModel(**SD15_UNET), vae=AutoencoderKL(**SD15_VAE),
                    text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L)), tokenizer=build_tiny_tokenizer(),
                    noise_scheduler=make_noise_scheduler())


def _peak_flops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def _measure(step, *, steps: int, warmup: int, batch: int, cuda: bool = True) -> dict:
    """images/s over `steps` steps after `warmup`, and the peak allocated GPU memory (None off CUDA)."""
    import torch

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {"images_per_s": round(steps * batch / seconds, 3),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if cuda else None}


VARIANTS = {
    # label: (run config `train`, per-peer features)
    "ours": ("full", dict()),
    "ours_lowmem": ("full", dict(gradient_checkpointing=True)),
    "lora": ("lora", dict(gradient_checkpointing=True)),
}


def run_variant(label: str, *, models, device, precision: str, images, captions, steps: int, warmup: int) -> dict:
    """One of VARIANTS as a peer runs it (TrainEngine over a one-peer hivemind swarm), timed with _measure; the
    models are moved to `device` and trained. Also reports how many parameters were handed to hivemind."""
    import torch

    from swarm.runconfig import RunConfig
    from swarm_trainer.backend import make_backend
    from swarm_trainer.engine import TrainEngine
    from swarm_trainer.features import PeerFeatures
    from swarm_trainer.swarm import SwarmOptions, make_dht, shutdown

    train, features = VARIANTS[label]
    config = RunConfig(target_batch_size=1_000_000, lr=1e-5, ucg=0.0, train=train)
    options = SwarmOptions(host_maddrs=("/ip4/127.0.0.1/tcp/0",), compression="fp16")
    dht = make_dht(initial_peers=[], options=options)
    engine = None
    try:
        if train == "lora":
            from swarm_trainer.lora import add_lora

            add_lora(models, config)
        engine = TrainEngine(models=models, config=config, device=device, precision=precision,
                             batch_size=len(images), features=PeerFeatures(**features),
                             backend_factory=lambda params: make_backend(
                                 dht=dht, run_id=f"bench-{label}", params=params, config=config,
                                 batch_size=len(images), options=options))
        result = _measure(lambda: engine.train_batch(images, captions), steps=steps, warmup=warmup,
                          batch=len(images), cuda=device.type == "cuda")
        result["trained_parameters"] = sum(p.numel() for p in engine.params)
        return result
    finally:
        shutdown(engine.backend if engine is not None else None, dht)
        if device.type == "cuda":
            engine = models = None  # frees the GPU memory before the next variant
            torch.cuda.empty_cache()


def _flops_per_image(models, batch: int) -> float:
    """FLOPs of one UNet forward+backward at 512 px (the VAE/text encoder forward are comparatively small)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    latents = torch.randn(batch, 4, 64, 64, device="cuda")
    states = torch.randn(batch, 77, 768, device="cuda")
    t = torch.randint(0, 1000, (batch,), device="cuda")
    with FlopCounterMode(display=False) as counter, torch.autocast("cuda", dtype=torch.bfloat16):
        models.unet(latents, t, states, return_dict=False)[0].float().mean().backward()
    models.unet.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--only", choices=("all", "lora"), default="all",
                        help="lora: the LoRA variant alone, without the full-UNet reference (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="result file (default: bench/results/...)")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("CUDA is absent on this machine: trainer_gpu needs a GPU; writing a skipped result")
        _write({"benchmark": "trainer_gpu", "skipped": True, "reason": "CUDA is not available"}, args.out)
        return 0

    from bench.trainer_cpu import _batch

    device = torch.device("cuda")
    images, captions = _batch(args.batch_size, 512)
    name = torch.cuda.get_device_name()
    results = {"benchmark": "trainer_gpu", "device": name, "batch_size": args.batch_size, "resolution": 512,
               "precision": "bf16 autocast, fp32 master weights"}
    goals = {"speedup": ">= 1.3", "mfu": ">= 0.40", "peak_memory_gib": "<= 8 at batch 1",
             "peak_vram_gib": "LoRA with gradient checkpointing: <= 6 at batch 1"}
    if args.only == "lora":
        results["lora"] = run_variant("lora", models=build_sd15(), device=device, precision="bf16", images=images,
                                      captions=captions, steps=args.steps, warmup=args.warmup)
        results["peak_vram_gib"] = results["lora"]["peak_memory_gib"]
        results["goals"] = {"peak_vram_gib": goals["peak_vram_gib"]}
        _write(results, args.out)
        return 0

    # reference loop (as diffusers' train_text_to_image with mixed_precision=bf16)
    import numpy as np
    import torch.nn.functional as F  # noqa: N812 (torch's own convention)

    ref = build_sd15()
    ref.unet.to(device).train()
    ref.vae.to(device).requires_grad_(False)
    ref.text_encoder.to(device).requires_grad_(False)
    flops = _flops_per_image(ref, args.batch_size)
    opt = torch.optim.AdamW(ref.unet.parameters(), lr=1e-5)
    pixels = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
                          for im in images]).to(device)
    ids = ref.tokenizer(captions, max_length=77, padding="max_length", truncation=True,
                        return_tensors="pt").input_ids.to(device)

    def ref_step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            latents = ref.vae.encode(pixels).latent_dist.sample() * ref.vae.config.scaling_factor
            noise = torch.randn_like(latents)
            t = torch.randint(0, 1000, (latents.shape[0],), device=device)
            states = ref.text_encoder(ids, return_dict=False)[0]
            pred = ref.unet(ref.noise_scheduler.add_noise(latents, noise, t), t, states, return_dict=False)[0]
            loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    results["reference"] = _measure(ref_step, steps=args.steps, warmup=args.warmup, batch=args.batch_size)
    ref = opt = None  # frees the GPU memory (ref_step is not called again)
    torch.cuda.empty_cache()

    for label in VARIANTS:
        results[label] = run_variant(label, models=build_sd15(), device=device, precision="bf16", images=images,
                                     captions=captions, steps=args.steps, warmup=args.warmup)

    peak = _peak_flops(name)
    results["unet_flops_per_image"] = flops
    for label in ("reference", "ours", "ours_lowmem", "lora"):
        if peak:
            results[label]["mfu"] = round(flops * results[label]["images_per_s"] / peak, 3)
    results["speedup_vs_reference"] = round(results["ours"]["images_per_s"] / results["reference"]["images_per_s"], 3)
    results["peak_vram_gib"] = results["lora"]["peak_memory_gib"]
    results["goals"] = goals
    _write(results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
