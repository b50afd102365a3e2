"""`swarm bootstrap-dht`: the long-lived hivemind DHT node every peer dials first.

Its identity key lives in a file (on a volume in Docker), so its peer ID, and therefore the multiaddr peers are told,
survives restarts. It prints its multiaddrs, serves them at `/multiaddrs` next to `/metrics`, and keeps its routing
table fresh by querying the DHT periodically (which also evicts dead peers).
"""
from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from pathlib import Path

from swarm.logs import get_logger

logger = get_logger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bootstrap-dht", help="run the bootstrap hivemind DHT node (stable peer ID from a key file)",
        description="Run a long-lived hivemind DHT node with a persistent identity. Peers use its multiaddrs as their "
                    "first initial peer; the coordinator hands them out to every joiner.")
    p.add_argument("--identity-path", default="./bootstrap.key",
                   help="private key file; created on first start, reused afterwards so the peer ID never changes "
                        "(default: %(default)s)")
    p.add_argument("--host-maddrs", nargs="+", default=["/ip4/0.0.0.0/tcp/31337"],
                   help="multiaddrs to listen on (default: %(default)s; use /ip4/127.0.0.1/tcp/0 for loopback tests)")
    p.add_argument("--announce-maddrs", nargs="*", default=[],
                   help="public multiaddrs to announce, e.g. /ip4/203.0.113.7/tcp/31337 behind port forwarding")
    p.add_argument("--initial-peers", nargs="*", default=[], help="other bootstrap nodes to join (optional)")
    p.add_argument("--no-relay", dest="use_relay", action="store_false",
                   help="disable libp2p circuit relay (on by default: it lets NAT-ed peers reach each other via us)")
    p.add_argument("--refresh-period", type=float, default=30.0,
                   help="seconds between routing-table refreshes (default: %(default)s)")
    p.add_argument("--metrics-port", type=int, default=9103, help="HTTP port for /metrics and /multiaddrs (0 = any)")
    p.add_argument("--ready-file", help="write a JSON object with peer_id, multiaddrs and metrics_port once serving")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from swarm.errors import UsageError

    identity = Path(args.identity_path)
    if identity.is_dir():
        raise UsageError(f"--identity-path {identity} is a directory; give a file path such as {identity}/bootstrap.key")
    identity.parent.mkdir(parents=True, exist_ok=True)
    if not 0 <= args.metrics_port <= 65535:
        raise UsageError(f"--metrics-port must be between 0 and 65535, got {args.metrics_port}")
    if args.refresh_period <= 0:
        raise UsageError(f"--refresh-period must be > 0, got {args.refresh_period}")

    import hivemind
    from prometheus_client import Gauge

    from swarm.metrics import MetricsServer
    from swarm.procs import write_ready_file

    routing_table_size = Gauge("swarm_bootstrap_dht_routing_table_peers", "DHT peers in the local routing table")
    storage_keys = Gauge("swarm_bootstrap_dht_storage_keys", "keys held in this node's DHT storage")
    up_since = Gauge("swarm_bootstrap_dht_start_time_seconds", "unix time this node started")
    up_since.set(time.time())

    try:
        dht = hivemind.DHT(start=True, initial_peers=args.initial_peers, host_maddrs=args.host_maddrs,
                           announce_maddrs=args.announce_maddrs or None, identity_path=str(identity),
                           use_relay=args.use_relay, client_mode=False)
    except Exception as e:  # the key file is the usual culprit: say so
        raise UsageError(f"could not start the DHT node ({e}); check --host-maddrs and that {identity} is a valid "
                         f"key file written by this command") from e
    peer_id = str(dht.peer_id)
    multiaddrs = [str(m) for m in dht.get_visible_maddrs()]
    metrics = MetricsServer(port=args.metrics_port,
                            json_routes={"/multiaddrs": lambda: {"peer_id": peer_id, "multiaddrs": multiaddrs}})
    logger.info(f"bootstrap DHT peer {peer_id} listening; give peers these initial peers:")
    for maddr in multiaddrs:
        print(maddr, flush=True)
    write_ready_file(args.ready_file, peer_id=peer_id, multiaddrs=multiaddrs, metrics_port=metrics.port)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.is_set():
            try:
                routing_table_size.set(dht.run_coroutine(_refresh, return_future=False))
                storage_keys.set(dht.run_coroutine(_storage_size, return_future=False))
            except Exception as e:  # a refresh failing must never take the node down
                logger.warning(f"routing table refresh failed: {e!r}")
            stop.wait(args.refresh_period)
    finally:
        logger.info("shutting down")
        metrics.close()
        dht.shutdown()
    return 0


async def _refresh(dht, node) -> int:
    # A lookup of a random key contacts peers across the routing table and evicts those that no longer answer.
    await node.get(f"refresh_{os.urandom(8).hex()}", latest=True)
    return len(node.protocol.routing_table.uid_to_peer_id)


async def _storage_size(dht, node) -> int:
    return len(node.protocol.storage)
