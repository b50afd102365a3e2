"""Shared helpers for the trainer tests: tiny images, a fast tiny run config."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

# Two cores are shared by every test process: one intra-op thread each keeps them from thrashing.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


def make_images(count: int, *, size: int = 64, seed: int = 0):
    """Simple structured images (colour blocks and gradients): learnable, unlike pure noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    yy, xx = np.mgrid[0:size, 0:size] / size
    for _ in range(count):
        colour = rng.uniform(0, 1, 3)
        pattern = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)) % 1.0
        pixels = np.clip(pattern[..., None] * colour[None, None, :] * 255, 0, 255).astype(np.uint8)
        images.append(Image.fromarray(pixels, mode="RGB"))
    return images


@pytest.fixture
def tiny_images():
    return make_images(4)
