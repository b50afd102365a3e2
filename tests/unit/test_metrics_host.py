"""Every /metrics server binds loopback unless told otherwise (--metrics-host, or $SWARM_METRICS_HOST, which the
images' entrypoint sets to 0.0.0.0)."""
from __future__ import annotations

import os
import subprocess
import urllib.request
from pathlib import Path

import pytest

from swarm.metrics import METRICS_HOST_ENV, MetricsServer, default_metrics_host
from swarm_launcher.cli import build_parser

REPO = Path(__file__).resolve().parents[2]

COMMANDS = {  # each command with the least it needs to parse
    "coordinator": ["coordinator"],
    "dataset serve": ["dataset", "serve", "--index", "x.sqlite"],
    "bootstrap-dht": ["bootstrap-dht"],
    "train": ["train", "--coordinator", "127.0.0.1:50051"],
}


def test_metrics_bind_loopback_by_default_and_where_asked(monkeypatch):
    monkeypatch.delenv(METRICS_HOST_ENV, raising=False)
    server = MetricsServer(port=0)
    try:
        assert server._httpd.server_address[0] == "127.0.0.1"
        assert urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5).read() == b"ok\n"
    finally:
        server.close()
    monkeypatch.setenv(METRICS_HOST_ENV, "0.0.0.0")
    assert default_metrics_host() == "0.0.0.0"
    server = MetricsServer(port=0)
    try:
        assert server._httpd.server_address[0] == "0.0.0.0"
    finally:
        server.close()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_service_takes_metrics_host_with_a_loopback_default(command, monkeypatch):
    monkeypatch.delenv(METRICS_HOST_ENV, raising=False)
    argv = COMMANDS[command]
    assert build_parser().parse_args(argv).metrics_host == "127.0.0.1"
    assert build_parser().parse_args([*argv, "--metrics-host", "0.0.0.0"]).metrics_host == "0.0.0.0"
    monkeypatch.setenv(METRICS_HOST_ENV, "10.0.0.7")
    assert build_parser().parse_args(argv).metrics_host == "10.0.0.7"


def test_the_host_forwards_metrics_host_and_ports():
    args = build_parser().parse_args(["host", "--metrics-host", "0.0.0.0", "--metrics-ports", "0", "9201", "0"])
    assert args.metrics_host == "0.0.0.0" and args.metrics_ports == [0, 9201, 0]


def test_coordinator_settings_default_to_loopback(monkeypatch):
    from swarm_coordinator.settings import CoordinatorSettings

    monkeypatch.delenv(METRICS_HOST_ENV, raising=False)
    assert CoordinatorSettings().metrics_host == "127.0.0.1"


def test_the_images_entrypoint_opens_metrics_to_the_container_network():
    script = REPO / "services" / "swarm-entrypoint.sh"
    env = {k: v for k, v in os.environ.items() if k != METRICS_HOST_ENV}
    shown = subprocess.run(["sh", str(script), "sh", "-c", f'echo "${METRICS_HOST_ENV}"'], capture_output=True,
                           text=True, timeout=10, env=env)
    assert shown.stdout.strip() == "0.0.0.0"
    kept = subprocess.run(["sh", str(script), "sh", "-c", f'echo "${METRICS_HOST_ENV}"'], capture_output=True,
                          text=True, timeout=10, env={**env, METRICS_HOST_ENV: "127.0.0.1"})
    assert kept.stdout.strip() == "127.0.0.1"
