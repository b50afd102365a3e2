"""Ready files: how a service tells whoever started it that it serves, and on which addresses and ports.

Every long-running command takes `--ready-file PATH`: once it serves, it writes a JSON object there (its bound
addresses, ports, multiaddrs). Port 0 works everywhere, so tests and the demo never race for fixed ports. Starting and
stopping the processes is the launcher's half (`swarm_launcher.processes`).
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any


def write_ready_file(path: str | os.PathLike | None, **info: Any) -> None:
    """Atomically publish what a service bound, so a parent can read it the moment it appears."""
    if not path:
        return
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), **info}))
    os.replace(tmp, path)


def free_port() -> int:
    """A TCP port free right now on loopback (for services that must know each other's port before binding)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
