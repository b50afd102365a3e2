"""A real Prometheus server on loopback that scrapes the end-to-end swarm (Debian's `prometheus`; `make test-deps`).

tests/e2e/conftest.py enters `running_prometheus(workdir, targets_file)` around the shared swarm run. The scrape jobs
and alert rules are the deploy ones (deploy/prometheus/), so the names the dashboards select on are the names a host
gets; only discovery differs: every job reads the file_sd targets the demo writes (labelled job=...), scraped each
second so a few-minute run gives dense series.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from swarm.logs import get_logger
from swarm.procs import free_port

logger = get_logger(__name__)

REPO = Path(__file__).resolve().parents[2]
DEPLOY_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
SCRAPE_INTERVAL_S = 1


class PrometheusError(RuntimeError):
    """Prometheus answered an API call with an error (a bad query, or it is not up)."""


@dataclass
class PrometheusUnavailable:
    """Stands in for the server when it would not start, so the swarm tests still run and the Prometheus tests fail
    with this reason instead of taking the shared swarm run down with them."""
    reason: str


@dataclass
class PrometheusServer:
    url: str
    process: subprocess.Popen
    log_path: Path
    scrape_interval_s: float = SCRAPE_INTERVAL_S

    def api(self, path: str, *, timeout: float = 30.0, **params: Any) -> Any:
        """GET /api/v1/<path>; returns the `data` of a successful answer, raises PrometheusError otherwise."""
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None}, doseq=True)
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as e:  # 400/422 carry Prometheus' own explanation
            body = json.loads(e.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, *, at: float | None = None) -> list[dict[str, Any]]:
        return self.api("query", query=expr, time=at)["result"]

    def query_range(self, expr: str, *, start: float, end: float, step: float = 1.0) -> list[dict[str, Any]]:
        return self.api("query_range", query=expr, start=start, end=end, step=step)["result"]

    def series(self, match: str, *, start: float, end: float) -> list[dict[str, str]]:
        return self.api("series", **{"match[]": match, "start": start, "end": end})

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def scrape_config(targets_file: str | Path, *, deploy_config: str | Path = DEPLOY_CONFIG,
                  scrape_interval_s: int = SCRAPE_INTERVAL_S) -> dict[str, Any]:
    """The deploy config's jobs and rule files, each job discovering its targets in `targets_file` by its job label."""
    deploy_config = Path(deploy_config)
    deploy = yaml.safe_load(deploy_config.read_text())
    interval = f"{scrape_interval_s}s"
    return {
        "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
        "rule_files": [str((deploy_config.parent / rule).resolve()) for rule in deploy.get("rule_files", [])],
        "scrape_configs": [{
            "job_name": job["job_name"],
            "file_sd_configs": [{"files": [str(Path(targets_file).resolve())], "refresh_interval": interval}],
            # Targets carry job=... from the demo; a job the deploy config lacks is never scraped, and the test says so.
            "relabel_configs": [{"source_labels": ["job"], "regex": job["job_name"], "action": "keep"}],
        } for job in deploy["scrape_configs"]],
    }


def _start(binary: str, workdir: Path, config_path: Path, *, ready_timeout: float) -> PrometheusServer:
    port = free_port()
    log_path = workdir / "prometheus.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [binary, f"--config.file={config_path}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1d", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    server = PrometheusServer(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited with code {process.returncode}:\n{server.log_tail()}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as response:
                if response.status == 200:
                    return server
        time.sleep(0.2)
    _stop(process)
    raise TimeoutError(f"prometheus was not ready after {ready_timeout:.0f} s:\n{server.log_tail()}")


def _stop(process: subprocess.Popen, *, timeout: float = 30.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextlib.contextmanager
def running_prometheus(workdir: str | Path, targets_file: str | Path, *, ready_timeout: float = 60.0,
                       attempts: int = 3) -> Iterator[PrometheusServer | PrometheusUnavailable | None]:
    """Prometheus scraping whatever `targets_file` lists; yields None (with a warning) when it is not installed and
    PrometheusUnavailable when it is but would not start."""
    binary = shutil.which("prometheus")
    if binary is None:
        logger.warning("prometheus is not installed (`make test-deps` installs it); the swarm runs unscraped")
        yield None
        return
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(scrape_config(targets_file), sort_keys=False))
    server = None
    for attempt in range(1, attempts + 1):
        try:  # free_port() can race with another process taking the port before Prometheus binds it
            server = _start(binary, workdir, config_path, ready_timeout=ready_timeout)
            break
        except (RuntimeError, TimeoutError) as e:
            logger.warning(f"prometheus failed to start (attempt {attempt} of {attempts}): {e}")
            failure = str(e)
    if server is None:
        yield PrometheusUnavailable(reason=f"prometheus would not start: {failure}")
        return
    try:
        yield server
    finally:
        _stop(server.process)
