"""A SIGKILL of `swarm bootstrap-dht` takes hivemind's DHT process and p2pd with it; a restart on the same port and
key works; a node whose every initial peer is dead says so."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil
import pytest

from swarm.procs import free_port
from swarm_launcher.processes import restart_service, start_service

pytestmark = pytest.mark.timeout(300)  # a loaded 2-core machine takes minutes: three DHT starts


def descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def assert_all_gone(procs: list[psutil.Process], *, timeout: float = 5.0) -> None:
    """Every process in `procs` ends within `timeout` s; torch's shared-memory manager (torch starts it, not us, in a
    session of its own; it serves no port) may take up to 30 s: it exits once its last client is gone."""
    names = {p.pid: _name(p) for p in procs}
    ours = [p for p in procs if names[p.pid] != "torch_shm_manager"]
    _, alive = psutil.wait_procs(ours, timeout=timeout)
    _, alive_too = psutil.wait_procs([p for p in procs if p not in ours], timeout=30)
    left = [(p.pid, names[p.pid]) for p in alive + alive_too if p.is_running() and _name(p) != "zombie"]
    assert not left, f"orphans left running: {left}"


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name() if proc.status() != psutil.STATUS_ZOMBIE else "zombie"
    except psutil.NoSuchProcess:
        return "gone"


def test_sigkill_leaves_no_dht_child_or_p2pd_and_a_restart_works(tmp_path, processes):
    port = free_port()
    proc = start_service("bootstrap", ["bootstrap-dht", "--identity-path", str(tmp_path / "bootstrap.key"),
                                       "--host-maddrs", f"/ip4/127.0.0.1/tcp/{port}", "--metrics-port", "0"],
                         workdir=tmp_path)
    processes.append(proc)
    info = proc.wait_ready(timeout=60)
    children = descendants(proc.popen.pid)
    names = {c.name() for c in children}
    assert "p2pd" in names and len(children) >= 2, names  # the DHT process and its p2pd (and torch's shm manager)

    os.kill(proc.popen.pid, signal.SIGKILL)  # the main process only, as the OOM killer or `kill -9 PID` would
    proc.popen.wait(timeout=10)
    assert_all_gone(children)

    # Nothing else holds the identity or the port: the same command comes back with the same peer id.
    again = restart_service(proc)
    processes.append(again)
    info_again = again.wait_ready(timeout=60)
    assert info_again["peer_id"] == info["peer_id"]
    assert info_again["multiaddrs"] == info["multiaddrs"]
    dead_address = info["multiaddrs"][0]
    again.stop(timeout=30)

    # Every initial peer dead: the error says so (not "check --host-maddrs and the key file").
    refused = subprocess.run([sys.executable, "-m", "swarm_launcher", "bootstrap-dht", "--identity-path",
                              str(tmp_path / "second.key"), "--host-maddrs", "/ip4/127.0.0.1/tcp/0",
                              "--metrics-port", "0", "--initial-peers", dead_address],
                             capture_output=True, text=True, timeout=90)
    assert refused.returncode == 2, refused.stderr
    assert "every initial peer is down or unreachable" in refused.stderr and dead_address in refused.stderr
    assert "check --host-maddrs" not in refused.stderr


def test_start_error_messages_say_what_to_check(tmp_path):
    from pathlib import Path

    from swarm_bootstrap_dht.node import start_error_message

    key = Path("k.key")
    dead = start_error_message("Daemon failed to start: failed to connect to bootstrap peers",
                               initial_peers=("/ip4/10.0.0.1/tcp/1/p2p/QmX",), identity=key)
    assert "every initial peer is down" in dead and "/ip4/10.0.0.1/tcp/1/p2p/QmX" in dead
    taken = start_error_message("Identity from `k.key` is already taken by another peer", initial_peers=("x",),
                                identity=key)
    assert "another node already serves with the identity in k.key" in taken
    other = start_error_message("bad multiaddr", initial_peers=(), identity=key)
    assert "check --host-maddrs" in other
