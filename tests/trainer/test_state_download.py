"""state_download's rules: the download timeout covers the state at a slow link, and a download that applied no state
is asked for again (counted on a real torch optimizer's load_state_dict, as hivemind applies a downloaded state)."""
from __future__ import annotations

import pytest
import torch

from swarm_trainer.state_download import (
    SLOW_LINK_BYTES_PER_S,
    AppliedStates,
    download_timeout,
    load_with_retries,
    state_bytes,
)


def test_state_bytes_are_parameters_and_two_adam_moments_in_fp32():
    params = [torch.zeros(10, 4), torch.zeros(3)]
    assert state_bytes(params) == 3 * 4 * 43


def test_download_timeout_keeps_the_configured_one_for_small_states_and_stretches_it_for_big_ones():
    assert download_timeout(configured=600, state_size=1_600_000) == 600  # a rank-4 SD 1.5 LoRA with Adam
    sd15_full = state_bytes([torch.empty(0)]) + 3 * 4 * 859_520_964  # SD 1.5 UNet, fp32, two Adam moments
    timeout = download_timeout(configured=600, state_size=sd15_full)
    assert timeout == pytest.approx(sd15_full / SLOW_LINK_BYTES_PER_S)
    assert 3600 < timeout < 5400  # ~69 minutes at 20 Mbit/s, where 600 s restarted it forever
    with pytest.raises(ValueError, match="positive"):
        download_timeout(configured=0, state_size=1)


def _optimizer():
    return torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))], lr=0.1)


def test_a_load_that_applies_a_state_is_not_repeated():
    optimizer, calls = _optimizer(), []
    applied = AppliedStates(optimizer)
    state = _optimizer().state_dict()

    def load():
        calls.append(1)
        optimizer.load_state_dict(state)

    assert load_with_retries(load, applied, sleep=lambda s: None)
    assert len(calls) == 1 and applied.count == 1


def test_a_load_that_applied_nothing_is_asked_again_with_growing_pauses_until_one_arrives():
    optimizer, pauses, calls = _optimizer(), [], []
    applied = AppliedStates(optimizer)
    state = _optimizer().state_dict()

    def load():  # the first two tries find every serving peer busy, as hivemind reports it: by returning
        calls.append(1)
        if len(calls) == 3:
            optimizer.load_state_dict(state)

    assert load_with_retries(load, applied, tries=5, first_pause=0.5, sleep=pauses.append)
    assert len(calls) == 3 and pauses == [0.5, 1.0]


def test_loads_that_never_apply_a_state_give_up_after_the_tries(caplog):
    optimizer, calls = _optimizer(), []
    applied = AppliedStates(optimizer)
    assert not load_with_retries(lambda: calls.append(1), applied, tries=3, sleep=lambda s: None)
    assert len(calls) == 3 and applied.count == 0
