"""The run config: the swarm-wide training settings that live on the coordinator, versioned.

Keys follow the earlier SD trainers users know (the 2022 swarm trainer's YAML, SCAL-SDT, kohya). Per-peer settings
(batch size, precision, xformers, 8-bit Adam, ports) are trainer flags, never run config.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from swarm.errors import ConfigError

LR_SCHEDULERS = ("constant", "linear", "cosine")
MODES = ("sync", "diloco")  # how local steps become the swarm's steps (docs/design.md, Modes)
PSEUDO_GRAD_COMPRESSIONS = ("none", "fp16", "int8", "topk")
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TRAIN_MODES = ("full", "lora")
# diffusers' train_text_to_image_lora.py targets (UNet attention projections) and its text-encoder ones.
LORA_UNET_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")
LORA_TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


@dataclass(frozen=True)
class RunConfig:
    model: str = "tiny"  # "tiny" builds a small SD-shaped model from config; else a diffusers folder or hub id
    resolution: int = 512
    lr: float = 1e-4
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0  # in global epochs (optimizer steps of the whole swarm)
    lr_total_steps: int = 0  # global epochs the decay spans; 0 derives it from dataset size and max_data_epochs
    ucg: float = 0.1  # fraction of captions replaced by the empty prompt
    clip_penultimate: bool = False
    train_text_encoder: bool = False
    use_ema: bool = False
    ema_decay: float = 0.9999
    opt_betas_one: float = 0.9
    opt_betas_two: float = 0.999
    opt_epsilon: float = 1e-8
    opt_weight_decay: float = 1e-2
    buckets_side_min: int = 256
    buckets_side_max: int = 768
    buckets_max_area: int = 0  # largest bucket area in pixels; 0: resolution². NovelAI's at 512: 393216 (512×768)
    buckets_shuffle: bool = True
    target_batch_size: int = 4096  # samples the whole swarm accumulates per global epoch
    seed: int = 42
    chunk_size: int = 64  # samples per chunk (the 2022 trainer's --wantedimages)
    max_data_epochs: int = 10  # passes over the dataset; the run is complete after this many
    min_snr_gamma: float = 0.0  # 0 disables min-SNR weighting
    noise_offset: float = 0.0
    save_every_epochs: int = 0  # checkpoint every N global epochs; 0 saves only at the end
    keep_checkpoints: int = 3
    sample_every_epochs: int = 0
    sample_prompts: tuple[str, ...] = field(default_factory=tuple)
    # What trains: "full" (the UNet, and the text encoder with train_text_encoder) or "lora" (a peft LoRA adapter
    # on the frozen model: only the adapter trains, is averaged, checkpointed and exported).
    train: str = "full"
    lora_rank: int = 4
    lora_alpha: float = 0.0  # 0: equal to lora_rank (scale 1), diffusers' default
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = LORA_UNET_TARGETS  # module names in the UNet (diffusers' text-to-image LoRA)
    lora_text_encoder: bool = False  # also a LoRA on the text encoder's attention (LORA_TEXT_ENCODER_TARGETS)
    # How local steps become the swarm's steps. sync: hivemind.Optimizer averages gradients per target_batch_size.
    # diloco: local inner steps, pseudo-gradients averaged every inner_steps batches, an outer Nesterov step.
    mode: str = "sync"
    inner_steps: int = 100  # diloco: local batches per outer round (H); the LR schedule counts inner steps
    outer_lr: float = 0.7
    outer_momentum: float = 0.9
    pseudo_grad_compression: str = "int8"  # diloco: none | fp16 | int8 | topk (blocks with error feedback)
    topk_fraction: float = 0.015625  # diloco topk: the share of values sent per round (1/64)
    outer_overlap: bool = True  # diloco: apply each round's average one round late (the all-reduce overlaps compute)
    # DreamBooth-style prior preservation (`swarm ingest --role regularization`): the share of each leased chunk's
    # samples drawn from the regularization set (0: off; 0.5 pairs every training sample with one, as diffusers'
    # train_dreambooth.py does), and the weight of their loss: instance loss + prior_loss_weight * prior loss.
    reg_ratio: float = 0.0
    prior_loss_weight: float = 1.0

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["sample_prompts"] = list(self.sample_prompts)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        return validate(json.loads(text))

    def replace(self, **changes: Any) -> "RunConfig":
        return validate({**json.loads(self.to_json()), **changes})


# Keys whose change cannot be applied to a running peer: it must restart (or the run be restarted).
RESTART_KEYS = frozenset({"model", "train_text_encoder", "use_ema", "seed", "chunk_size", "resolution",
                          "buckets_side_min", "buckets_side_max", "buckets_max_area", "train", "lora_rank",
                          "lora_alpha", "lora_dropout", "lora_targets", "lora_text_encoder",
                          # every peer must apply the same outer rule to the same wire format
                          "mode", "inner_steps", "outer_lr", "outer_momentum", "pseudo_grad_compression",
                          "topk_fraction", "outer_overlap"})

_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}


def yaml_float(value: Any) -> Any:
    """A string that reads as a number becomes that float; anything else comes back unchanged.

    YAML 1.1 (PyYAML) reads `1e-4` (no dot) as a string; every SD trainer's config writes learning rates that way.
    """
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _check_type(key: str, value: Any, expected: Any) -> Any:
    if expected == "bool" or expected is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if expected == "int" or expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key} must be a whole number, got {value!r}")
        return value
    if expected == "float" or expected is float:
        value = yaml_float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    if expected == "str" or expected is str:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{key} must be a non-empty string, got {value!r}")
        return value.strip()
    # tuple[str, ...]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key} must be a list of strings, got {value!r}")
    return tuple(value)


def validate(raw: dict[str, Any]) -> RunConfig:
    """Check every key of a run config; unknown keys are refused so a typo never silently falls back to a default."""
    if not isinstance(raw, dict):
        raise ConfigError(f"the run config must be a mapping of keys to values, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"unknown run config key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(_FIELDS))}")
    values = {key: _check_type(key, value, _FIELDS[key].type) for key, value in raw.items() if value is not None}
    cfg = RunConfig(**values)
    _check_ranges(cfg)
    return cfg


def _check_ranges(cfg: RunConfig) -> None:
    def require(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    require(cfg.lr > 0, f"lr must be > 0, got {cfg.lr}")
    require(cfg.lr_scheduler in LR_SCHEDULERS,
            f"lr_scheduler must be one of {', '.join(LR_SCHEDULERS)}, got {cfg.lr_scheduler!r}")
    require(cfg.lr_warmup_steps >= 0, f"lr_warmup_steps must be >= 0, got {cfg.lr_warmup_steps}")
    require(cfg.lr_total_steps >= 0, f"lr_total_steps must be >= 0, got {cfg.lr_total_steps}")
    require(0.0 <= cfg.ucg <= 1.0, f"ucg is a fraction of captions to drop: between 0 and 1, got {cfg.ucg}")
    require(0.0 < cfg.ema_decay < 1.0, f"ema_decay must be between 0 and 1 (exclusive), got {cfg.ema_decay}")
    require(0.0 <= cfg.opt_betas_one < 1.0, f"opt_betas_one must be in [0, 1), got {cfg.opt_betas_one}")
    require(0.0 <= cfg.opt_betas_two < 1.0, f"opt_betas_two must be in [0, 1), got {cfg.opt_betas_two}")
    require(cfg.opt_epsilon > 0, f"opt_epsilon must be > 0, got {cfg.opt_epsilon}")
    require(cfg.opt_weight_decay >= 0, f"opt_weight_decay must be >= 0, got {cfg.opt_weight_decay}")
    for key in ("resolution", "buckets_side_min", "buckets_side_max"):
        value = getattr(cfg, key)
        require(value >= 64 and value % 64 == 0, f"{key} must be a multiple of 64 and at least 64, got {value}")
    require(cfg.buckets_side_min <= cfg.resolution <= cfg.buckets_side_max,
            f"resolution ({cfg.resolution}) must lie between buckets_side_min ({cfg.buckets_side_min}) and "
            f"buckets_side_max ({cfg.buckets_side_max})")
    require(cfg.buckets_max_area == 0 or cfg.buckets_max_area >= cfg.resolution ** 2,
            f"buckets_max_area must be 0 (resolution²) or at least resolution² ({cfg.resolution ** 2}) so the base "
            f"square fits, got {cfg.buckets_max_area} (NovelAI's at resolution 512: 393216 = 512×768)")
    require(cfg.target_batch_size >= 1, f"target_batch_size must be >= 1, got {cfg.target_batch_size}")
    require(1 <= cfg.chunk_size <= 100_000, f"chunk_size must be between 1 and 100000, got {cfg.chunk_size}")
    require(cfg.max_data_epochs >= 1, f"max_data_epochs must be >= 1, got {cfg.max_data_epochs}")
    require(cfg.min_snr_gamma >= 0, f"min_snr_gamma must be >= 0 (0 disables it), got {cfg.min_snr_gamma}")
    require(cfg.noise_offset >= 0, f"noise_offset must be >= 0, got {cfg.noise_offset}")
    for key in ("save_every_epochs", "sample_every_epochs"):
        require(getattr(cfg, key) >= 0, f"{key} must be >= 0 (0 disables it), got {getattr(cfg, key)}")
    require(cfg.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, got {cfg.keep_checkpoints}")
    _check_lora(cfg, require)
    _check_mode(cfg, require)
    require(0.0 <= cfg.reg_ratio < 1.0,
            f"reg_ratio is the share of each chunk's samples drawn from the regularization images: in [0, 1) (0 turns "
            f"them off, 0.5 is one per training sample as in DreamBooth), got {cfg.reg_ratio}")
    require(cfg.prior_loss_weight >= 0, f"prior_loss_weight weighs the regularization images' loss: must be >= 0 "
                                        f"(1.0 as in DreamBooth), got {cfg.prior_loss_weight}")


def _check_mode(cfg: RunConfig, require) -> None:
    require(cfg.mode in MODES, f"mode must be one of {', '.join(MODES)}, got {cfg.mode!r}")
    require(cfg.inner_steps >= 1, f"inner_steps (local batches per DiLoCo round) must be >= 1, got {cfg.inner_steps}")
    require(cfg.outer_lr > 0, f"outer_lr must be > 0 (DiLoCo uses 0.7), got {cfg.outer_lr}")
    require(0.0 <= cfg.outer_momentum < 1.0,
            f"outer_momentum must be in [0, 1) (DiLoCo uses 0.9), got {cfg.outer_momentum}")
    require(cfg.pseudo_grad_compression in PSEUDO_GRAD_COMPRESSIONS,
            f"pseudo_grad_compression must be one of {', '.join(PSEUDO_GRAD_COMPRESSIONS)}, "
            f"got {cfg.pseudo_grad_compression!r}")
    require(0.0 < cfg.topk_fraction <= 1.0, f"topk_fraction must be in (0, 1], got {cfg.topk_fraction}")
    require(cfg.mode != "diloco" or cfg.lr_scheduler == "constant" or cfg.lr_total_steps > 0,
            f"mode diloco with lr_scheduler {cfg.lr_scheduler} needs lr_total_steps: in diloco mode the schedule "
            f"counts inner steps (round * inner_steps + step), which the coordinator cannot derive from the "
            f"dataset; set lr_total_steps to the inner steps one peer takes in the whole run")


def _check_lora(cfg: RunConfig, require) -> None:
    """The LoRA keys. Target names are checked against the model when it is built (swarm_trainer.lora)."""
    require(cfg.train in TRAIN_MODES, f"train must be one of {', '.join(TRAIN_MODES)}, got {cfg.train!r}")
    require(cfg.lora_rank >= 1, f"lora_rank must be >= 1 (4 to 128 is usual), got {cfg.lora_rank}")
    require(cfg.lora_alpha >= 0, f"lora_alpha must be >= 0 (0 means equal to lora_rank), got {cfg.lora_alpha}")
    require(0.0 <= cfg.lora_dropout < 1.0, f"lora_dropout must be in [0, 1), got {cfg.lora_dropout}")
    require(len(cfg.lora_targets) > 0 and all(t.strip() for t in cfg.lora_targets),
            f"lora_targets must name at least one module (default: {', '.join(LORA_UNET_TARGETS)})")
    if cfg.train == "lora":
        # A LoRA freezes the whole base model; training the full text encoder beside it would average and save
        # the full encoder too, the opposite of what LoRA is for. The adapter on the encoder is lora_text_encoder.
        require(not cfg.train_text_encoder, "train: lora freezes the model, so train_text_encoder (the full text "
                "encoder) cannot be on: set train_text_encoder: false, and lora_text_encoder: true for a LoRA "
                "on the text encoder")
    else:
        require(not cfg.lora_text_encoder, "lora_text_encoder is a LoRA option: set train: lora, or drop "
                "lora_text_encoder (train_text_encoder trains the full text encoder)")


def lora_scale_alpha(cfg: RunConfig) -> float:
    """The LoRA alpha in use: lora_alpha, or lora_rank when it is 0 (a scale of alpha/rank = 1)."""
    return cfg.lora_alpha or float(cfg.lora_rank)


def load_yaml(path: str) -> RunConfig:
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"run config file {path} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"run config file {path} is not valid YAML: {e}") from None
    try:
        return validate(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def restart_needed(old: RunConfig, new: RunConfig) -> list[str]:
    """Keys that differ between two versions and cannot be applied to a running peer."""
    return sorted(k for k in RESTART_KEYS if getattr(old, k) != getattr(new, k))


def validate_run_id(run_id: str) -> str:
    if not RUN_ID_PATTERN.match(run_id or ""):
        raise ConfigError(f"run id must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit; "
                          f"got {run_id!r}")
    return run_id
