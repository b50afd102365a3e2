"""hivemind's DHT process, with its request pipe made safe for the messages a loaded swarm peer sends it.

hivemind runs the DHT in a forked process and sends it every request (get, store, run_coroutine) through one
`multiprocessing` pipe. Two things go wrong there, both seen on a loaded 2-core CI machine, where a trainer's DHT
went silent at the end barrier and the peer hung until killed:

- The DHT process waits on the pipe with uvloop's `add_reader`, and libuv switches the fd to non-blocking mode. A
  request longer than what the writer has put in the pipe so far then fails mid-message with
  `BlockingIOError: [Errno 11]`. hivemind logs it and reads on, but the rest of that message is now read as the next
  message's header: every later request is lost, and every caller waits for an answer that never comes (hivemind
  PR #660 and rl-swarm PR #216 report the same error). `run()` here reads each request in blocking mode: it reads
  only after the loop saw data, so at most it waits for the writer to finish the message it is writing.
- `Connection.send` writes a long message in more than one `write()`, and hivemind does not lock the pipe: the
  threads of the trainer (training loop, admission renewal, hivemind's progress tracker) and the averager processes
  forked from it (matchmaking) can interleave their requests. `_LockedSender` sends one message at a time, with a
  lock the forked processes share (as hivemind's MPFuture does for its own pipe). A sender that cannot get the lock
  in SEND_LOCK_TIMEOUT (a process killed while holding it) fails that request with TimeoutError instead of hanging.

`SwarmDHT` is a drop-in `hivemind.DHT`; the trainer and the bootstrap DHT use it. `read_records` is the one
timed read of a key's per-peer records (progress, final sync) our code does.
"""
from __future__ import annotations

import multiprocessing
import os
from typing import Any

import hivemind

from swarm.logs import get_logger

logger = get_logger(__name__)
SEND_LOCK_TIMEOUT = 30.0


class _BlockingReads:
    """The DHT process's end of the request pipe: each `recv()` reads the whole message in blocking mode."""

    def __init__(self, connection: Any):
        self._connection = connection

    def recv(self) -> Any:
        # libuv's poll handle only waits for readiness, so a blocking fd does not disturb the event loop.
        os.set_blocking(self._connection.fileno(), True)
        return self._connection.recv()

    def __getattr__(self, name: str) -> Any:  # fileno, poll, close: as the connection's
        return getattr(self._connection, name)


class _LockedSender:
    """The callers' end of the request pipe: one `send()` at a time across this process and its forks."""

    def __init__(self, connection: Any):
        self._connection = connection
        self._lock = multiprocessing.Lock()

    def send(self, message: Any) -> None:
        if not self._lock.acquire(timeout=SEND_LOCK_TIMEOUT):
            raise TimeoutError(f"the DHT request pipe stayed locked for {SEND_LOCK_TIMEOUT:.0f} s")
        try:
            self._connection.send(message)
        finally:
            self._lock.release()

    def __getattr__(self, name: str) -> Any:  # close, fileno: as the connection's
        return getattr(self._connection, name)


class SwarmDHT(hivemind.DHT):
    """`hivemind.DHT` whose request pipe keeps working under concurrent and long requests (see the module doc)."""

    def __init__(self, *args: Any, start: bool = False, await_ready: bool = True, **kwargs: Any):
        super().__init__(*args, start=False, **kwargs)
        self._outer_pipe = _LockedSender(self._outer_pipe)
        if start:
            self.run_in_background(await_ready=await_ready)

    def run(self) -> None:  # runs in the forked DHT process
        self._inner_pipe = _BlockingReads(self._inner_pipe)
        super().run()


def read_records(dht: hivemind.DHT, key: str, *, timeout: float) -> dict[str, dict] | None:
    """{subkey: record} of the dict records stored under `key`'s subkeys (the latest values); None when the DHT did
    not answer in `timeout` seconds or failed (callers poll again)."""
    from hivemind.utils import ValueWithExpiration

    try:
        found = dht.get(key, latest=True, return_future=True).result(timeout=timeout)
    except Exception as e:  # noqa: BLE001 - a timeout or a DHT error: the caller asks again
        logger.debug(f"reading {key} failed: {e!r}")
        return None
    if found is None or not isinstance(found.value, dict):
        return {}
    return {str(subkey): item.value for subkey, item in found.value.items()
            if isinstance(item, ValueWithExpiration) and isinstance(item.value, dict)}

