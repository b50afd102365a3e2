"""The coordinator applies run.yaml when the file itself changed, not whenever it differs from the stored config: a
`swarm config set` made while it runs survives a restart with the same run.yaml (compose restarts it that way)."""
from __future__ import annotations

import hashlib

import pytest

from swarm.runconfig import RunConfig
from swarm_coordinator import configs
from swarm_coordinator.store import Store

pytestmark = pytest.mark.timeout(60)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _restart(db_path, config: RunConfig, digest: str):
    store = Store.open(db_path)
    try:
        return store.ensure_config(config, run_id="r", source_digest=digest)
    finally:
        store.close()


def test_config_set_survives_a_restart_with_the_same_file(tmp_path):
    db_path = str(tmp_path / "coordinator.sqlite")
    file_a, file_b = "lr: 1.0e-4\n", "lr: 3.0e-4\n"
    version, created = _restart(db_path, RunConfig(lr=1e-4), _digest(file_a))
    assert created and version.version == 1
    _, current, created = configs.set_config(db_path, assignments=["lr=5e-5"])
    assert created and current.version == 2
    # Same file: the live change stays.
    version, created = _restart(db_path, RunConfig(lr=1e-4), _digest(file_a))
    assert not created and version.version == 2 and version.config.lr == 5e-5
    # An edited file is applied.
    version, created = _restart(db_path, RunConfig(lr=3e-4), _digest(file_b))
    assert created and version.version == 3 and version.config.lr == 3e-4
    # No digest (a config given in code, not a file): the old rule, apply when it differs.
    version, created = _restart(db_path, RunConfig(lr=1e-4), None)
    assert created and version.config.lr == 1e-4


def test_coordinator_start_hashes_its_run_yaml(tmp_path):
    from swarm_coordinator.server import start
    from swarm_coordinator.settings import CoordinatorSettings

    db_path, run_yaml = str(tmp_path / "coordinator.sqlite"), tmp_path / "run.yaml"
    run_yaml.write_text("lr: 1.0e-4\nchunk_size: 4\n")
    settings = CoordinatorSettings(listen="127.0.0.1:0", db_path=db_path, config_path=str(run_yaml),
                                   run_id="r", metrics_port=None)
    start(settings).stop()
    configs.set_config(db_path, assignments=["lr=5e-5"])
    coordinator = start(settings)
    try:
        assert coordinator.store.config.config.lr == 5e-5
    finally:
        coordinator.stop()
