"""One swarm run shared by every end-to-end test (it is the expensive part), scraped by a real Prometheus when one is
installed (tests/e2e/prometheus_server.py starts it; `make test` installs Debian's prometheus package)."""
from __future__ import annotations

import contextlib
import time

import pytest

from swarm_launcher.demo import run_demo


@pytest.fixture(scope="session")
def swarm_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("swarm")
    targets = workdir / "prometheus_targets.json"
    try:
        from tests.e2e.prometheus_server import running_prometheus
    except ImportError:
        running_prometheus = None
    with (running_prometheus(workdir / "prometheus", targets) if running_prometheus
          else contextlib.nullcontext()) as prometheus:
        started = time.time()
        summary = run_demo(workdir, trainers=2, client_mode_peers=1, show_progress=False,
                           prometheus_targets=targets)
        run = {"workdir": workdir, "summary": summary, "prometheus": prometheus,
               "started": started, "finished": time.time()}
        yield run
