"""Bytes this peer's hivemind traffic moves: `swarm_trainer_network_bytes_total{direction="sent|received"}`.

Where the bytes are counted, and why there:
- hivemind's p2p daemon keeps no byte counters we can read: its `-metricsAddr` endpoint serves Go runtime and libp2p
  resource-manager metrics, none of which counts bytes (checked on hivemind 1.1.12's p2pd).
- So we count where hivemind's Python side hands serialized messages to the daemon and takes them back:
  `P2P.send_raw_data` / `P2P.receive_raw_data` carry every streamed RPC (all-reduce parts, state downloads,
  matchmaking); unary RPCs (the DHT) go through `P2P._call_unary_protobuf_handler` and the unary handlers.
  That is the payload each peer sends and receives; libp2p's framing and encryption (a few per cent) are not in it.
- hivemind runs the DHT and every averager in forked child processes, which do most of the sending. The counts
  therefore live in shared memory made before the first fork, and the patches are made in the parent so every
  child inherits them: `install()` must run before the DHT starts (swarm.make_dht calls it).
"""
from __future__ import annotations

import ctypes
import multiprocessing as mp
import threading

from swarm.logs import get_logger

logger = get_logger(__name__)

METRIC_NAME = "swarm_trainer_network_bytes"  # Prometheus adds _total to a counter family
DIRECTIONS = ("sent", "received")
# A process killed inside the (tiny) critical section would leave the shared lock taken; after this long the count
# is dropped instead of stalling hivemind's event loop.
LOCK_TIMEOUT_S = 0.5

_state: dict = {}
_install_lock = threading.Lock()


def _add(direction: str, n: int) -> None:
    value = _state["counters"][direction]
    lock = value.get_lock()
    if lock.acquire(timeout=LOCK_TIMEOUT_S):
        try:
            value.value += int(n)
        finally:
            lock.release()


def totals() -> dict[str, int]:
    """{"sent": bytes, "received": bytes} over this process and every hivemind process it forked since install()."""
    if not _state:
        return {direction: 0 for direction in DIRECTIONS}
    return {direction: int(value.value) for direction, value in _state["counters"].items()}


def installed() -> bool:
    return bool(_state)


def install() -> None:
    """Count hivemind's traffic from now on, in this process and in every process forked after this call.

    Idempotent. Also registers the Prometheus collector (once per process).
    """
    with _install_lock:
        if _state:
            return
        counters = {direction: mp.Value(ctypes.c_uint64, 0, lock=True) for direction in DIRECTIONS}
        _state["counters"] = counters
        _patch_p2p()
        _register_collector()


def _patch_p2p() -> None:
    from hivemind.p2p import P2P

    header_len = P2P.HEADER_LEN
    original_send, original_receive = P2P.send_raw_data, P2P.receive_raw_data
    original_unary_call, original_unary_handler = P2P._call_unary_protobuf_handler, P2P._add_protobuf_unary_handler

    async def send_raw_data(data, writer, *, chunk_size: int = 2 ** 16):
        await original_send(data, writer, chunk_size=chunk_size)
        _add("sent", header_len + len(data))

    async def receive_raw_data(reader):
        data = await original_receive(reader)
        _add("received", header_len + len(data))
        return data

    async def call_unary(self, peer_id, handle_name, input, output_protobuf_type):
        _add("sent", input.ByteSize())
        response = await original_unary_call(self, peer_id, handle_name, input, output_protobuf_type)
        _add("received", response.ByteSize())
        return response

    async def add_unary_handler(self, handle_name, handler, input_protobuf_type, balanced: bool = False):
        async def counted_handler(request, context):
            _add("received", request.ByteSize())
            response = await handler(request, context)
            _add("sent", response.ByteSize())
            return response

        await original_unary_handler(self, handle_name, counted_handler, input_protobuf_type, balanced=balanced)

    P2P.send_raw_data = staticmethod(send_raw_data)
    P2P.receive_raw_data = staticmethod(receive_raw_data)
    P2P._call_unary_protobuf_handler = call_unary
    P2P._add_protobuf_unary_handler = add_unary_handler


class _TrafficCollector:
    """Reads the shared counters on every scrape (they grow in hivemind's child processes, not in ours)."""

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily(METRIC_NAME, "Bytes of hivemind messages (averaging, state downloads, DHT) "
                                                  "this peer sent and received; payload, without libp2p framing",
                                     labels=["direction"])
        for direction, value in totals().items():
            family.add_metric([direction], value)
        yield family

    def describe(self):
        return list(self.collect())


def _register_collector() -> None:
    from prometheus_client import REGISTRY

    try:
        REGISTRY.register(_TrafficCollector())
    except ValueError as e:  # already registered in this process (a second install after a reload)
        logger.debug(f"traffic collector not registered again: {e}")
