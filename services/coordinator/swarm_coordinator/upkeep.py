"""The coordinator's periodic chores, run by one background thread: each pass runs every task in turn.

A task that fails is logged and tried again at the next pass; it never stops the loop or the other tasks. Today's
tasks (server.py): pick up config versions stored by `swarm config set`, and reap expired leases so progress and
metrics are exact. A periodic job added later (sampling a history, say) is one more task.
"""
from __future__ import annotations

import threading
from typing import Callable, Sequence

from swarm.logs import get_logger

logger = get_logger(__name__)


class Upkeep:
    def __init__(self, tasks: Sequence[tuple[str, Callable[[], object]]], *, interval: float):
        if not interval > 0:
            raise ValueError(f"upkeep interval must be > 0, got {interval}")
        self.tasks, self.interval = list(tasks), interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="upkeep", daemon=True)

    def start(self) -> "Upkeep":
        self._thread.start()
        return self

    def run_once(self) -> None:
        for name, task in self.tasks:
            try:
                task()
            except Exception:  # noqa: BLE001 (a chore failing must not end the loop: log it, retry next pass)
                logger.exception(f"upkeep task {name!r} failed; retrying")

    def _loop(self) -> None:
        while not self._stopped.wait(self.interval):
            self.run_once()

    def stop(self, *, timeout: float = 10.0) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout)
