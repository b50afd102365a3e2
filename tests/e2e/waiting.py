"""Polling a condition with a deadline: how the end-to-end tests wait for a real swarm (never a bare sleep)."""
from __future__ import annotations

import time


def wait_until(condition, *, timeout: float, what: str, interval: float = 0.2):
    """Return the condition's first truthy value; TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
