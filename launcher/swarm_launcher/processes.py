"""Process supervision: starting services as child processes, knowing when they are ready, stopping them.

A child runs `python -m swarm_launcher COMMAND ... --ready-file PATH` and writes that file once it serves
(`swarm.procs.write_ready_file`, the foundation's half); `ServiceProcess.wait_ready` reads it back.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarm import lifeline
from swarm.logs import get_logger

logger = get_logger(__name__)


@dataclass
class ServiceProcess:
    name: str
    popen: subprocess.Popen
    ready_file: Path
    log_path: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def wait_ready(self, *, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready_file.exists():
                self.info = json.loads(self.ready_file.read_text())
                return self.info
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self.popen.returncode} before it was ready"
                                   + self.log_tail())
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} was not ready after {timeout:.0f} s" + self.log_tail())

    def log_tail(self) -> str:
        if self.log_path and self.log_path.exists():
            return "\n--- last lines of its log ---\n" + "\n".join(self.log_path.read_text().splitlines()[-30:])
        return ""

    def stop(self, *, timeout: float = 20.0, sig: int = signal.SIGTERM) -> int | None:
        """Ask politely (SIGTERM lets trainers release leases and save), then kill; leave no child behind."""
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                logger.warning(f"{self.name} did not stop in {timeout:.0f} s; killing it")
                self.popen.kill()
                self.popen.wait(timeout=10)
        self._kill_group()
        return self.popen.returncode

    def crash(self) -> None:
        """SIGKILL the whole process group at once, as a machine dying would: no handler runs, nothing is saved."""
        self._kill_group()
        self.popen.wait(timeout=10)

    def _kill_group(self) -> None:
        # Each service runs in its own session, so its group holds what it forked (hivemind's DHT and averager
        # processes, the p2p daemon): gone with it, never orphans that keep ports and look alive to the swarm.
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def start_service(name: str, args: list[str], *, workdir: str | os.PathLike, log_to_file: bool = True,
                  env: dict[str, str] | None = None) -> ServiceProcess:
    """Run `python -m swarm_launcher <args> --ready-file <workdir>/<name>.ready.json` as a child process.

    The child dies with this process (`swarm.lifeline`), however this one ends: a SIGKILL of `swarm host` leaves no
    service holding its ports."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ready_file = workdir / f"{name}.ready.json"
    ready_file.unlink(missing_ok=True)
    log_path = workdir / f"{name}.log" if log_to_file else None
    stdout = open(log_path, "ab") if log_path else None
    popen = subprocess.Popen([sys.executable, "-m", "swarm_launcher", *args, "--ready-file", str(ready_file)],
                             stdout=stdout, stderr=subprocess.STDOUT if stdout else None,
                             env={**os.environ, **(env or {}), **lifeline.child_env()}, start_new_session=True)
    if stdout:
        stdout.close()
    return ServiceProcess(name=name, popen=popen, ready_file=ready_file, log_path=log_path, args=list(args),
                          env=dict(env or {}))


def restart_service(proc: ServiceProcess) -> ServiceProcess:
    """The same command again (same flags, so the same ports and files), e.g. after a crash or a SIGKILL."""
    if proc.popen.poll() is None:
        raise RuntimeError(f"{proc.name} is still running (pid {proc.popen.pid}); stop it first")
    return start_service(proc.name, proc.args, workdir=proc.ready_file.parent, log_to_file=proc.log_path is not None,
                         env=proc.env)
