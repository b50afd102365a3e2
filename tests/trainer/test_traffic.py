"""swarm_trainer.traffic: two real hivemind peers average one tensor; the counted bytes match what an all-reduce moves.

Both peers live in this process (their averagers in forked children), so the counters hold both peers' traffic.
"""
from __future__ import annotations

import concurrent.futures

import pytest
import torch

pytestmark = pytest.mark.timeout(120)

N_FLOATS = 2 ** 18  # 1 MiB of fp32: large enough that matchmaking and DHT messages are noise next to it


def test_two_peers_averaging_count_the_bytes_an_all_reduce_moves():
    import hivemind
    from hivemind.compression import NoCompression
    from prometheus_client import REGISTRY

    from swarm_trainer import traffic

    traffic.install()
    dhts, averagers = [], []
    try:
        first = hivemind.DHT(host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True)
        second = hivemind.DHT(host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True,
                              initial_peers=[str(a) for a in first.get_visible_maddrs()])
        dhts += [first, second]
        tensors = [torch.full((N_FLOATS,), 1.0), torch.full((N_FLOATS,), 3.0)]
        for dht, tensor in zip(dhts, tensors):
            averagers.append(hivemind.averaging.DecentralizedAverager(
                [tensor], dht, prefix="traffic-test", target_group_size=2, min_group_size=2, min_matchmaking_time=1.0,
                request_timeout=1.0, compression=NoCompression(), start=True))
        before = traffic.totals()
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            groups = list(pool.map(lambda a: a.step(timeout=30), averagers))
        after = traffic.totals()
        assert all(group is not None and len(group) == 2 for group in groups), groups
        with averagers[0].get_tensors() as (averaged,):
            assert torch.allclose(averaged, torch.full((N_FLOATS,), 2.0))
    finally:
        for averager in averagers:
            averager.shutdown()
        for dht in dhts:
            dht.shutdown()

    sent, received = after["sent"] - before["sent"], after["received"] - before["received"]
    # Each peer reduces half the tensor: it sends the other half to its peer (N/2 floats) and the averaged result of
    # its own half back (N/2 floats), so 4 N bytes per peer, 8 N for the two, and the same received.
    expected = 2 * 4 * N_FLOATS
    assert expected <= sent <= expected * 1.1 + 65536, (sent, expected)
    assert expected <= received <= expected * 1.1 + 65536, (received, expected)
    # Every byte one peer sent, the other received (both peers are counted here).
    assert abs(sent - received) <= 0.01 * expected, (sent, received)
    # The Prometheus collector serves the same shared counters.
    assert REGISTRY.get_sample_value("swarm_trainer_network_bytes_total", {"direction": "sent"}) >= sent
