"""`swarm train` resumes from its last checkpoint: weights, global epoch (so the LR), EMA weights."""
from __future__ import annotations

import pytest
import torch

from swarm.runconfig import RunConfig

pytestmark = pytest.mark.timeout(180)


def test_resume_restores_weights_epoch_lr_and_ema(tmp_path, tiny_images):
    from swarm_trainer.backend import make_backend
    from swarm_trainer.checkpoints import resume, save_checkpoint
    from swarm_trainer.engine import TrainEngine
    from swarm_trainer.model import build_tiny
    from swarm_trainer.swarm import SwarmOptions, make_dht, shutdown

    config = RunConfig(resolution=64, buckets_side_min=64, buckets_side_max=64, target_batch_size=64, use_ema=True,
                       lr_scheduler="linear", lr_total_steps=10)
    trained = build_tiny(seed=1)
    with torch.no_grad():
        for p in trained.unet.parameters():
            p.add_(0.01)
    ema_unet = build_tiny(seed=99).unet  # stands in for the EMA weights: clearly different from both
    save_checkpoint(trained, tmp_path, epoch=7, keep=2, ema_unet=ema_unet)
    assert resume(build_tiny(seed=1), tmp_path / "nothing-here") is None

    fresh = build_tiny(seed=1)
    epoch, folder, ema_state = resume(fresh, tmp_path)
    assert epoch == 7 and folder.name == "epoch-000007" and ema_state is not None
    for a, b in zip(fresh.unet.parameters(), trained.unet.parameters()):
        assert torch.equal(a, b)

    options = SwarmOptions(host_maddrs=("/ip4/127.0.0.1/tcp/0",), matchmaking_time=0.5, averaging_timeout=2.0)
    dht = make_dht(initial_peers=[], options=options)
    engine = TrainEngine(models=fresh, config=config, device=torch.device("cpu"), batch_size=1,
                         backend_factory=lambda params: make_backend(dht=dht, run_id="resume-test", params=params,
                                                                     config=config, batch_size=1, options=options))
    try:
        # the offloaded optimizer starts from the resumed weights, not from the seed's
        optimized = [p for g in engine.backend.optimizer.opt.param_groups for p in g["params"]]
        torch.testing.assert_close(optimized[0], next(trained.unet.parameters()), rtol=0, atol=1e-6)
        engine.resume(epoch=epoch, ema_state=ema_state)
        assert engine.local_epoch == 7
        engine.train_batch([tiny_images[0]], ["x"])
        assert engine.backend.lr == pytest.approx(config.lr * (1 - 7 / 10))  # linear decay, 7 of 10 epochs done
        for shadow, p in zip(engine.ema.shadow, ema_unet.parameters()):
            assert torch.equal(shadow, p)
    finally:
        shutdown(engine.backend, dht)
