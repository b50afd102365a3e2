"""`swarm export CKPT OUT.safetensors`: a diffusers checkpoint folder -> one file in the original SD layout.

AUTOMATIC1111 and ComfyUI load the original (CompVis/LDM) layout: `model.diffusion_model.*` (UNet),
`first_stage_model.*` (VAE), `cond_stage_model.transformer.text_model.*` (CLIP text encoder, SD 1.x). The key maps
below are those of diffusers' convert_diffusers_to_original_stable_diffusion script, generalised to any number of
UNet levels and layers per block (so the tiny model converts too). transformers 5's CLIPTextModel.state_dict() has
no `text_model.` prefix; the layout needs it.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from swarm.logs import get_logger
from swarm.runconfig import ConfigError

logger = get_logger(__name__)

UNET_PREFIX, VAE_PREFIX, TEXT_PREFIX = "model.diffusion_model.", "first_stage_model.", \
    "cond_stage_model.transformer.text_model."

_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
           ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def unet_prefix_map(config: dict) -> list[tuple[str, str]]:
    """(diffusers prefix, LDM prefix) pairs for a UNet2DConditionModel config."""
    levels = len(config["block_out_channels"])
    per_block = config["layers_per_block"]
    if not isinstance(per_block, int):
        raise ConfigError("export supports UNets with one layers_per_block value for every level (SD 1.x/2.x do)")
    has_down_attn = ["CrossAttn" in t for t in config["down_block_types"]]
    has_up_attn = ["CrossAttn" in t for t in config["up_block_types"]]
    pairs = []
    for i in range(levels):
        for j in range(per_block):
            ldm = (per_block + 1) * i + j + 1
            pairs.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{ldm}.0."))
            if has_down_attn[i]:
                pairs.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{ldm}.1."))
        if i < levels - 1:
            pairs.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(per_block + 1) * (i + 1)}.0.op."))
        for j in range(per_block + 1):
            ldm = (per_block + 1) * i + j
            pairs.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{ldm}.0."))
            if has_up_attn[i]:
                pairs.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{ldm}.1."))
        if i < levels - 1:
            slot = 2 if has_up_attn[i] else 1
            pairs.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{(per_block + 1) * i + per_block}.{slot}."))
    pairs.append(("mid_block.attentions.0.", "middle_block.1."))
    for j in range(2):
        pairs.append((f"mid_block.resnets.{j}.", f"middle_block.{2 * j}."))
    return pairs


def convert_unet(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    pairs = unet_prefix_map(config)
    out = {}
    for key, value in state.items():
        new = key
        for hf, ldm in _UNET_TOP.items():
            if key.startswith(hf + "."):
                new = ldm + key[len(hf):]
                break
        else:
            for hf, ldm in pairs:
                if key.startswith(hf):
                    new = ldm + key[len(hf):]
                    if "resnets" in hf:
                        for hf_part, ldm_part in _RESNET:
                            new = new.replace(f".{hf_part}.", f".{ldm_part}.")
                    break
            else:
                raise ValueError(f"UNet key {key!r} has no place in the original SD layout")
        out[UNET_PREFIX + new] = value
    return out


def convert_vae(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    levels = len(config["block_out_channels"])
    out = {}
    for key, value in state.items():
        new = key
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2.", new)
        new = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        new = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
                     lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.block.{m.group(2)}.", new)
        new = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                     lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.upsample.", new)
        new = re.sub(r"\.mid_block\.resnets\.(\d+)\.", lambda m: f".mid.block_{int(m.group(1)) + 1}.", new)
        new = new.replace(".mid_block.attentions.0.", ".mid.attn_1.")
        new = new.replace("conv_shortcut", "nin_shortcut").replace("conv_norm_out", "norm_out")
        if ".mid.attn_1." in new:
            for hf_part, ldm_part in (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                                      ("to_out.0.", "proj_out.")):
                new = new.replace(f".mid.attn_1.{hf_part}", f".mid.attn_1.{ldm_part}")
            if new.endswith("weight") and value.ndim == 2:
                value = value.reshape(*value.shape, 1, 1)  # the original attention uses 1x1 convolutions
        out[VAE_PREFIX + new] = value
    return out


def convert_text_encoder(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    if config.get("hidden_act") == "gelu":
        raise ConfigError("this text encoder is OpenCLIP (SD 2.x), whose original layout export does not write yet; "
                          "export with --no-text-encoder and keep the diffusers text_encoder/ beside it")
    out = {}
    for key, value in state.items():
        key = key[len("text_model."):] if key.startswith("text_model.") else key
        out[TEXT_PREFIX + key] = value
    return out


def _load_folder_state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{folder} holds no .safetensors weights (save checkpoints with safe_serialization)")
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def _count(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return len(list(f.keys()))


def export_checkpoint(checkpoint: str | Path, output: str | Path, *, fp16_unet: bool = False, vae: bool = True,
                      text_encoder: bool = True) -> dict[str, int]:
    """Write OUT.safetensors; returns how many tensors each part contributed."""
    from safetensors.torch import save_file

    checkpoint, output = Path(checkpoint), Path(output)
    if (checkpoint / "lora.json").exists():
        # A LoRA checkpoint: OUT.safetensors is the kohya/A1111 LoRA file, OUT-diffusers/ diffusers' format.
        from swarm_trainer.lora_files import export_lora

        written = export_lora(checkpoint, output)
        logger.info(f"wrote {written['kohya']} (kohya/A1111 LoRA) and {written['diffusers']} (diffusers LoRA)")
        return {"lora (kohya; diffusers format in " + written["diffusers"].name + ")": _count(written["kohya"])}
    if not (checkpoint / "unet" / "config.json").exists():
        raise ConfigError(f"{checkpoint} is not a diffusers checkpoint folder (no unet/config.json); pass one of "
                          f"OUTPUT/checkpoints/epoch-NNNNNN")
    if output.suffix != ".safetensors":
        raise ConfigError(f"the output must end in .safetensors, got {output.name}")
    tensors, counts = {}, {}

    def part(name: str, convert, *, dtype=None):
        config = json.loads((checkpoint / name / "config.json").read_text())
        converted = convert(_load_folder_state(checkpoint / name), config)
        if dtype is not None:
            converted = {k: v.to(dtype) if v.is_floating_point() else v for k, v in converted.items()}
        tensors.update(converted)
        counts[name] = len(converted)

    part("unet", convert_unet, dtype=torch.float16 if fp16_unet else None)
    if vae:
        part("vae", convert_vae)
    if text_encoder:
        part("text_encoder", convert_text_encoder)
    output.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(output), metadata={"format": "pt"})
    logger.info(f"wrote {output}: {counts}")
    return counts
