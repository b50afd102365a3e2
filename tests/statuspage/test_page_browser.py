"""The status page in a real headless Chromium, fed by a snapshot that moves like a training run.

The page against a live `swarm demo` is tests/e2e/test_status_page.py; this one is quick and runs without a swarm:
it checks rendering, the charts, the refresh without reload, the copy button, a phone-sized screen, and that a peer
name cannot inject markup.
"""
from __future__ import annotations

import threading
import time

import pytest

from swarm_coordinator.statuspage.api import JoinInfo, PeerRow, ServiceHealth, StatusSnapshot, build_status
from swarm_coordinator.statuspage.history import Point
from swarm_coordinator.statuspage.server import StatusPageServer
from tests.statuspage.browser import PageErrors, chart_points, chromium, field_value, wait_for_js

pytestmark = pytest.mark.timeout(180)

JOIN = JoinInfo(coordinator="swarm.example.org:50051", image="swarm-diffusion/trainer:0.1.0",
                token_contact="ask the host for a join token")


class MovingRun:
    """A run that advances each time it is read: samples, epochs and peers go up, loss goes down."""

    def __init__(self):
        self.lock = threading.Lock()
        self.step = 0
        self.start = time.time() - 600

    def __call__(self) -> dict:
        with self.lock:
            self.step += 1
            now = time.time()
            step = self.step
            history = [Point(t=self.start + 10 * i, samples_done=40 * i, global_epoch=i // 2,
                             peers_online=1 + min(i, 40) // 10, samples_per_s=3.0 + (i % 5), loss=1.0 / (1 + 0.1 * i))
                       for i in range(60)]
            peers = [PeerRow(peer_id=f"QmPeer{i:02d}" + "x" * 30, name=name, samples=900 - 100 * i + 8 * step,
                             chunks=10, first_seen=self.start, last_seen=now - 3, alive=True, client_mode=i % 2 == 1,
                             loss=0.3, samples_per_s=3.0)
                     for i, name in enumerate(["alice", "<img src=x onerror=alert(1)>", "carol"][:1 + step % 3])]
            peers.append(PeerRow(peer_id="QmGone" + "y" * 30, name="dave", samples=50, chunks=2,
                                 first_seen=self.start, last_seen=now - 3600, alive=False, client_mode=False))
            snapshot = StatusSnapshot(
                now=now, run_name="moving-run", model="tiny", config_version=2, started=self.start,
                samples_done=2400 + 8 * step, samples_total=2000, data_epochs_done=1, max_data_epochs=3,
                run_complete=False, global_epoch=30 + step, lr=1e-4, peers_online=len(peers) - 1,
                peers_training=len(peers) - 1, join=JOIN, peers=peers, history=history,
                services=[ServiceHealth("coordinator", True), ServiceHealth("dataset service", True),
                          ServiceHealth("bootstrap DHT", False, "its /multiaddrs did not answer")],
                bootstrap_addresses=["/dns4/swarm.example.org/tcp/31337/p2p/QmBootstrap"])
            doc = build_status(snapshot)
            doc["refresh_s"] = 1.0  # the test should not wait 5 s per refresh
            return doc


@pytest.fixture
def page_server():
    server = StatusPageServer(MovingRun(), host="127.0.0.1", port=0, cache_s=0.5)
    yield f"http://127.0.0.1:{server.port}/"
    server.close()


def test_page_renders_refreshes_and_copies_the_join_line(page_server, tmp_path):
    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=page_server.rstrip("/"))
        page = context.new_page()
        errors = PageErrors()
        errors.watch(page)
        page.goto(page_server, wait_until="load")
        wait_for_js(page, "document.querySelector('[data-field=\"run.name\"]').dataset.value === 'moving-run'")
        assert page.text_content('[data-field="run.model"]') == "tiny"
        assert page.text_content('[data-field="run.mode"]').startswith("unknown")
        assert all(n >= 2 for n in chart_points(page).values()), chart_points(page)
        assert page.locator("#leaderboard tr").count() >= 2
        assert page.text_content('[data-service="bootstrap DHT"]').startswith("bootstrap DHT: down")
        # A peer name is text, never markup.
        wait_for_js(page, "[...document.querySelectorAll('#leaderboard td')]"
                               ".some(td => td.textContent.includes('<img'))", timeout=15)
        assert page.locator("#leaderboard img").count() == 0

        page.evaluate("window.__notReloaded = true")
        first_epoch = int(field_value(page, "swarm.global_epoch"))
        first_samples = int(field_value(page, "run.samples_done"))
        wait_for_js(page, f"Number(document.querySelector('[data-field=\"swarm.global_epoch\"]')"
                               f".dataset.value) > {first_epoch}", timeout=15)
        assert int(field_value(page, "run.samples_done")) > first_samples
        assert page.evaluate("window.__notReloaded") is True

        page.click("#copy-join")
        wait_for_js(page, "document.getElementById('copy-state').textContent === 'Copied.'")
        copied = page.evaluate("navigator.clipboard.readText()")
        assert copied == page.text_content("#join-command")
        assert copied.startswith("docker run") and "--coordinator swarm.example.org:50051" in copied
        page.screenshot(path=str(tmp_path / "status-desktop.png"), full_page=True)
        errors.assert_none()
        context.close()


def test_page_fits_a_phone_screen(page_server, tmp_path):
    with chromium() as browser:
        context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
                                      has_touch=True)
        page = context.new_page()
        errors = PageErrors()
        errors.watch(page)
        page.goto(page_server, wait_until="load")
        wait_for_js(page, "document.querySelector('[data-chart=\"loss\"] svg')?.dataset.points > 0")
        # Nothing wider than the screen: the table and the join line scroll inside their own boxes.
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        page.screenshot(path=str(tmp_path / "status-phone.png"), full_page=True)
        errors.assert_none()
        context.close()
