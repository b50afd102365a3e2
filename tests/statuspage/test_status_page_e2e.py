"""The status page in a real headless Chromium while `swarm demo` trains: a whole swarm of real processes.

Checks what a visitor relies on: the page loads without console errors, its numbers equal `swarm status --json`
at the same moment (the trainers are frozen with SIGSTOP for that moment, so both read one state), the charts have
points, the peer count and the samples advance without a reload, and the copy button puts the join line on the
clipboard. A screenshot is saved under the test's tmp_path; SWARM_UPDATE_SCREENSHOT=1 also writes the README's
docs/images/status-page.png.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.statuspage.browser import PageErrors, chart_points, chromium, field_value, wait_for_js

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
README_SCREENSHOT = REPO / "docs" / "images" / "status-page.png"
# The page's data-field -> `swarm status --json` key, for the numbers both show.
SAME_NUMBERS = {"run.samples_done": "samples_done", "run.samples_per_data_epoch": "samples_total",
                "run.data_epochs_done": "data_epochs_done", "run.max_data_epochs": "max_data_epochs",
                "run.config_version": "config_version", "swarm.global_epoch": "swarm_epoch",
                "swarm.peers_online": "peers_alive", "swarm.peers_training": "peers_training"}


def _wait(condition, *, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


@contextlib.contextmanager
def running_demo(workdir: Path, log_path: Path):
    """`swarm demo` as a user runs it, in its own session; SIGTERM (it stops its swarm) then SIGKILL at the end."""
    with open(log_path, "w") as log:
        demo = subprocess.Popen([sys.executable, "-m", "swarm_launcher", "demo", "--workdir", str(workdir),
                                 "--data-epochs", "3"], stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                start_new_session=True)
        try:
            yield demo
        finally:
            _resume_trainers(workdir)
            if demo.poll() is None:
                demo.send_signal(signal.SIGTERM)
                try:
                    demo.wait(timeout=180)
                except subprocess.TimeoutExpired:
                    os.killpg(demo.pid, signal.SIGKILL)
                    demo.wait(timeout=30)


def _trainer_groups(workdir: Path) -> list[int]:
    """Process groups of the demo's trainers (each runs in its own session, hivemind's helpers included)."""
    groups = []
    for ready in sorted((workdir / "logs").glob("trainer-*.ready.json")):
        with contextlib.suppress(ProcessLookupError, ValueError, KeyError, OSError):
            groups.append(os.getpgid(json.loads(ready.read_text())["pid"]))
    return groups


def _freeze_trainers(workdir: Path) -> None:
    for group in _trainer_groups(workdir):
        os.killpg(group, signal.SIGSTOP)


def _resume_trainers(workdir: Path) -> None:
    for group in _trainer_groups(workdir):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGCONT)


def _status_json(coordinator: str, token: str) -> dict:
    result = subprocess.run([sys.executable, "-m", "swarm_launcher", "status", "--coordinator", coordinator,
                             "--token", token, "--json"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _page_numbers(page) -> dict[str, str]:
    return {name: field_value(page, name) for name in [*SAME_NUMBERS, "swarm.lr"]}


def test_status_page_while_swarm_demo_trains(tmp_path):
    from swarm_coordinator.tokens import create_token

    workdir, log_path = tmp_path / "demo", tmp_path / "demo.log"
    with chromium() as browser, running_demo(workdir, log_path) as demo:
        def printed_url():
            assert demo.poll() is None, f"swarm demo exited early:\n{log_path.read_text()[-3000:]}"
            match = re.search(r"status page: (http://\S+)", log_path.read_text())
            return match and match.group(1)

        url = _wait(printed_url, timeout=300, what="swarm demo to print the status page URL")
        coordinator = json.loads((workdir / "host" / "logs" / "coordinator.ready.json").read_text())["grpc_address"]
        token = create_token(str(workdir / "host" / "coordinator.sqlite"), name="status-page-test")

        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=url.rstrip("/"))
        page = context.new_page()
        errors = PageErrors()
        errors.watch(page)
        page.goto(url, wait_until="load")
        # The page names the run by --run-name or its model, never by the run id (only admitted peers learn it).
        wait_for_js(page, "document.querySelector('[data-field=\"run.name\"]').dataset.value === 'tiny fine-tune'",
                    timeout=30)
        page.evaluate("window.__notReloaded = true")
        peers_at_load = int(field_value(page, "swarm.peers_online"))
        samples_at_load = int(field_value(page, "run.samples_done"))

        # The peer count and the samples advance while the page stays loaded.
        if peers_at_load < 2:
            wait_for_js(page, "Number(document.querySelector('[data-field=\"swarm.peers_online\"]').dataset.value)"
                              " >= 2", timeout=300)
        wait_for_js(page, f"Number(document.querySelector('[data-field=\"run.samples_done\"]').dataset.value)"
                          f" > {samples_at_load}", timeout=300)
        assert page.evaluate("window.__notReloaded") is True
        history = page.evaluate("fetch('api/status').then(r => r.json()).then(d => d.history.peers_online)")
        assert min(history) < max(history) or peers_at_load < 2, history  # the chart saw the peers arrive

        # The charts have points (the history is sampled every 5 s; the loss once peers report one).
        wait_for_js(page, "[...document.querySelectorAll('[data-chart] svg')]"
                          ".every(svg => Number(svg.dataset.points) >= 2)", timeout=120)
        assert all(n >= 2 for n in chart_points(page).values()), chart_points(page)

        # Its numbers equal `swarm status --json` at the same moment: freeze the trainers, let the page refresh
        # past its cache, then read both.
        _freeze_trainers(workdir)
        try:
            frozen_at = time.time()
            wait_for_js(page, f"Number(document.body.dataset.generatedAt) > {frozen_at + 0.5}", timeout=30)
            shown = _page_numbers(page)
            status = _status_json(coordinator, token)
            assert _page_numbers(page) == shown  # no refresh in between
        finally:
            _resume_trainers(workdir)
        for field_name, key in SAME_NUMBERS.items():
            assert int(shown[field_name]) == status[key], (field_name, shown[field_name], key, status[key])
        assert float(shown["swarm.lr"]) == pytest.approx(status["lr"], rel=1e-6)

        # The copy button puts the join line on the clipboard.
        page.click("#copy-join")
        wait_for_js(page, "document.getElementById('copy-state').textContent === 'Copied.'")
        copied = page.evaluate("navigator.clipboard.readText()")
        assert copied == page.text_content("#join-command")
        assert f"--coordinator {coordinator}" in copied and copied.startswith("docker run")

        screenshot = tmp_path / "status-page.png"
        page.screenshot(path=str(screenshot), full_page=True)
        if os.environ.get("SWARM_UPDATE_SCREENSHOT"):
            README_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(screenshot, README_SCREENSHOT)
        errors.assert_none()
        context.close()
