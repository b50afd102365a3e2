"""`swarm host` as a user runs it: refuses to start without a dataset, serves once one is ingested, and SIGTERM
stops every service it started."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import pytest

from swarm_launcher.processes import start_service
from tests.e2e.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_host_needs_a_dataset_then_serves_and_stops_cleanly(tmp_path, processes):
    from swarm_coordinator.tokens import create_token
    from swarm_launcher.demo_images import write_demo_folder

    data_dir = tmp_path / "data"
    refused = subprocess.run([sys.executable, "-m", "swarm_launcher", "host", "--data-dir", str(data_dir)],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "no dataset index" in refused.stderr and "swarm ingest" in refused.stderr

    write_demo_folder(tmp_path / "images")
    subprocess.run([sys.executable, "-m", "swarm_launcher", "ingest", str(tmp_path / "images"), "--index",
                    str(data_dir / "dataset.sqlite"), "--no-progress"], check=True, capture_output=True, timeout=300)
    # Bound to one address that is not 127.0.0.1: the coordinator must sync from the dataset service there.
    host = start_service("host", ["host", "--data-dir", str(data_dir), "--bind-host", "127.0.0.2",
                                  "--coordinator-port", "0", "--dataset-port", "0", "--dht-port", "0",
                                  "--status-port", "0"],
                         workdir=tmp_path)
    processes.append(host)
    info = host.wait_ready(timeout=120)
    token = create_token(str(data_dir / "coordinator.sqlite"), name="status")

    def status() -> dict:
        result = subprocess.run([sys.executable, "-m", "swarm_launcher", "status", "--coordinator",
                                 info["coordinator"], "--token", token, "--json"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    # The coordinator syncs the dataset index in the background.
    progress = wait_until(lambda: (p := status())["samples_total"] == 28 and p, timeout=60,
                          what="the coordinator to sync the 28 demo samples", interval=0.5)
    # Zeros are printed, and int64 counters are numbers, not proto3-JSON strings.
    assert progress["samples_total"] == 28 and progress["max_data_epochs"] == 10
    assert progress["peers_alive"] == 0 and progress["samples_done"] == 0
    # The public status page (tests/statuspage has its browser tests) serves the same run.
    with urllib.request.urlopen(f"{info['status_url']}api/status", timeout=10) as response:
        page = json.loads(response.read())
    assert page["run"]["samples_per_data_epoch"] == 28 and page["run"]["max_data_epochs"] == 10

    children = [json.loads((data_dir / "logs" / f"{name}.ready.json").read_text())["pid"]
                for name in ("bootstrap-dht", "coordinator", "dataset")]
    assert all(_alive(pid) for pid in children)
    assert host.stop(timeout=60) == 0
    assert not any(_alive(pid) for pid in children)
