"""What a trainer is started with (TrainerOptions), and the checks on what it is given (run config, device).

A leaf of the trainer: the CLI builds TrainerOptions, the peer's lifecycle (loop.py, session.py, chunks.py) reads
them, and nothing here imports any of those.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from swarm.errors import ConfigError
from swarm.runconfig import RunConfig
from swarm_trainer.features import PeerFeatures
from swarm_trainer.swarm import SwarmOptions

EXIT_OK, EXIT_RESTART_NEEDED = 0, 3  # an unexpected error exits 1 (a traceback)


class RestartNeeded(Exception):
    """The coordinator's new config changes keys a running peer cannot apply."""


@dataclass
class TrainerOptions:
    coordinator: str
    token: str | None = None
    output_dir: Path = Path("runs/train")
    name: str = ""
    batch_size: int = 1
    device: str = "auto"
    precision: str | None = None
    swarm: SwarmOptions = field(default_factory=SwarmOptions)
    require_reachable: bool = False  # stop at start when the coordinator cannot dial this peer back (reachability.py)
    features: PeerFeatures = field(default_factory=PeerFeatures)
    barrier_timeout: float = 300.0
    metrics_port: int = 9102
    metrics_host: str | None = None  # None: loopback unless $SWARM_METRICS_HOST (swarm.metrics)
    ready_file: str | None = None
    rpc_timeout: float = 30.0
    lease_poll_s: float = 2.0  # how often to ask again when no chunk is free yet
    upload_checkpoints: str | None = None  # s3://bucket/prefix
    s3_endpoint_url: str | None = None
    wandb_project: str | None = None
    progress: bool = True


def parse_config(message) -> RunConfig:
    """A RunConfig message -> RunConfig; a config this trainer does not understand is refused, never guessed."""
    try:
        return RunConfig.from_json(message.config_json)
    except (ConfigError, ValueError) as e:
        raise ConfigError(f"this trainer cannot use run config version {message.version} of run {message.run_id!r}: "
                          f"{e}. Update swarm-diffusion, or ask the host to fix the config.") from None


def resolve_device(name: str) -> torch.device:
    """--device auto|cpu|cuda -> a torch device; asking for CUDA where there is none is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but CUDA is not available here; use --device cpu or auto")
    return torch.device(name)


def default_precision(precision: str | None, device: torch.device, *, bf16_supported: bool = True) -> str:
    """--precision when given, else bf16 on CUDA and fp32 elsewhere. A GPU without bf16 (before Ampere: T4, V100,
    GTX 10xx/16xx) gets fp16 instead, asked for or not: autocast to bf16 there is emulated and many times slower."""
    chosen = precision or ("bf16" if device.type == "cuda" else "fp32")
    if chosen == "bf16" and device.type == "cuda" and not bf16_supported:
        return "fp16"
    return chosen


def cuda_bf16_supported(device: torch.device) -> bool:
    """Whether this CUDA device computes bf16 natively (True off CUDA: the fallback is a CUDA matter)."""
    return device.type != "cuda" or torch.cuda.is_bf16_supported(including_emulation=False)


def default_peer_name(hostname: str, saved: str | None, new_suffix: str) -> str:
    """The name a peer shows when --name is not given: the one saved in its output folder by an earlier start, else
    the host name, except a container's (Docker's 12 hex digits change with every `docker run`), which becomes
    `peer-SUFFIX`. Saved on the volume, it stays the same across container restarts."""
    if saved and saved.strip():
        return saved.strip()
    if re.fullmatch(r"[0-9a-f]{12}", hostname) or not hostname:
        return f"peer-{new_suffix}"
    return hostname
