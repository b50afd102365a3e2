"""swarm.lifeline: every kind of child dies when its parent is SIGKILLed, and only then.

A real parent process (a small script) starts the children the way hivemind and the launcher do, then is SIGKILLed.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

pytestmark = pytest.mark.timeout(60)

PARENT = textwrap.dedent("""
    import json, multiprocessing, os, subprocess, sys, threading, time
    from swarm import lifeline

    lifeline.install()
    ctx = multiprocessing.get_context("fork")
    forked_from_main = ctx.Process(target=time.sleep, args=(60,), daemon=False)
    forked_from_main.start()
    holder = {}

    def fork_in_a_thread():  # a thread that ends right after: its child must outlive it
        holder["p"] = ctx.Process(target=time.sleep, args=(60,), daemon=False)
        holder["p"].start()

    thread = threading.Thread(target=fork_in_a_thread)
    thread.start()
    thread.join()
    wrapped = subprocess.Popen(lifeline.wrap_exec(["/bin/sleep", "60"]))
    launched = subprocess.Popen([sys.executable, "-c", "from swarm import lifeline; import time; "
                                 "lifeline.install(); import os; print(os.environ.get(lifeline.PARENT_ENV)); "
                                 "time.sleep(60)"], env={**os.environ, **lifeline.child_env()},
                                stdout=open(sys.argv[1], "w"))
    time.sleep(1.5)  # longer than the watcher's interval: the thread's child is still there after its thread ended
    print(json.dumps([forked_from_main.pid, holder["p"].pid, wrapped.pid, launched.pid]), flush=True)
    time.sleep(60)
""")


def test_children_of_every_kind_die_with_a_sigkilled_parent(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path / "launched.out")], stdout=subprocess.PIPE,
                              text=True, env=env)
    try:
        pids = json.loads(parent.stdout.readline())
        children = [psutil.Process(pid) for pid in pids]
        assert all(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)
        assert children[2].exe() == "/bin/sleep" or children[2].cmdline()[0] == "/bin/sleep"  # exec'd in place
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        started = time.monotonic()
        gone, alive = psutil.wait_procs(children, timeout=5)
        assert not alive, f"orphans left: {[p.pid for p in alive]}"
        assert time.monotonic() - started < 3
        # The launched child read and forgot the variable, so its own children never see it.
        assert (tmp_path / "launched.out").read_text().strip() == "None"
    finally:
        if parent.poll() is None:
            parent.kill()
        for pid in locals().get("pids", []):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_child_whose_parent_is_already_gone_exits_at_once():
    from swarm import lifeline

    gone_parent = subprocess.Popen(["true"])
    gone_parent.wait()
    child = subprocess.run([sys.executable, "-c", "from swarm import lifeline; lifeline.install(); print('ran on')"],
                           env={**os.environ, lifeline.PARENT_ENV: f"{gone_parent.pid}:main"},
                           capture_output=True, text=True, timeout=30)
    assert child.returncode == -signal.SIGKILL and "ran on" not in child.stdout
