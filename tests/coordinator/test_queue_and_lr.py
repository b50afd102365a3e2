"""The in-memory lease queue agrees with the reference rule; the LR the coordinator shows follows the schedule."""
from __future__ import annotations

import math
import random

import pytest

from swarm.lr_schedule import lr_at_epoch
from swarm.runconfig import RunConfig
from swarm_coordinator import rules
from swarm_coordinator.progress import current_lr, lr_total_steps
from swarm_coordinator.queue import ChunkQueue

pytestmark = pytest.mark.timeout(60)


def test_queue_matches_reference_rule_under_random_operations():
    """Random lease/extend/report/release/expire sequences: the heap queue offers exactly what the reference rule
    select_chunks would, and counts data epochs and completion as data_epochs_done and run_complete do."""
    rng = random.Random(1234)
    queue = ChunkQueue()
    for cid in range(1, 41):
        queue.add_chunk(cid, n_samples=rng.randint(1, 8), times_trained=rng.choice([0, 0, 1]))
    now, max_epochs, next_lease = 0.0, 3, 0
    for step in range(3000):
        now += rng.random()
        for lease_id, _ in queue.due_expired(now=now):
            queue.free(lease_id, trained=False)
        count = rng.randint(1, 6)
        expected = rules.select_chunks(queue.views(), count=count, now=now, max_data_epochs=max_epochs)
        got = queue.peek_free(count, max_data_epochs=max_epochs)
        assert got == expected, f"step {step}"
        tts = [slot.times_trained for slot in queue.chunks.values()]
        assert queue.data_epochs_done() == rules.data_epochs_done(tts), f"step {step}"
        for limit in (1, 2, max_epochs):
            assert queue.run_complete(max_data_epochs=limit) == rules.run_complete(tts, max_data_epochs=limit)
        action = rng.random()
        if action < 0.5 and got:
            for cid in got[:rng.randint(1, len(got))]:
                next_lease += 1
                queue.hold(cid, f"l{next_lease}", peer_id="p", deadline=now + rng.uniform(0.5, 8))
        elif action < 0.7 and queue.leases:
            lease_id = rng.choice(sorted(queue.leases))
            queue.free(lease_id, trained=True)
        elif action < 0.8 and queue.leases:
            queue.free(rng.choice(sorted(queue.leases)), trained=False)
        elif queue.leases:
            lease_id = rng.choice(sorted(queue.leases))
            slot = queue.lease_chunk(lease_id)
            if not rules.lease_expired(slot.deadline, now=now):
                queue.extend(lease_id, deadline=rules.extended_deadline(slot.deadline, now=now, ttl=5.0))
    assert max(tts) >= 2  # the run went through several data epochs
    # Totals stayed consistent with the slots.
    assert queue.samples_done == sum(s.n_samples * s.times_trained for s in queue.chunks.values())
    assert sum(queue.times_trained_counts.values()) == len(queue.chunks)


def test_expired_leases_come_due_after_extension_only_at_their_new_deadline():
    queue = ChunkQueue()
    queue.add_chunk(1, n_samples=1)
    queue.hold(1, "a", peer_id="p", deadline=10.0)
    queue.extend("a", deadline=20.0)
    assert queue.due_expired(now=15.0) == []
    assert queue.due_expired(now=20.5) == [("a", 1)]
    assert queue.due_expired(now=20.5) == [("a", 1)]  # still due until freed: a failed write loses nothing
    queue.free("a", trained=False)
    assert queue.due_expired(now=30.0) == [] and queue.peek_free(5, max_data_epochs=1) == [1]


def test_run_complete_and_chunk_states():
    queue = ChunkQueue()
    assert not queue.run_complete(max_data_epochs=1)  # no chunks: never complete
    queue.add_chunk(1, n_samples=2)
    queue.add_chunk(2, n_samples=3)
    queue.hold(1, "a", peer_id="p", deadline=10.0)
    assert queue.chunk_states(now=0.0, max_data_epochs=1) == {"queued": 1, "leased": 1, "done": 0}
    queue.free("a", trained=True)
    assert queue.chunk_states(now=0.0, max_data_epochs=1) == {"queued": 1, "leased": 0, "done": 1}
    assert not queue.run_complete(max_data_epochs=1)
    queue.hold(2, "b", peer_id="p", deadline=10.0)
    queue.free("b", trained=True)
    assert queue.run_complete(max_data_epochs=1) and queue.samples_done == 5
    assert queue.peek_free(5, max_data_epochs=1) == []


# ------------------------------------------------------------------------------------------------ LR schedule

def test_constant_schedule_with_warmup():
    cfg = RunConfig(lr=1e-4, lr_scheduler="constant", lr_warmup_steps=4)
    lrs = [current_lr(cfg, epoch=e, samples_total=1000) for e in range(7)]
    assert lrs[:4] == pytest.approx([2e-5, 4e-5, 6e-5, 8e-5])
    assert lrs[4:] == pytest.approx([1e-4] * 3)


def test_linear_and_cosine_decay_to_zero_over_the_derived_span():
    # 1,000 samples x 4 data epochs / batch 100 = 40 global epochs of decay span
    for scheduler in ("linear", "cosine"):
        cfg = RunConfig(lr=1e-3, lr_scheduler=scheduler, target_batch_size=100, max_data_epochs=4)
        assert lr_total_steps(cfg, samples_total=1000) == 40
        lrs = [current_lr(cfg, epoch=e, samples_total=1000) for e in range(45)]
        assert lrs[0] == pytest.approx(1e-3)
        assert all(a >= b for a, b in zip(lrs, lrs[1:])), scheduler
        assert lrs[40] == pytest.approx(0.0, abs=1e-12) and lrs[44] == pytest.approx(0.0, abs=1e-12)
    cosine = RunConfig(lr=1e-3, lr_scheduler="cosine", lr_total_steps=10)
    assert current_lr(cosine, epoch=5, samples_total=0) == pytest.approx(0.5e-3)
    linear = RunConfig(lr=1e-3, lr_scheduler="linear", lr_total_steps=10, lr_warmup_steps=2)
    assert current_lr(linear, epoch=6, samples_total=0) == pytest.approx(1e-3 * (1 - 4 / 8))


def test_every_peer_and_a_late_joiner_get_the_same_lr_at_the_same_epoch():
    """The LR depends on the global epoch only: a peer joining at epoch 17 starts where the others are."""
    cfg = RunConfig(lr=2e-4, lr_scheduler="cosine", lr_warmup_steps=3, lr_total_steps=50)
    coordinator_lr = current_lr(cfg, epoch=17, samples_total=12345)
    peer_lr = lr_at_epoch(17, base_lr=2e-4, scheduler="cosine", warmup_steps=3, total_steps=50)
    assert coordinator_lr == peer_lr
    expected = 2e-4 * 0.5 * (1 + math.cos(math.pi * (17 - 3) / 47))
    assert coordinator_lr == pytest.approx(expected)


def test_empty_dataset_has_no_decay_span():
    cfg = RunConfig(lr_scheduler="linear")
    assert lr_total_steps(cfg, samples_total=0) == 0
    assert current_lr(cfg, epoch=100, samples_total=0) == cfg.lr


def test_peer_table_counts_epochs_incrementally_like_the_reference_rule():
    from swarm_coordinator.peers import PeerTable

    rng = random.Random(7)
    table = PeerTable(peer_ttl=30.0)
    now = 0.0
    for i in range(20):
        table.register(f"p{i}", now=now, name="", multiaddrs=(), client_mode=False, batch_size=1, owner=None)
    for step in range(2000):
        now += rng.random() * 0.3
        peer = table.get(f"p{rng.randrange(20 if step < 1500 else 10)}")  # later on, half the peers go silent
        table.heartbeat(peer, now=now, global_epoch=rng.randint(0, 6), loss=None, samples_per_s=0.0,
                        finished=rng.random() < 0.2)
        expected = rules.swarm_epochs((p.view() for p in table.all()), now=now, peer_ttl=30.0)
        got = table.epochs(now=now)
        # Exact for epochs and finished flags at once; liveness may lag the clock by up to the recount interval.
        if all(rules.peer_alive(p.last_seen, now=now - 1.0, peer_ttl=30.0) == rules.peer_alive(
                p.last_seen, now=now, peer_ttl=30.0) for p in table.all()):
            assert got == expected, step
    assert table.epochs(now=now + 1.5).peers_alive == 10


def test_peer_table_initial_peers_match_the_reference_rule_for_many_peers():
    from swarm_coordinator.peers import PeerTable

    rng = random.Random(3)
    table = PeerTable(peer_ttl=60.0)
    for i in range(500):
        table.register(f"p{i:03d}", now=rng.uniform(0, 200), name="",
                       multiaddrs=(f"/ip4/10.0.{i // 256}.{i % 256}/tcp/1",), client_mode=rng.random() < 0.3,
                       batch_size=1, owner=None)
    views = [p.view() for p in table.all()]
    got = table.initial_peers(["/boot"], now=200.0, exclude_peer_id="p007")
    assert got == rules.initial_peers(["/boot"], views, now=200.0, peer_ttl=60.0, exclude_peer_id="p007")
    assert len(got) == 1 + rules.MAX_INITIAL_PEERS


def test_diloco_status_lr_counts_inner_steps():
    """In diloco mode a global epoch is an outer round: the status LR is the schedule at round * inner_steps, the
    step every trainer evaluates at the start of that round (not the LR of inner step `round`)."""
    cfg = RunConfig(lr=1e-3, lr_scheduler="linear", mode="diloco", inner_steps=10, lr_total_steps=100)
    assert current_lr(cfg, epoch=0, samples_total=1000) == pytest.approx(1e-3)
    assert current_lr(cfg, epoch=5, samples_total=1000) == pytest.approx(lr_at_epoch(
        50, base_lr=1e-3, scheduler="linear", warmup_steps=0, total_steps=100))
    assert current_lr(cfg, epoch=10, samples_total=1000) == pytest.approx(0.0)
