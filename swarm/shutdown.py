"""One way for a process to stop on SIGTERM or Ctrl-C (SIGINT).

Services (coordinator, dataset service, bootstrap DHT, trainer) turn the signal into a `threading.Event` their main
loop waits on, then stop cleanly: release leases, save, close the database. Launchers (`swarm host`, `swarm demo`)
turn it into KeyboardInterrupt, so their `finally` blocks stop the children, which run in sessions of their own and
would otherwise outlive them.

Python runs signal handlers in the main thread only, and only the main thread may install them: called from another
thread (a service started inside a test), `on_shutdown_signals` installs nothing and says so. A process forked from
this one after the handlers are installed (hivemind's DHT and averagers are) inherits them; there the handler gives
SIGTERM its default meaning back and re-raises it, so the parent's shutdown (which terminates such children) never
waits on a child that ignored it, and it ignores SIGINT, which Ctrl-C sends to the whole process group and which is
the parent's to act on (the parent still needs its children while it stops).
"""
from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Sequence
from types import FrameType

from swarm.logs import get_logger

logger = get_logger(__name__)

SHUTDOWN_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)


def on_shutdown_signals(action: Callable[[signal.Signals], None], *,
                        signals: Sequence[signal.Signals] = SHUTDOWN_SIGNALS) -> bool:
    """Call `action(signal)` in this process when one of `signals` arrives. Returns False, installing nothing, when
    called outside the main thread (Python allows handlers only there)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    owner_pid = os.getpid()

    def handle(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != owner_pid:  # a forked child: see the module docstring
            if signum == signal.SIGTERM:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            else:
                signal.signal(signum, signal.SIG_IGN)
            return
        action(signal.Signals(signum))

    for sig in signals:
        signal.signal(sig, handle)
    return True


def stop_event_on_signals(stop: threading.Event | None = None, *, doing: str = "stopping",
                          signals: Sequence[signal.Signals] = SHUTDOWN_SIGNALS) -> threading.Event:
    """An Event set on SIGTERM/SIGINT (`stop`, or a new one), logging "received SIGTERM: <doing>" once per signal.

    A service's main thread waits on it and then stops; a test that starts the service in another thread sets it
    itself (no handler is installed there).
    """
    stop = stop if stop is not None else threading.Event()

    def set_stop(sig: signal.Signals) -> None:
        logger.info(f"received {sig.name}: {doing}")
        stop.set()

    on_shutdown_signals(set_stop, signals=signals)
    return stop


def raise_keyboard_interrupt(sig: signal.Signals) -> None:
    """The launchers' action: SIGTERM behaves like Ctrl-C, so every `finally` on the way out runs."""
    raise KeyboardInterrupt(f"signal {sig.name}")


def interrupt_on_sigterm() -> bool:
    """Make SIGTERM raise KeyboardInterrupt in the main thread, like Ctrl-C does (for launchers)."""
    return on_shutdown_signals(raise_keyboard_interrupt, signals=(signal.SIGTERM,))
