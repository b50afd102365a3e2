"""Sample grids: one image per prompt from the current weights, pasted into a PNG grid with its prompts beside."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from swarm_trainer.model import build_tiny
from swarm_trainer.samples import make_grid, save_sample_grid

pytestmark = pytest.mark.timeout(120)


def test_grid_layout():
    images = [Image.new("RGB", (8, 6), (i * 40, 0, 0)) for i in range(5)]
    grid = make_grid(images)
    assert grid.size == (3 * 8, 2 * 6)
    assert grid.getpixel((8 + 1, 1)) == (40, 0, 0) and grid.getpixel((1, 6 + 1)) == (120, 0, 0)
    with pytest.raises(ValueError):
        make_grid([])


def test_sample_grid_from_the_model(tmp_path):
    models = build_tiny(seed=3)
    models.unet.train()
    prompts = ["a red square", "a blue circle", "a green line"]
    path = save_sample_grid(models, tmp_path, epoch=4, prompts=prompts, width=64, height=64, steps=2)
    assert path == tmp_path / "samples" / "epoch-000004.png"
    grid = Image.open(path)
    assert grid.size == (2 * 64, 2 * 64)
    assert path.with_suffix(".txt").read_text().splitlines() == prompts
    assert models.unet.training  # sampling put the UNet in eval mode and back
    # the same seed renders the same grid: epochs are comparable
    again = save_sample_grid(models, tmp_path / "again", epoch=4, prompts=prompts, width=64, height=64, steps=2)
    assert list(Image.open(again).getdata()) == list(grid.getdata())
    # other weights, other pictures
    with torch.no_grad():
        for p in models.unet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    other = save_sample_grid(models, tmp_path / "other", epoch=5, prompts=prompts, width=64, height=64, steps=2)
    assert list(Image.open(other).getdata()) != list(grid.getdata())
