"""SIGTERM/SIGINT: the peer finishes its batch and leaves; processes hivemind forks still die on SIGTERM."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import pytest

from swarm_trainer.loop import PeerRun
from swarm_trainer.options import TrainerOptions

pytestmark = pytest.mark.timeout(60)


def _sleep_forever():
    while True:
        time.sleep(0.1)


def test_signals_stop_the_peer_but_forked_children_still_terminate(tmp_path):
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    run = PeerRun(TrainerOptions(coordinator="127.0.0.1:1", output_dir=tmp_path))
    try:
        run.install_signal_handlers()
        child = mp.get_context("fork").Process(target=_sleep_forever, daemon=True)
        child.start()
        os.kill(child.pid, signal.SIGINT)  # Ctrl-C reaches the whole group: the child leaves it to the parent
        time.sleep(0.5)
        assert child.is_alive()
        child.terminate()  # what hivemind's shutdown does to its DHT and averager processes
        child.join(timeout=10)
        assert child.exitcode == -signal.SIGTERM
        assert not run.stop.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not run.stop.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert run.stop.is_set()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
