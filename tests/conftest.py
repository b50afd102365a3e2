"""Shared test fixtures: real service processes on loopback, cleaned up whatever happens."""
from __future__ import annotations

import os

import pytest

from swarm_launcher.processes import ServiceProcess


@pytest.fixture
def processes():
    """Collects ServiceProcess objects a test starts and stops every one of them at teardown."""
    started: list[ServiceProcess] = []
    yield started
    for proc in reversed(started):
        proc.stop(timeout=15)


@pytest.fixture(scope="session")
def moto_endpoint():
    """A real S3-compatible HTTP server (moto's server mode) on loopback, with dummy credentials in the env."""
    from moto.server import ThreadedMotoServer

    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):
        os.environ.setdefault(key, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
