"""Run-config keys of regularization images (issue 14 section 3): reg_ratio and prior_loss_weight."""
from __future__ import annotations

import pytest

from swarm.errors import ConfigError
from swarm.runconfig import RunConfig, restart_needed, validate


def test_defaults_are_off_and_live_changeable():
    config = RunConfig()
    assert config.reg_ratio == 0.0 and config.prior_loss_weight == 1.0
    changed = config.replace(reg_ratio=0.5, prior_loss_weight="5e-1")
    assert (changed.reg_ratio, changed.prior_loss_weight) == (0.5, 0.5)
    assert restart_needed(config, changed) == []  # the coordinator mixes per lease, trainers weigh per batch
    assert RunConfig.from_json(changed.to_json()) == changed


@pytest.mark.parametrize("raw, fragment", [
    ({"reg_ratio": 1.0}, "reg_ratio is the share of each chunk's samples drawn from the regularization images: in "
                         "[0, 1)"),
    ({"reg_ratio": -0.1}, "in [0, 1) (0 turns them off, 0.5 is one per training sample"),
    ({"reg_ratio": "half"}, "reg_ratio must be a number"),
    ({"prior_loss_weight": -1}, "prior_loss_weight weighs the regularization images' loss: must be >= 0"),
])
def test_bad_values_say_what_to_fix(raw, fragment):
    with pytest.raises(ConfigError) as error:
        validate(raw)
    assert fragment in str(error.value)
