"""Optional latent caching: a peer that trains the same sample again (a later data epoch) skips the VAE encoder.

The cache keeps the VAE's latent distribution (mean and std) per (sample id, bucket size), on the CPU, and draws a
fresh sample from it each time, so training sees the same noise in the latents as without the cache. Bounded by
entry count (oldest first out).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch


class LatentCache:
    def __init__(self, *, max_entries: int = 100_000):
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @torch.no_grad()
    def latents(self, vae, keys: Sequence[tuple], pixels_fn, *, generator: torch.Generator | None = None,
                device: torch.device | None = None) -> torch.Tensor:
        """Scaled latents for `keys`; `pixels_fn(indices)` gives pixels for the misses only (the VAE runs on them)."""
        missing = [i for i, key in enumerate(keys) if key not in self._entries]
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        if missing:
            pixels = pixels_fn(missing)
            dist = vae.encode(pixels.to(vae.device, dtype=vae.dtype)).latent_dist
            for row, i in enumerate(missing):
                self._entries[keys[i]] = (dist.mean[row].float().cpu(), dist.std[row].float().cpu())
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
        means = torch.stack([self._entries[key][0] for key in keys])
        stds = torch.stack([self._entries[key][1] for key in keys])
        for key in keys:
            self._entries.move_to_end(key)
        noise = torch.randn(means.shape, generator=generator)
        latents = (means + stds * noise) * vae.config.scaling_factor
        return latents.to(device or vae.device)
