"""Weight budgets on a real hivemind all-reduce: a token holder claiming 1e6 samples is cut to what the coordinator
let it train, then to nothing; without fresh budgets the per-round caps alone apply (the coordinator is away)."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from hivemind.averaging import DecentralizedAverager

from swarm.trust import averager_class
from swarm.trust.budget import WeightBudgets
from tests.trust.swarm_kit import Coordinator, maddrs

SIZE = 64


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    coordinator = Coordinator(tmp_path_factory.mktemp("budget"))
    honest = coordinator.start_peer("honest", [])
    greedy = coordinator.start_peer("greedy", maddrs(honest))
    cls = averager_class(DecentralizedAverager, coordinator.settings)
    prefix = f"{coordinator.settings.run_id}_budget"
    common = dict(prefix=prefix, trust=coordinator.settings, start=True, target_group_size=2, min_matchmaking_time=1.0,
                  request_timeout=1.0, next_chunk_timeout=5.0)
    # The greedy peer is a client: it sends its parts but reduces none, so the honest peer reduces every slice and
    # the averages below are exactly its rules' (a greedy reducer's own slice is the business of test_swarm_guard).
    averagers = [cls([torch.zeros(SIZE)], dht=honest.dht, **common),
                 cls([torch.zeros(SIZE)], dht=greedy.dht, client_mode=True, **common)]
    yield averagers, greedy.dht.peer_id.to_base58()
    for averager in averagers:
        averager.shutdown()
    for peer in (greedy, honest):
        peer.dht.shutdown()


def one_round(averagers, values, weights, *, attempts=3):
    """One all-reduce of constant tensors with the given claims; the honest peer's averaged value."""
    for averager, value in zip(averagers, values):
        with averager.get_tensors() as tensors:
            tensors[0].fill_(value)

    def step(args):
        averager, weight = args
        return averager.step(weight=weight, timeout=6.0)

    for _ in range(attempts):  # matchmaking on a loaded machine may miss once
        with ThreadPoolExecutor(2) as pool:
            groups = list(pool.map(step, zip(averagers, weights)))
        if all(g is not None for g in groups):
            with averagers[0].get_tensors() as tensors:
                return tensors[0].clone()
        for averager, value in zip(averagers, values):
            with averager.get_tensors() as tensors:
                tensors[0].fill_(value)
    raise AssertionError("the two peers never averaged")


def test_a_claim_of_a_million_samples_is_cut_to_the_senders_budget(pair):
    averagers, greedy_id = pair
    honest = averagers[0]
    # The coordinator credited the greedy peer 2 samples and leases it none; slack 1: it may claim 3 in all.
    budgets = WeightBudgets(allowances={greedy_id: 2.0}, slack=1.0, fetched_at=time.time(), valid_s=120.0)
    honest.set_weight_budgets(budgets)

    first = one_round(averagers, [0.0, 1.0], [1.0, 1e6])
    assert torch.allclose(first, torch.full((SIZE,), 3 / 4)), first  # (0 * 1 + 1 * 3) / (1 + 3)
    second = one_round(averagers, [0.0, 1.0], [1.0, 1e6])
    assert torch.allclose(second, torch.zeros(SIZE)), second  # its budget is spent: its claim counts 0
    assert honest.trust_stats()[greedy_id]["weight"] == pytest.approx(3.0)

    # The coordinator stopped answering: budgets go stale and only the per-round caps remain (none here).
    honest.set_weight_budgets(WeightBudgets(allowances={greedy_id: 2.0}, slack=1.0,
                                            fetched_at=time.time() - 1000, valid_s=120.0))
    stale = one_round(averagers, [0.0, 1.0], [1.0, 1e6])
    assert torch.allclose(stale, torch.full((SIZE,), 1e6 / (1e6 + 1))), stale
