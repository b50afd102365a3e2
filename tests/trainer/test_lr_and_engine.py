"""A single real peer (DHT on loopback, hivemind.Optimizer backend): the LR follows the global epoch, one step per
batch. Each test builds its own engine: no state (epochs, accumulated gradients, stats) leaks between tests."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from swarm.runconfig import RunConfig

pytestmark = pytest.mark.timeout(180)

LINEAR = RunConfig(resolution=64, buckets_side_min=64, buckets_side_max=64, target_batch_size=2, lr=1e-3,
                   lr_scheduler="linear", lr_warmup_steps=2, lr_total_steps=6)


@pytest.fixture
def make_engine():
    """Build engines on one loopback DHT per test; every engine and the DHT are shut down afterwards."""
    from swarm_trainer.backend import make_backend
    from swarm_trainer.engine import TrainEngine
    from swarm_trainer.model import build_tiny
    from swarm_trainer.swarm import SwarmOptions, make_dht, shutdown

    options = SwarmOptions(host_maddrs=("/ip4/127.0.0.1/tcp/0",), matchmaking_time=0.5, averaging_timeout=2.0,
                           compression="fp16")
    dht = make_dht(initial_peers=[], options=options)
    engines = []

    def make(config: RunConfig, *, run_id: str):
        engine = TrainEngine(models=build_tiny(seed=1), config=config, device=torch.device("cpu"), batch_size=1,
                             backend_factory=lambda params: make_backend(dht=dht, run_id=run_id, params=params,
                                                                         config=config, batch_size=1,
                                                                         options=options))
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        shutdown(engine.backend, None)
    shutdown(None, dht)


def test_lr_follows_the_global_epoch_not_the_local_step(make_engine, tiny_images):
    engine = make_engine(LINEAR, run_id="lr-follows-epoch")
    seen = []
    for step in range(8):
        epoch = engine.local_epoch
        engine.train_batch([tiny_images[step % 4]], ["a caption"])
        # the LR used by the step that may have moved the swarm from `epoch` is the schedule's LR at `epoch`
        seen.append((epoch, engine.backend.lr))
    # warmup 2 (1/3, 2/3 of the LR), then linear decay over the 4 remaining epochs of 6
    expected = {0: 1e-3 / 3, 1: 2e-3 / 3, 2: 1e-3, 3: 0.75e-3, 4: 0.5e-3, 5: 0.25e-3}
    for epoch, lr in seen:
        assert lr == pytest.approx(expected[epoch]), epoch
    epochs = [e for e, _ in seen]
    assert epochs[-1] >= 3, epochs  # target 2, batch 1: a global epoch every two local steps
    assert len({lr for _, lr in seen}) >= 3  # warmup then decay: the LR really changed with the epoch
    assert engine.stats.local_steps == 8 and engine.stats.samples_trained == 8
    assert all(torch.isfinite(torch.tensor(engine.stats.losses)))


def test_the_trainer_uses_the_lr_the_coordinator_announces(make_engine, tiny_images):
    """Both real call sites: the coordinator's progress.current_lr (status, what a late joiner should see) and the
    engine's own step, with the decay span derived from the dataset size as heartbeats deliver it."""
    from swarm_coordinator.progress import current_lr, lr_total_steps

    config = RunConfig(resolution=64, buckets_side_min=64, buckets_side_max=64, target_batch_size=2, lr=1e-3,
                       lr_scheduler="cosine", lr_warmup_steps=1, lr_total_steps=0, max_data_epochs=1)
    samples_total = 10  # 10 samples x 1 data epoch / batch 2: a 5-epoch decay span the coordinator derives
    engine = make_engine(config, run_id="lr-agrees")
    engine.lr_total_steps = lr_total_steps(config, samples_total=samples_total)  # what session's heartbeat does
    assert engine.lr_total_steps == 5
    seen = []
    for step in range(10):
        epoch = engine.local_epoch
        engine.train_batch([tiny_images[step % 4]], ["a caption"])
        seen.append((epoch, engine.backend.lr))
    assert len({epoch for epoch, _ in seen}) >= 3, seen
    for epoch, lr in seen:
        assert lr == current_lr(config, epoch=epoch, samples_total=samples_total), epoch


def test_parameters_change_only_at_global_steps(make_engine, tiny_images):
    # reuse_grad_buffers: local steps accumulate; parameters move when the swarm completes an epoch
    engine = make_engine(LINEAR, run_id="params-at-global-steps")
    before = engine.parameters_vector()
    _train_until_epoch(engine, tiny_images, 1, check=lambda: torch.equal(before, engine.parameters_vector()))
    assert engine.local_epoch == 1
    assert not torch.equal(before, engine.parameters_vector())


def _train_until_epoch(engine, images, epoch: int, *, check=lambda: True, max_steps: int = 8) -> None:
    """Local steps until the engine reaches `epoch`; `check()` must hold after every step that did not get there."""
    for step in range(max_steps):
        engine.train_batch([images[step % len(images)]], ["one"])
        if engine.local_epoch >= epoch:
            return
        assert check(), f"after local step {step}"
    raise AssertionError(f"epoch {engine.local_epoch} after {max_steps} local steps, wanted {epoch}")


def test_idle_tick_alone_does_nothing(make_engine, tiny_images):
    # nobody accumulated anything this epoch: an idle peer must not start an all-zero round
    engine = make_engine(LINEAR, run_id="idle-alone")
    _train_until_epoch(engine, tiny_images, 1)
    epoch, steps = engine.local_epoch, engine.stats.local_steps
    assert engine.idle_tick() is False
    assert engine.local_epoch == epoch and engine.stats.local_steps == steps


def test_a_live_config_change_reaches_the_optimizer(make_engine, tiny_images):
    engine = make_engine(LINEAR, run_id="live-config")
    changed = dataclasses.replace(LINEAR, lr=2e-3, target_batch_size=3, opt_betas_one=0.8, opt_weight_decay=0.05)
    engine.apply_config(changed)
    assert engine.config is changed
    group = engine.backend.optimizer.opt.param_groups[0]
    assert group["weight_decay"] == 0.05 and group["betas"][0] == 0.8
    assert engine.backend.optimizer.target_batch_size == 3
    engine.train_batch([tiny_images[0]], ["one"])
    assert engine.backend.lr == pytest.approx(2e-3 / 3)  # warmup epoch 0 at the new base LR


def test_metrics_are_exported(make_engine, tiny_images):
    from prometheus_client import REGISTRY

    from swarm_trainer import metrics

    engine = make_engine(LINEAR, run_id="metrics")
    _train_until_epoch(engine, tiny_images, 1)
    engine.train_batch([tiny_images[0]], ["one"])
    assert REGISTRY.get_sample_value("swarm_trainer_local_step") == engine.stats.local_steps
    assert REGISTRY.get_sample_value("swarm_trainer_global_epoch") == engine.local_epoch >= 1
    assert REGISTRY.get_sample_value("swarm_trainer_samples_trained_total") >= engine.stats.samples_trained
    assert REGISTRY.get_sample_value("swarm_trainer_gpu_memory_bytes") == 0
    assert engine.backend.lr > 0 and REGISTRY.get_sample_value("swarm_trainer_lr") == pytest.approx(engine.backend.lr)
    assert "swarm_trainer_loss" in metrics.metric_names()
