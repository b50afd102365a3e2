"""The bootstrap DHT's multiaddrs, fetched from its `/multiaddrs` HTTP route.

A host in Docker Compose knows the bootstrap node by service name only; its peer ID sits in a key file on a volume.
Fetching the multiaddrs (and refreshing them: an announce address may change) saves the host from copying them into
the coordinator's flags by hand.
"""
from __future__ import annotations

import json
import threading
import urllib.request
from typing import Any, Callable, Sequence

from swarm.logs import get_logger

logger = get_logger(__name__)


def parse_multiaddrs(payload: Any) -> list[str]:
    """The multiaddrs in a `/multiaddrs` answer; each must name its peer (`/p2p/...`), or a joiner cannot dial it."""
    if not isinstance(payload, dict) or not isinstance(payload.get("multiaddrs"), list):
        raise ValueError(f"expected a JSON object with a 'multiaddrs' list, got {str(payload)[:200]!r}")
    maddrs = payload["multiaddrs"]
    bad = [m for m in maddrs if not isinstance(m, str) or not m.startswith("/") or "/p2p/" not in m]
    if bad:
        raise ValueError(f"not multiaddrs with a /p2p/ peer id: {bad[:3]!r}")
    return list(dict.fromkeys(maddrs))


def merge_bootstrap_peers(static: Sequence[str], fetched: Sequence[str]) -> list[str]:
    """Flag-given addresses first, then fetched ones, without repeats."""
    return list(dict.fromkeys([*static, *fetched]))


class BootstrapPeersSource(threading.Thread):
    """Fetches `url` every `interval` seconds (sooner while it has never succeeded) and hands the merged list to
    `publish`. A failure logs and keeps the last good list: the coordinator serves on regardless."""

    def __init__(self, url: str, *, static: Sequence[str], publish: Callable[[list[str]], None],
                 interval: float = 60.0, retry_interval: float = 2.0, timeout: float = 5.0):
        super().__init__(name="bootstrap-peers", daemon=True)
        self.url, self.static, self.publish = url, list(static), publish
        self.interval, self.retry_interval, self.timeout = interval, retry_interval, timeout
        self.fetched: list[str] = []
        self.up: bool | None = None  # whether the last fetch worked (None: none tried yet); the status page shows it
        self._stop_event = threading.Event()

    def fetch_once(self) -> list[str]:
        with urllib.request.urlopen(self.url, timeout=self.timeout) as response:
            return parse_multiaddrs(json.loads(response.read()))

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                fetched = self.fetch_once()
                if fetched != self.fetched:
                    logger.info(f"bootstrap DHT multiaddrs from {self.url}: {' '.join(fetched)}")
                self.fetched = fetched
                self.publish(merge_bootstrap_peers(self.static, fetched))
                self.up, wait = True, self.interval
            except Exception as e:  # noqa: BLE001 (the bootstrap node may start after us, or restart: keep trying)
                logger.warning(f"could not fetch bootstrap multiaddrs from {self.url}: {e}")
                self.up = False
                wait = self.retry_interval if not self.fetched else self.interval
            self._stop_event.wait(wait)

    def stop(self) -> None:
        self._stop_event.set()
