"""The Stable Diffusion training step, as in diffusers' train_text_to_image, split into small tested functions.

latents = VAE-encode(pixels) * scaling_factor; noise; random timesteps; noisy latents from the scheduler; text
embeddings; target = noise (epsilon) or the scheduler's velocity (v-prediction); MSE.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class StepOptions:
    """Run-config and per-peer settings that shape the loss (phase-2 features add fields here)."""
    precision: str = "fp32"


def pil_to_pixels(images: Sequence, *, device: torch.device | str = "cpu") -> torch.Tensor:
    """PIL RGB images of one bucket (same size; the dataset service resized and cropped them) -> [B, 3, H, W] in
    [-1, 1], the range the SD VAE was trained on."""
    sizes = {image.size for image in images}
    if len(sizes) != 1:
        raise ValueError(f"a batch must hold images of one size (one aspect bucket), got sizes {sorted(sizes)}")
    arrays = np.stack([np.asarray(image.convert("RGB"), dtype=np.uint8) for image in images])
    pixels = torch.from_numpy(arrays).to(device).permute(0, 3, 1, 2).float()
    return pixels / 127.5 - 1.0


def tokenize(tokenizer, captions: Sequence[str]) -> torch.Tensor:
    return tokenizer(list(captions), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def encode_text(text_encoder, input_ids: torch.Tensor) -> torch.Tensor:
    """[B, 77] token ids -> [B, 77, D] hidden states the UNet cross-attends to."""
    return text_encoder(input_ids.to(text_encoder.device))[0]


def autocast_context(precision: str, device: torch.device):
    """Low-precision compute with fp32 master weights (hivemind's compressors and optimizer state stay fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sampled VAE latents scaled by the VAE's scaling factor (the frozen VAE never needs gradients)."""
    latent_dist = vae.encode(pixels.to(vae.device, dtype=vae.dtype)).latent_dist
    return latent_dist.sample(generator=generator) * vae.config.scaling_factor


def training_target(noise_scheduler, latents: torch.Tensor, noise: torch.Tensor,
                    timesteps: torch.Tensor) -> torch.Tensor:
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction_type {prediction_type!r}; use epsilon or v_prediction")


def diffusion_loss(unet, noise_scheduler, latents: torch.Tensor, encoder_hidden_states: torch.Tensor, *,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise the latents at random timesteps and return the MSE of the UNet's prediction against the target."""
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                              generator=generator, device=latents.device).long()
    noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
    target = training_target(noise_scheduler, latents, noise, timesteps)
    model_pred = unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
    return F.mse_loss(model_pred.float(), target.float(), reduction="mean")


def compute_loss(models, pixels: torch.Tensor, input_ids: torch.Tensor, *, options: StepOptions = StepOptions(),
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """The whole SD loss for one batch; call .backward() on the result."""
    device = next(models.unet.parameters()).device
    with autocast_context(options.precision, device):
        latents = encode_latents(models.vae, pixels.to(device), generator=generator)
        text_grad = torch.enable_grad() if models.text_encoder.training else torch.no_grad()
        with text_grad:
            encoder_hidden_states = encode_text(models.text_encoder, input_ids)
        return diffusion_loss(models.unet, models.noise_scheduler, latents, encoder_hidden_states,
                              generator=generator)
