"""Downloading the swarm's state (late joiners, laggards, the end barrier) so that it actually arrives.

Two hivemind 1.1.12 behaviours made a late joiner keep its seed weights, or never finish, in sync mode:

- hivemind's `load_state_from_peers` waits for each message of the download, the first one included, at most
  `next_chunk_timeout` (the matchmaking time unless set): NOT the load-state timeout. A serving peer sends its first
  message only after its host process has gathered the whole state under the averaged-tensors lock, which it holds
  during its own optimizer step and averaging rounds. When every serving peer misses that (a loaded machine, or all
  of them in the same state-averaging round), hivemind returns without loading anything and `Optimizer.
  load_state_from_peers` returns as if it had: a fresh joiner trained on from the seed at epoch 0 (and one only one
  epoch behind is even moved to the swarm's epoch with its old weights). `load_with_retries` sees whether a state was
  applied (the torch optimizer's load_state_dict ran: hivemind calls it exactly then) and asks again.
- The load-state timeout is the whole download's: past it hivemind gives up and starts over from the first byte,
  forever, while the abandoned download keeps the link busy. A full fine-tune's state (parameters and two Adam
  moments, sent uncompressed) is ~10 GB on SD 1.5: 600 s needs ~140 Mbit/s, so on a home link a late joiner never got
  it. `download_timeout` stretches the configured timeout to the state's size at a slow link; a stalled peer is
  still dropped after `next_chunk_timeout` without a message.
"""
from __future__ import annotations

import threading
import time
from typing import Callable, Sequence

import torch

from swarm.logs import get_logger

logger = get_logger(__name__)

# The slowest download link the timeout allows for: 20 Mbit/s.
SLOW_LINK_BYTES_PER_S = 2.5e6
# Parameters and AdamW's two moments travel uncompressed in fp32 (swarm.make_optimizer: exact state downloads).
STATE_COPIES = 3
# A serving peer is busy for at most an optimizer step or an averaging round: pauses of 1, 2, 4 and 8 s between five
# tries outlast that, and a try that fails costs only next_chunk_timeout per serving peer.
DOWNLOAD_TRIES = 5
FIRST_RETRY_PAUSE_S = 1.0


def state_bytes(params: Sequence[torch.Tensor]) -> int:
    """Bytes of a sync-mode state download for these trainable parameters: each in fp32, with AdamW's two moments."""
    return STATE_COPIES * 4 * sum(p.numel() for p in params)


def download_timeout(*, configured: float, state_size: int, link_bytes_per_s: float = SLOW_LINK_BYTES_PER_S) -> float:
    """Seconds one state download may take: the configured timeout, or longer when the state cannot arrive in it
    over a slow link (hivemind restarts a download that outlives it from scratch)."""
    if configured <= 0 or link_bytes_per_s <= 0:
        raise ValueError(f"timeout and link speed must be positive, got {configured} and {link_bytes_per_s}")
    return max(float(configured), state_size / link_bytes_per_s)


class AppliedStates:
    """Counts the states hivemind applied to a torch optimizer: its load_state_dict returned (a download succeeded).

    The instance's load_state_dict is wrapped rather than given torch's post-hook: bitsandbytes' 8-bit AdamW has its
    own load_state_dict, which never runs torch's hooks.
    """

    def __init__(self, torch_optimizer: torch.optim.Optimizer):
        self._count = 0
        self._lock = threading.Lock()
        load_state_dict = torch_optimizer.load_state_dict

        def counted_load_state_dict(*args, **kwargs):
            result = load_state_dict(*args, **kwargs)
            with self._lock:
                self._count += 1
            return result

        torch_optimizer.load_state_dict = counted_load_state_dict

    @property
    def count(self) -> int:
        with self._lock:
            return self._count


def load_with_retries(load: Callable[[], None], applied: AppliedStates, *, tries: int = DOWNLOAD_TRIES,
                      first_pause: float = FIRST_RETRY_PAUSE_S, sleep: Callable[[float], None] = time.sleep) -> bool:
    """Call `load` (hivemind's Optimizer.load_state_from_peers) until a state was applied, at most `tries` times.

    The pause doubles after each failed try. Returns whether a state arrived; after the last failed try it logs a
    warning and the peer trains on (hivemind tries again by itself once this peer is two epochs behind).
    """
    for attempt in range(1, tries + 1):
        before = applied.count
        load()
        if applied.count > before:
            return True
        if attempt < tries:
            logger.info(f"no peer served its state (try {attempt} of {tries}: every serving peer was busy or "
                        f"unreachable); asking again")
            sleep(first_pause * 2 ** (attempt - 1))
    logger.warning(f"could not download the swarm's state in {tries} tries; training on from this peer's own state")
    return False
