"""A client-mode peer that got ahead of every listening peer goes back to their epoch and state (epoch_drift.py)."""
from __future__ import annotations

import time
from dataclasses import replace

import pytest
import torch

from swarm_trainer.epoch_drift import (
    MAX_LEAD_EPOCHS,
    MIN_GRACE_S,
    AheadOfListeners,
    ahead_grace_s,
    listening_epoch,
)


def _record(epoch: int, client_mode: bool = False) -> dict:
    return {"epoch": epoch, "samples_accumulated": 0, "client_mode": client_mode}


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_listening_epoch_ignores_client_mode_peers_and_broken_records():
    assert listening_epoch([_record(3), _record(9, client_mode=True), _record(4)]) == 4
    assert listening_epoch([_record(9, client_mode=True)]) is None, "nobody to go back to"
    assert listening_epoch([]) is None
    assert listening_epoch([{"epoch": "7"}, "junk", _record(2)]) == 2


def test_the_grace_outlasts_one_round_and_never_drops_below_the_minimum():
    assert ahead_grace_s(matchmaking_time=2, averaging_timeout=15) == 17
    assert ahead_grace_s(matchmaking_time=0.5, averaging_timeout=1) == MIN_GRACE_S


def test_a_client_ahead_goes_back_only_after_the_grace_without_a_break():
    clock = _Clock()
    ahead = AheadOfListeners(grace_s=10, clock=clock)
    records = [_record(4), _record(6, client_mode=True)]
    assert ahead.observe(local_epoch=6, records=records) is None, "just ahead: the listeners may be finishing a round"
    clock.now += 9
    assert ahead.observe(local_epoch=6, records=records) is None
    clock.now += 1
    assert ahead.observe(local_epoch=6, records=records) == 4, "ahead for the whole grace: back to the listeners"
    # After going back, a new look starts from scratch.
    assert ahead.observe(local_epoch=6, records=records) is None


def test_catching_up_in_between_restarts_the_grace():
    clock = _Clock()
    ahead = AheadOfListeners(grace_s=10, clock=clock)
    assert ahead.observe(local_epoch=5, records=[_record(4)]) is None
    clock.now += 8
    assert ahead.observe(local_epoch=5, records=[_record(5)]) is None, "the listeners caught up: not split off"
    clock.now += 8
    assert ahead.observe(local_epoch=6, records=[_record(5)]) is None, "ahead again, for 0 s so far"
    clock.now += 10
    assert ahead.observe(local_epoch=6, records=[_record(5)]) == 5


def test_a_client_far_ahead_never_goes_back_to_a_listener_that_never_shared_its_history():
    """A listener that joined a swarm led by client-mode peers found no state to download and trains from its seed:
    going back to it would throw the run away."""
    clock = _Clock()
    ahead = AheadOfListeners(grace_s=0, clock=clock)
    assert ahead.observe(local_epoch=MAX_LEAD_EPOCHS + 1, records=[_record(0)]) is None
    assert ahead.observe(local_epoch=50, records=[_record(2)]) is None
    assert ahead.observe(local_epoch=MAX_LEAD_EPOCHS, records=[_record(0)]) == 0


def test_no_listening_peer_or_being_behind_never_sends_a_peer_back():
    clock = _Clock()
    ahead = AheadOfListeners(grace_s=0, clock=clock)
    assert ahead.observe(local_epoch=6, records=[_record(9, client_mode=True)]) is None
    assert ahead.observe(local_epoch=3, records=[_record(4)]) is None
    assert ahead.observe(local_epoch=4, records=[_record(4)]) is None
    with pytest.raises(ValueError, match="grace_s"):
        AheadOfListeners(grace_s=-1)


@pytest.mark.timeout(180)
def test_a_real_client_ahead_of_the_listening_peer_takes_its_epoch_and_state(monkeypatch):
    """Two real sync backends (hivemind.Optimizer; a few parameters, nothing trains): the listening peer at epoch 3,
    the client-mode peer split off at epoch 5 with other weights. hivemind alone never reconciles them; the client
    goes back to epoch 3 and downloads the listening peer's parameters."""
    from swarm.runconfig import RunConfig
    from swarm_trainer import swarm
    from swarm_trainer.backend import make_backend

    monkeypatch.setattr(swarm, "DRIFT_CHECK_INTERVAL_S", 0.0)
    config = RunConfig(resolution=64, buckets_side_min=64, buckets_side_max=64, target_batch_size=4, ucg=0.0)
    options = swarm.SwarmOptions(host_maddrs=("/ip4/127.0.0.1/tcp/0",), matchmaking_time=1.0, averaging_timeout=5.0,
                                 load_state_timeout=10.0, compression="none", trust_checks=False)
    client_options = replace(options, client_mode=True)
    run_id = "drift-test"
    listener_dht = swarm.make_dht(initial_peers=[], options=options)
    client_dht = swarm.make_dht(initial_peers=[str(a) for a in listener_dht.get_visible_maddrs()],
                                options=client_options)
    listener = client = None
    try:
        listener = make_backend(config=config, dht=listener_dht, run_id=run_id, batch_size=1, options=options,
                                params=[torch.nn.Parameter(torch.linspace(-1, 1, 8))])
        client = make_backend(config=config, dht=client_dht, run_id=run_id, batch_size=1, options=client_options,
                              params=[torch.nn.Parameter(torch.zeros(8))])
        listener.resume(3)
        client.resume(5)
        assert listener.a_listening_peer_trains(), "a listening peer never waits"
        assert not client.a_listening_peer_trains(), "the listener has not trained yet: no record"
        listener.optimizer.tracker.report_local_progress(3, 1)  # hivemind publishes a record once a peer trained
        deadline = time.monotonic() + 60
        while not client.a_listening_peer_trains():
            assert time.monotonic() < deadline, "the client never saw the listening peer's record"
            time.sleep(0.2)
        assert client.ahead.grace_s == ahead_grace_s(matchmaking_time=1.0, averaging_timeout=5.0)
        client.ahead.grace_s = 0.0
        assert not listener.rejoin_listeners(), "a listening peer never goes back"

        assert client.rejoin_listeners()
        assert client.local_epoch == 3
        assert client.optimizer.tracker.global_epoch == 3
        # To float rounding: what hivemind serves differs from the listener's model copy by ~1e-6 relative here.
        torch.testing.assert_close(client.params[0].detach(), listener.params[0].detach(), rtol=1e-5, atol=1e-6)
        assert listener.params[0].abs().sum() > 1, "the listener's weights, not the client's zeros"
        # In step now: nothing more to do.
        assert not client.rejoin_listeners()
        assert client.local_epoch == 3
    finally:
        swarm.shutdown(client, client_dht)
        swarm.shutdown(listener, listener_dht)


class _Backend:
    def __init__(self, answers):
        self.answers = list(answers)

    def a_listening_peer_trains(self) -> bool:
        return self.answers.pop(0) if self.answers else True


class _Run:
    def __init__(self, answers):
        import threading
        from types import SimpleNamespace

        self.stop = threading.Event()
        self.engine = SimpleNamespace(backend=_Backend(answers))


def test_a_client_waits_for_a_listening_peer_to_train_then_goes_on(caplog):
    from swarm_trainer.session import wait_for_a_listening_peer

    run = _Run([False, False, True])
    assert wait_for_a_listening_peer(run, timeout=30)
    assert run.engine.backend.answers == []
    assert "waiting for a listening peer" in caplog.text


def test_a_client_alone_trains_after_the_wait_with_a_warning_and_stops_when_asked(caplog):
    from swarm_trainer.session import wait_for_a_listening_peer

    run = _Run([False] * 100)
    assert not wait_for_a_listening_peer(run, timeout=0.5)
    assert "no listening peer trained in 0 s" in caplog.text and "without --client-mode" in caplog.text
    run = _Run([False] * 100)
    run.stop.set()
    assert not wait_for_a_listening_peer(run, timeout=30)
