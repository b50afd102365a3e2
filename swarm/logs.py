"""One logging setup for every service: `get_logger(__name__)`, never print, for diagnostics."""
from __future__ import annotations

import logging
import os
import sys

_configured = False


def get_logger(name: str) -> logging.Logger:
    global _configured
    if not _configured:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s", "%H:%M:%S"))
        root = logging.getLogger("swarm")
        root.addHandler(handler)
        root.setLevel(os.environ.get("SWARM_LOG_LEVEL", "INFO").upper())
        root.propagate = False
        _configured = True
    # Service packages (swarm_coordinator, ...) hang under the "swarm" logger too, so one handler and level serve all.
    if name != "swarm" and not name.startswith("swarm."):
        name = f"swarm.{name}"
    return logging.getLogger(name)
