import math

import pytest

from swarm.lr_schedule import lr_at_epoch, lr_for, total_steps_for
from swarm.runconfig import RunConfig


def test_constant_ignores_epoch():
    assert [lr_at_epoch(e, base_lr=1e-4) for e in (0, 10, 10_000)] == [1e-4] * 3


def test_warmup_rises_linearly_to_base():
    lrs = [lr_at_epoch(e, base_lr=1.0, warmup_steps=4) for e in range(6)]
    assert lrs == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])


def test_linear_and_cosine_decay_to_zero_at_total():
    assert lr_at_epoch(5, base_lr=1.0, scheduler="linear", total_steps=10) == pytest.approx(0.5)
    assert lr_at_epoch(10, base_lr=1.0, scheduler="linear", total_steps=10) == 0.0
    assert lr_at_epoch(50, base_lr=1.0, scheduler="linear", total_steps=10) == 0.0
    assert lr_at_epoch(5, base_lr=1.0, scheduler="cosine", total_steps=10) == pytest.approx(0.5)
    assert lr_at_epoch(0, base_lr=1.0, scheduler="cosine", total_steps=10) == pytest.approx(1.0)
    assert lr_at_epoch(10, base_lr=1.0, scheduler="cosine", total_steps=10) == pytest.approx(0.0, abs=1e-12)


def test_decay_starts_after_warmup():
    assert lr_at_epoch(2, base_lr=1.0, scheduler="cosine", warmup_steps=2, total_steps=12) == pytest.approx(1.0)
    assert lr_at_epoch(7, base_lr=1.0, scheduler="cosine", warmup_steps=2, total_steps=12) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 0.5)))


def test_peers_agree_whatever_their_local_history():
    # The LR is a function of the global epoch alone: a peer that has followed the run from epoch 0 and a late joiner
    # whose first step is at epoch 37 get the same value there, the value of epoch 37 (not of a first step).
    kwargs = dict(base_lr=3e-4, scheduler="cosine", warmup_steps=5, total_steps=100)
    epoch_37 = 3e-4 * 0.5 * (1 + math.cos(math.pi * (37 - 5) / (100 - 5)))
    follower = {epoch: lr_at_epoch(epoch, **kwargs) for epoch in range(60)}
    late_joiner = {epoch: lr_at_epoch(epoch, **kwargs) for epoch in reversed(range(37, 60))}
    assert follower[37] == late_joiner[37] == pytest.approx(epoch_37)
    assert all(late_joiner[epoch] == follower[epoch] for epoch in late_joiner)
    assert follower[0] == pytest.approx(3e-4 / 6)  # a first step at epoch 0 is warmup's first sixth


def test_lr_for_reads_the_run_config():
    config = RunConfig(lr=2e-4, lr_scheduler="linear", lr_warmup_steps=0)
    assert lr_for(config, epoch=0, total_steps=10) == pytest.approx(2e-4)
    assert lr_for(config, epoch=5, total_steps=10) == pytest.approx(1e-4)
    assert lr_for(config, epoch=10, total_steps=10) == 0.0


def test_negative_epoch_and_unknown_scheduler_are_errors():
    with pytest.raises(ValueError):
        lr_at_epoch(-1, base_lr=1.0)
    with pytest.raises(ValueError, match="unknown lr_scheduler"):
        lr_at_epoch(3, base_lr=1.0, scheduler="step", total_steps=10)


def test_total_steps_for():
    assert total_steps_for(total_samples=1000, max_data_epochs=3, target_batch_size=256) == 12
