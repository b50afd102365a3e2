"""One mode of bench/wan.py: real host services and `swarm train` peers, each in its namespace of the emulated WAN.

Every process is the real command (`swarm bootstrap-dht`, `swarm coordinator`, `swarm dataset serve`, `swarm train`)
started with `ip netns exec`; a poller in the host's namespace records the coordinator's progress and the trainers'
metrics once a second; the bench itself reads the peers' interface counters. Whatever happens, every process is
stopped (SIGTERM, then SIGKILL of its session) before the mode returns.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench._wan_net import SVC_NET, WAN_NET, Wan

REPO = Path(__file__).resolve().parent.parent
DHT_PORT, COORDINATOR_PORT, DATASET_PORT, P2P_PORT, METRICS_PORT = 31337, 50051, 50052, 31340, 9102
READY_TIMEOUT_S = 180


def swarm_command() -> list[str]:
    """The `swarm` console script of this environment (the launcher moves; the entry point stays)."""
    script = Path(sys.executable).parent / "swarm"
    return [str(script)] if script.exists() else [sys.executable, "-m", "swarm_launcher"]


def supported_flags(subcommand: list[str], *flags: str) -> set[str]:
    """Which of `flags` `swarm SUBCOMMAND --help` knows (the bench runs on a tree whose CLI keeps growing)."""
    done = subprocess.run([*swarm_command(), *subcommand, "--help"], capture_output=True, text=True, timeout=120)
    return {flag for flag in flags if flag in done.stdout}


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path
    ready_file: Path | None = None

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready_file and self.ready_file.exists():
                return json.loads(self.ready_file.read_text())
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}) before it was ready:\n{self.tail()}")
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f} s:\n{self.tail()}")

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""

    def stop(self, timeout: float = 60.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        try:  # its own session: hivemind's forked processes and p2pd go with it
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def stop_all(procs: list[Proc], *, timeout: float) -> None:
    """SIGTERM to every process at once (trainers release leases and save in parallel), then stop each in turn."""
    for proc in procs:
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in reversed(procs):
        proc.stop(timeout=max(0.1, deadline - time.monotonic()))


def start(wan: Wan, namespace: str, name: str, args: list[str], *, logs: Path, env: dict | None = None,
          ready: bool = True, module: str | None = None) -> Proc:
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{name}.log"
    ready_file = logs / f"{name}.ready.json" if ready else None
    command = [sys.executable, "-m", module] if module else swarm_command()
    argv = [*wan.exec_prefix(namespace), *command, *args, *(["--ready-file", str(ready_file)] if ready else [])]
    with open(log, "ab") as out:
        # SWARM_INSECURE: plaintext gRPC between network namespaces of this one machine (a bench, no real WAN).
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
                                 env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
                                      "SWARM_INSECURE": "1", **(env or {})})
    return Proc(name=name, popen=popen, log=log, ready_file=ready_file)


def write_dataset(folder: Path, *, crops_per_photo: int, size: int, seed: int) -> int:
    """The demo photographs (scikit-image, hand-written captions) as `crops_per_photo` random square crops each,
    size x size: enough chunks that 4 peers never wait for one another's leases. Returns how many were written."""
    import random

    from PIL import Image

    from swarm_launcher.demo_images import write_demo_folder

    photos = folder.parent / f"{folder.name}-photos"
    write_demo_folder(photos)
    folder.mkdir(parents=True, exist_ok=True)
    rng, written = random.Random(seed), 0
    for path in sorted(p for p in photos.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")):
        caption = path.with_suffix(".txt").read_text() if path.with_suffix(".txt").exists() else ""
        with Image.open(path) as source:
            photo = source.convert("RGB")
        for k in range(crops_per_photo):
            side = int(min(photo.size) * rng.uniform(0.5, 1.0))
            left, top = rng.randint(0, photo.width - side), rng.randint(0, photo.height - side)
            crop = photo.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
            if rng.random() < 0.5:
                crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
            crop.save(folder / f"{path.stem}-{k}.png")
            (folder / f"{path.stem}-{k}.txt").write_text(caption)
            written += 1
    return written


def ingest(images: Path, *, index: Path, storage: str, config_path: Path) -> None:
    done = subprocess.run([*swarm_command(), "ingest", str(images), "--index", str(index), "--storage", storage,
                           "--config", str(config_path), "--no-progress"], capture_output=True, text=True,
                          timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"swarm ingest failed:\n{done.stdout}\n{done.stderr}")


@dataclass
class ModeRun:
    """What one mode's run left behind, for bench/wan.py to turn into figures."""
    name: str
    workdir: Path
    summaries: list[dict[str, Any]]
    progress: list[dict[str, Any]]  # the poller's lines
    links: list[tuple[float, list[dict]]] = field(default_factory=list)  # (time, all_link_bytes) readings
    wall_s: float = 0.0


def run_mode(wan: Wan, *, name: str, workdir: Path, run_config: dict, index: Path, storage: str,
             trainer_args: list[str], batch_size: int, timeout: float) -> ModeRun:
    """Host services + one `swarm train` per peer namespace, until every trainer has exited."""
    from swarm_coordinator.tokens import create_token

    if workdir.exists():  # a rerun starts a new swarm: a finished coordinator database would train nothing
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    logs = workdir / "logs"
    config_path = workdir / "run.yaml"
    config_path.write_text(yaml.safe_dump(run_config))
    host_wan, host_svc = wan.host_ip(WAN_NET), wan.host_ip(SVC_NET)
    # As `swarm host` runs it: the DHT admits only peers with the coordinator's credentials (swarm.trust).
    trust = ["--coordinator-key-file", str(workdir / "coordinator-signing.key")] if supported_flags(
        ["bootstrap-dht"], "--coordinator-key-file") else []
    # The poller scrapes every trainer's /metrics from the host's namespace, over the svc network.
    metrics_host = ["--metrics-host", "0.0.0.0"] if supported_flags(["train"], "--metrics-host") else []
    procs: list[Proc] = []
    try:
        dht = start(wan, wan.host, "bootstrap-dht", [
            "bootstrap-dht", "--identity-path", str(workdir / "bootstrap.key"), *trust,
            "--host-maddrs", f"/ip4/{host_wan}/tcp/{DHT_PORT}", "--metrics-port", "9103"], logs=logs)
        procs.append(dht)
        dht.wait_ready()
        coordinator = start(wan, wan.host, "coordinator", [
            "coordinator", "--listen", f"0.0.0.0:{COORDINATOR_PORT}", "--db", str(workdir / "coordinator.sqlite"),
            "--run-id", f"wan-{name}", "--config", str(config_path), "--dataset", f"127.0.0.1:{DATASET_PORT}",
            "--dataset-public-address", f"{host_svc}:{DATASET_PORT}", "--metrics-port", "9100",
            "--bootstrap-peers-url", "http://127.0.0.1:9103/multiaddrs", "--heartbeat-interval", "2",
            "--sync-interval", "1"], logs=logs)
        procs.append(coordinator)
        coordinator.wait_ready()
        dataset = start(wan, wan.host, "dataset", [
            "dataset", "serve", "--listen", f"0.0.0.0:{DATASET_PORT}", "--index", str(index), "--storage", storage,
            "--coordinator", f"127.0.0.1:{COORDINATOR_PORT}", "--metrics-port", "9101"], logs=logs)
        procs.append(dataset)
        dataset.wait_ready()
        token = create_token(str(workdir / "coordinator.sqlite"), name="wan-bench")
        _wait_for_chunks(wan, coordinator_address=f"127.0.0.1:{COORDINATOR_PORT}", token=token, logs=logs)

        progress_file = workdir / "progress.jsonl"
        poller = start(wan, wan.host, "poller", [
            "--coordinator", f"127.0.0.1:{COORDINATOR_PORT}", "--out", str(progress_file), "--trainer-metrics",
            *(f"http://{wan.peer_ip(i, SVC_NET)}:{METRICS_PORT}/metrics" for i in range(wan.peers))],
            logs=logs, env={"SWARM_TOKEN": token}, ready=False, module="bench._wan_poll")
        procs.append(poller)

        links = [(time.time(), wan.all_link_bytes())]
        started = time.monotonic()
        trainers = [start(wan, wan.peer(i), f"trainer-{i}", [
            "train", "--coordinator", f"{host_svc}:{COORDINATOR_PORT}", "--output-dir", str(workdir / f"trainer-{i}"),
            "--name", f"wan-peer-{i}", "--batch-size", str(batch_size), "--device", "cpu", "--precision", "fp32",
            "--host-maddrs", f"/ip4/{wan.peer_ip(i)}/tcp/{P2P_PORT}", "--metrics-port", str(METRICS_PORT),
            "--no-progress", *metrics_host, *trainer_args], logs=logs, env={"SWARM_TOKEN": token})
            for i in range(wan.peers)]
        procs += trainers
        deadline = time.monotonic() + timeout
        while any(t.popen.poll() is None for t in trainers):
            failed = [t for t in trainers if t.popen.poll() not in (None, 0)]
            if failed:
                raise RuntimeError(f"{failed[0].name} exited with {failed[0].popen.returncode}:\n{failed[0].tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"mode {name} did not finish in {timeout:.0f} s; logs in {logs}")
            time.sleep(2.0)
            links.append((time.time(), wan.all_link_bytes()))
        wall = time.monotonic() - started
        links.append((time.time(), wan.all_link_bytes()))
        failed = [t for t in trainers if t.popen.returncode != 0]
        if failed:
            raise RuntimeError(f"{failed[0].name} exited with {failed[0].popen.returncode}:\n{failed[0].tail()}")
    finally:
        stop_all(procs, timeout=30)
        wan.kill_processes()
    (workdir / "links.json").write_text(json.dumps(links))  # the interface counters over time, for a closer look
    summaries = [json.loads((workdir / f"trainer-{i}" / "summary.json").read_text()) for i in range(wan.peers)]
    progress = [json.loads(line) for line in progress_file.read_text().splitlines() if line.strip()]
    return ModeRun(name=name, workdir=workdir, summaries=summaries, progress=progress, links=links, wall_s=wall)


def _wait_for_chunks(wan: Wan, *, coordinator_address: str, token: str, logs: Path, timeout: float = 120) -> None:
    """Until the coordinator has cut the dataset into chunks (it syncs from the dataset service in the background),
    so no trainer starts into an empty queue and every mode starts its clock on the same footing."""
    code = ("import sys,grpc\nfrom swarm.rpc import channel, token_metadata\n"
            "from swarm.v1 import coordinator_pb2 as pb, coordinator_pb2_grpc as g\n"
            "with channel(sys.argv[1]) as ch:\n"
            "    p = g.CoordinatorStub(ch).GetProgress(pb.GetProgressRequest(), metadata=token_metadata(sys.argv[2]),"
            " timeout=5)\n"
            "print(p.chunks_total)\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run([*wan.exec_prefix(wan.host), sys.executable, "-c", code, coordinator_address, token],
                              capture_output=True, text=True, timeout=30, cwd=REPO)
        if done.returncode == 0 and int(done.stdout.strip() or 0) > 0:
            return
        time.sleep(1.0)
    raise TimeoutError(f"the coordinator cut no chunks in {timeout:.0f} s; see {logs}")
