"""SIGKILL of a trainer or of `swarm host` leaves nothing serving, and the same command starts again.

Only the main process is killed (as `kill -9 PID` or the OOM killer would), never its process group: what it started
must die with it (swarm.lifeline). The trainer's hivemind DHT process, averager processes and p2pd go with it and it
comes back with the same peer id (hivemind refuses an identity that an orphan still serves). The host's coordinator,
dataset service and bootstrap DHT (with its DHT process and p2pd) go with it and it comes back on the same ports.
"""
from __future__ import annotations

import os
import signal

import psutil
import pytest

from swarm.procs import free_port
from swarm_launcher.demo import DEMO_CONFIG, coordinator_progress, prepare_demo_data, start_demo_trainer
from swarm_launcher.processes import ServiceProcess, restart_service, start_service
from tests.e2e.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def sigkill_main_process_only(proc: ServiceProcess) -> tuple[list[psutil.Process], list[list[str]]]:
    """SIGKILL `proc` alone; returns what it had started (recursively) and their command lines, read before."""
    children = psutil.Process(proc.popen.pid).children(recursive=True)
    command_lines = [c.cmdline() for c in children]
    os.kill(proc.popen.pid, signal.SIGKILL)
    assert proc.popen.wait(timeout=10) == -signal.SIGKILL
    return children, command_lines


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


def test_sigkill_of_a_trainer_or_the_host_leaves_no_orphans_and_a_restart_works(tmp_path, processes):
    from swarm_coordinator.tokens import create_token

    config_path, index, objects, _ = prepare_demo_data(tmp_path, dict(DEMO_CONFIG))
    ports = [str(free_port()) for _ in range(3)]
    host = start_service("host", [
        "host", "--data-dir", str(tmp_path / "host"), "--config", str(config_path), "--run-id", "demo",
        "--index", str(index), "--storage", objects, "--bind-host", "127.0.0.1", "--coordinator-port", ports[0],
        "--dataset-port", ports[1], "--dht-port", ports[2], "--metrics-ports", "0", "0", "0", "--no-status-page",
    ], workdir=tmp_path)
    processes.append(host)
    info = host.wait_ready(timeout=180)
    token = create_token(str(tmp_path / "host" / "coordinator.sqlite"), name="orphans")

    # The trainer: its DHT process, hivemind's averager processes and p2pd.
    trainer = start_demo_trainer(tmp_path, 0, coordinator=info["coordinator"], token=token)
    processes.append(trainer)
    peer_id = trainer.wait_ready(timeout=300)["peer_id"]
    children, command_lines = sigkill_main_process_only(trainer)
    names = [os.path.basename(line[0]) for line in command_lines]
    assert "p2pd" in names and sum(n != "p2pd" and n != "torch_shm_manager" for n in names) >= 2, names
    assert_all_gone(children)
    # On a loaded machine hivemind's 3 s bootstrap ping can time out while the bootstrap node still holds its dead
    # connection to this peer id; the trainer then exits 1 and a supervisor (compose: restart on-failure) starts it
    # again. An orphan would fail differently: "identity ... is already taken".
    for attempt in range(3):
        trainer = restart_service(trainer)
        processes.append(trainer)
        try:
            assert trainer.wait_ready(timeout=300)["peer_id"] == peer_id
            break
        except RuntimeError as e:
            if "none of the initial_peers responded" not in str(e) or attempt == 2:
                raise
    trainer.stop(timeout=60)

    # The host: coordinator, dataset service, bootstrap DHT (and the bootstrap's DHT process and p2pd).
    services, command_lines = sigkill_main_process_only(host)
    assert {"coordinator", "dataset", "bootstrap-dht"} <= {line[3] for line in command_lines if len(line) > 3}, \
        [line[:4] for line in command_lines]
    assert_all_gone(services)
    host = restart_service(host)
    processes.append(host)
    again = host.wait_ready(timeout=180)
    assert again["coordinator"] == info["coordinator"] and again["dataset"] == info["dataset"]
    assert again["bootstrap_maddrs"] == info["bootstrap_maddrs"]
    progress = wait_until(lambda: coordinator_progress(again["coordinator"], token), timeout=120,
                          what="the restarted coordinator to answer")
    assert progress.samples_total > 0
