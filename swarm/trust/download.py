"""State downloads for a guarded averager (a mixin of guard.AveragerGuard, which owns `_admitted`, `_count` and
`_ban`): hivemind's loop over the peers that share their state, best first, keeping the first state that is usable.

Each peer's answer ends in one of four ways:
- nothing: it refused us (it does not know our credential yet, or it banned us) or stopped sharing. Next peer; it
  is not held against it.
- a state the averager does not want, told by its metadata (`state_metadata_problem`, checked on the first
  message): the download stops there, before the tensors. Next peer; an honest peer may serve an older state.
- a state the averager cannot use (`state_problem`: wrong shapes or count, e.g. a stream cut off part-way:
  hivemind's stream reader ends a stream whose connection closed as if it were complete). Next peer, not held
  against it either.
- a poisoned state: non-finite, or absurdly far from the local copy (robust.downloaded_state_problem). Counted as
  dropped, and the peer is banned for `ban_s`. Next peer.

The averager subclass may define `state_metadata_problem(metadata) -> str | None` and
`state_problem(metadata, tensors) -> str | None` (the DiLoCo averager does), and `state_reference()` when its state is
not its averaged tensors.
"""
from __future__ import annotations

import asyncio
import random
import time
from typing import Optional

from hivemind.compression import deserialize_torch_tensor
from hivemind.p2p import PeerID
from hivemind.proto import averaging_pb2
from hivemind.utils import MPFuture, ValueWithExpiration
from hivemind.utils.asyncio import aiter_with_timeout
from hivemind.utils.streaming import combine_from_streaming

from swarm.logs import get_logger
from swarm.trust.robust import DROPPED, downloaded_state_problem

logger = get_logger(__name__)
DHT_READ_TIMEOUT = 10.0  # seconds for the DHT to list the peers that share their state


class StateNotWanted(Exception):
    """The served metadata says the state is not one this averager needs (the download stopped before its tensors)."""


class GuardedStateDownload:
    async def _load_state_from_peers(self, future: MPFuture, timeout: Optional[float] = None):
        """hivemind's loop over state-sharing peers, best first, keeping the first usable state (see the module)."""
        if timeout is not None:
            timeout = self.next_chunk_timeout if self.next_chunk_timeout is not None else self.request_timeout
        try:
            key_manager = self._matchmaking.group_key_manager
            try:
                found, _ = await asyncio.wait_for(
                    self.dht.get(f"{key_manager.prefix}.all_averagers", latest=True, return_future=True),
                    timeout=DHT_READ_TIMEOUT) or ({}, None)
            except asyncio.TimeoutError:
                logger.warning("no state downloaded: the DHT did not list the peers that share theirs in time")
                return
            priority = {PeerID(peer): (float(info.value), random.random()) for peer, info in found.items()
                        if isinstance(info, ValueWithExpiration) and isinstance(info.value, (float, int))}
            for peer in sorted(priority, key=priority.get, reverse=True):
                if peer == self.peer_id:
                    continue
                if not await self._admitted(peer):
                    logger.warning(f"not downloading state from {peer}: it holds no valid credential")
                    continue
                try:
                    metadata, tensors = await self._download_state_from(peer, timeout)
                except StateNotWanted as e:
                    logger.info(f"not using the state of {peer}: {e}; trying another peer")
                    continue
                except Exception as e:  # noqa: BLE001 - try the next peer, as hivemind does
                    logger.warning(f"failed to download state from {peer}: {e!r}")
                    continue
                if metadata is None:
                    logger.warning(f"{peer} sent no state (it refused us or stopped sharing); trying another peer")
                    continue
                poisoned = self._check_state(tensors)
                if poisoned:
                    self._count(peer, DROPPED)
                    self._ban(peer)
                    logger.warning(f"refused the state downloaded from {peer}: {poisoned}; trying another peer")
                    continue
                unusable = self.state_problem(metadata, tensors) if hasattr(self, "state_problem") else None
                if unusable:
                    logger.warning(f"could not use the state downloaded from {peer} ({unusable}); trying another peer")
                    continue
                future.set_result((metadata, tensors))
                return
        finally:
            if not future.done():
                future.set_result(None)

    async def _download_state_from(self, peer: PeerID, timeout: Optional[float]):
        """(metadata, tensors) as `peer` streams them; (None, []) when it sends nothing. Raises StateNotWanted as
        soon as the metadata says so, and closes the stream: a whole state may take minutes on a home link."""
        started = time.monotonic()
        stub = self.get_stub(self._p2p, peer, namespace=self.prefix)
        stream = await stub.rpc_download_state(averaging_pb2.DownloadRequest())
        metadata, parts, tensors = None, [], []
        wanted = getattr(self, "state_metadata_problem", None)
        try:
            async for message in aiter_with_timeout(stream, timeout=timeout):
                if message.metadata:
                    metadata = self.serializer.loads(message.metadata)
                    problem = wanted(metadata) if wanted is not None else None
                    if problem:
                        raise StateNotWanted(problem)
                if message.tensor_part.dtype and parts:
                    tensors.append(deserialize_torch_tensor(combine_from_streaming(parts)))
                    parts = []
                parts.append(message.tensor_part)
        finally:
            close = getattr(stream, "aclose", None)
            if close is not None:
                try:
                    await close()  # closes the libp2p stream at once when we stop early
                except Exception as e:  # noqa: BLE001 - never mask why the download ended
                    logger.debug(f"closing the state stream from {peer} failed: {e!r}")
        if parts:
            tensors.append(deserialize_torch_tensor(combine_from_streaming(parts)))
        if metadata is not None:
            logger.info(f"downloaded state from {peer} in {time.monotonic() - started:.2f}s")
        return metadata, tensors

    def _check_state(self, tensors) -> str | None:
        # An averager whose state is not its averaged tensors (DiLoCo's: it averages pseudo-gradients and serves the
        # outer parameters) names what a state compares with in state_reference().
        reference = self.state_reference() if hasattr(self, "state_reference") else self._averaged_tensors
        return downloaded_state_problem(tensors, reference, max_distance=self._trust.max_state_distance)
