"""Checkpoints survive a full disk and an interrupted replacement; a failed periodic save leaves training running.

"Disk full" is real: RLIMIT_FSIZE makes the kernel refuse (EFBIG) every write past a size, as ENOSPC would.
"""
from __future__ import annotations

import contextlib
import logging
import resource
import signal
from types import SimpleNamespace

import pytest
import torch

from swarm_trainer.checkpoints import latest_checkpoint, list_checkpoints, resume, save_checkpoint
from swarm_trainer.chunks import _maybe_save_periodic

pytestmark = pytest.mark.timeout(180)


@contextlib.contextmanager
def disk_full_after(limit_bytes: int):
    """Every file write in this process past `limit_bytes` fails with OSError (EFBIG) until the block ends."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write error instead of the signal's kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def unet_equals(folder, models) -> bool:
    from diffusers import UNet2DConditionModel

    saved = UNet2DConditionModel.from_pretrained(str(folder / "unet"), local_files_only=True)
    return all(torch.equal(a, b) for a, b in zip(saved.parameters(), models.unet.parameters()))


@pytest.fixture(scope="module")
def models():
    from swarm_trainer.model import build_tiny

    return build_tiny(seed=11)


def test_a_save_that_fails_half_way_leaves_the_last_checkpoint_whole(tmp_path, models):
    first = save_checkpoint(models, tmp_path, epoch=1, keep=2)
    saved_weights = [p.detach().clone() for p in models.unet.parameters()]
    with torch.no_grad():
        for p in models.unet.parameters():
            p.add_(1.0)
    root = tmp_path / "checkpoints"
    # A new epoch and a replacement of the same epoch both fail on the big UNet file (the small files fit).
    for epoch in (2, 1):
        with disk_full_after(1 << 20), pytest.raises(Exception, match="File too large"):
            save_checkpoint(models, tmp_path, epoch=epoch, keep=2)
        assert sorted(p.name for p in root.iterdir()) == ["epoch-000001"], "temporary folders are cleaned up"
        assert [e for e, _ in list_checkpoints(tmp_path)] == [1]
    from diffusers import UNet2DConditionModel

    kept = UNet2DConditionModel.from_pretrained(str(first / "unet"), local_files_only=True)
    assert all(torch.equal(a, b) for a, b in zip(kept.parameters(), saved_weights)), "the old checkpoint is intact"
    # With space again, the replacement goes through and the old folder is gone only after.
    save_checkpoint(models, tmp_path, epoch=1, keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["epoch-000001"]
    assert unet_equals(first, models)


def test_a_replacement_interrupted_between_its_renames_is_undone(tmp_path, models):
    final = save_checkpoint(models, tmp_path, epoch=3, keep=2)
    # What a crash after moving the old folder aside and before renaming the new one into place leaves:
    old = final.parent / ".old-epoch-000003"
    final.rename(old)
    (final.parent / ".tmp-epoch-000003").mkdir()
    assert list_checkpoints(tmp_path) == []
    epoch, folder, _ = resume(models, tmp_path)
    assert (epoch, folder) == (3, final) and not old.exists()
    # A crash after the new one is in place leaves only a stale .old- folder: removed, the new one kept.
    old.mkdir()
    save_checkpoint(models, tmp_path, epoch=4, keep=2)
    assert sorted(p.name for p in final.parent.iterdir()) == ["epoch-000003", "epoch-000004"]


def test_a_failed_periodic_save_logs_and_training_goes_on(tmp_path, models, caplog):
    save_checkpoint(models, tmp_path, epoch=1, keep=2)
    run = SimpleNamespace(config=SimpleNamespace(save_every_epochs=2), engine=SimpleNamespace(local_epoch=4))
    run.save = lambda: save_checkpoint(models, tmp_path, epoch=run.engine.local_epoch, keep=2)
    with caplog.at_level(logging.ERROR), disk_full_after(1 << 20):
        last_saved = _maybe_save_periodic(run, last_saved_epoch=1)
    assert last_saved == 4, "the next period tries again; this one is not retried every chunk"
    assert "saving the checkpoint at epoch 4 failed" in caplog.text
    assert latest_checkpoint(tmp_path)[0] == 1
    run.engine.local_epoch = 6
    assert _maybe_save_periodic(run, last_saved_epoch=last_saved) == 6
    assert [e for e, _ in list_checkpoints(tmp_path)] == [1, 6]
