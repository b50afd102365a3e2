"""A real headless Chromium for the status page tests: Debian's `chromium` driven by Playwright for Python.

No browser download: Playwright launches the system binary (`make test-deps` installs the package). Tests skip,
saying why, where either is missing. Console errors and failed requests are collected, since a page that "works"
while logging errors is still broken.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field

import pytest

CHROMIUM = os.environ.get("SWARM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


@dataclass
class PageErrors:
    console: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)

    def watch(self, page) -> None:
        page.on("console", lambda msg: self.console.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda error: self.console.append(f"uncaught: {error}"))
        page.on("requestfailed", lambda request: self.failed_requests.append(f"{request.url}: {request.failure}"))
        page.on("response", lambda response: self.failed_requests.append(f"{response.url}: {response.status}")
                if response.status >= 400 else None)

    def assert_none(self) -> None:
        assert not self.console, f"console errors: {self.console}"
        assert not self.failed_requests, f"failed requests: {self.failed_requests}"


@contextlib.contextmanager
def chromium():
    """A launched Chromium (Playwright Browser); skips the test when the browser or Playwright is missing."""
    if not os.path.isfile(CHROMIUM) or not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no Chromium at {CHROMIUM}: `apt-get install chromium` (make test-deps does it as root)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright for Python is not installed: pip install -r requirements-test.txt")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            yield browser
        finally:
            browser.close()


def field_value(page, name: str) -> str:
    """The raw value the page shows for a `data-field` (its data-value attribute, unformatted)."""
    return page.get_attribute(f'[data-field="{name}"]', "data-value")


def chart_points(page) -> dict[str, int]:
    return page.eval_on_selector_all(
        "[data-chart]", "els => Object.fromEntries(els.map(e => [e.dataset.chart, "
        "Number(e.querySelector('svg')?.dataset.points || 0)]))")


def wait_for_js(page, expression: str, *, timeout: float = 15.0, interval: float = 0.2):
    """Poll a JS expression until it is truthy; returns its value.

    Playwright's wait_for_function evaluates its predicate with eval(), which the page's Content-Security-Policy
    (rightly) forbids; page.evaluate goes through the DevTools protocol, which the policy does not cover.
    """
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(expression)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for: {expression}")
        page.wait_for_timeout(interval * 1000)
