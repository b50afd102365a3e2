"""The arithmetic of bench/wan.py, in small pure functions: link scaling, throughput and bytes over the training
window, and the held-out loss of a checkpoint (fixed images, noise and timesteps, so modes compare exactly)."""
from __future__ import annotations

import bisect
from pathlib import Path

# SD 1.5's ratio of gradient bytes to compute, the ratio the bench's links are scaled to keep.
SD_GRADIENT_BYTES = 1.72e9  # 859.5 M UNet parameters x 2 bytes (fp16)
SD_LINK_BITS_PER_S = 100e6  # a volunteer's 100 Mbit/s link
SD_STEP_S = 0.5  # one local SD 1.5 step on a GPU


def sd_ratio() -> float:
    """(P x 2 bytes / rate) / t for SD 1.5: how many local steps one fp16 gradient takes to cross the link."""
    return (SD_GRADIENT_BYTES / (SD_LINK_BITS_PER_S / 8)) / SD_STEP_S


def scaled_link_rate(*, params: int, step_s: float) -> float:
    """Bytes/s that give the bench model (P params, t s per local step) the same ratio as SD 1.5 at 100 Mbit/s."""
    if params <= 0 or step_s <= 0:
        raise ValueError(f"params and step time must be positive, got {params} and {step_s}")
    return params * 2 / (sd_ratio() * step_s)


def control_bytes_per_s(solo: dict) -> float:
    """What one peer sends (= receives) per second on the wan in solo mode, where nothing is averaged: hivemind's
    control traffic (DHT progress records, averager declarations, credentials). It does not shrink with the model,
    so the scaled link gets it as an allowance on top of the payload rate (at SD 1.5's 100 Mbit/s it is noise)."""
    return solo["bytes_per_sample_training_window"] * solo["per_peer_samples_per_s"] / 2


def scale_arithmetic(*, params: int, step_s: float, batch_size: int, control_allowance: float = 0.0) -> dict:
    rate = scaled_link_rate(params=params, step_s=step_s)
    return {
        "sd15": {"gradient_bytes": SD_GRADIENT_BYTES, "link_bits_per_s": SD_LINK_BITS_PER_S, "step_s": SD_STEP_S,
                 "ratio": round(sd_ratio(), 2),
                 "formula": "ratio = (gradient_bytes / (link_bits_per_s / 8)) / step_s"},
        "bench": {"params": params, "gradient_bytes_fp16": params * 2, "step_s": round(step_s, 4),
                  "step_s_from": f"solo mode: batch_size {batch_size} / solo per-peer samples/s",
                  "payload_bytes_per_s": round(rate, 1), "payload_bits_per_s": round(rate * 8),
                  "check_ratio": round(params * 2 / rate / step_s, 2),
                  "formula": "payload_bytes_per_s = params * 2 / (ratio * step_s)",
                  "control_allowance_bytes_per_s": round(control_allowance, 1),
                  "control_allowance_from": "solo mode: wan bytes per peer and direction per second (no averaging)",
                  "link_bytes_per_s": round(rate + control_allowance, 1),
                  "link_bits_per_s": round((rate + control_allowance) * 8),
                  "link": "tbf rate = payload_bytes_per_s + control_allowance_bytes_per_s, each direction"},
    }


WINDOW_END_FRACTION = 0.95  # the last chunks leave peers idle while others finish theirs: not the steady state


def swarm_samples(progress: list[dict], *, peers: int) -> list[tuple[float, float]]:
    """(time, samples every trainer has trained) at each poll where all trainers answered their /metrics."""
    points = []
    for p in progress:
        scraped = p.get("trainers") or []
        if len(scraped) == peers and all(s and "samples" in s for s in scraped):
            points.append((p["t"], sum(s["samples"] for s in scraped)))
    return points


def training_window(progress: list[dict], *, peers: int, budget: int) -> tuple[float, float, float, float]:
    """(t_start, t_end, samples at t_start, samples at t_end) of the steady state: from the first poll where every
    peer has trained something to the first where the swarm has trained WINDOW_END_FRACTION of the budget."""
    points = swarm_samples(progress, peers=peers)
    started = [p for p in progress if len(p.get("trainers") or []) == peers
               and all(s and s.get("samples", 0) > 0 for s in p["trainers"])]
    if not points or not started:
        raise ValueError("the progress log has no training window (a trainer never reported a trained sample)")
    t_start = started[0]["t"]
    end = next(((t, s) for t, s in points if s >= WINDOW_END_FRACTION * budget), points[-1])
    if end[0] <= t_start:
        raise ValueError("the progress log has no training window (it ends where it starts)")
    return t_start, end[0], interpolate(points, t_start), end[1]


def interpolate(readings: list[tuple[float, float]], t: float) -> float:
    """A counter's value at time t, linear between readings (clamped at the ends)."""
    times = [r[0] for r in readings]
    i = bisect.bisect_left(times, t)
    if i <= 0:
        return readings[0][1]
    if i >= len(readings):
        return readings[-1][1]
    (t0, v0), (t1, v1) = readings[i - 1], readings[i]
    return v0 + (v1 - v0) * (t - t0) / (t1 - t0) if t1 > t0 else v1


def per_peer_rates(progress: list[dict], *, t_first: float, t_done: float, peers: int) -> list[float | None]:
    """Each trainer's samples/s over the window, from its samples_trained_total as the poller scraped it."""
    rates: list[float | None] = []
    for i in range(peers):
        series = [(p["t"], p["trainers"][i]["samples"]) for p in progress
                  if len(p.get("trainers") or []) == peers and p["trainers"][i] and "samples" in p["trainers"][i]]
        if len(series) < 2:
            rates.append(None)
            continue
        rates.append((interpolate(series, t_done) - interpolate(series, t_first)) / (t_done - t_first))
    return rates


def counted_bytes(progress: list[dict], *, peers: int) -> int | None:
    """The trainers' own swarm_trainer_network_bytes_total (sent + received), last scrape of each."""
    total = 0
    for i in range(peers):
        last = next((p["trainers"][i] for p in reversed(progress)
                     if p.get("trainers") and p["trainers"][i] and "sent" in p["trainers"][i]), None)
        if last is None:
            return None
        total += int(last["sent"] + last["received"])
    return total


def load_eval_set(images_dir: Path, *, size: int, seed: int, count: int = 64) -> dict:
    """`count` of the dataset's images, evenly spaced (centre crop to size x size), as fixed VAE latents and CLIP
    embeddings of their captions (the frozen seed VAE and text encoder every mode shares), computed once."""
    import torch
    from PIL import Image

    from swarm_trainer.model import build_tiny
    from swarm_trainer.step import encode_latents, encode_text, pil_to_pixels, tokenize

    images, captions = [], []
    paths = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    for path in paths[::max(1, len(paths) // count)][:count]:
        with Image.open(path) as source:
            image = source.convert("RGB")
        scale = size / min(image.size)
        image = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))))
        left, top = (image.width - size) // 2, (image.height - size) // 2
        images.append(image.crop((left, top, left + size, top + size)))
        caption_file = path.with_suffix(".txt")
        captions.append(caption_file.read_text().strip() if caption_file.exists() else "")
    models = build_tiny(seed=seed)
    with torch.no_grad():
        latents = encode_latents(models.vae.eval(), pil_to_pixels(images),
                                 generator=torch.Generator().manual_seed(seed))
        text = encode_text(models.text_encoder.eval(), tokenize(models.tokenizer, captions))
    return {"latents": latents, "text": text, "seed": seed, "images": len(images)}


def eval_loss(unet_dir: Path | None, eval_set: dict, *, draws: int = 4) -> float:
    """Mean SD loss of a checkpoint's UNet (None: the untrained seed UNet) over fixed latents, noise and timesteps."""
    import torch

    from swarm_trainer.model import build_tiny
    from swarm_trainer.step import diffusion_loss

    models = build_tiny(seed=eval_set["seed"])
    if unet_dir is not None:
        from diffusers import UNet2DConditionModel

        models.unet = UNet2DConditionModel.from_pretrained(str(unet_dir))
    unet = models.unet.eval().requires_grad_(False)
    losses = []
    with torch.no_grad():
        for draw in range(draws):
            generator = torch.Generator().manual_seed(10_000 + draw)
            losses.append(float(diffusion_loss(unet, models.noise_scheduler, eval_set["latents"], eval_set["text"],
                                               generator=generator)))
    return sum(losses) / len(losses)
