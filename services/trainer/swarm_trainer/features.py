"""Per-peer memory and speed settings (never run config: every peer picks what fits its GPU)."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

from swarm.logs import get_logger
from swarm.runconfig import ConfigError

logger = get_logger(__name__)


@dataclass(frozen=True)
class PeerFeatures:
    gradient_checkpointing: bool = False
    xformers: bool = False  # memory-efficient attention from xformers; PyTorch SDPA otherwise (the default)
    use_8bit_adam: bool = False  # bitsandbytes AdamW8bit on CUDA; plain AdamW elsewhere
    cache_latents: bool = False
    ema_offload: bool = False  # keep EMA weights in host RAM
    fused_backward: bool = False  # diloco: each parameter's optimizer step inside backward, its gradient freed at once
    bf16_weights: bool = False  # diloco: the trained weights in bf16 (the fp32 copy is the outer state)


def xformers_available() -> bool:
    return importlib.util.find_spec("xformers") is not None


def configure_attention(models, *, xformers: bool = False) -> str:
    """PyTorch's scaled-dot-product attention by default; xformers when asked (and installed). Returns which."""
    if xformers:
        if not xformers_available():
            raise ConfigError("--xformers needs the xformers package (pip install xformers matching your torch); "
                              "leave the flag off to use PyTorch's SDPA, which is as fast on recent GPUs")
        models.unet.enable_xformers_memory_efficient_attention()
        return "xformers"
    from diffusers.models.attention_processor import AttnProcessor2_0

    models.unet.set_attn_processor(AttnProcessor2_0())
    return "sdpa"


def configure_gradient_checkpointing(models, *, enabled: bool, train_text_encoder: bool = False) -> None:
    """Recompute activations in the backward pass instead of storing them: less memory, ~20-30% more compute."""
    if not enabled:
        return
    models.unet.enable_gradient_checkpointing()
    if train_text_encoder:
        models.text_encoder.gradient_checkpointing_enable()


def optimizer_class(*, use_8bit_adam: bool, device: torch.device):
    """bitsandbytes' 8-bit AdamW on CUDA when asked; torch AdamW otherwise (8-bit on CPU saves nothing useful)."""
    if use_8bit_adam and device.type == "cuda":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ConfigError("--use-8bit-adam needs bitsandbytes (pip install bitsandbytes)") from None
        return bnb.optim.AdamW8bit
    if use_8bit_adam:
        logger.info("--use-8bit-adam applies on CUDA only; using torch AdamW on this device")
    return torch.optim.AdamW
