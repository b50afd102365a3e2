"""LoRA on the frozen model (run config `train: lora`), built with peft as diffusers' own LoRA scripts do.

`add_lora` puts a peft LoRA adapter on the UNet's attention projections (and, with `lora_text_encoder`, on the text
encoder's) with `init_lora_weights="gaussian"` as diffusers does, seeded from the run config so every peer starts
from the same adapter. Only the adapter's parameters then require gradients: they are what the swarm averages
(gradients in sync mode, pseudo-gradients in DiLoCo), what a late joiner downloads, what EMA follows and what a
checkpoint keeps. The frozen base is loaded by every peer and never sent.

The adapter's state travels in peft's own key layout (`get_peft_model_state_dict`: `...to_q.lora_A.weight`);
exports convert it to diffusers' and kohya's formats (export_lora.py).
"""
from __future__ import annotations

from typing import Iterable

import torch

from swarm.errors import ConfigError
from swarm.runconfig import LORA_TEXT_ENCODER_TARGETS, RunConfig, lora_scale_alpha

ADAPTER_NAME = "default"
# Layer types peft can put a LoRA on; a target naming any other module (a norm, a block) is refused.
_LORA_LAYER_TYPES = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Embedding)
# A seed offset of its own, so the adapter's initial weights never depend on how the models were built.
ADAPTER_SEED_OFFSET = 7


def has_lora(module: torch.nn.Module) -> bool:
    """Whether peft injected an adapter into this module."""
    return bool(getattr(module, "peft_config", None))


def lora_named_parameters(module: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The adapter's parameters, in module order (the same on every peer: it is the model's order)."""
    return [(name, p) for name, p in module.named_parameters() if "lora_" in name]


def target_names(module: torch.nn.Module) -> list[str]:
    """The names a LoRA target may use in this module: each LoRA-able layer's last name part, and the last two when
    the last is a number (`to_out.0`), the way peft matches a target against the end of a module's name."""
    names = set()
    for full_name, child in module.named_modules():
        if not isinstance(child, _LORA_LAYER_TYPES) or not full_name:
            continue
        parts = full_name.split(".")
        names.add(parts[-1] if not parts[-1].isdigit() or len(parts) < 2 else ".".join(parts[-2:]))
    return sorted(names)


def check_targets(module: torch.nn.Module, targets: Iterable[str], *, what: str, key: str) -> None:
    """Refuse targets that match no LoRA-able layer of the module, listing the names that would."""
    layer_names = [name for name, child in module.named_modules() if isinstance(child, _LORA_LAYER_TYPES)]
    unknown = [t for t in targets if not any(n == t or n.endswith("." + t) for n in layer_names)]
    if unknown:
        raise ConfigError(f"{key}: {', '.join(unknown)} name(s) no linear or conv layer of the {what}; valid names: "
                          f"{', '.join(target_names(module))}")


def lora_config(config: RunConfig, targets: Iterable[str]):
    from peft import LoraConfig

    return LoraConfig(r=config.lora_rank, lora_alpha=lora_scale_alpha(config), lora_dropout=config.lora_dropout,
                      init_lora_weights="gaussian", target_modules=list(targets))


def add_lora(models, config: RunConfig) -> None:
    """Put the run config's LoRA adapter(s) on `models` (before they move to their device and before a resume).

    Target names are checked first (a ConfigError says which names exist). The initial adapter is drawn from a
    seed of the run config, so every peer starts identical without exchanging it.
    """
    check_targets(models.unet, config.lora_targets, what="UNet", key="lora_targets")
    torch.manual_seed(config.seed + ADAPTER_SEED_OFFSET)
    models.unet.add_adapter(lora_config(config, config.lora_targets), adapter_name=ADAPTER_NAME)
    if config.lora_text_encoder:
        check_targets(models.text_encoder, LORA_TEXT_ENCODER_TARGETS, what="text encoder", key="lora_text_encoder")
        models.text_encoder.add_adapter(lora_config(config, LORA_TEXT_ENCODER_TARGETS), adapter_name=ADAPTER_NAME)


def maybe_add_lora(models, config: RunConfig) -> None:
    """add_lora for `train: lora`; a full fine-tune leaves the models as they are."""
    if config.train == "lora":
        add_lora(models, config)


def adapter_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's weights in peft's layout (no adapter name in the keys), detached CPU copies."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(module, adapter_name=ADAPTER_NAME)
    return {key: value.detach().to("cpu", copy=True).contiguous() for key, value in state.items()}


def load_adapter_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load adapter weights saved by adapter_state; a missing or unexpected adapter key is an error."""
    from peft.utils import set_peft_model_state_dict

    own = adapter_state(module)
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"the saved adapter does not fit this model's LoRA (rank or targets changed?): missing "
                         f"{missing[:3]}, unexpected {unexpected[:3]}")
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise ValueError(f"the saved adapter's {key} is {tuple(value.shape)}, this model's LoRA has "
                             f"{tuple(own[key].shape)} (lora_rank changed?)")
    set_peft_model_state_dict(module, state, adapter_name=ADAPTER_NAME)
