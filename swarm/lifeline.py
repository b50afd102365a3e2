"""Children die with their parent, however the parent dies (SIGKILL and the OOM killer included).

Without this, a SIGKILL of `swarm bootstrap-dht` left hivemind's DHT process and its p2pd serving on the same port
with the same identity (a restart then made two nodes with one peer id), and a SIGKILL of `swarm host` left the
coordinator, dataset service and bootstrap DHT holding their ports. Three kinds of child, one mechanism: Linux's
parent-death signal (`prctl(PR_SET_PDEATHSIG)`), which the kernel sends to a child the moment its parent ends.

- Processes forked by Python (hivemind's DHT and averager processes, data-loader workers): `install()` registers a
  fork hook that sets the signal in every child.
- hivemind's p2pd (a Go binary its DHT process starts): launched through a tiny exec wrapper that sets the signal,
  then becomes p2pd (same pid, so hivemind's own shutdown of it is unchanged).
- Services the launcher starts (`swarm host`, `swarm demo`): `child_env()` names the parent in the child's
  environment; the child's `install()` sets the signal and forgets the variable (so its own children never read it).

The kernel ties the signal to the parent *thread* that forked the child. A child forked from a thread other than the
main one would die when that thread ends, so it watches its parent's pid instead (a daemon thread, every
`WATCH_INTERVAL_S`). A child whose parent died before the signal was set exits at once. Linux only; elsewhere
`install()` does nothing.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading

PR_SET_PDEATHSIG = 1
PARENT_ENV = "SWARM_DIE_WITH_PARENT"  # "<pid>:main" or "<pid>:thread", set by the launcher for its children
WATCH_INTERVAL_S = 0.5
DEATH_SIGNAL = signal.SIGKILL  # as a dying machine would: no handler runs; every service is crash-safe

# Runs as `python -I -S -c EXEC_WITH_PDEATHSIG PARENT_PID PROGRAM ARGS...`: set the signal, then become PROGRAM.
EXEC_WITH_PDEATHSIG = (
    "import ctypes, os, sys\n"
    f"ctypes.CDLL(None, use_errno=True).prctl({PR_SET_PDEATHSIG}, {int(DEATH_SIGNAL)}, 0, 0, 0)\n"
    "os.getppid() == int(sys.argv[1]) or os._exit(1)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)

_fork_origin: dict[str, int | bool] = {}
_installed = False


def supported() -> bool:
    return sys.platform.startswith("linux")


def die_with_parent(*, parent_pid: int, from_main_thread: bool = True) -> None:
    """Make this process end when `parent_pid` (its parent) does; if it already has, end now."""
    if from_main_thread and supported():
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(DEATH_SIGNAL), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    else:
        threading.Thread(target=_watch_parent, args=(parent_pid,), name="watch-parent", daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the signal was armed: nobody would send it
        os.kill(os.getpid(), DEATH_SIGNAL)


def _watch_parent(parent_pid: int) -> None:
    stopped = threading.Event()
    while not stopped.wait(WATCH_INTERVAL_S):
        if os.getppid() != parent_pid:  # re-parented: the parent is gone
            os.kill(os.getpid(), DEATH_SIGNAL)


def child_env() -> dict[str, str]:
    """Environment entries for a child process that must die with this one (its `install()` reads them)."""
    thread = "main" if threading.current_thread() is threading.main_thread() else "thread"
    return {PARENT_ENV: f"{os.getpid()}:{thread}"}


def wrap_exec(args: list[str]) -> list[str]:
    """The command line that runs `args` (a program and its arguments) so it dies with this process."""
    return [sys.executable, "-I", "-S", "-c", EXEC_WITH_PDEATHSIG, str(os.getpid()), *args]


def _before_fork() -> None:
    _fork_origin.update(parent=os.getpid(), main=threading.current_thread() is threading.main_thread())


def _after_fork_in_child() -> None:
    die_with_parent(parent_pid=int(_fork_origin["parent"]), from_main_thread=bool(_fork_origin["main"]))
    _wrap_p2pd_launch()


def _wrap_p2pd_launch() -> None:
    """Start hivemind's p2pd through `wrap_exec` (its DHT process starts it; hivemind is imported by then)."""
    p2p_module = sys.modules.get("hivemind.p2p.p2p_daemon")
    if p2p_module is None or getattr(p2p_module.P2P, "_swarm_dies_with_parent", False):
        return
    make_args = p2p_module.P2P._make_process_args

    def make_process_args(*args, **kwargs) -> list[str]:
        return wrap_exec(make_args(*args, **kwargs))

    p2p_module.P2P._make_process_args = staticmethod(make_process_args)
    p2p_module.P2P._swarm_dies_with_parent = True


def install() -> None:
    """Once per process, first thing in every `swarm` command: this process dies with its parent when the launcher
    asked for it, and every child it forks (and their p2pd) dies with it."""
    global _installed
    if _installed or not supported():
        return
    _installed = True
    request = os.environ.pop(PARENT_ENV, None)
    if request:
        pid, _, thread = request.partition(":")
        die_with_parent(parent_pid=int(pid), from_main_thread=thread != "thread")
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
    _wrap_p2pd_launch()
