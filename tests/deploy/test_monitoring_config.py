"""Prometheus config, alert rules and Grafana provisioning, checked offline: promtool validates the config and the
rules, runs the alert unit tests, and parses every dashboard expression (as recording rules); the dashboards
carry the panels the host needs, all wired to the provisioned datasource."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.dashboards import (
    DASHBOARDS,
    REPO,
    dashboard_files,
    iter_panels,
    load_dashboard,
    metric_names,
    panel_queries,
    substitute_variables,
)

pytestmark = pytest.mark.timeout(60)

PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
PROVISIONING = REPO / "deploy" / "grafana" / "provisioning"
JOBS = {"coordinator", "dataset", "trainer", "bootstrap-dht"}


def promtool(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip("promtool is not installed: `make test-deps` installs Debian's prometheus package")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, cwd=REPO)


def test_promtool_accepts_the_config():
    result = promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_alert_rules():
    result = promtool("check", "rules", str(PROMETHEUS_DIR / "alerts.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_fire_on_their_stories_and_stay_quiet_otherwise():
    result = promtool("test", "rules", str(REPO / "tests" / "deploy" / "promtool" / "alerts_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_the_brief_asks_for_exists():
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert {"SwarmServiceDown", "SwarmPeersDropped", "SwarmNoProgress", "SwarmDatasetStreamErrors"} <= alerts
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("warning", "critical") and rule["annotations"]["summary"], rule


def test_scrape_jobs_are_named_after_the_services():
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert {job["job_name"] for job in config["scrape_configs"]} == JOBS


def test_every_dashboard_expression_is_valid_promql(tmp_path: Path):
    """promtool parses each expression, variables substituted, as a recording rule."""
    queries = panel_queries()
    rules = {"groups": [{"name": "dashboards", "rules": [
        {"record": f"dashboard:expression_{i}:check", "expr": substitute_variables(q.expr, scrape_interval_s=15)}
        for i, q in enumerate(queries)]}]}
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(queries)} rules found" in result.stdout


def test_datasource_and_dashboard_provisioning():
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert [(d["uid"], d["type"], d["url"]) for d in datasources] == [
        ("prometheus", "prometheus", "http://prometheus:9090")]
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "swarm.yml").read_text())["providers"]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    mounts = dict(reversed(m.split(":")[:2]) for m in compose["services"]["grafana"]["volumes"])
    assert mounts[providers[0]["options"]["path"]] == "./deploy/grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.name)
def test_dashboard_is_well_formed(path):
    dashboard = load_dashboard(path)
    assert dashboard["uid"] == path.stem and dashboard["title"]
    panels = list(iter_panels(dashboard))
    ids = [p["id"] for p in dashboard["panels"]]
    ids += [p["id"] for row in dashboard["panels"] for p in row.get("panels", [])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel["title"]
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
        assert all(t["datasource"]["uid"] == "prometheus" for t in panel["targets"]), panel["title"]


def test_dashboard_uids_are_unique():
    uids = [load_dashboard(path)["uid"] for path in dashboard_files()]
    assert len(uids) == len(set(uids)) == 3


@pytest.mark.parametrize("dashboard, wanted", [
    ("swarm-overview", {
        "global samples/s": "swarm_coordinator_samples_done_total",
        "samples done": "swarm_coordinator_samples_done_total",
        "data epochs": "swarm_coordinator_data_epochs_done", "chunks by state": "swarm_coordinator_chunks",
        "peers alive": "swarm_coordinator_peers_alive", "loss": "swarm_trainer_loss", "lr": "swarm_coordinator_lr"}),
    ("swarm-peer", {
        "samples/s": "swarm_trainer_samples_per_second", "averaging time": "swarm_trainer_averaging_seconds_sum",
        "bytes": "swarm_trainer_network_bytes_total", "gpu memory": "swarm_trainer_gpu_memory_bytes"}),
    ("swarm-dataset", {
        "stream rate": "swarm_dataset_samples_streamed_total", "errors": "swarm_dataset_stream_errors_total"}),
])
def test_dashboards_show_what_the_host_needs(dashboard, wanted):
    board = load_dashboard(DASHBOARDS / f"{dashboard}.json")
    shown = set().union(*(metric_names(t["expr"]) for panel in iter_panels(board) for t in panel["targets"]))
    missing = {what: metric for what, metric in wanted.items() if metric not in shown}
    assert not missing, f"{dashboard} lacks panels for {missing}"


def test_per_peer_dashboard_selects_peers_by_variable():
    board = load_dashboard(DASHBOARDS / "swarm-peer.json")
    (variable,) = board["templating"]["list"]
    assert variable["name"] == "peer" and variable["includeAll"] and variable["allValue"] == ".+"
    for panel in iter_panels(board):
        assert all('instance=~"$peer"' in t["expr"] for t in panel["targets"]), panel["title"]
