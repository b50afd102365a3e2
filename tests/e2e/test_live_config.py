"""A run config change reaches a running trainer: applied live at its next chunk, or a clean stop when it cannot be.

Real processes: host services and one trainer, as in the demo; the change goes through `swarm config set`, as a
host would make it. The new LR must show on the trainer's own /metrics (it trains with it), and a change of a key
that needs a restart (seed) must stop the trainer with exit code 3 and a message that says why.
"""
from __future__ import annotations

import subprocess
import sys
import urllib.request

import pytest

from swarm_launcher.demo import (
    DEMO_CONFIG,
    coordinator_progress,
    prepare_demo_data,
    start_demo_host,
    start_demo_trainer,
)
from tests.e2e.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]



def _config_set(db_path: str, *assignments: str) -> None:
    result = subprocess.run([sys.executable, "-m", "swarm_launcher", "config", "set", "--db", db_path, *assignments],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def _trainer_lr(metrics_port: int) -> float | None:
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith("swarm_trainer_lr "):
            return float(line.split()[1])
    return None


def test_lr_change_applies_live_and_a_seed_change_stops_the_trainer_cleanly(tmp_path):
    from swarm_coordinator.tokens import create_token

    # Many data epochs: the run must still be going when the changes land.
    config_path, index, objects, _ = prepare_demo_data(tmp_path, {**DEMO_CONFIG, "max_data_epochs": 100})
    host = start_demo_host(tmp_path, config_path, index, objects)
    db_path = str(host.workdir / "coordinator.sqlite")
    trainer = None
    try:
        token = create_token(db_path, name="live-config")
        trainer = start_demo_trainer(tmp_path, 0, coordinator=host.coordinator_address, token=token)
        metrics_port = trainer.wait_ready(timeout=240)["metrics_port"]
        wait_until(lambda: (p := coordinator_progress(host.coordinator_address, token)) is not None
              and p.samples_done >= 8, timeout=240, what="training to start")
        assert _trainer_lr(metrics_port) == pytest.approx(DEMO_CONFIG["lr"])

        _config_set(db_path, "lr=0.0005")
        wait_until(lambda: _trainer_lr(metrics_port) == pytest.approx(0.0005), timeout=120,
              what="the trainer to train with the new LR")
        assert trainer.popen.poll() is None
        assert "applied run config version 2" in trainer.log_path.read_text()

        _config_set(db_path, "seed=7")
        assert trainer.popen.wait(timeout=120) == 3
        log = trainer.log_path.read_text()
        assert "changes seed" in log and "cannot apply" in log
    finally:
        if trainer is not None:
            trainer.stop(timeout=60)
        host.stop()
