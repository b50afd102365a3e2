"""`swarm bootstrap-dht`: the long-lived hivemind DHT node every peer dials first (node.py runs it).

Its identity key lives in a file (on a volume in Docker), so its peer ID, and therefore the multiaddr peers are told,
survives restarts. It prints its multiaddrs, serves them at `/multiaddrs` next to `/metrics`, and keeps its routing
table fresh by querying the DHT periodically (which also evicts dead peers).
"""
from __future__ import annotations

import argparse

from swarm.cliargs import port_arg, positive_float_arg
from swarm.metrics import add_metrics_host_arg


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
    p.add_argument("--refresh-period", type=positive_float_arg, default=30.0,
                   help="seconds between routing-table refreshes (default: %(default)s)")
    p.add_argument("--metrics-port", type=port_arg, default=9103,
                   help="HTTP port for /metrics and /multiaddrs (0 = any)")
    add_metrics_host_arg(p)
    p.add_argument("--coordinator-key-file", metavar="PATH",
                   help="the coordinator's credential signing key (beside its database: coordinator-signing.key); "
                        "when given, only peers with a credential from that coordinator may use this DHT")
    p.add_argument("--ready-file", help="write a JSON object with peer_id, multiaddrs and metrics_port once serving")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from swarm.errors import UsageError
    from swarm_bootstrap_dht.node import BootstrapSettings, NodeStartError, serve

    try:
        settings = BootstrapSettings(
            identity_path=args.identity_path, host_maddrs=tuple(args.host_maddrs),
            announce_maddrs=tuple(args.announce_maddrs), initial_peers=tuple(args.initial_peers),
            use_relay=args.use_relay, refresh_period=args.refresh_period, metrics_port=args.metrics_port,
            metrics_host=args.metrics_host,
            ready_file=args.ready_file, coordinator_key_file=args.coordinator_key_file)
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        return serve(settings)
    except NodeStartError as e:
        raise UsageError(str(e)) from None
