"""hivemind's all-reduce with our robust rules plugged into the reducer (hivemind 1.1.12).

hivemind's `TensorPartReducer` adds each sender's part into one accumulator as it arrives and divides by the claimed
weights. `RobustTensorPartReducer` keeps the parts of the current part index instead and, once every live sender
has sent it, combines them with `swarm.trust.robust.robust_average` (drop non-finite, cap weights, CenteredClip).
Each sender's claim is capped by what is left of its weight budget (swarm.trust.budget) and what it was allowed is
charged to this averager's WeightLedger as soon as a part of it counts.
Every sender still gets back `average - its part`, exactly as hivemind's protocol expects, so guarded and plain
peers speak the same wire protocol. This mirrors where hivemind's unmerged `centered-clip` branch hooks in.
"""
from __future__ import annotations

import asyncio
import math
from typing import Mapping, Sequence, Set

import torch
from hivemind.averaging.allreduce import AllReduceRunner
from hivemind.averaging.partition import AllreduceException, BannedException, TensorPartContainer, TensorPartReducer
from hivemind.p2p import PeerID

from swarm.trust.budget import WeightBudgets, WeightLedger
from swarm.trust.robust import (
    ACCEPTED,
    CLIPPED,
    DROPPED,
    RobustRules,
    RoundVerdicts,
    group_result_ok,
    is_finite_part,
    pair_result_ok,
    reducer_result_ok,
    robust_average,
)


class RobustTensorPartReducer(TensorPartReducer):
    """A TensorPartReducer that combines each part with the robust rules.

    :param caps: per sender index, the most weight that sender may claim this round (inf or None: no cap).
    :param excluded: per sender index, True for a banned sender: its parts are dropped unread.
    :param own_index: this peer's sender index, if it sends: in a part with two usable senders its own part is the
      trusted scale for the other's (robust.clip_to_trusted).
    :param ledger: with `sender_ids`, where the weight each sender was allowed is charged once per round (the
      larger of its capped claims over the parts of it that counted).
    """

    def __init__(self, part_shapes: Sequence[torch.Size], num_senders: int, *, rules: RobustRules,
                 caps: Sequence[float | None], excluded: Sequence[bool] = (), ledger: WeightLedger | None = None,
                 sender_ids: Sequence[str] = (), own_index: int | None = None):
        self.rules, self.caps, self.own_index = rules, list(caps), own_index
        self.excluded = list(excluded) or [False] * num_senders
        self.verdicts = RoundVerdicts(num_senders)
        self.ledger, self.sender_ids = ledger, list(sender_ids)
        self.charged = [0.0] * num_senders  # weight charged to the ledger this round, per sender
        self.cut = [False] * num_senders  # a claim over its cap was cut (in a part that counted)
        self._inputs: dict[int, tuple[torch.Tensor, float]] = {}
        self._combining = False
        super().__init__(part_shapes, num_senders)

    def reset_accumulators(self):
        """Same bookkeeping as hivemind's, holding the parts instead of a running sum."""
        assert self.current_part_accumulated_from == self.num_current_senders or self.current_part_index == -1
        if self.current_part_index >= self.num_parts - 1:
            self.finalize()
            return
        self.current_part_index += 1
        self.current_part_accumulated_from = 0
        self.current_part_future = asyncio.Future()
        self.num_current_senders = sum(
            self.current_part_index < failed_index for failed_index in self.sender_failed_after)
        self.accumulator = None  # hivemind's finalize() deletes it
        self.denominator = 0.0
        self._inputs = {}

    async def accumulate_part(self, sender_index: int, part_index: int, tensor_part: torch.Tensor,
                              weight: float = 1.0) -> torch.Tensor:
        """Hold this sender's part; return the robust average of the part once every live sender has sent it."""
        assert 0 <= sender_index < self.num_senders, "invalid sender index"
        assert 0 <= part_index < self.num_parts, "invalid part index"
        self.num_parts_received[sender_index] += 1

        while part_index > self.current_part_index:
            await asyncio.wait({self.current_part_future, asyncio.create_task(self.finished.wait())},
                               return_when=asyncio.FIRST_COMPLETED)
            if self.finished.is_set():
                raise AllreduceException(f"attempted to aggregate part in a finalized {self.__class__.__name__}")

        if self.sender_failed_after[sender_index] != float("inf"):
            raise BannedException(f"sender {sender_index} was banned in background")
        assert part_index == self.current_part_index

        current_part_future = self.current_part_future
        if part_index < self.sender_failed_after[sender_index]:
            self._inputs[sender_index] = (tensor_part, float(weight))
            self.current_part_accumulated_from += 1
            self.check_current_part_finished()
        return await current_part_future

    def check_current_part_finished(self):
        """Once every live sender has sent the current part, combine it in a worker thread (the rules cost tens of
        ms per part on a CPU; the averager's event loop keeps streaming meanwhile), then answer and move on."""
        assert self.current_part_accumulated_from <= self.num_current_senders
        if self.current_part_accumulated_from != self.num_current_senders or self._combining:
            return
        self._combining = True
        senders = [i for i in sorted(self._inputs) if not self.excluded[i]]
        inputs, future = dict(self._inputs), self.current_part_future
        combined = asyncio.get_event_loop().run_in_executor(
            None, lambda: robust_average([inputs[i][0] for i in senders], [inputs[i][1] for i in senders],
                                         caps=[self.caps[i] for i in senders], rules=self.rules,
                                         trusted=senders.index(self.own_index) if self.own_index in senders
                                         else None))
        combined.add_done_callback(lambda done: self._part_combined(done, senders, inputs, future))

    def _part_combined(self, done: asyncio.Future, senders: list[int], inputs: dict, future: asyncio.Future) -> None:
        self._combining = False
        if self.finished.is_set() or future.done():  # finalized (cancelled) while we combined
            return
        try:
            average, verdicts = done.result()
        except Exception as e:  # noqa: BLE001 - a bug in the rules fails this round, not the averager
            average, verdicts = None, [DROPPED] * len(senders)
            error = AllreduceException(f"robust aggregation failed: {e!r}")
        else:
            error = AllreduceException("no sender's part could be used (all non-finite or excluded)")
        by_sender: list[str | None] = [DROPPED if i in inputs else None for i in range(self.num_senders)]
        for i, verdict in zip(senders, verdicts):
            by_sender[i] = verdict
            if verdict in (ACCEPTED, CLIPPED):
                self._charge(i, inputs[i][1])
        self.verdicts.record(by_sender)
        if average is None:
            future.set_exception(error)
            future.exception()  # mark retrieved: each waiting sender re-raises it anyway
        else:
            future.set_result(average)
        self.reset_accumulators()

    def _charge(self, sender: int, claimed: float) -> None:
        """Charge what this sender was allowed (its claim, capped) to the ledger, once per round."""
        if self.ledger is None or sender >= len(self.sender_ids) or not math.isfinite(claimed):
            return
        cap = self.caps[sender]
        allowed = max(0.0, min(claimed, math.inf if cap is None else cap))
        self.cut[sender] = self.cut[sender] or allowed < claimed
        if allowed > self.charged[sender]:
            self.ledger.charge(self.sender_ids[sender], allowed - self.charged[sender])
            self.charged[sender] = allowed


class CheckedTensorPartContainer(TensorPartContainer):
    """hivemind's container, checking each groupmate's answer before it is used; a refused answer is replaced by our
    own part, as for a failed reducer. Installed on a live container by `RobustAllReduceRunner` (see there).

    Two kinds of refusal: `refused_reducers` sent garbage (non-finite, or over `result_norm_multiple` x what we sent):
    no honest reducer can, and the guard bans it. `unused_reducers` answered something an honest reducer can too,
    now and then (in a group of 3+ failing `group_result_ok`: against what we sent AND longer; in a pair failing
    `pair_result_ok`): not used, not banned. See group_result_ok for why direction alone is not enough in a group."""

    rules: RobustRules
    refused_reducers: set
    unused_reducers: set
    excluded_reducers: set
    own_weight: float

    def register_processed_part(self, peer_index: int, part_index: int, part: torch.Tensor):
        if self.return_deltas and part_index < len(self._input_parts_by_peer[peer_index]):
            sent = self._input_parts_by_peer[peer_index][part_index][0]
            if peer_index in self.excluded_reducers:
                refusal = "excluded"
            elif not is_finite_part(sent):  # our own part is broken (an fp16 overflow): no answer can be judged
                refusal = None
            elif not is_finite_part(part):
                refusal = "garbage"
            elif not reducer_result_ok(sent, part, rules=self.rules, check_direction=False):
                # Our part is no yardstick when it carries no weight (this peer accumulated no samples this round,
                # e.g. right after a state download: it is not a gradient of ours): judging by it banned an honest
                # partner in a full-trainer run. The answer is still not used (it may be a x1e6 partner's part).
                refusal = "garbage" if self.own_weight > 0 else "unused"
            elif not (pair_result_ok(sent, part, rules=self.rules) if self.group_size == 2
                      else group_result_ok(sent, part)):
                refusal = "unused"
            else:
                refusal = None
            if refusal is not None:
                {"garbage": self.refused_reducers, "unused": self.unused_reducers}.get(refusal, set()).add(peer_index)
                part = torch.zeros_like(sent)
                self.failed_size += part.numel()
        super().register_processed_part(peer_index, part_index, part)


class RobustAllReduceRunner(AllReduceRunner):
    """hivemind's AllReduceRunner with a RobustTensorPartReducer; `verdicts_by_peer()` after the round.

    :param weight_caps: per peer, the most weight it may claim in any round (its credential's max_weight).
    :param ledger: this averager's WeightLedger; with fresh `budgets`, each other sender's claim is also capped by
      what is left of its budget, and what it was allowed is charged. No budgets (or stale ones): per-round caps only.
    """

    def __init__(self, *, rules: RobustRules, weight_caps: Mapping[PeerID, float], excluded: Set[PeerID] = frozenset(),
                 ledger: WeightLedger | None = None, budgets: WeightBudgets | None = None, **kwargs):
        super().__init__(**kwargs)
        plain = self.tensor_part_reducer
        plain.finished.set()  # discard hivemind's reducer silently (its finalize would log "received 0%")
        sender_ids = [peer.to_base58() for peer in self.sender_peer_ids]
        others = [peer_id for peer, peer_id in zip(self.sender_peer_ids, sender_ids) if peer != self.peer_id]
        budget_caps = self.budget_caps = (ledger.caps(others, budgets) if ledger is not None else None) or {}
        # Our own claim is never capped by a budget: it is our own count, and the coordinator's view of us may lag.
        self.weight_caps = [min(float(weight_caps.get(peer, math.inf)), budget_caps.get(peer_id, math.inf))
                            for peer, peer_id in zip(self.sender_peer_ids, sender_ids)]
        self.tensor_part_reducer = RobustTensorPartReducer(
            tuple(part.shape for part in self.parts_for_local_averaging), len(self.sender_peer_ids), rules=rules,
            caps=self.weight_caps, excluded=[peer in excluded for peer in self.sender_peer_ids],
            ledger=ledger, sender_ids=sender_ids,
            own_index=self.sender_peer_ids.index(self.peer_id) if self.peer_id in self.sender_peer_ids else None)
        # hivemind builds the container inside AllReduceRunner.__init__ with no hook, and the local parts already
        # point into it, so the checked behaviour is switched on in place (the subclass adds no state of its own).
        container = self.tensor_part_container
        container.__class__ = CheckedTensorPartContainer
        container.rules, container.refused_reducers, container.unused_reducers = rules, set(), set()
        container.own_weight = float(self.weight)
        container.excluded_reducers = {i for i, peer in enumerate(self.ordered_peer_ids) if peer in excluded}

    def verdicts_by_peer(self) -> dict[PeerID, str]:
        """This peer's verdict on each sender whose parts it reduced."""
        return {peer: verdict for peer, verdict in zip(self.sender_peer_ids, self.tensor_part_reducer.verdicts.result())
                if verdict is not None}

    def budget_cuts(self) -> dict[PeerID, float]:
        """Senders whose claim this round was cut to what was left of their weight budget: {peer: that budget}."""
        reducer, out = self.tensor_part_reducer, {}
        for index, peer in enumerate(self.sender_peer_ids):
            budget = self.budget_caps.get(peer.to_base58())
            if reducer.cut[index] and budget is not None and budget <= reducer.caps[index]:  # the budget was binding
                out[peer] = budget
        return out

    def refused_answers(self) -> list[PeerID]:
        """Groupmates whose answer for the slice they reduced was garbage (our own part was used instead)."""
        return [self.ordered_peer_ids[index] for index in sorted(self.tensor_part_container.refused_reducers)]

    def unused_answers(self) -> list[PeerID]:
        """Groupmates whose plausible but suspect answer was not used, without blame (CheckedTensorPartContainer)."""
        container = self.tensor_part_container
        unused = container.unused_reducers - container.refused_reducers
        return [self.ordered_peer_ids[index] for index in sorted(unused)]
