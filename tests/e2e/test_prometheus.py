"""A real Prometheus scraped the end-to-end swarm (tests/e2e/prometheus_server.py): every service was up, and every
PromQL expression of every provisioned Grafana panel returned data while the swarm ran."""
from __future__ import annotations

import math

import pytest

from tests.deploy.dashboards import alert_expressions, metric_family, metric_names, panel_queries, substitute_variables
from tests.e2e.prometheus_server import PrometheusUnavailable

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

JOBS = ("coordinator", "dataset", "bootstrap-dht", "trainer")


@pytest.fixture(scope="module")
def prometheus(swarm_run):
    server = swarm_run["prometheus"]
    if server is None:
        pytest.skip("prometheus is not installed: `make test-deps` installs Debian's prometheus package")
    if isinstance(server, PrometheusUnavailable):
        pytest.fail(server.reason)
    return server


def _window(swarm_run) -> tuple[float, float]:
    return swarm_run["started"], swarm_run["finished"]


def _has_finite_value(result: list[dict]) -> bool:
    for series in result:
        for _, value in series.get("values", [series.get("value", (0, "NaN"))]):
            if math.isfinite(float(value)):
                return True
    return False


def test_every_job_was_scraped(prometheus, swarm_run):
    start, end = _window(swarm_run)
    duration = int(end - start) + 1
    result = prometheus.query(f"max_over_time(up[{duration}s])", at=end)
    up = {}
    for series in result:
        job = series["metric"]["job"]
        up[job] = max(up.get(job, 0.0), float(series["value"][1]))
    assert {job: up.get(job) for job in JOBS} == {job: 1.0 for job in JOBS}, (
        f"jobs scraped during the run: {up}; prometheus log:\n{prometheus.log_tail()}")
    trainers = prometheus.query(f'max_over_time(up{{job="trainer"}}[{duration}s]) == 1', at=end)
    assert len(trainers) == swarm_run["summary"]["peers"], trainers


@pytest.mark.parametrize("query", panel_queries(), ids=lambda q: f"{q.dashboard}:{q.panel}:{q.ref_id}")
def test_dashboard_panel_returns_data(prometheus, swarm_run, query):
    start, end = _window(swarm_run)
    expr = substitute_variables(query.expr, scrape_interval_s=prometheus.scrape_interval_s, range_s=end - start)
    result = prometheus.query_range(expr, start=start, end=end, step=1)
    assert result, f"no data during the run for {query}\n(as sent: {expr})"
    assert _has_finite_value(result), f"only NaN/Inf during the run for {query}\n(as sent: {expr})"


def test_every_metric_the_dashboards_and_alerts_use_is_exported(prometheus):
    """`or vector(0)` keeps an error panel from going blank when nothing failed; this keeps it honest about names."""
    exported = set(prometheus.api("metadata")) | {"up"}
    used: dict[str, set[str]] = {}
    for query in panel_queries():
        for name in metric_names(query.expr):
            used.setdefault(metric_family(name), set()).add(f"{query.dashboard} / {query.panel}")
    for alert, expr in alert_expressions().items():
        for name in metric_names(expr):
            used.setdefault(metric_family(name), set()).add(f"alert {alert}")
    missing = {name: sorted(where) for name, where in used.items()
               if name not in exported and f"{name}_total" not in exported}
    assert not missing, f"metrics no service exported during the run (renamed? typo?): {missing}"


def test_alert_rules_evaluate_cleanly_on_live_data(prometheus):
    groups = prometheus.api("rules", type="alert")["groups"]
    rules = {rule["name"]: rule for group in groups for rule in group["rules"]}
    assert set(rules) == set(alert_expressions())
    unhealthy = {name: rule.get("lastError") for name, rule in rules.items() if rule["health"] != "ok"}
    assert not unhealthy, unhealthy
