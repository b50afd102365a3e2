"""DiLoCo mode through the trainer's engine: two tiny-SD peers (one process, one thread each) on real hivemind.

Each peer's TrainEngine steps its inner AdamW on every batch; every 2 batches the peers average pseudo-gradients.
After every round both hold the same outer parameters; the LR follows round * H + inner step; at the end barrier
one last round and endgame's check leave both with the same weights.
"""
from __future__ import annotations

import threading
import time

import pytest
import torch
from conftest import make_images

from swarm.runconfig import RunConfig
from swarm_trainer.diloco.backend import make_diloco_backend
from swarm_trainer.engine import TrainEngine
from swarm_trainer.model import build_tiny
from swarm_trainer.swarm import SwarmOptions

CONFIG = RunConfig(resolution=64, buckets_side_min=64, buckets_side_max=64, lr=1e-3, ucg=0.0, mode="diloco",
                   inner_steps=2, pseudo_grad_compression="none", lr_scheduler="linear", lr_warmup_steps=3,
                   lr_total_steps=40)
OPTIONS = SwarmOptions(host_maddrs=("/ip4/127.0.0.1/tcp/0",), matchmaking_time=1.0, averaging_timeout=15.0,
                       load_state_timeout=15.0)


def make_engine(dht, seed: int) -> TrainEngine:
    from hivemind.utils.crypto import RSAPrivateKey

    torch.manual_seed(100 + seed)
    return TrainEngine(models=build_tiny(seed=CONFIG.seed), config=CONFIG, device=torch.device("cpu"), batch_size=1,
                       backend_factory=lambda params: make_diloco_backend(
                           config=CONFIG, dht=dht, run_id="diloco-engine-test", params=params, options=OPTIONS,
                           tracker_key=RSAPrivateKey()))


@pytest.mark.timeout(300)
def test_two_engines_in_diloco_mode_stay_identical_and_finish_equal():
    import hivemind

    from swarm_trainer.swarm import make_dht

    dhts, engines = [], []
    try:
        dhts.append(make_dht(initial_peers=[], options=OPTIONS))
        dhts.append(make_dht(initial_peers=[str(a) for a in dhts[0].get_visible_maddrs()], options=OPTIONS))
        engines = [make_engine(dht, seed) for seed, dht in enumerate(dhts)]
        images = make_images(4)
        outer_by_round = [{}, {}]
        lrs = [[], []]
        errors = []

        def train(i: int) -> None:
            engine = engines[i]
            try:
                step = 0
                while engine.local_epoch < 3:
                    lrs[i].append((engine.backend.schedule_step, engine.scheduled_lr()))
                    epoch = engine.local_epoch
                    engine.train_batch([images[(step + i) % 4]], [f"pattern {(step + i) % 4}"])
                    step += 1
                    if step == 1:  # both progress records in the DHT before either peer ends a round
                        deadline = time.monotonic() + 60
                        while len(engine.backend.optimizer.swarm_progress()) < 2:
                            assert time.monotonic() < deadline
                            time.sleep(0.2)
                    if engine.local_epoch != epoch:
                        outer_by_round[i][engine.local_epoch] = engine.backend.optimizer.outer.clone()
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=train, args=(i,), daemon=True) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=200)
        assert not errors, errors
        for round_index in (1, 2, 3):
            torch.testing.assert_close(outer_by_round[0][round_index], outer_by_round[1][round_index],
                                       rtol=0, atol=1e-6)
        # The inner LR follows round * H + inner step with the run's warmup and decay, the same on both peers.
        from swarm.lr_schedule import lr_for

        for schedule_step, lr in lrs[0] + lrs[1]:
            assert lr == pytest.approx(lr_for(CONFIG, epoch=schedule_step, total_steps=CONFIG.lr_total_steps))
        assert [s for s, _ in lrs[0]] == list(range(len(lrs[0])))

        # One more half round on one peer only, then the end: the final round and sync leave both equal.
        engines[0].train_batch([images[0]], ["pattern 0"])
        peers = [(dht.peer_id.to_base58(), False) for dht in dhts]
        outcomes = [None, None]

        def finish(i: int) -> None:
            outcomes[i] = engines[i].backend.final_sync(peer_id=peers[i][0], participants=peers, timeout=60)

        threads = [threading.Thread(target=finish, args=(i,), daemon=True) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert sorted(outcomes) in (["anchor", "matched"], ["anchor", "downloaded"]), outcomes
        torch.testing.assert_close(engines[0].parameters_vector(), engines[1].parameters_vector(), rtol=0, atol=1e-6)
        start = torch.cat([p.detach().reshape(-1) for p in build_tiny(seed=CONFIG.seed).unet.parameters()])
        assert (engines[0].parameters_vector() - start).abs().max() > 1e-4, "the swarm trained"
        assert hivemind is not None
    finally:
        for engine in engines:
            engine.backend.shutdown()
        for dht in dhts:
            dht.shutdown()
