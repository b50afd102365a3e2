"""Ctrl-C / SIGTERM on a real trainer mid-run: it releases its leases at once, saves, leaves with exit code 0; started
again with the same output folder it resumes from that checkpoint and keeps training."""
from __future__ import annotations

import json
import signal

import pytest

from swarm_launcher.demo import (
    DEMO_CONFIG,
    coordinator_progress,
    prepare_demo_data,
    start_demo_host,
    start_demo_trainer,
)
from swarm_launcher.processes import restart_service
from tests.e2e.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]



def test_sigterm_releases_leases_saves_and_the_restart_resumes(tmp_path):
    from swarm_coordinator.tokens import create_token

    config_path, index, objects, _ = prepare_demo_data(tmp_path, {**DEMO_CONFIG, "max_data_epochs": 100})
    # A lease TTL far longer than the test: only an explicit release can bring the chunks back this fast.
    host = start_demo_host(tmp_path, config_path, index, objects, lease_ttl=3600)
    trainer = None
    try:
        token = create_token(str(host.workdir / "coordinator.sqlite"), name="graceful")

        def progress():
            return coordinator_progress(host.coordinator_address, token)

        trainer = start_demo_trainer(tmp_path, 0, coordinator=host.coordinator_address, token=token)
        wait_until(lambda: (p := progress()) is not None and p.samples_done >= 8 and p.chunks_leased > 0, timeout=240,
              what="the trainer to hold leases mid-run")
        assert trainer.stop(timeout=120, sig=signal.SIGTERM) == 0
        after_stop = progress()
        assert after_stop.chunks_leased == 0, "a stopped peer must release its leases, not let them expire"
        summary = json.loads((tmp_path / "trainer-0" / "summary.json").read_text())
        saved_epoch = summary["global_epoch"]
        assert summary["checkpoint"] and (tmp_path / "trainer-0" / "checkpoints").is_dir()

        trainer = restart_service(trainer)
        wait_until(lambda: progress().samples_done >= after_stop.samples_done + 8, timeout=240,
              what="the restarted trainer to train again")
        log = trainer.log_path.read_text()
        assert "resumed weights from" in log
        assert f"(global epoch {saved_epoch})" in log.split("resumed weights from")[-1].splitlines()[0]
    finally:
        if trainer is not None:
            trainer.stop(timeout=60)
        host.stop()
