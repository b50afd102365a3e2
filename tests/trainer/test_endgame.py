"""The end-of-run rules: fingerprints see real divergence but not rounding; the anchor is the peer the coordinator
credited with the most samples (never one a peer picks by its id); a peer leaves the barrier only when the swarm owes
no more global step."""
from __future__ import annotations

import pytest
import torch

from swarm_trainer.endgame import (
    Participant,
    anchor_tiebreak,
    choose_anchor,
    fingerprints_match,
    parameter_fingerprint,
    swarm_step_pending,
)


def _params(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(64, 32, generator=g) * 0.05, torch.randn(32, generator=g) * 0.01, torch.randn(3, 3, 8, 8)]


def test_identical_and_rounding_level_differences_match():
    params = _params()
    assert fingerprints_match(parameter_fingerprint(params), parameter_fingerprint([p.clone() for p in params]))
    nudged = [p * (1 + 1e-7) for p in params]  # a few ulps, as an all-reduce round trip leaves
    assert fingerprints_match(parameter_fingerprint(params), parameter_fingerprint(nudged))


def test_divergence_in_one_tensor_is_seen_even_when_sums_agree():
    params = _params()
    diverged = [p.clone() for p in params]
    # Zero-mean noise of 1e-4 per element keeps the tensor's sum nearly unchanged but is 10x over the e2e tolerance.
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(diverged[0].shape, generator=g) * 1e-4
    diverged[0] += noise - noise.mean()
    assert not fingerprints_match(parameter_fingerprint(params), parameter_fingerprint(diverged))


def test_shape_mismatch_never_matches():
    params = _params()
    assert not fingerprints_match(parameter_fingerprint(params), parameter_fingerprint(params[:2]))


def test_anchor_is_the_listening_peer_credited_with_the_most_samples():
    peers = [Participant("QmA", False, 40), Participant("QmB", False, 120), Participant("QmC", True, 500)]
    # QmC trained most but is in client mode (serves no state); QmA has the smallest id but fewer samples.
    assert choose_anchor(peers, run_id="run-1") == "QmB"
    assert choose_anchor([Participant("QmA", True, 10)], run_id="run-1") is None
    assert choose_anchor([], run_id="run-1") is None
    # Plain (peer_id, client_mode[, samples]) tuples are participants too; the order they come in does not matter.
    assert choose_anchor([("QmB", False, 120), ("QmA", False, 40)], run_id="r") == "QmB"
    assert choose_anchor(list(reversed(peers)), run_id="run-1") == "QmB"


def test_anchor_ties_are_broken_by_a_hash_salted_with_the_run_id_not_by_the_id():
    ids = [f"Qm{c}" for c in "abcdefghijklmnop"]
    tied = [Participant(peer_id, False, 64) for peer_id in ids]
    winners = {run_id: choose_anchor(tied, run_id=run_id) for run_id in ("run-1", "run-2", "run-3", "run-4")}
    for run_id, winner in winners.items():
        assert winner == min(ids, key=lambda peer_id: anchor_tiebreak(run_id, peer_id))
    # A small id wins no more often than any other: the winner changes with the (secret) run id.
    assert len(set(winners.values())) > 1
    assert anchor_tiebreak("run-1", "QmA") == anchor_tiebreak("run-1", "QmA") != anchor_tiebreak("run-2", "QmA")


def _record(epoch: int, samples: int, client_mode: bool = False) -> dict:
    return {"epoch": epoch, "samples_accumulated": samples, "client_mode": client_mode}


def test_a_step_is_pending_while_samples_wait_at_the_swarms_epoch():
    # The SIGKILL case: 4 samples left over toward epoch 6's target; leaving now would miss the last global step.
    assert swarm_step_pending([_record(6, 0), _record(6, 4)], local_epoch=6) == (6, 4)
    # Settled: everyone stepped, nothing accumulated since.
    assert swarm_step_pending([_record(7, 0), _record(7, 0)], local_epoch=7) == (7, 0)
    # A peer that stepped (alone) is ahead: the swarm is at its epoch, whatever this peer thinks.
    assert swarm_step_pending([_record(7, 0), _record(6, 4)], local_epoch=6) == (7, 0)
    # Old records (a peer that stopped reporting, or died) count no samples at an epoch the swarm left.
    assert swarm_step_pending([_record(5, 8), _record(7, 0)], local_epoch=7) == (7, 0)
    # Client-mode peers do not lead the epoch (as in hivemind), but their samples count.
    assert swarm_step_pending([_record(9, 0, True), _record(7, 2, True)], local_epoch=7) == (7, 2)
    assert swarm_step_pending([], local_epoch=3) == (3, 0)
    assert swarm_step_pending([None, "junk", _record(3, 0)], local_epoch=3) == (3, 0)


def test_joined_a_finished_run_only_when_it_trained_nothing_and_nobody_is_left():
    from swarm_trainer.endgame import joined_a_finished_run

    assert joined_a_finished_run(samples_trained=0, chunks_reported=0, other_live_peers=0)
    assert not joined_a_finished_run(samples_trained=4, chunks_reported=1, other_live_peers=0)  # it trained here
    assert not joined_a_finished_run(samples_trained=0, chunks_reported=1, other_live_peers=0)  # counted a chunk
    assert not joined_a_finished_run(samples_trained=0, chunks_reported=0, other_live_peers=1)  # sync with them


@pytest.mark.timeout(120)
def test_swarm_settled_sees_another_peers_pending_samples_at_once():
    """A real sync backend (hivemind.Optimizer; a few parameters suffice, nothing trains) and a second peer's real
    hivemind ProgressTracker: the barrier's check reads the DHT fresh, so samples the other peer accumulated (or a
    step it took alone) are seen before this peer's own tracker refetches."""
    from hivemind.optim.progress_tracker import ProgressTracker
    from hivemind.utils.crypto import RSAPrivateKey

    from swarm.runconfig import RunConfig
    from swarm_trainer.backend import make_backend
    from swarm_trainer.swarm import SwarmOptions, make_dht, shutdown

    config = RunConfig(resolution=64, buckets_side_min=64, buckets_side_max=64, target_batch_size=4, ucg=0.0)
    options = SwarmOptions(host_maddrs=("/ip4/127.0.0.1/tcp/0",), matchmaking_time=1.0, averaging_timeout=5.0,
                           compression="none", trust_checks=False)
    run_id = "settled-test"
    dht = make_dht(initial_peers=[], options=options)
    other_dht = make_dht(initial_peers=[str(a) for a in dht.get_visible_maddrs()], options=options)
    backend, other = None, None
    try:
        backend = make_backend(config=config, dht=dht, run_id=run_id, params=[torch.nn.Parameter(torch.zeros(8))],
                               batch_size=1, options=options)
        # Its own tracker refetches rarely: only the fresh read can see the other peer in time.
        backend.optimizer.tracker.max_refresh_period = 60.0
        other = ProgressTracker(other_dht, prefix=run_id, target_batch_size=4, private_key=RSAPrivateKey(),
                                min_refresh_period=60.0, start=True)
        assert _eventually(backend.swarm_settled), "an idle swarm at epoch 0 owes no step"

        other.report_local_progress(0, 3)  # the other peer trained 3 of the 4 samples of epoch 0's step
        assert _eventually(lambda: not backend.swarm_settled()), "3 samples pending: a step is owed"
        assert backend.optimizer.tracker.global_progress.samples_accumulated == 0, "its own view is still stale"

        with other.pause_updates():
            other.update_epoch(1)  # the other peer stepped alone: it is ahead
        assert _eventually(lambda: not backend.swarm_settled()), "a peer at epoch 1: this peer is behind"
    finally:
        if other is not None:
            other.shutdown()
        shutdown(backend, dht)
        other_dht.shutdown()


def _eventually(predicate, *, timeout: float = 15.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True
