"""Shared test fixtures: real service processes on loopback, cleaned up whatever happens."""
from __future__ import annotations

import pytest

from swarm.procs import ServiceProcess


@pytest.fixture
def processes():
    """Collects ServiceProcess objects a test starts and stops every one of them at teardown."""
    started: list[ServiceProcess] = []
    yield started
    for proc in reversed(started):
        proc.stop(timeout=15)
