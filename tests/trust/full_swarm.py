"""Whole swarms of real trainers for the trust tests: the demo's host services and CPU trainers on loopback (tiny
model, the demo's images), plus a token holder's trainer modified to poison what it sends (bad_trainer.py).

Also what those tests measure afterwards: the diffusion loss of a checkpoint on fixed images, noise and timesteps
(so runs with different data orders compare), and which verdicts the honest peers' logs give each round.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from swarm_launcher.demo import DEMO_CONFIG, coordinator_progress, prepare_demo_data
from swarm_launcher.processes import ServiceProcess

BAD_TRAINER = Path(__file__).with_name("bad_trainer.py")
# The demo trainer's settings (swarm_launcher.demo.start_demo_trainer) with hivemind's round lines in the log, which
# tell which round a verdict belongs to, and a longer averaging timeout: on a loaded 2-core machine one all-reduce of
# the tiny model through the robust reducer takes ~20 s, and a round that times out leaves each peer on its own.
TRAINER_ARGS = ["--batch-size", "2", "--device", "cpu", "--precision", "fp32", "--host-maddrs", "/ip4/127.0.0.1/tcp/0",
                "--matchmaking-time", "3", "--averaging-timeout", "60", "--load-state-timeout", "30",
                "--compression", "none", "--barrier-timeout", "120", "--metrics-port", "0", "--verbose-hivemind",
                "--no-progress"]


@dataclass
class Swarm:
    workdir: Path
    host: object  # swarm_launcher.host.HostServices
    run_config: dict
    n_images: int
    trainers: list[ServiceProcess] = field(default_factory=list)

    @property
    def db_path(self) -> str:
        return str(self.host.workdir / "coordinator.sqlite")

    def progress(self, token: str):
        return coordinator_progress(self.host.coordinator_address, token)

    def start_trainer(self, name: str, token: str, *, bad_attacks: str | None = None) -> ServiceProcess:
        """One CPU trainer process (`swarm train`, or bad_trainer.py with this attack schedule)."""
        from swarm import lifeline

        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        ready_file, log_path = logs / f"{name}.ready.json", logs / f"{name}.log"
        ready_file.unlink(missing_ok=True)
        entry = [str(BAD_TRAINER)] if bad_attacks is not None else ["-m", "swarm_launcher"]
        args = ["train", "--coordinator", self.host.coordinator_address, "--output-dir", str(self.workdir / name),
                "--name", name, *TRAINER_ARGS, "--ready-file", str(ready_file)]
        env = {**os.environ, "SWARM_TOKEN": token, **lifeline.child_env()}
        if bad_attacks is not None:
            env.update(SWARM_TEST_ATTACKS=bad_attacks, SWARM_TEST_ATTACK_LOG=str(self.attack_log(name)))
        with open(log_path, "ab") as log:
            popen = subprocess.Popen([sys.executable, *entry, *args], stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        trainer = ServiceProcess(name=name, popen=popen, ready_file=ready_file, log_path=log_path, args=args)
        self.trainers.append(trainer)
        return trainer

    def attack_log(self, name: str) -> Path:
        return self.workdir / f"{name}.attacks.jsonl"

    def summary(self, name: str) -> dict:
        return json.loads((self.workdir / name / "summary.json").read_text())

    def stop(self) -> None:
        for trainer in self.trainers:
            trainer.stop(timeout=30)
        self.host.stop()


def start_swarm(workdir: Path, *, config: dict | None = None, credential_lifetime: float | None = None) -> Swarm:
    """Host services of a demo swarm (no trainers yet) with this run config on top of the demo's.

    As swarm_launcher.demo.start_demo_host, with a short peer TTL (a revoked peer stops counting as training soon,
    so the end barrier does not wait for it) and, when given, a short credential lifetime."""
    from swarm_launcher.host import start_host

    run_config = {**DEMO_CONFIG, **(config or {})}
    config_path, index, objects, n_images = prepare_demo_data(workdir, run_config)
    host = start_host(workdir / "host", config_path=str(config_path), run_id=workdir.name, index_path=str(index),
                      storage=objects, bind_host="127.0.0.1", coordinator_port=0, dataset_port=0, dht_port=0,
                      metrics_ports=(0, 0, 0), lease_ttl=120, peer_ttl=20, heartbeat_interval=2,
                      credential_lifetime=credential_lifetime, status_port=None)
    return Swarm(workdir=workdir, host=host, run_config=run_config, n_images=n_images)


def active_leases(db_path: str, peer_id: str) -> int:
    """How many leases the coordinator's database holds active for this peer."""
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{db_path}")
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT COUNT(*) FROM leases WHERE peer_id = :p AND state = 'active'"),
                                    {"p": peer_id}).scalar())
    finally:
        engine.dispose()


# --- what the tests measure -------------------------------------------------------------------------------------

def unet_tensors(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(checkpoint) / "unet" / "diffusion_pytorch_model.safetensors"))


def eval_loss(checkpoint: str | Path, images: Path, *, seed: int, resolution: int = 64) -> float:
    """The diffusion loss of a checkpoint's UNet on every image of `images`, with noise and timesteps fixed by two
    generator seeds: the same for every checkpoint, so "within 10%" compares models, not draws."""
    from PIL import Image, ImageOps

    from swarm_trainer.model import build_tiny
    from swarm_trainer.step import StepOptions, compute_loss, pil_to_pixels, tokenize

    models = build_tiny(seed=seed)
    models.unet.load_state_dict(unet_tensors(checkpoint))
    for model in (models.unet, models.vae, models.text_encoder):
        model.eval()
    pictures = [ImageOps.fit(Image.open(p).convert("RGB"), (resolution, resolution))
                for p in sorted(images.iterdir()) if p.suffix.lower() in (".png", ".jpg", ".jpeg")]
    pixels = pil_to_pixels(pictures)
    input_ids = tokenize(models.tokenizer, [f"a photograph number {i}" for i in range(len(pictures))])
    losses = []
    with torch.no_grad():
        for generator_seed in (1, 2, 3, 4):
            losses.append(float(compute_loss(models, pixels, input_ids, options=StepOptions(),
                                             generator=torch.Generator().manual_seed(generator_seed))))
    return sum(losses) / len(losses)


_ROUND = re.compile(r"Beginning optimizer step #(\d+)")
_VERDICT = re.compile(r"_grad_averager: (clipped|dropped) the contribution of (\w+)")
_REFUSED_ANSWER = re.compile(r"_grad_averager: refused the averaged slice (\w+) sent back")
_UNUSED_ANSWER = re.compile(r"_grad_averager: did not use the averaged slice (\w+) sent back")


def verdict_events(log_path: Path, peer_id: str) -> list[tuple[int, str]]:
    """(epoch, verdict) for each verdict this honest trainer's gradient averager logged on `peer_id`, in log order;
    the epoch is that of hivemind's last "Beginning optimizer step #E" line before it (--verbose-hivemind logs it).
    Verdicts: clipped, dropped (its part), answer refused, answer unused (its reducer's answer)."""
    epoch, found = -1, []
    for line in log_path.read_text(errors="replace").splitlines():
        if (m := _ROUND.search(line)) is not None:
            epoch = int(m.group(1))
        elif (m := _VERDICT.search(line)) is not None and m.group(2) == peer_id:
            found.append((epoch, m.group(1)))
        elif (m := _REFUSED_ANSWER.search(line)) is not None and m.group(1) == peer_id:
            found.append((epoch, "answer refused"))
        elif (m := _UNUSED_ANSWER.search(line)) is not None and m.group(1) == peer_id:
            found.append((epoch, "answer unused"))
    return found


# A round's verdicts come under an epoch line near the epoch the bad peer recorded for it: one before (a groupmate one
# epoch behind averages with it: hivemind's group keys carry no epoch) to two after (an all-reduce that outlived the
# groupmate's averaging timeout logs its verdicts after the groupmate went on to its next steps).
EPOCHS_BEFORE, EPOCHS_AFTER = 1, 2
JUDGING = ("clipped", "dropped")


def match_verdicts(rounds: list[dict], events: dict[str, list[tuple[int, str]]],
                   names_in_group: Callable[[dict], list[str]]) -> list[dict[str, str]]:
    """For each of the bad peer's rounds, {honest name: verdict} of the part verdicts (clipped/dropped) that judged
    it. A verdict counts for a round when its name is in the round's group (`names_in_group`) and its epoch is in the
    round's window (EPOCHS_BEFORE/AFTER); each verdict counts for at most one round, so two neighbouring attack
    rounds cannot both count it, however wide the window.

    First a maximum matching gives as many rounds as possible one verdict each (rounds earlier in the given order and
    verdicts of closer epochs win ties). Greedy first-come matching was wrong: a groupmate that never received one
    round's part (its reducer got 50% of the parts) had its verdict on the next round taken by the earlier one, which
    left the next round with none (a CI run). Then every round takes the closest remaining verdict of each other
    groupmate."""
    remaining = {name: [e for e in found if e[1] in JUDGING] for name, found in events.items()}

    def candidates(r: dict, exclude: set[str] = frozenset()) -> list[tuple[str, int]]:
        found = [(abs(epoch - r["epoch"]), name, i) for name in names_in_group(r) if name not in exclude
                 for i, (epoch, _) in enumerate(remaining.get(name, []))
                 if r["epoch"] - EPOCHS_BEFORE <= epoch <= r["epoch"] + EPOCHS_AFTER]
        return [(name, i) for _, name, i in sorted(found, key=lambda c: c[0])]

    owner: dict[tuple[str, int], int] = {}  # verdict -> the round it counts for

    def assign(k: int, visited: set) -> bool:  # Kuhn's augmenting path
        for verdict in candidates(rounds[k]):
            if verdict in visited:
                continue
            visited.add(verdict)
            if verdict not in owner or assign(owner[verdict], visited):
                owner[verdict] = k
                return True
        return False

    for k in range(len(rounds)):
        assign(k, set())
    matched: list[dict[str, str]] = [{} for _ in rounds]
    for (name, i), k in owner.items():
        matched[k][name] = remaining[name][i][1]
    for k, r in enumerate(rounds):
        for name, i in candidates(r, exclude=set(matched[k])):
            if (name, i) not in owner and name not in matched[k]:
                owner[(name, i)] = k
                matched[k][name] = remaining[name][i][1]
    return matched


def attack_rounds(path: Path) -> list[dict]:
    """The bad trainer's log: one {"epoch", "attack", "time"} per round it sent."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
