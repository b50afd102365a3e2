"""Reading the provisioned Grafana dashboards and alert rules as PromQL: shared by tests/deploy and tests/e2e.

Grafana variables have no meaning to Prometheus, so `substitute_variables` replaces them the way Grafana would for a
given scrape interval, and fails loudly on one it does not know (a new variable needs a sensible value here).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import yaml

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "deploy" / "grafana" / "dashboards"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"

_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
# Our metric names all carry a service prefix; `up` is Prometheus' own.
_METRIC = re.compile(r"\b(swarm_[a-z0-9_]+|up)\b(?!\s*\()")
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref_id: str
    expr: str

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel} / {self.ref_id}: {self.expr}"


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def load_dashboard(path: Path) -> dict:
    return json.loads(path.read_text())


def iter_panels(dashboard: dict) -> Iterator[dict]:
    """Every panel, including those nested in collapsed rows; rows themselves are skipped."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def panel_queries() -> list[PanelQuery]:
    queries = []
    for path in dashboard_files():
        dashboard = load_dashboard(path)
        for panel in iter_panels(dashboard):
            for target in panel.get("targets", []):
                queries.append(PanelQuery(dashboard=dashboard["title"], panel=panel["title"],
                                          ref_id=target.get("refId", "?"), expr=target.get("expr", "")))
    return queries


def alert_expressions() -> dict[str, str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule}


def substitute_variables(expr: str, *, scrape_interval_s: float, range_s: float = 3600.0) -> str:
    """Grafana's built-in variables as Grafana computes them; dashboard variables as "all values"."""
    rate_interval = f"{int(max(4 * scrape_interval_s, scrape_interval_s + scrape_interval_s))}s"
    values = {
        "__rate_interval": rate_interval,
        "__interval": f"{int(scrape_interval_s)}s",
        "__range": f"{int(range_s)}s",
        "peer": ".+",  # the per-peer dashboard's multi-value variable, with "All" selected (its allValue)
    }

    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"unknown Grafana variable ${name} in {expr!r}: "
                           "give it a value in tests/deploy/dashboards.py")
        return values[name]

    return _VARIABLE.sub(replace, expr)


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (label names and function names excluded)."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_label_lists = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", without_strings)
    return set(_METRIC.findall(without_label_lists))


def metric_family(name: str) -> str:
    """The family Prometheus' metadata lists a series under (histogram parts belong to their histogram)."""
    for suffix in _HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name
