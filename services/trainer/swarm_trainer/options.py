"""What a trainer is started with (TrainerOptions), and the checks on what it is given (run config, device).

A leaf of the trainer: the CLI builds TrainerOptions, the peer's lifecycle (loop.py, session.py, chunks.py) reads
them, and nothing here imports any of those.
"""
from __future__ import annotations

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


def default_precision(precision: str | None, device: torch.device) -> str:
    """--precision when given, else bf16 on CUDA and fp32 elsewhere."""
    return precision or ("bf16" if device.type == "cuda" else "fp32")
