"""hivemind wiring: the DHT, the collaborative optimizer, compression and the LR set from the global epoch.

Two hivemind facts shape this module:
- hivemind.Optimizer ignores its own `client_mode` argument in places and follows the DHT's, so the same explicit
  value goes to both, and a client-mode peer is tested.
- `Optimizer.param_groups` returns copies; the LR must be written into the wrapped torch optimizer's groups
  (`optimizer.opt.param_groups`), and it is computed from `optimizer.local_epoch` (the swarm's epoch), never from a
  local step count, so every peer uses the same LR at the same epoch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Sequence

import torch

from swarm.logs import get_logger
from swarm.lr_schedule import lr_at_epoch
from swarm.runconfig import RunConfig

logger = get_logger(__name__)

COMPRESSIONS = ("none", "fp16", "8bit", "adaptive")
# Tensors smaller than this go as fp16 under "adaptive": quantizing small tensors (norms, biases) saves little and
# costs the most accuracy.
ADAPTIVE_THRESHOLD = 2 ** 16 + 1


@dataclass(frozen=True)
class SwarmOptions:
    """Per-peer hivemind settings. The defaults are meant for the internet; tests shrink the timeouts."""
    host_maddrs: Sequence[str] = ("/ip4/0.0.0.0/tcp/0",)
    announce_maddrs: Sequence[str] = ()
    client_mode: bool = False
    use_relay: bool = True
    use_auto_relay: bool = False
    identity_path: str | None = None
    matchmaking_time: float = 15.0
    averaging_timeout: float = 120.0
    load_state_timeout: float = 600.0
    compression: str = "fp16"
    average_state_every: int = 1
    offload_optimizer: bool = True
    verbose: bool = False  # hivemind's own progress lines (matchmaking, averaging) at INFO instead of DEBUG
    extra_initial_peers: Sequence[str] = field(default_factory=tuple)


def make_compression(name: str):
    """(gradient compression, state compression) for a --compression choice.

    State (parameters, optimizer statistics) never goes below fp16: 8-bit parameters would visibly damage the model.
    """
    from hivemind.compression import (BlockwiseQuantization, Float16Compression, NoCompression,
                                      SizeAdaptiveCompression)

    if name == "none":
        return NoCompression(), NoCompression()
    if name == "fp16":
        return Float16Compression(), Float16Compression()
    if name == "8bit":
        return BlockwiseQuantization(), Float16Compression()
    if name == "adaptive":
        return (SizeAdaptiveCompression(threshold=ADAPTIVE_THRESHOLD, less=Float16Compression(),
                                        greater_equal=BlockwiseQuantization()), Float16Compression())
    raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {name!r}")


def make_dht(*, initial_peers: Sequence[str], options: SwarmOptions):
    import hivemind

    kwargs = dict(host_maddrs=list(options.host_maddrs), client_mode=options.client_mode,
                  use_relay=options.use_relay, use_auto_relay=options.use_auto_relay)
    if options.announce_maddrs:
        kwargs["announce_maddrs"] = list(options.announce_maddrs)
    if options.identity_path:
        kwargs["identity_path"] = options.identity_path
    return hivemind.DHT(initial_peers=list(initial_peers), start=True, **kwargs)


def visible_multiaddrs(dht) -> list[str]:
    """Addresses other peers can dial (empty for a client-mode peer, which takes no inbound connections)."""
    if getattr(dht, "client_mode", False):
        return []
    return [str(addr) for addr in dht.get_visible_maddrs()]


def make_optimizer(*, dht, run_id: str, params: Sequence[torch.nn.Parameter], config: RunConfig,
                   batch_size: int, options: SwarmOptions, optimizer_cls=None):
    """hivemind.Optimizer averaging gradients toward the run's target batch (use_local_updates=False).

    Call it once per batch: loss.backward() (scaled by a hivemind.GradScaler for fp16), apply_lr(), step().

    Must be created in the main thread (hivemind's averagers fork helpers and install signal-sensitive state).
    """
    import hivemind
    from hivemind.compression import NoCompression

    grad_compression, state_compression = make_compression(options.compression)
    optimizer_cls = optimizer_cls or torch.optim.AdamW
    optimizer_factory = partial(optimizer_cls, lr=lr_at_epoch(0, **lr_kwargs(config)),
                                betas=(config.opt_betas_one, config.opt_betas_two), eps=config.opt_epsilon,
                                weight_decay=config.opt_weight_decay)
    return hivemind.Optimizer(
        dht=dht,
        run_id=run_id,
        params=list(params),
        optimizer=optimizer_factory,
        target_batch_size=config.target_batch_size,
        batch_size_per_step=batch_size,
        matchmaking_time=options.matchmaking_time,
        averaging_timeout=options.averaging_timeout,
        load_state_timeout=options.load_state_timeout,
        average_state_every=options.average_state_every,
        offload_optimizer=options.offload_optimizer,
        # The model's .grad buffers are the accumulators: no second full-size copy of the gradients on the device,
        # and hivemind.GradScaler (fp16) unscales exactly the buffers that get averaged. The trainer therefore never
        # calls zero_grad(); hivemind zeroes the buffers after each global step.
        reuse_grad_buffers=True,
        use_local_updates=False,
        client_mode=options.client_mode,
        grad_compression=grad_compression,
        state_averaging_compression=state_compression,
        # State downloads (late joiners, laggards, the end barrier) are exact: fp16 would round the parameters away
        # from the swarm's and flush Adam's tiny second moments to zero (then m / (sqrt(0) + eps) explodes).
        load_state_compression=NoCompression(),
        verbose=options.verbose,
    )


def lr_kwargs(config: RunConfig, *, total_steps: int | None = None) -> dict:
    return dict(base_lr=config.lr, scheduler=config.lr_scheduler, warmup_steps=config.lr_warmup_steps,
                total_steps=config.lr_total_steps if total_steps is None else total_steps)


def apply_lr(optimizer, config: RunConfig, *, total_steps: int | None = None) -> float:
    """Set the LR of the next global step from the swarm's epoch; call right before each optimizer.step()."""
    lr = lr_at_epoch(optimizer.local_epoch, **lr_kwargs(config, total_steps=total_steps))
    for group in optimizer.opt.param_groups:
        group["lr"] = lr
    return lr


def current_lr(optimizer) -> float:
    return float(optimizer.opt.param_groups[0]["lr"])


def peers_in_last_round(optimizer) -> int:
    """Peers the progress tracker saw in the swarm's current epoch (hivemind does not expose group sizes)."""
    try:
        return int(optimizer.tracker.global_progress.num_peers)
    except Exception:  # noqa: BLE001 - a metric must never stop training
        return 0


def shutdown(optimizer, dht) -> None:
    """Optimizer first (it says goodbye through the DHT), then the DHT; each step logs and carries on."""
    if optimizer is not None:
        try:
            optimizer.shutdown()
        except Exception as e:  # noqa: BLE001
            logger.warning(f"optimizer shutdown failed: {e!r}")
    if dht is not None:
        try:
            dht.shutdown()
        except Exception as e:  # noqa: BLE001
            logger.warning(f"DHT shutdown failed: {e!r}")
