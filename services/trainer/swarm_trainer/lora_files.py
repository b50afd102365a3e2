"""LoRA checkpoints and exports: the adapter only, in the files SD tools load.

A LoRA checkpoint folder (OUTPUT/checkpoints/epoch-NNNNNN, written and pruned like a full one by checkpoints.py):
- `lora.json`: what the adapter is (rank, alpha, targets, which models carry one); it marks the folder complete.
- `adapter.safetensors`: the trained adapter in peft's layout, keys prefixed `unet.` / `text_encoder.`; a resumed
  peer continues from it.
- `adapter_ema.safetensors` (with use_ema): the EMA of the UNet's adapter, keyed by the UNet's parameter names.
- `pytorch_lora_weights.safetensors`: diffusers' format (EMA weights when there are some, as a full checkpoint's
  unet/ holds them): `pipeline.load_lora_weights(folder)` reads the checkpoint folder as it is.

`swarm export` on one writes the kohya/A1111 single file (`lora_unet_...` keys, diffusers' convert_state_dict_to_kohya)
and a diffusers folder beside it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from swarm.errors import ConfigError
from swarm_trainer.lora import ADAPTER_NAME, adapter_state, has_lora, load_adapter_state, lora_named_parameters

LORA_MARKER = "lora.json"
ADAPTER_FILE = "adapter.safetensors"
EMA_ADAPTER_FILE = "adapter_ema.safetensors"
DIFFUSERS_LORA_FILE = "pytorch_lora_weights.safetensors"
PARTS = ("unet", "text_encoder")


def is_lora_models(models) -> bool:
    return has_lora(models.unet)


def describe_adapter(models) -> dict:
    """lora.json's contents, from the adapter itself (peft's config), so a checkpoint says what it holds."""
    config = models.unet.peft_config[ADAPTER_NAME]
    return {"format": "swarm-lora-1", "rank": config.r, "alpha": float(config.lora_alpha),
            "targets": sorted(config.target_modules), "text_encoder": has_lora(models.text_encoder)}


def _prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{key}": value for key, value in state.items()}


def _split(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    parts: dict[str, dict[str, torch.Tensor]] = {part: {} for part in PARTS}
    for key, value in state.items():
        part, _, rest = key.partition(".")
        if part not in parts:
            raise ValueError(f"adapter key {key!r} belongs to no model ({', '.join(PARTS)})")
        parts[part][rest] = value
    return parts


def save_diffusers_lora(folder: str | Path, *, unet_state: dict, text_encoder_state: dict | None,
                        alpha: float, rank: int) -> Path:
    """Adapter states in peft's layout -> diffusers' pytorch_lora_weights.safetensors (with its LoRA metadata, so
    an alpha other than the rank loads right)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    def metadata(state: dict) -> dict:
        targets = sorted({key.rsplit(".lora_", 1)[0] for key in state})
        return {"r": rank, "lora_alpha": alpha, "target_modules": targets}

    StableDiffusionPipeline.save_lora_weights(
        save_directory=str(folder), unet_lora_layers=convert_state_dict_to_diffusers(unet_state),
        text_encoder_lora_layers=convert_state_dict_to_diffusers(text_encoder_state) if text_encoder_state else None,
        unet_lora_adapter_metadata=metadata(unet_state),
        text_encoder_lora_adapter_metadata=metadata(text_encoder_state) if text_encoder_state else None,
        safe_serialization=True)
    return Path(folder) / DIFFUSERS_LORA_FILE


def save_lora_folder(models, folder: str | Path, *, ema_unet=None) -> Path:
    """Write a LoRA checkpoint's files into `folder` (checkpoints.save_checkpoint makes it durable and complete)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    info = describe_adapter(models)
    text_state = adapter_state(models.text_encoder) if info["text_encoder"] else None
    state = _prefixed("unet", adapter_state(models.unet))
    if text_state:
        state.update(_prefixed("text_encoder", text_state))
    save_file(state, str(folder / ADAPTER_FILE), metadata={"format": "pt"})
    generation_unet = adapter_state(models.unet)
    if ema_unet is not None:
        save_file({f"unet.{name}": p.detach().cpu().contiguous() for name, p in lora_named_parameters(ema_unet)},
                  str(folder / EMA_ADAPTER_FILE), metadata={"format": "pt"})
        generation_unet = adapter_state(ema_unet)
    save_diffusers_lora(folder, unet_state=generation_unet, text_encoder_state=text_state, alpha=info["alpha"],
                        rank=info["rank"])
    (folder / LORA_MARKER).write_text(json.dumps(info, sort_keys=True, indent=1))
    return folder


def load_lora_folder(models, folder: str | Path) -> dict | None:
    """Load a LoRA checkpoint into models that carry the same adapter; returns the EMA state (UNet parameter name ->
    tensor) when the checkpoint has one, else None."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not is_lora_models(models):
        raise ConfigError(f"{folder} is a LoRA checkpoint but the run config trains the full model (train: full); "
                          f"set train: lora, or start from another output folder")
    parts = _split(load_file(str(folder / ADAPTER_FILE)))
    load_adapter_state(models.unet, parts["unet"])
    if has_lora(models.text_encoder):
        load_adapter_state(models.text_encoder, parts["text_encoder"])
    ema_file = folder / EMA_ADAPTER_FILE
    if not ema_file.exists():
        return None
    return _split(load_file(str(ema_file)))["unet"]


def generation_adapter(folder: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint's adapter to generate with, in peft's layout with `unet.` / `text_encoder.` prefixes: the
    UNet's EMA adapter when there is one (peft's keys without the adapter name), else the trained one."""
    from safetensors.torch import load_file

    folder = Path(folder)
    state = load_file(str(folder / ADAPTER_FILE))
    ema_file = folder / EMA_ADAPTER_FILE
    if ema_file.exists():
        state = {k: v for k, v in state.items() if not k.startswith("unet.")}
        for key, value in load_file(str(ema_file)).items():
            state[key.replace(f".{ADAPTER_NAME}.", ".")] = value
    return state


def kohya_state(folder: str | Path) -> dict[str, torch.Tensor]:
    """The checkpoint's generation adapter as kohya/A1111 keys (`lora_unet_...`, `lora_te1_...`) by diffusers'
    convert_state_dict_to_kohya, with each module's alpha set to ours (the converter writes alpha = rank)."""
    from diffusers.utils import convert_state_dict_to_kohya

    info = json.loads((Path(folder) / LORA_MARKER).read_text())
    kohya = convert_state_dict_to_kohya(generation_adapter(folder))
    for key in [k for k in kohya if k.endswith(".alpha")]:
        kohya[key] = torch.tensor(float(info["alpha"]))
    return kohya


def export_lora(checkpoint: str | Path, output: str | Path) -> dict[str, Path]:
    """OUT.safetensors (kohya/A1111 single file) and OUT-diffusers/ (pytorch_lora_weights.safetensors)."""
    import shutil

    from safetensors.torch import save_file

    checkpoint, output = Path(checkpoint), Path(output)
    if output.suffix != ".safetensors":
        raise ConfigError(f"the output must end in .safetensors, got {output.name}")
    output.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in kohya_state(checkpoint).items()}, str(output),
              metadata={"format": "pt", "ss_network_module": "networks.lora"})
    diffusers_dir = output.with_name(output.stem + "-diffusers")
    diffusers_dir.mkdir(exist_ok=True)
    shutil.copyfile(checkpoint / DIFFUSERS_LORA_FILE, diffusers_dir / DIFFUSERS_LORA_FILE)
    return {"kohya": output, "diffusers": diffusers_dir}
