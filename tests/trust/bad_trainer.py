"""A token holder's trainer, modified to poison what it sends: `python tests/trust/bad_trainer.py train ARGS...`.

Test-side only (issue 10, "Bad peer"): the product has no switch for this. The script patches two hivemind methods in
this process and then runs the real `swarm train` main:
- `GradientAverager.load_accumulators_into_averager_`, when called from `GradientAverager.step` (the point where the
  local gradients enter the averager, just before the all-reduce may start): the averaged tensors are corrupted in
  place, so the corruption is exactly what goes over the wire to the groupmates. The honest values are kept aside.
- `Optimizer._load_averaged_gradients_into_optimizer_`: the honest values are put back first, so this peer steps with
  its own local gradient. A real attacker keeps a sane model too, and it lets every later round corrupt a sane
  gradient (x1e6 of a NaN model would be NaN again).

Environment:
- SWARM_TEST_ATTACKS: comma-separated attack per averaging round, in order (nan, inf, x1e6, flip_x10, or none);
  after the last, the peer sends honest gradients. A round that fails on this side is tried again with the same
  attack (at most MAX_TRIES rounds each). An entry `KIND@SECONDS` waits until SECONDS after the first
  attack before sending KIND (rounds before that are honest): a peer caught sending non-finite values is left out by
  the honest peers for a while (TrustSettings.ban_s), so a second non-finite kind must wait that out to be seen.
- SWARM_TEST_ATTACK_LOG: a JSON-lines file; one line per round: {"epoch", "attack", "time", "group"}, where group
  lists the peer ids the round was averaged with (null when the round failed: the poison reached nobody).

Like any attacker, it also never bans a groupmate itself (its own guard would refuse the honest answers to a flipped
part and leave their senders out of its groups, which only keeps its poison away from them).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time

import torch

ATTACKS = ("nan", "inf", "x1e6", "flip_x10", "none")
MAX_TRIES = 3


def corrupt_(tensor: torch.Tensor, attack: str) -> None:
    """Apply one attack to a gradient tensor in place."""
    if attack == "nan":
        tensor.fill_(math.nan)
    elif attack == "inf":
        tensor.fill_(math.inf)
    elif attack == "x1e6":
        tensor.mul_(1e6)
    elif attack == "flip_x10":
        tensor.mul_(-10.0)
    elif attack != "none":
        raise ValueError(f"unknown attack {attack!r}; one of {', '.join(ATTACKS)}")


def parse_schedule(text: str) -> list[tuple[str, float]]:
    """'flip_x10,x1e6,nan,inf@70' -> [(attack, not before this many seconds after the first attack)]."""
    schedule = []
    for entry in filter(None, (e.strip() for e in text.split(","))):
        attack, _, after = entry.partition("@")
        if attack not in ATTACKS:
            raise ValueError(f"unknown attack {attack!r} in SWARM_TEST_ATTACKS; one of {', '.join(ATTACKS)}")
        schedule.append((attack, float(after or 0.0)))
    return schedule


class Attacker:
    def __init__(self, schedule: list[tuple[str, float]], log_path: str | None):
        self.schedule, self.log_path = list(schedule), log_path
        self.first_attack_at: float | None = None
        self.epoch = -1
        self.honest: dict[int, list[torch.Tensor]] = {}  # id(grad averager) -> its honest averaged tensors
        self.pending: str | None = None  # the attack of the round being averaged
        self.last_attack, self.tries = "", 0

    def next_attack(self) -> str:
        if not self.schedule:
            return "none"
        attack, after = self.schedule[0]
        if self.first_attack_at is not None and time.time() < self.first_attack_at + after:
            return "none"
        self.schedule.pop(0)
        if self.first_attack_at is None:
            self.first_attack_at = time.time()
        return attack

    def record(self, attack: str, group: list[str] | None) -> None:
        """Log the round; a poisoned round that failed on this side (it may still have reached the others, late) is
        tried again, up to MAX_TRIES rounds per scheduled attack, so a loaded machine does not skip a kind."""
        self.tries = self.tries + 1 if attack == self.last_attack else 1
        self.last_attack = attack
        if group is None and attack != "none" and self.tries < MAX_TRIES:
            self.schedule.insert(0, (attack, 0.0))
        if self.log_path:
            with open(self.log_path, "a") as f:
                f.write(json.dumps({"epoch": self.epoch, "attack": attack, "time": time.time(), "group": group})
                        + "\n")


def install(attacker: Attacker) -> None:
    from hivemind.optim.grad_averager import GradientAverager
    from hivemind.optim.optimizer import Optimizer

    from swarm.trust.guard import AveragerGuard

    AveragerGuard._ban = lambda self, peer: None  # before the averagers fork: they inherit it
    original_average = Optimizer._average_gradients_and_load_into_optimizer
    original_step = GradientAverager.step
    original_load = GradientAverager.load_accumulators_into_averager_
    original_use = Optimizer._load_averaged_gradients_into_optimizer_
    original_update = Optimizer._update_global_epoch

    def step(self, *args, **kwargs):
        self._attack_armed = True
        try:
            return original_step(self, *args, **kwargs)
        finally:
            self._attack_armed = False

    @torch.no_grad()
    def load_accumulators_into_averager_(self):
        original_load(self)
        if not getattr(self, "_attack_armed", False):
            return
        attack = attacker.next_attack()
        with self.get_tensors() as averaged:
            attacker.honest[id(self)] = [t.clone() for t in averaged]
            for tensor in averaged:
                corrupt_(tensor, attack)
        attacker.pending = attack

    @torch.no_grad()
    def load_averaged_gradients_into_optimizer_(self):
        honest = attacker.honest.pop(id(self.grad_averager), None)
        if honest is not None:
            with self.grad_averager.get_tensors() as averaged:
                for tensor, value in zip(averaged, honest):
                    tensor.copy_(value)
        original_use(self)

    def average_gradients_and_load_into_optimizer(self, control):
        try:
            return original_average(self, control)
        finally:
            attack, attacker.pending = getattr(attacker, "pending", None), None
            if attack is not None:
                group = None
                try:
                    if control is not None and control.done() and control.exception() is None:
                        # hivemind's step result: {peer id: what it gathered}, one entry per groupmate
                        group = [peer.to_base58() for peer in control.result()]
                except Exception:  # noqa: BLE001 - a log line must not stop the trainer
                    group = None
                attacker.record(attack, group)

    def update_global_epoch(self, *args, **kwargs):
        attacker.epoch = self.local_epoch  # the round about to be averaged is this epoch's
        return original_update(self, *args, **kwargs)

    GradientAverager.step = step
    GradientAverager.load_accumulators_into_averager_ = load_accumulators_into_averager_
    Optimizer._load_averaged_gradients_into_optimizer_ = load_averaged_gradients_into_optimizer_
    Optimizer._update_global_epoch = update_global_epoch
    Optimizer._average_gradients_and_load_into_optimizer = average_gradients_and_load_into_optimizer


def main() -> None:
    install(Attacker(parse_schedule(os.environ.get("SWARM_TEST_ATTACKS", "")),
                     os.environ.get("SWARM_TEST_ATTACK_LOG")))
    from swarm_launcher.cli import main as swarm_main

    swarm_main(sys.argv[1:])


if __name__ == "__main__":
    main()
