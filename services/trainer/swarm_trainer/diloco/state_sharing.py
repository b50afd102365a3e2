"""The outer state a DiLoCo peer serves to joiners and downloads when it fell out of step (a mixin of
DiLoCoOptimizer, which owns every attribute used here: outer, momentum, _pending, _lock, averager, ...).

What is served: the round, the outer parameters, the momentum, and the average still waiting to be applied. A
peer whose last all-reduce is still running serves the state its round started from instead (`averaging`); the
downloader restarts that round and ends it at its next step, so it joins the running all-reduce if it still can.
"""
from __future__ import annotations

from concurrent.futures import Future
from functools import partial

import torch

from swarm.logs import get_logger
from swarm_trainer.diloco.compression import BLOCK, block_count
from swarm_trainer.diloco.outer import unflatten_into
from swarm_trainer.diloco.rounds import round_broke
from swarm_trainer.state_download import download_timeout

logger = get_logger(__name__)


def served_state_problem(metadata, tensors, *, numel: int, compression: str,
                         blocks: tuple[int, int] | None) -> str | None:
    """What is wrong with a downloaded outer state (None: usable). A peer of another version or a hostile one must
    not crash the downloader or hand it tensors of the wrong shape. blocks (top-k only): (blocks sent, blocks)."""
    if not isinstance(metadata, dict):
        return f"metadata is a {type(metadata).__name__}, not a dict"
    if metadata.get("numel") != numel or metadata.get("compression") != compression:
        return (f"numel {metadata.get('numel')} / compression {metadata.get('compression')!r}; this peer has "
                f"{numel} / {compression!r}")
    epoch = metadata.get("round")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        return f"round {epoch!r} is not a round number"
    shapes = [(numel,), (numel,)]
    if metadata.get("pending"):
        shapes.append((blocks[0] * BLOCK,) if blocks else (numel,))
        if blocks:
            shapes.append((blocks[0],))
    got = [tuple(t.shape) for t in tensors]
    if got != shapes:
        return f"tensors of shapes {got}, expected {shapes}"
    if not all(torch.isfinite(t).all() for t in tensors):
        return "non-finite values"
    if blocks and metadata.get("pending") and not bool(((tensors[3] >= 0) & (tensors[3] < blocks[1])).all()):
        return f"block indices outside 0..{blocks[1] - 1}"
    return None


class OuterStateSharing:
    def _served_state_check(self):
        """served_state_problem for this peer's outer state (picklable: the averager's process calls it too)."""
        return partial(served_state_problem, numel=self.numel, compression=self.settings.compression,
                       blocks=(self.k_blocks, block_count(self.numel)) if self.topk else None)

    def _served_state(self) -> tuple[dict, list[torch.Tensor]]:
        """(metadata, tensors) a joiner downloads: round, outer parameters, momentum, and an average waiting to be
        applied (the joiner applies it at its next round end, exactly like the peers that computed it).

        While this peer's last all-reduce still runs after one matchmaking time (or when it broke), the state the
        round STARTED from is served instead, marked `averaging`: the joiner restarts that round and ends it at its
        next step, joining that all-reduce if it still waits. The buffer mid-all-reduce holds this peer's own part,
        not the average; and waiting for the all-reduce could deadlock, as it may be waiting for this very joiner
        (a groupmate whose last average came back incomplete)."""
        pending = self._pending
        if pending is not None:
            try:
                pending.result(timeout=self.timeouts.matchmaking)
            except Exception:  # noqa: BLE001 - still running or failed: decided below
                pass
        with self._lock:
            pending = self._pending
            averaging = pending is not None and (not pending.done() or round_broke(pending))
            with_average = pending is not None and not averaging
            metadata = dict(round=self.local_epoch - int(averaging), numel=self.numel,
                            compression=self.settings.compression, pending=with_average, averaging=averaging)
            tensors = [self.outer.clone(), self.momentum.clone()]
            if with_average:
                with self.averager.get_tensors() as (buffer,):
                    tensors.append(buffer.clone())
                if self.topk:
                    tensors.append(self._pending_blocks.clone())
            return metadata, tensors

    @torch.no_grad()
    def load_state_from_peers(self, *, with_round: int | None = None) -> bool:
        """Download the outer state from the most advanced peer; the local parameters restart from it.

        with_round: a peer whose all-reduce of that round broke needs a state that holds the round's average. A
        state from before it (every groupmate's all-reduce broke too: they serve the round's start) would throw the
        round's training away on every peer, so it is refused (False) and this peer applies what it has."""
        if self._pending is not None:
            try:
                self._pending.result()
            except Exception:  # noqa: BLE001 - superseded by the downloaded state
                pass
        # The whole download must fit in the timeout (hivemind restarts one that outlives it from scratch): outer
        # parameters, momentum and a pending average, fp32, over a slow home link.
        timeout = download_timeout(configured=self.timeouts.load_state, state_size=3 * 4 * self.numel)
        # With the trust layer, the averager's own loop turns down a state without that round by its metadata, and
        # asks the next peer (one may hold the average). The same checks run here again: an averager without the
        # trust layer hands over the first state served.
        self.averager.require_round(with_round)
        try:
            with self._pipe_lock:
                download = self.averager.load_state_from_peers(wait=False, timeout=timeout)
            loaded = download.result(timeout=timeout + 5)
            problem = loaded is not None and (self.averager.state_problem(*loaded)
                                              or self.averager.state_metadata_problem(loaded[0]))
        except Exception as e:  # noqa: BLE001 - a failed download keeps this peer's own state
            logger.warning(f"DiLoCo: downloading the outer state failed ({e!r}); keeping this peer's own")
            return False
        finally:
            self.averager.require_round(None)
        if loaded is None:
            logger.warning("DiLoCo: no peer could serve its state; keeping this peer's own")
            return False
        if problem:
            logger.warning(f"DiLoCo: not using the state a peer served ({problem}); keeping this peer's own")
            return False
        metadata, tensors = loaded
        with self._lock:
            self.outer.copy_(tensors[0])
            self.momentum.copy_(tensors[1])
            self._pending = self._pending_blocks = None
            if metadata.get("pending"):
                with self.averager.get_tensors() as (buffer,):
                    buffer.copy_(tensors[2])
                if self.topk:
                    self._pending_blocks = tensors[3].long()
                done: Future = Future()
                done.set_result(True)
                self._pending = done
            if self.residual is not None:
                self.residual.zero_()
            self._next_round(int(metadata["round"]))
            self._end_round_early = bool(metadata.get("averaging"))
        if not self.settings.overlap:
            self._apply_pending()  # classic DiLoCo applies an average before the next round, never after it
        unflatten_into(self.outer, self.params)
        self.state_downloads += 1
        logger.info(f"DiLoCo: loaded the outer state of round {self.local_epoch} from a peer")
        return True
