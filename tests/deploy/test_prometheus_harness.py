"""The e2e Prometheus harness against one real service, in seconds rather than a whole swarm run: a real coordinator
process, a real Prometheus built from the deploy scrape config, a few real RPCs, and the coordinator's dashboard panels
returning data. The full check (every panel, every job, a training swarm) is tests/e2e/test_prometheus.py."""
from __future__ import annotations

import json
import time

import pytest

from swarm.rpc import channel, token_metadata
from swarm.v1 import coordinator_pb2, coordinator_pb2_grpc
from swarm_launcher.processes import start_service
from tests.deploy.dashboards import alert_expressions, metric_family, metric_names, panel_queries, substitute_variables
from tests.e2e.prometheus_server import PrometheusUnavailable, running_prometheus

pytestmark = pytest.mark.timeout(120)

# Panels that need a training swarm to fill (chunks reported, peers contributing); the e2e test covers them.
NEEDS_TRAINING = {"swarm_coordinator_reports_total", "swarm_coordinator_peer_samples_contributed",
                  "swarm_coordinator_peer_samples_per_second", "swarm_coordinator_peer_loss",
                  "swarm_coordinator_peer_global_epoch"}


def _wait_for(condition, *, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def test_prometheus_scrapes_a_real_coordinator_and_its_panels_return_data(tmp_path, processes):
    from swarm_coordinator.tokens import create_token

    db = str(tmp_path / "coordinator.sqlite")
    token = create_token(db, name="harness")
    targets = tmp_path / "targets.json"
    with running_prometheus(tmp_path / "prometheus", targets) as prometheus:
        if prometheus is None:
            pytest.skip("prometheus is not installed: `make test-deps` installs Debian's prometheus package")
        assert not isinstance(prometheus, PrometheusUnavailable), prometheus.reason
        # An unreachable dataset service: the coordinator keeps serving and reports its sync as failing.
        coordinator = start_service("coordinator", [
            "coordinator", "--listen", "127.0.0.1:0", "--db", db, "--dataset", "127.0.0.1:9", "--sync-interval", "1",
            "--metrics-port", "0"], workdir=tmp_path / "logs")
        processes.append(coordinator)
        info = coordinator.wait_ready(timeout=60)
        targets.write_text(json.dumps([{"targets": [f"127.0.0.1:{info['metrics_port']}"],
                                        "labels": {"job": "coordinator"}}]))
        # A job name the deploy config does not know would be dropped by the harness' relabelling, never scraped.
        assert _wait_for(lambda: prometheus.query('up{job="coordinator"} == 1'), timeout=30), prometheus.log_tail()

        with channel(info["grpc_address"]) as ch:
            stub = coordinator_pb2_grpc.CoordinatorStub(ch)
            for _ in range(3):
                stub.GetConfig(coordinator_pb2.GetConfigRequest(), metadata=token_metadata(token), timeout=10)
                stub.GetProgress(coordinator_pb2.GetProgressRequest(), metadata=token_metadata(token), timeout=10)

        used = {metric_family(name) for q in panel_queries() for name in metric_names(q.expr)}
        used |= {metric_family(name) for expr in alert_expressions().values() for name in metric_names(expr)}
        declared = set(prometheus.api("metadata"))
        undeclared = {n for n in used if n.startswith("swarm_coordinator_") and n not in declared}
        assert not undeclared, f"dashboards/alerts use coordinator metrics it does not export: {sorted(undeclared)}"

        coordinator_panels = [q for q in panel_queries() if metric_names(q.expr)
                              and all(n.startswith("swarm_coordinator_") for n in metric_names(q.expr))
                              and not metric_names(q.expr) & NEEDS_TRAINING]
        assert len(coordinator_panels) >= 10
        empty = list(coordinator_panels)

        def all_return_data() -> bool:  # rate() needs a few scrapes after the RPCs
            empty[:] = [q for q in empty if not prometheus.query(
                substitute_variables(q.expr, scrape_interval_s=prometheus.scrape_interval_s))]
            return not empty

        assert _wait_for(all_return_data, timeout=30), f"panels without data: {[str(q) for q in empty]}"
