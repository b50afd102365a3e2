"""DiLoCo's averager under the trust layer's guard (swarm.trust.averager_class), on credentialed DHTs.

The guard composes with PseudoGradientAverager unchanged: credentialed peers average their rounds (robust
aggregation applies to the pseudo-gradients) with int8 on the wire and still hold identical outer parameters (the
averager answers with averages, consistent.py), and a joiner's download of the outer state passes the guard's check.
"""
from __future__ import annotations

import threading
import time
from functools import partial

import pytest
import torch

from swarm_trainer.diloco.averager import PseudoGradientAverager
from swarm_trainer.diloco.optimizer import DiLoCoOptimizer, DiLoCoSettings, Timeouts
from tests.trust.swarm_kit import Coordinator, maddrs


def make_peer(dht, settings):
    from hivemind.utils.crypto import RSAPrivateKey

    from swarm.trust import averager_class

    torch.manual_seed(0)
    model = torch.nn.Linear(16, 4)
    optimizer = DiLoCoOptimizer(
        dht=dht, run_id="trusttest", params=model.parameters(),
        inner_optimizer=torch.optim.AdamW(model.parameters(), lr=1e-4),  # rounds move little, as in fine-tuning
        settings=DiLoCoSettings(inner_steps=3, compression="int8"),
        timeouts=Timeouts(matchmaking=1.5, averaging=20.0, load_state=20.0), tracker_key=RSAPrivateKey(),
        averager_class=partial(averager_class(PseudoGradientAverager, settings), trust=settings))
    return model, optimizer


def train(model, optimizer, rounds: int, seed: int, errors: list) -> None:
    generator = torch.Generator().manual_seed(seed)
    try:
        stop_at = optimizer.local_epoch + rounds
        first = True
        while optimizer.local_epoch < stop_at:
            x = torch.randn(8, 16, generator=generator)
            model(x).sub(x[:, :4]).pow(2).mean().backward()
            optimizer.step(batch_size=8)
            if first:
                first = False
                deadline = time.monotonic() + 60
                while len(optimizer.swarm_progress()) < 2:
                    assert time.monotonic() < deadline, "the peers never saw each other"
                    time.sleep(0.2)
            time.sleep(0.02)
    except BaseException as e:  # noqa: BLE001
        errors.append(e)


@pytest.mark.timeout(300)
def test_guarded_diloco_peers_average_and_a_joiner_downloads_the_outer_state(tmp_path):
    coordinator = Coordinator(tmp_path)
    a = coordinator.start_peer("a", [])
    b = coordinator.start_peer("b", maddrs(a))
    peers, dhts = [], [a.dht, b.dht]
    try:
        peers = [make_peer(a.dht, coordinator.settings), make_peer(b.dht, coordinator.settings)]
        assert peers[0][1].averager.__class__.__name__ == "PseudoGradientAverager"
        assert hasattr(peers[0][1].averager, "trust_stats"), "the guard is in the averager's classes"
        errors: list = []
        threads = [threading.Thread(target=train, args=(*peer, 2, i, errors), daemon=True)
                   for i, peer in enumerate(peers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=200)
        assert not errors, errors
        (_, opt_a), (_, opt_b) = peers
        assert opt_a.rounds_averaged >= 1 and opt_b.rounds_averaged >= 1
        torch.testing.assert_close(opt_a.outer, opt_b.outer, rtol=0, atol=1e-6)

        c = coordinator.start_peer("c", maddrs(a))
        dhts.append(c.dht)
        peers.append(make_peer(c.dht, coordinator.settings))
        joiner = peers[-1][1]
        assert joiner.load_state_from_peers(), "the guard refused the outer state"
        torch.testing.assert_close(joiner.outer, opt_a.outer, rtol=0, atol=1e-6)
        assert joiner.local_epoch == opt_a.local_epoch
        # A peer that trained (its pseudo-gradient buffer is not zero) reloads the state, as after a failed round:
        # the guard measures the download against its outer parameters, not against that buffer.
        assert opt_b.load_state_from_peers(), "the guard refused the outer state of a peer that trained"
    finally:
        for _, optimizer in peers:
            optimizer.shutdown()
        for dht in dhts:
            dht.shutdown()
