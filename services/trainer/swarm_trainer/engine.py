"""One peer's model replica and its swarm backend: `train_batch` is one local batch, exactly one backend step.

The engine owns what every backend shares (models, loss, LR schedule, EMA, stats, metrics); how local steps become
the swarm's steps is the backend's (backend.py). Used by the coordinator-driven lifecycle (session.py, chunks.py)
and directly by tests and benchmarks that need no coordinator.
"""
from __future__ import annotations

import math
import os
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

import torch

from swarm.logs import get_logger
from swarm.lr_schedule import lr_for
from swarm.runconfig import RunConfig
from swarm_trainer import metrics
from swarm_trainer.features import PeerFeatures, configure_attention, configure_gradient_checkpointing
from swarm_trainer.model import SDModels, prepare_for_training, trainable_parameters, trained_named_parameters
from swarm_trainer.step import StepOptions, compute_loss, drop_captions, pil_to_pixels, tokenize

logger = get_logger(__name__)

# summary.json's loss_first / loss_last: the mean over this many local steps at each end.
LOSS_WINDOW = 5


@dataclass
class TrainStats:
    """What this peer did, for summary.json, heartbeats and the progress bar. Thread-safe to read."""
    losses: list[float] = field(default_factory=list)
    samples_trained: int = 0
    local_steps: int = 0
    train_seconds: float = 0.0
    _recent: deque = field(default_factory=lambda: deque(maxlen=20))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, *, loss: float, batch_size: int, seconds: float) -> None:
        with self._lock:
            self.losses.append(loss)
            self.samples_trained += batch_size
            self.local_steps += 1
            self.train_seconds += seconds
            self._recent.append((batch_size, seconds))

    @property
    def samples_per_s(self) -> float:
        """Throughput over the recent steps (what the swarm can expect from this peer now)."""
        with self._lock:
            seconds = sum(s for _, s in self._recent)
            return sum(b for b, _ in self._recent) / seconds if seconds > 0 else 0.0

    @property
    def mean_samples_per_s(self) -> float:
        with self._lock:
            return self.samples_trained / self.train_seconds if self.train_seconds > 0 else 0.0

    @property
    def last_loss(self) -> float:
        """The latest step's loss; NaN before the first step (the coordinator stores that as "no loss yet")."""
        with self._lock:
            return self.losses[-1] if self.losses else math.nan

    def loss_first(self) -> float | None:
        with self._lock:
            window = self.losses[:LOSS_WINDOW]
            return sum(window) / len(window) if window else None

    def loss_last(self) -> float | None:
        with self._lock:
            window = self.losses[-LOSS_WINDOW:]
            return sum(window) / len(window) if window else None


class TrainEngine:
    """Models + a swarm backend (+ hivemind.GradScaler for fp16) on one device.

    `backend_factory(params)` builds the backend (backend.make_backend) once the models are on their device.
    """

    def __init__(self, *, models: SDModels, backend_factory, config: RunConfig, device: torch.device,
                 precision: str = "fp32", batch_size: int = 1, lr_total_steps: int | None = None,
                 generator: torch.Generator | None = None, features: PeerFeatures = PeerFeatures(),
                 caption_seed: int | None = None):
        self.models, self.device, self.features = models, device, features
        self.batch_size, self.lr_total_steps, self.generator = batch_size, lr_total_steps, generator
        self.precision = precision
        self.config = config
        # Caption dropout draws differ per peer (os.urandom) unless a test pins them.
        self.caption_rng = random.Random(caption_seed if caption_seed is not None else os.urandom(8))
        prepare_for_training(models, device=device, train_text_encoder=config.train_text_encoder)
        self.attention = configure_attention(models, xformers=features.xformers)
        configure_gradient_checkpointing(models, enabled=features.gradient_checkpointing,
                                         train_text_encoder=config.train_text_encoder)
        if features.bf16_weights:
            from swarm_trainer.diloco.fused import cast_weights

            cast_weights([models.unet] + ([models.text_encoder] if config.train_text_encoder else []), torch.bfloat16)
        self.params = trainable_parameters(models, train_text_encoder=config.train_text_encoder)
        # What EMA follows: the UNet, or only its adapter with a LoRA (the frozen base never changes).
        self.unet_params = [p for _, p in trained_named_parameters(models.unet)]
        self.ema = None
        if config.use_ema:
            from swarm_trainer.ema import ParameterEMA

            self.ema = ParameterEMA(self.unet_params, decay=config.ema_decay, offload=features.ema_offload)
        self.latent_cache = None
        if features.cache_latents:
            from swarm_trainer.latent_cache import LatentCache

            self.latent_cache = LatentCache()
        # The backend is created here, after the models are on their device, in the caller's (main) thread.
        self.backend = backend_factory(self.params)
        self.grad_scaler = None
        if precision == "fp16" and config.mode == "diloco":
            # DiLoCo's inner steps are local, plain torch steps: torch's scaler, stepped and updated every batch.
            self.grad_scaler = torch.amp.GradScaler(device.type)
        elif precision == "fp16":
            import hivemind

            # hivemind's scaler, never torch's: it unscales the accumulated buffers once per global step.
            self.grad_scaler = hivemind.GradScaler()
        self.stats = TrainStats()

    @property
    def config(self) -> RunConfig:
        return self._config

    @config.setter
    def config(self, config: RunConfig) -> None:
        self._config = config
        self.options = StepOptions.from_config(config, precision=self.precision)

    def apply_config(self, config: RunConfig) -> None:
        """A new run config version, keys a running peer can apply (LR schedule, optimizer betas/eps/weight decay,
        target batch, ucg, CLIP skip, min-SNR, noise offset...): the one way a live change reaches training."""
        self.config = config
        self.backend.apply_config(config)

    @property
    def local_epoch(self) -> int:
        return self.backend.local_epoch

    def scheduled_lr(self) -> float:
        """The LR of the next step: the run's schedule at the swarm's epoch, over the decay span the coordinator
        announced (heartbeats set lr_total_steps), else the config's own."""
        return lr_for(self.config, epoch=self.backend.schedule_step,
                      total_steps=self.lr_total_steps or self.config.lr_total_steps)

    def train_batch(self, images: Sequence, captions: Sequence[str],
                    sample_ids: Sequence[int] | None = None, prior: Sequence[bool] | None = None) -> float:
        """Forward, backward and exactly one optimizer.step() for one local batch; returns the loss. `prior` marks
        regularization samples, whose loss is weighted by the run config's prior_loss_weight (prior.py)."""
        started = time.perf_counter()
        captions = drop_captions(captions, ucg=self.config.ucg, rng=self.caption_rng)
        input_ids = tokenize(self.models.tokenizer, captions)
        latents = pixels = None
        if self.latent_cache is not None and sample_ids is not None:
            keys = [(sid, *image.size) for sid, image in zip(sample_ids, images)]
            latents = self.latent_cache.latents(
                self.models.vae, keys, lambda idx: pil_to_pixels([images[i] for i in idx], device=self.device),
                generator=self.generator, device=self.device)
        else:
            pixels = pil_to_pixels(images, device=self.device)
        loss = compute_loss(self.models, pixels, input_ids, options=self.options, generator=self.generator,
                            latents=latents, prior=prior)
        if not torch.isfinite(loss):
            # A non-finite loss would poison the accumulated gradients of the whole swarm; hivemind.GradScaler
            # handles fp16 overflow, anything else is a bug worth stopping for.
            if self.grad_scaler is None:
                raise FloatingPointError(f"loss is {loss.item()} at local step {self.stats.local_steps}")
        lr = self.scheduled_lr()
        self.backend.set_lr(lr)
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            step_started = time.perf_counter()
            stepped = self.backend.step(batch_size=len(images), grad_scaler=self.grad_scaler)
            self.grad_scaler.update()
        else:
            loss.backward()
            step_started = time.perf_counter()
            stepped = self.backend.step(batch_size=len(images))
        finished = time.perf_counter()
        if stepped:
            metrics.AVERAGING_SECONDS.observe(finished - step_started)
            self._after_global_step()
        self.backend.rejoin_listeners()
        loss_value = float(loss.detach())
        self.stats.record(loss=loss_value, batch_size=len(images), seconds=finished - started)
        self._update_metrics(loss=loss_value, lr=lr, batch_size=len(images))
        return loss_value

    def _update_metrics(self, *, loss: float, lr: float, batch_size: int) -> None:
        metrics.LOSS.set(loss)
        metrics.LR.set(lr)
        metrics.SAMPLES_PER_SECOND.set(self.stats.samples_per_s)
        metrics.LOCAL_STEP.set(self.stats.local_steps)
        metrics.GLOBAL_EPOCH.set(self.backend.local_epoch)
        metrics.PEERS_IN_LAST_ROUND.set(self.backend.peers_in_last_round())
        metrics.SAMPLES_TRAINED.inc(batch_size)
        metrics.update_gpu_memory(self.device)

    def idle_tick(self) -> bool:
        """Keep in step with the swarm while this peer has no data (waiting for a chunk, or finished).

        A zero-sample optimizer.step() lets hivemind move this peer to the next epoch together with the busy peers
        and join their averaging round with weight 0, so it receives the same averaged gradients and makes the same
        update. Otherwise the busy peers would look for it in matchmaking every round, and a listening peer that
        fell behind a client-mode peer could never download the state back (client-mode peers serve no state).
        Skipped while nobody in the swarm has accumulated anything this epoch, so a swarm of idle peers never
        averages all-zero weights. Returns True when the tick moved this peer to a new epoch.
        """
        if self.backend.rejoin_listeners() or not self.backend.swarm_is_stepping():
            return False
        self.backend.set_lr(self.scheduled_lr())
        moved = self.backend.idle_step(grad_scaler=self.grad_scaler)
        if moved:
            self._after_global_step()
        if self.grad_scaler is not None:
            self.grad_scaler.update()
        metrics.GLOBAL_EPOCH.set(self.backend.local_epoch)
        metrics.PEERS_IN_LAST_ROUND.set(self.backend.peers_in_last_round())
        return moved

    def resume(self, *, epoch: int, ema_state: dict | None = None) -> None:
        """Continue from a checkpoint (weights already loaded): its epoch, and its EMA weights when it has them.

        A swarm that is further along still wins: behind_swarm() then downloads the newer state from peers.
        """
        self.backend.resume(epoch)
        if self.ema is not None and ema_state is not None:
            names = [name for name, _ in trained_named_parameters(self.models.unet)]
            with torch.no_grad():
                for shadow, name in zip(self.ema.shadow, names):
                    shadow.copy_(ema_state[name].to(shadow.device, shadow.dtype))

    def _after_global_step(self) -> None:
        if self.ema is not None:
            self.ema.update(self.unet_params)

    def ema_unet(self):
        """The UNet with EMA weights (a CPU copy) for checkpoints, or None without EMA."""
        if self.ema is None:
            return None
        return self.ema.averaged_module(self.models.unet,
                                        params_of=lambda unet: [p for _, p in trained_named_parameters(unet)])

    def behind_swarm(self) -> bool:
        """True when the swarm is already in a later epoch than this peer."""
        return self.backend.behind_swarm()

    def load_state_from_peers(self) -> None:
        """Download the swarm's newest parameters and optimizer state (late joiners and laggards)."""
        self.backend.load_state_from_peers()
        metrics.GLOBAL_EPOCH.set(self.backend.local_epoch)

    def parameters_vector(self) -> torch.Tensor:
        """All trainable parameters flattened on CPU (tests compare peers with it)."""
        with torch.no_grad():
            return torch.cat([p.detach().float().reshape(-1).cpu() for p in self.params])
