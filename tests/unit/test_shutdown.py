"""swarm.shutdown: SIGTERM/SIGINT stop a service's main loop, a forked child still dies of SIGTERM, launchers get
KeyboardInterrupt. Each case runs in a real child process and receives a real signal."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from swarm import shutdown

pytestmark = pytest.mark.timeout(60)


def _start(code: str) -> subprocess.Popen:
    """A Python child running `code`; it prints "ready" (and maybe a pid) once its handlers are in place."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True,
                            stderr=subprocess.STDOUT)


def _kill_leftover(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_sets_the_stop_event_and_the_service_returns_cleanly(sig):
    proc = _start("""
        from swarm.shutdown import stop_event_on_signals
        stop = stop_event_on_signals(doing="closing the store")
        print("ready", flush=True)
        stop.wait(30)
        print("stopped" if stop.is_set() else "timed out", flush=True)
    """)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0
        assert "stopped" in out and f"received {sig.name}: closing the store" in out
    finally:
        _kill_leftover(proc)


def test_a_forked_child_dies_of_sigterm_and_ignores_sigint():
    proc = _start("""
        import os, time
        from swarm.shutdown import stop_event_on_signals
        stop = stop_event_on_signals()
        child = os.fork()
        if child == 0:
            time.sleep(30)
            os._exit(3)
        print("ready", child, flush=True)
        os.kill(child, __import__("signal").SIGINT)
        time.sleep(0.3)
        alive_after_sigint = os.waitpid(child, os.WNOHANG) == (0, 0)
        os.kill(child, __import__("signal").SIGTERM)
        _, status = os.waitpid(child, 0)
        print(alive_after_sigint, os.WIFSIGNALED(status) and os.WTERMSIG(status), stop.is_set(), flush=True)
    """)
    try:
        first = proc.stdout.readline().split()
        assert first[0] == "ready", first
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out
        # SIGINT left the child alone; SIGTERM killed it the default way; the parent's event was never set.
        assert out.split()[-3:] == ["True", str(int(signal.SIGTERM)), "False"], out
    finally:
        _kill_leftover(proc)


def test_sigterm_raises_keyboard_interrupt_in_a_launcher():
    proc = _start("""
        import time
        from swarm.shutdown import interrupt_on_sigterm
        interrupt_on_sigterm()
        try:  # "ready" inside the try: the signal may arrive the moment it is printed
            print("ready", flush=True)
            time.sleep(30)
        except KeyboardInterrupt as e:
            print("interrupted:", e, flush=True)
    """)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0 and "interrupted: signal SIGTERM" in out
    finally:
        _kill_leftover(proc)


def test_outside_the_main_thread_nothing_is_installed():
    before = signal.getsignal(signal.SIGTERM)
    results = []
    thread = threading.Thread(target=lambda: results.append(shutdown.on_shutdown_signals(lambda sig: None)))
    thread.start()
    thread.join(10)
    assert results == [False] and signal.getsignal(signal.SIGTERM) is before
    stop = threading.Event()
    thread = threading.Thread(target=lambda: results.append(shutdown.stop_event_on_signals(stop)))
    thread.start()
    thread.join(10)
    assert results[-1] is stop and not stop.is_set()
