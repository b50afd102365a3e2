"""Weight budgets on a real hivemind all-reduce, fed by a real coordinator: a token holder claiming 1e6 samples is cut
to what the coordinator let it train, then to nothing; without fresh budgets the per-round caps alone apply."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from hivemind.averaging import DecentralizedAverager

from swarm.runconfig import RunConfig
from swarm.trust import averager_class
from swarm.v1 import coordinator_pb2 as pb
from swarm_trainer.admission import Admission
from swarm_trainer.coordinator_client import CoordinatorClient
from tests.coordinator.conftest import clock, coordinator, db_path  # noqa: F401 - fixtures
from tests.trust.swarm_kit import Coordinator, maddrs

SIZE = 64


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    signer = Coordinator(tmp_path_factory.mktemp("budget"))
    honest = signer.start_peer("honest", [])
    greedy = signer.start_peer("greedy", maddrs(honest))
    budget_dir = tmp_path_factory.mktemp("honest-trainer")  # the honest trainer's output folder
    settings = replace(signer.settings, budgets_path=str(budget_dir / "weight-budgets.json"))
    cls = averager_class(DecentralizedAverager, settings)
    prefix = f"{settings.run_id}_budget"
    common = dict(prefix=prefix, trust=settings, start=True, target_group_size=2, min_matchmaking_time=1.0,
                  request_timeout=1.0, next_chunk_timeout=5.0)
    # The greedy peer is a client: it sends its parts but reduces none, so the honest peer reduces every slice and
    # the averages below are exactly its rules' (a greedy reducer's own slice is the business of test_swarm_guard).
    averagers = [cls([torch.zeros(SIZE)], dht=honest.dht, **common),
                 cls([torch.zeros(SIZE)], dht=greedy.dht, client_mode=True, **common)]
    yield averagers, greedy.dht.peer_id.to_base58(), budget_dir
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


def test_a_claim_of_a_million_samples_is_cut_to_what_the_coordinator_let_it_train(pair, coordinator):  # noqa: F811
    """The whole chain: the coordinator leases the greedy peer one 1-sample chunk; the honest trainer's budget thread
    (swarm_trainer.admission) reads ListPeers and writes the budgets file its guarded averager reads; the averager
    cuts the greedy claim to 1 leased + 2 slack, then to nothing; with the coordinator gone the budgets age out."""
    averagers, greedy_id, budget_dir = pair
    honest = averagers[0]
    server, grpc_client = coordinator()
    server.store.add_chunks([((64, 96), [1])])
    grpc_client.register(greedy_id)
    grpc_client.LeaseChunks(pb.LeaseChunksRequest(peer_id=greedy_id, max_chunks=1,
                                                  config_version=server.store.config.version))
    client = CoordinatorClient(server.address, token=grpc_client.token, timeout=2.0, retry_for=0.5)
    admission = Admission(client, output_dir=budget_dir)
    # What the budget thread reads of a PeerRun: its config (slack = max(target batch, 2 chunks) = 2).
    run = SimpleNamespace(config=RunConfig(target_batch_size=1, chunk_size=1))
    admission.start_budgets(run, interval=0.5)
    try:
        time.sleep(1.5)  # the first refresh
        first = one_round(averagers, [0.0, 1.0], [1.0, 1e6])
        assert torch.allclose(first, torch.full((SIZE,), 3 / 4)), first  # (0 * 1 + 1 * 3) / (1 + 3)
        second = one_round(averagers, [0.0, 1.0], [1.0, 1e6])
        assert torch.allclose(second, torch.zeros(SIZE)), second  # its budget is spent: its claim counts 0
        assert honest.trust_stats()[greedy_id]["weight"] == pytest.approx(3.0)

        server.stop(grace=0)  # the coordinator is gone: after 4 heartbeats (2 s) only the per-round caps remain
        time.sleep(2.5)
        stale = one_round(averagers, [0.0, 1.0], [1.0, 1e6])
        assert torch.allclose(stale, torch.full((SIZE,), 1e6 / (1e6 + 1))), stale
    finally:
        admission.stop()
        client.close()
