"""The hivemind averager of DiLoCo mode: all-reduces pseudo-gradients and serves the outer state to late joiners.

It is a plain hivemind DecentralizedAverager subclass over one flat fp32 buffer (the pseudo-gradient, or the chosen
top-k blocks of it), so anything that wraps hivemind averagers (the trust layer's admission checks and robust
aggregation of each sender's part) composes with it unchanged: the backend builds it through `build_averager`, the
one seam where such wrappers are applied.

What it serves to `load_state_from_peers` is not its averaged buffer but the outer state (outer parameters, outer
momentum, and the result of an all-reduce still waiting to be applied), supplied by the optimizer through
`state_source`: hivemind calls `get_current_state` in a thread of this (the host) process. Which served states a
download takes (`state_check`, `require_round`) is decided in the averager's own process, while it downloads, so
the trust layer's loop over peers can turn one down and try the next (swarm/trust/download.py).

Its all-reduce answers with averages rather than differences (consistent.py), so the outer parameters stay identical
on every peer with fp16/int8 on the wire; `allreduce_runner_class` is the hook the trust layer's guard builds its
runner through.
"""
from __future__ import annotations

import multiprocessing
from typing import Any, Callable, Sequence

import torch
from hivemind.averaging import DecentralizedAverager
from hivemind.averaging.allreduce import AllReduceRunner

from swarm.logs import get_logger
from swarm.trust.guard import apply_allreduce
from swarm_trainer.diloco.consistent import runner_class
from swarm_trainer.diloco.rounds import holds_round_average

logger = get_logger(__name__)


STATE_SERVE_MARGIN_S = 5.0


class PseudoGradientAverager(DecentralizedAverager):
    """DecentralizedAverager over `averaged_tensors`, serving `state_source()` as its state."""

    # hivemind caches a class's RPC handlers and stub type on first use and finds the cache through inheritance:
    # once a plain DecentralizedAverager had collected its own in this process, this class would call groupmates'
    # "DecentralizedAverager.rpc_*" while serving "PseudoGradientAverager.rpc_*", and never find a group.
    _rpc_handlers = None
    _stub_type = None

    def __init__(self, averaged_tensors: Sequence[torch.Tensor], dht, *,
                 state_source: Callable[[], tuple[dict, list[torch.Tensor]]],
                 reference_tensors: Sequence[torch.Tensor] = (),
                 state_check: Callable[[Any, list[torch.Tensor]], str | None] | None = None, **kwargs):
        # Set before the base class starts its state-serving thread, which may call get_current_state at once.
        self._state_source = state_source
        self._state_check = state_check
        # The round whose average a downloaded state must hold (-1: any), set by the host around a download and read
        # in the averager's process: shared memory created before the fork.
        self._required_round = multiprocessing.Value("q", -1, lock=False)
        # The share of the last all-reduce's average that never arrived (see missing_share): written in the
        # averager's own process, read by the optimizer in the host, so shared memory created before the fork.
        self._missing_share = multiprocessing.Value("d", 0.0, lock=False)
        # The local tensors a downloaded state's leading tensors are comparable with (the outer parameters), in
        # shared memory so the averager's own process sees their current values: its pseudo-gradient buffer is
        # not what a state download should be measured against.
        for tensor in reference_tensors:
            tensor.share_memory_()
        self._reference_tensors = tuple(reference_tensors)
        super().__init__(averaged_tensors=averaged_tensors, dht=dht, **kwargs)

    @staticmethod
    def allreduce_runner_class(base: type = AllReduceRunner) -> type:
        """The runner this averager's all-reduce uses, built on `base` (the trust layer passes its robust runner)."""
        return runner_class(base)

    async def _run_allreduce_inplace_(self, tensors, group_info, group_id=None, **kwargs):
        """hivemind's method with `allreduce_runner_class()` (used when no trust guard wraps this class)."""
        group_id = group_info.group_id if group_id is None else group_id
        runner = self.allreduce_runner_class()(p2p=self._p2p, servicer_type=type(self), prefix=self.prefix,
                                               tensors=tensors, group_id=group_id,
                                               ordered_peer_ids=group_info.peer_ids, **kwargs)
        await apply_allreduce(self, runner, tensors=tensors, group_info=group_info, group_id=group_id)

    @property
    def missing_share(self) -> float:
        """The share of the last all-reduce's average that never arrived: a groupmate that reduced a slice failed
        to send it back, so hivemind left this peer's own values there (and only this peer's). Read after a step."""
        return self._missing_share.value

    def reset_missing_share(self) -> None:
        """Before a step: a round that never reaches the all-reduce must not report the last one's share."""
        self._missing_share.value = 0.0

    async def _aggregate_with_group(self, group_info, min_vector_size: int, **kwargs):
        """hivemind's method (the trust guard's version calls it too); afterwards, records what share of the average
        never arrived, from the round's runner (registered for the group while the round runs)."""
        gathered = await super()._aggregate_with_group(group_info, min_vector_size, **kwargs)
        registered = self._running_groups.get(group_info.group_id)
        runner = None
        if registered is not None and registered.done() and not registered.cancelled() and not registered.exception():
            runner = registered.result()
        self._missing_share.value = getattr(getattr(runner, "tensor_part_container", None), "missing_share", 0.0)
        return gathered

    def get_current_state(self):
        metadata, tensors = self._state_source()
        return metadata, tensors, None

    def state_reference(self) -> tuple[torch.Tensor, ...]:
        """What a downloaded state is checked against (the trust layer's distance check)."""
        return self._reference_tensors

    def require_round(self, broken_round: int | None) -> None:
        """Until called with None: take only a served state that holds the average of `broken_round` (this peer's
        all-reduce of it broke; see rounds.holds_round_average)."""
        self._required_round.value = -1 if broken_round is None else broken_round

    def state_metadata_problem(self, metadata) -> str | None:
        """Why a served state is not wanted, told by its metadata alone (the trust layer stops the download there,
        before megabytes of tensors, and asks the next peer), or None."""
        broken = self._required_round.value
        if broken < 0:
            return None
        served = metadata.get("round") if isinstance(metadata, dict) else None
        if not isinstance(served, int) or not holds_round_average(served_round=served, broken_round=broken):
            return f"it serves round {served!r}, without round {broken}'s average (its all-reduce broke there too)"
        return None

    def state_problem(self, metadata, tensors: list[torch.Tensor]) -> str | None:
        """Why a downloaded state cannot be used (wrong shapes, e.g. a stream cut off part-way), or None."""
        return self._state_check(metadata, tensors) if self._state_check is not None else None


def build_averager(*, buffer: torch.Tensor, dht, prefix: str, state_source, reference_tensors, compression,
                   client_mode: bool, matchmaking_time: float, averaging_timeout: float, initial_group_bits: str,
                   state_check=None, averager_class: type | None = None,
                   extra_kwargs: dict | None = None) -> PseudoGradientAverager:
    """Start the averager (it forks a process: call it from the main thread).

    `averager_class` / `extra_kwargs` are where the backend factory puts the trust layer's guarded class and its
    settings; by default hivemind's plain averager behaviour.
    """
    from hivemind.compression import NoCompression

    cls = averager_class or PseudoGradientAverager
    return cls(
        [buffer], dht, state_source=state_source, reference_tensors=reference_tensors, state_check=state_check,
        prefix=prefix, start=True,
        compression=compression,
        # Joiners get the outer state exactly: fp16 would round the outer parameters away from the swarm's.
        state_compression=NoCompression(),
        client_mode=client_mode,
        min_matchmaking_time=matchmaking_time,
        request_timeout=max(0.5, min(3.0, matchmaking_time / 2)),
        allreduce_timeout=averaging_timeout,
        sender_timeout=averaging_timeout,
        reducer_timeout=2 * averaging_timeout,
        # A state download's first chunk comes after the serving peer waited up to one matchmaking time for its own
        # all-reduce (state_sharing.py) and cloned the state: a generous bound.
        next_chunk_timeout=averaging_timeout + 2 * matchmaking_time + STATE_SERVE_MARGIN_S,
        initial_group_bits=initial_group_bits,
        **(extra_kwargs or {}),
    )
