"""The trainer flags of issue 11: DiLoCo's memory options and sync mode's traffic cuts, parsed and checked."""
from __future__ import annotations

import pytest
import torch

from swarm_launcher.cli import UsageError, build_parser

pytestmark = pytest.mark.timeout(120)


def _options(*argv):
    from swarm_trainer.cli import options_from_args

    return options_from_args(build_parser().parse_args(["train", "--coordinator", "h:1", "--token", "t", *argv]))


def test_memory_and_traffic_flags_reach_the_options():
    options = _options("--fused-backward", "--bf16-weights", "--delay-grad-averaging", "--average-state-every", "3")
    assert options.features.fused_backward and options.features.bf16_weights
    assert options.swarm.delay_grad_averaging and options.swarm.average_state_every == 3


def test_sync_mode_defaults_cut_state_traffic():
    options = _options()
    # Parameters are identical on peers that joined every round: averaged every 10th epoch, not every epoch.
    assert options.swarm.average_state_every == 10 and not options.swarm.delay_grad_averaging
    assert not options.features.fused_backward and not options.features.bf16_weights


def test_delay_grad_averaging_needs_the_offloaded_optimizer():
    with pytest.raises(UsageError, match="offloaded optimizer"):
        _options("--delay-grad-averaging", "--no-offload-optimizer")


def test_sync_backend_with_delayed_averaging_builds_and_steps_alone():
    """hivemind.Optimizer accepts the delayed options as make_optimizer passes them; a lone peer still trains."""
    from swarm.runconfig import RunConfig
    from swarm_trainer.backend import make_backend
    from swarm_trainer.swarm import SwarmOptions, make_dht

    options = SwarmOptions(host_maddrs=("/ip4/127.0.0.1/tcp/0",), matchmaking_time=0.5, averaging_timeout=2.0,
                           delay_grad_averaging=True, trust_checks=False)
    dht = make_dht(initial_peers=[], options=options)
    model = torch.nn.Linear(4, 1)
    backend = None
    try:
        backend = make_backend(config=RunConfig(target_batch_size=2), dht=dht, run_id="delay-test",
                               params=list(model.parameters()), batch_size=1, options=options)
        assert backend.optimizer.delay_grad_averaging and backend.optimizer.delay_optimizer_step
        assert backend.optimizer.average_state_every == 10
        assert backend.schedule_step == backend.local_epoch == 0
        before = model.weight.detach().clone()
        for _ in range(6):
            model(torch.randn(1, 4)).pow(2).mean().backward()
            backend.step(batch_size=1)
        backend.optimizer.state_averager.step(wait_for_delayed_updates=True)
        assert backend.local_epoch >= 2 and not torch.equal(before, model.weight.detach())
    finally:
        if backend is not None:
            backend.shutdown()
        dht.shutdown()


def test_memory_flags_are_refused_in_sync_mode_before_training():
    from swarm.errors import ConfigError
    from swarm_trainer.diloco.fused import check_memory_options

    with pytest.raises(ConfigError, match="diloco"):
        check_memory_options(fused_backward=True, bf16_weights=False, precision="bf16", mode="sync")
