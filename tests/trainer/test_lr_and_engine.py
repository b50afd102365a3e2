"""A single real peer (DHT on loopback, hivemind.Optimizer): the LR follows the global epoch, one step per batch."""
from __future__ import annotations

import pytest
import torch

from swarm.lr_schedule import lr_at_epoch
from swarm.runconfig import RunConfig

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def engine():
    from swarm_trainer.engine import TrainEngine
    from swarm_trainer.model import build_tiny
    from swarm_trainer.swarm import SwarmOptions, make_dht, make_optimizer, shutdown

    config = RunConfig(resolution=64, buckets_side_min=64, buckets_side_max=64, target_batch_size=2, lr=1e-3,
                       lr_scheduler="linear", lr_warmup_steps=2, lr_total_steps=6)
    options = SwarmOptions(host_maddrs=("/ip4/127.0.0.1/tcp/0",), matchmaking_time=0.5, averaging_timeout=2.0,
                           compression="fp16")
    dht = make_dht(initial_peers=[], options=options)
    eng = TrainEngine(models=build_tiny(seed=1), config=config, device=torch.device("cpu"), batch_size=1,
                      optimizer_factory=lambda params: make_optimizer(dht=dht, run_id="lr-test", params=params,
                                                                      config=config, batch_size=1, options=options))
    yield eng
    shutdown(eng.optimizer, dht)


def test_lr_follows_the_global_epoch_not_the_local_step(engine, tiny_images):
    config = engine.config
    seen = []
    for step in range(8):
        epoch = engine.local_epoch
        engine.train_batch([tiny_images[step % 4]], ["a caption"])
        # the LR used by the step that may have moved the swarm from `epoch` is the schedule's LR at `epoch`
        seen.append((epoch, engine.optimizer.opt.param_groups[0]["lr"]))
    for epoch, lr in seen:
        assert lr == pytest.approx(lr_at_epoch(epoch, base_lr=config.lr, scheduler="linear", warmup_steps=2,
                                               total_steps=6))
    epochs = [e for e, _ in seen]
    assert epochs[-1] >= 3, epochs  # target 2, batch 1: a global epoch every two local steps
    assert len({lr for _, lr in seen}) >= 3  # warmup then decay: the LR really changed with the epoch
    assert engine.stats.local_steps == 8 and engine.stats.samples_trained == 8
    assert all(torch.isfinite(torch.tensor(engine.stats.losses)))


def test_parameters_change_only_at_global_steps(engine, tiny_images):
    # reuse_grad_buffers: local steps accumulate; parameters move when the swarm completes an epoch
    epoch = engine.local_epoch
    before = engine.parameters_vector()
    for step in range(6):
        engine.train_batch([tiny_images[step % 4]], ["one"])
        if engine.local_epoch == epoch:
            assert torch.equal(before, engine.parameters_vector()), "a local step changed the parameters"
        else:
            break
    assert engine.local_epoch == epoch + 1
    assert not torch.equal(before, engine.parameters_vector())


def test_idle_tick_alone_does_nothing(engine):
    # nobody accumulated anything this epoch: an idle peer must not start an all-zero round
    epoch, steps = engine.local_epoch, engine.stats.local_steps
    assert engine.idle_tick() is False
    assert engine.local_epoch == epoch and engine.stats.local_steps == steps


def test_metrics_are_exported(engine):
    from prometheus_client import REGISTRY

    from swarm_trainer import metrics

    assert REGISTRY.get_sample_value("swarm_trainer_local_step") == engine.stats.local_steps
    assert REGISTRY.get_sample_value("swarm_trainer_global_epoch") == engine.local_epoch
    assert REGISTRY.get_sample_value("swarm_trainer_samples_trained_total") >= engine.stats.samples_trained
    assert REGISTRY.get_sample_value("swarm_trainer_gpu_memory_bytes") == 0
    assert REGISTRY.get_sample_value("swarm_trainer_lr") > 0
    assert "swarm_trainer_loss" in metrics.metric_names()
