"""Sample image grids every N global epochs: the prompts from the run config, or captions the peer trained on."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch

from swarm.logs import get_logger

logger = get_logger(__name__)


def make_grid(images: Sequence, *, cols: int | None = None):
    """Paste equally sized PIL images into a grid (as square as possible)."""
    from PIL import Image

    if not images:
        raise ValueError("no images to put in a grid")
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    width, height = images[0].size
    grid = Image.new("RGB", (cols * width, rows * height))
    for i, image in enumerate(images):
        grid.paste(image, ((i % cols) * width, (i // cols) * height))
    return grid


@torch.no_grad()
def render(models, prompts: Sequence[str], *, width: int, height: int, steps: int = 20, guidance_scale: float = 7.5,
           seed: int = 0, unet=None) -> list:
    """Generate one image per prompt with the current weights (or `unet`, e.g. the EMA one), a fixed seed so grids
    from different epochs are comparable."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    unet = unet if unet is not None else models.unet
    pipeline = StableDiffusionPipeline(
        vae=models.vae, text_encoder=models.text_encoder, tokenizer=models.tokenizer, unet=unet,
        scheduler=DPMSolverMultistepScheduler.from_config(models.noise_scheduler.config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    was_training = unet.training
    unet.eval()
    try:
        result = pipeline(list(prompts), width=width, height=height, num_inference_steps=steps,
                          guidance_scale=guidance_scale, generator=generator, output_type="pil")
    finally:
        unet.train(was_training)
    return result.images


def save_sample_grid(models, output_dir: str | Path, *, epoch: int, prompts: Sequence[str], width: int, height: int,
                     steps: int = 20, unet=None) -> Path:
    images = render(models, prompts, width=width, height=height, steps=steps, unet=unet)
    path = Path(output_dir) / "samples" / f"epoch-{epoch:06d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    make_grid(images).save(path)
    (path.with_suffix(".txt")).write_text("\n".join(prompts) + "\n")
    logger.info(f"saved sample grid {path}")
    return path
