"""The Stable Diffusion training step, as in diffusers' train_text_to_image, split into small tested functions.

latents = VAE-encode(pixels) * scaling_factor; noise; random timesteps; noisy latents from the scheduler; text
embeddings; target = noise (epsilon) or the scheduler's velocity (v-prediction); MSE.
With regularization samples in the batch (`prior`), the loss is diffusers' train_dreambooth.py prior preservation:
instance loss + prior_loss_weight * prior loss, each a mean over its own samples (prior.py).
"""
from __future__ import annotations

import random
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as functional

from swarm_trainer.prior import prior_loss

PRECISIONS = ("fp32", "fp16", "bf16")


# Prompts longer than one CLIP window are encoded as up to this many 75-token windows (225 tokens, as kohya's
# max_token_length and NovelAI allow), each wrapped in BOS/EOS and encoded separately, then concatenated.
MAX_PROMPT_WINDOWS = 3


@dataclass(frozen=True)
class StepOptions:
    """Run-config and per-peer settings that shape the loss."""
    precision: str = "fp32"
    clip_penultimate: bool = False  # CLIP skip: the penultimate layer's output, through the final layer norm
    max_prompt_windows: int = MAX_PROMPT_WINDOWS
    min_snr_gamma: float = 0.0  # 0 disables min-SNR-gamma weighting
    noise_offset: float = 0.0
    prior_loss_weight: float = 1.0  # weight of the regularization samples' loss (DreamBooth prior preservation)

    @classmethod
    def from_config(cls, config, *, precision: str = "fp32") -> "StepOptions":
        return cls(precision=precision, clip_penultimate=config.clip_penultimate,
                   min_snr_gamma=config.min_snr_gamma, noise_offset=config.noise_offset,
                   prior_loss_weight=config.prior_loss_weight)


def drop_captions(captions: Sequence[str], *, ucg: float, rng: random.Random) -> list[str]:
    """Caption dropout: each caption is replaced by the empty prompt with probability `ucg`, which teaches the
    unconditional prediction that classifier-free guidance needs."""
    return ["" if ucg > 0 and rng.random() < ucg else caption for caption in captions]


def pil_to_pixels(images: Sequence, *, device: torch.device | str = "cpu") -> torch.Tensor:
    """PIL RGB images of one bucket (same size; the dataset service resized and cropped them) -> [B, 3, H, W] in
    [-1, 1], the range the SD VAE was trained on."""
    sizes = {image.size for image in images}
    if len(sizes) != 1:
        raise ValueError(f"a batch must hold images of one size (one aspect bucket), got sizes {sorted(sizes)}")
    arrays = np.stack([np.asarray(image.convert("RGB"), dtype=np.uint8) for image in images])
    pixels = torch.from_numpy(arrays).to(device).permute(0, 3, 1, 2).float()
    return pixels / 127.5 - 1.0


def tokenize(tokenizer, captions: Sequence[str], *, max_windows: int = MAX_PROMPT_WINDOWS) -> torch.Tensor:
    """[B, W * 77] ids: each caption's tokens cut into 75-token windows, each window BOS + tokens + EOS + padding.

    W is the most windows any caption of the batch needs (at most `max_windows`; longer captions are truncated),
    so a batch of short captions is exactly the usual [B, 77].
    """
    window = tokenizer.model_max_length - 2
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    bodies = [tokenizer(caption, add_special_tokens=False, truncation=False).input_ids[:window * max_windows]
              for caption in captions]
    windows = max(1, max((len(body) + window - 1) // window for body in bodies))
    rows = []
    for body in bodies:
        row = []
        for w in range(windows):
            piece = body[w * window:(w + 1) * window]
            row += [bos, *piece, eos] + [pad] * (window - len(piece))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.long)


def final_layer_norm(text_encoder):
    """transformers 5 flattened CLIPTextModel (no `.text_model`); older versions nest it."""
    inner = getattr(text_encoder, "text_model", text_encoder)
    return inner.final_layer_norm


def encode_text(text_encoder, input_ids: torch.Tensor, *, clip_penultimate: bool = False) -> torch.Tensor:
    """[B, W * 77] token ids -> [B, W * 77, D] hidden states the UNet cross-attends to, one window at a time."""
    length = text_encoder.config.max_position_embeddings
    if input_ids.shape[1] % length:
        raise ValueError(f"token ids must come in windows of {length}, got length {input_ids.shape[1]}")
    input_ids = input_ids.to(text_encoder.device)
    states = []
    for window in input_ids.split(length, dim=1):
        if clip_penultimate:
            out = text_encoder(window, output_hidden_states=True)
            states.append(final_layer_norm(text_encoder)(out.hidden_states[-2]))
        else:
            states.append(text_encoder(window)[0])
    return torch.cat(states, dim=1)


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


def snr(noise_scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at each timestep."""
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    return alphas_cumprod / (1.0 - alphas_cumprod)


def min_snr_weights(noise_scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023): min(SNR, gamma) / SNR for epsilon, / (SNR + 1) for v."""
    ratio = snr(noise_scheduler, timesteps)
    clipped = torch.clamp(ratio, max=gamma)
    if noise_scheduler.config.prediction_type == "v_prediction":
        return clipped / (ratio + 1.0)
    return clipped / ratio


def sample_noise(latents: torch.Tensor, *, noise_offset: float = 0.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian noise, plus `noise_offset` times a per-channel constant (lets the model learn very dark and very
    bright images, which zero-mean noise never asks of it)."""
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    if noise_offset > 0:
        noise = noise + noise_offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator,
                                                   device=latents.device, dtype=latents.dtype)
    return noise


def diffusion_loss(unet, noise_scheduler, latents: torch.Tensor, encoder_hidden_states: torch.Tensor, *,
                   options: StepOptions = StepOptions(), generator: torch.Generator | None = None,
                   prior: Sequence[bool] | None = None) -> torch.Tensor:
    """Noise the latents at random timesteps and return the MSE of the UNet's prediction against the target.

    `prior` marks the batch's regularization samples; with any, the loss is prior.prior_loss's. Without, it is
    the plain loss, computed exactly as before regularization images existed."""
    noise = sample_noise(latents, noise_offset=options.noise_offset, generator=generator)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                              generator=generator, device=latents.device).long()
    noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
    target = training_target(noise_scheduler, latents, noise, timesteps)
    model_pred = unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
    if prior is not None and any(prior):
        weights = (min_snr_weights(noise_scheduler, timesteps, options.min_snr_gamma)
                   if options.min_snr_gamma > 0 else None)
        return prior_loss(model_pred, target, prior=prior, prior_loss_weight=options.prior_loss_weight,
                          instance_weights=weights)
    if options.min_snr_gamma <= 0:
        return functional.mse_loss(model_pred.float(), target.float(), reduction="mean")
    per_sample = functional.mse_loss(model_pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * min_snr_weights(noise_scheduler, timesteps, options.min_snr_gamma)).mean()


def compute_loss(models, pixels: torch.Tensor | None, input_ids: torch.Tensor, *,
                 options: StepOptions = StepOptions(), generator: torch.Generator | None = None,
                 latents: torch.Tensor | None = None, prior: Sequence[bool] | None = None) -> torch.Tensor:
    """The whole SD loss for one batch (from pixels, or from cached `latents`); call .backward() on the result.
    `prior` marks regularization samples (DreamBooth prior preservation; see diffusion_loss)."""
    device = next(models.unet.parameters()).device
    with autocast_context(options.precision, device):
        if latents is None:
            latents = encode_latents(models.vae, pixels.to(device), generator=generator)
        text_grad = torch.enable_grad() if models.text_encoder.training else torch.no_grad()
        with text_grad:
            encoder_hidden_states = encode_text(models.text_encoder, input_ids,
                                                clip_penultimate=options.clip_penultimate)
        return diffusion_loss(models.unet, models.noise_scheduler, latents.to(device), encoder_hidden_states,
                              options=options, generator=generator, prior=prior)
