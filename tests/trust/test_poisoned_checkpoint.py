"""A model with NaN/Inf weights is never saved, so keep-last-K never prunes the last good checkpoint for it."""
from __future__ import annotations

import math

import pytest
import torch

from swarm_trainer.checkpoints import NonFiniteWeights, list_checkpoints, save_checkpoint
from swarm_trainer.model import build_tiny


def test_poisoned_weights_are_not_saved_and_the_good_checkpoint_stays(tmp_path):
    models = build_tiny(seed=0)
    good = save_checkpoint(models, tmp_path, epoch=1, keep=1)
    with torch.no_grad():
        next(models.unet.parameters()).view(-1)[0] = math.nan
    with pytest.raises(NonFiniteWeights, match="NaN or Inf"):
        save_checkpoint(models, tmp_path, epoch=2, keep=1)
    assert [path for _, path in list_checkpoints(tmp_path)] == [good]
    assert not any(p.name.startswith(".") for p in (tmp_path / "checkpoints").iterdir())
