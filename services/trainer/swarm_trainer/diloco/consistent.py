"""An all-reduce whose lossy wire format leaves every peer with the SAME average (DiLoCo's fp16/int8 modes).

hivemind's butterfly all-reduce sends each groupmate the DIFFERENCE between the average of a slice and what that
groupmate sent, in the wire format; the peer that reduced the slice keeps the exact average. With a lossy format
(fp16, blockwise int8) every peer so ends a round with a slightly different average: its own slice exact, the
others rounded relative to its own values. DiLoCo applies that average to outer parameters that must stay identical
on every peer, so they drifted apart a little every round.

Here the reducer sends the AVERAGE itself in the wire format, and the reducer rounds its own slice through the same
format: every peer decodes the same bytes for every slice, so the outer parameters stay identical (to the float
rounding of adding a delta back) with any format. The result still enters hivemind as a delta from what this peer
sent, so whatever checks deltas (the trust layer's answer check) and hivemind's bookkeeping work unchanged.

All peers of a run must agree on this: the DiLoCo averager's prefix says which protocol it speaks, so peers of a
version that sent differences never group with peers that send averages.
"""
from __future__ import annotations

import asyncio
from functools import lru_cache
from typing import AsyncIterator

import torch
from hivemind.averaging.allreduce import AllReduceRunner, BannedException
from hivemind.compression import deserialize_torch_tensor, serialize_torch_tensor
from hivemind.proto import averaging_pb2
from hivemind.utils.asyncio import amap_in_executor

from swarm.logs import get_logger

logger = get_logger(__name__)

# Part of the DiLoCo averager's prefix: bump it whenever what goes over the wire changes meaning.
WIRE_PROTOCOL = "avg3"  # avg3: a served state may be "averaging" (state_sharing.py)


def round_trip(tensor: torch.Tensor, compression) -> torch.Tensor:
    """`tensor` as a groupmate decodes it after it went through `compression` (itself for lossless formats)."""
    compression_type = getattr(compression, "compression_type", None)
    if compression_type is None:  # an adaptive format picks per tensor: no fixed wire format to round through
        return tensor
    return deserialize_torch_tensor(serialize_torch_tensor(tensor, compression_type))


class _AbsoluteResultContainer:
    """Mixed in before a TensorPartContainer class: turns each slice's result (the average in the wire format, or the
    exact average of our own slice as a delta) into the delta from what this peer sent, after rounding our own
    slice's average through the wire format as every groupmate received it."""

    own_index: int
    missing_size: int = 0  # elements of the result that a failed groupmate never sent back (this peer's own stand)

    @property
    def missing_share(self) -> float:
        """The share of the average that never arrived: hivemind keeps this peer's own values there."""
        return self.missing_size / self.total_size if self.total_size else 0.0

    def register_processed_part(self, peer_index: int, part_index: int, part: torch.Tensor):
        if part_index < len(self._input_parts_by_peer[peer_index]):
            sent = self._input_parts_by_peer[peer_index][part_index][0]
            if peer_index == self.own_index:
                part = round_trip(sent + part, self.compression) - sent
            elif part.shape == sent.shape:
                part = part - sent
            # else: a malformed answer; left as it is for the checks (or hivemind) to refuse
        super().register_processed_part(peer_index, part_index, part)

    def register_failed_reducer(self, peer_index: int):
        # hivemind registers zero deltas for a failed reducer's slices through register_processed_part, which would
        # read them as averages here: switch the conversion off for that peer's remaining slices.
        for part_index in range(self._outputs_registered_by_peer[peer_index], self.num_parts_by_peer[peer_index]):
            sent = self._input_parts_by_peer[peer_index][part_index][0]
            super().register_processed_part(peer_index, part_index, torch.zeros_like(sent))
            self.failed_size += sent.numel()
            self.missing_size += sent.numel()


@lru_cache(maxsize=None)
def _container_class(base: type) -> type:
    return type(f"AbsoluteResult{base.__name__}", (_AbsoluteResultContainer, base), {})


class _AbsoluteResultRunner:
    """Mixed in before an AllReduceRunner class (see `runner_class`)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        container = self.tensor_part_container
        # hivemind builds the container inside AllReduceRunner.__init__ with no hook (and a subclass such as the
        # trust layer's may already have switched its class): wrap whatever class it has now.
        container.__class__ = _container_class(type(container))
        container.own_index = self.ordered_peer_ids.index(self.peer_id)

    async def _accumulate_parts_streaming(self, stream: AsyncIterator[averaging_pb2.AveragingData],
                                          sender_index: int):
        """hivemind's loop, answering each part with the average itself (not the difference from that part)."""
        part_index = 0
        try:
            loop = asyncio.get_event_loop()
            async for tensor_part, weight, part_compression in amap_in_executor(
                    lambda msg: (deserialize_torch_tensor(msg.tensor_part), msg.weight, msg.tensor_part.compression),
                    stream, max_prefetch=self.tensor_part_container.prefetch):
                try:
                    averaged_part = await self.tensor_part_reducer.accumulate_part(
                        sender_index, part_index, tensor_part, weight=weight)
                    part_index += 1
                except BannedException:
                    logger.debug(f"sender {sender_index} is already banned")
                    break
                serialized = await loop.run_in_executor(
                    None, lambda: serialize_torch_tensor(averaged_part, part_compression))
                yield averaging_pb2.AveragingData(code=averaging_pb2.AVERAGED_PART, tensor_part=serialized)
        finally:
            if part_index != self.tensor_part_reducer.num_parts:
                await self._ban_sender(self.sender_peer_ids[sender_index])


@lru_cache(maxsize=None)
def runner_class(base: type = AllReduceRunner) -> type:
    """`base` (an AllReduceRunner subclass) answering with averages; takes the same arguments."""
    if not issubclass(base, AllReduceRunner):
        raise TypeError(f"{base.__name__} is not a hivemind AllReduceRunner")
    return type(f"AbsoluteResult{base.__name__}", (_AbsoluteResultRunner, base), {})
