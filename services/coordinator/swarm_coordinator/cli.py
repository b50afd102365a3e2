"""Command line of the coordinator: `swarm coordinator`, `swarm token`, `swarm config`, `swarm status`."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from swarm.cliargs import (
    add_client_tls_args,
    add_insecure_arg,
    address_arg,
    int_range_arg,
    port_arg,
    positive_float_arg,
    positive_int_arg,
)
from swarm.metrics import add_metrics_host_arg
from swarm.runconfig import RESTART_KEYS
from swarm_coordinator.limits import Limits
from swarm_coordinator.settings import MAX_GRPC_WORKERS, CoordinatorSettings
from swarm_coordinator.statuspage.settings import (
    DEFAULT_JOIN_IMAGE,
    DEFAULT_STATUS_PORT,
    DEFAULT_TOKEN_CONTACT,
    StatusPageSettings,
)

DEFAULT_DB = "./coordinator.sqlite"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "coordinator", help="run the coordinator: run config, chunk leases, peer registry, join tokens",
        description="Serve swarm.v1.Coordinator over gRPC with its state in SQLite. Every RPC but health needs a "
                    "join token (`swarm token create --db DB`).")
    p.add_argument("--listen", type=address_arg, default="0.0.0.0:50051", metavar="HOST:PORT",
                   help="HOST:PORT to serve on; port 0 picks a free one (default: %(default)s)")
    p.add_argument("--tls-cert", metavar="PEM", help="serve TLS with this certificate (with --tls-key); clients pin "
                                                    "its fingerprint (`python -m swarm.tls` makes one, prints it)")
    p.add_argument("--tls-key", metavar="PEM", help="the TLS certificate's private key")
    add_insecure_arg(p, server=True)
    p.add_argument("--max-peers-per-token", type=positive_int_arg, default=64,
                   help="live peers one join token may register (default: %(default)s)")
    p.add_argument("--max-leases-per-peer", type=positive_int_arg, default=64,
                   help="chunk leases one peer may hold at once (default: %(default)s)")
    p.add_argument("--db", default=DEFAULT_DB, metavar="PATH",
                   help="SQLite database with all coordinator state (default: %(default)s)")
    p.add_argument("--config", metavar="RUN_YAML",
                   help="run config YAML; stored as a new version only when it differs from the stored one "
                        "(default: the stored config, else built-in defaults)")
    p.add_argument("--run-id", metavar="ID",
                   help="the swarm's name on the DHT; swarms sharing a DHT need different ones (default: the stored "
                        "run's, else a random one at the first start: only token holders learn it)")
    p.add_argument("--dataset", type=address_arg, metavar="HOST:PORT",
                   help="HOST:PORT of the dataset service whose index is cut into chunks")
    p.add_argument("--dataset-public-address", type=address_arg, metavar="HOST:PORT",
                   help="dataset address told to peers (default: --dataset)")
    p.add_argument("--dataset-token", metavar="TOKEN",
                   help="join token to list the dataset with (default: env SWARM_DATASET_TOKEN, else a "
                        "'coordinator-internal' token the coordinator makes itself at each start)")
    p.add_argument("--bootstrap-peers", nargs="*", default=[], metavar="MADDR",
                   help="multiaddrs of the bootstrap DHT: every joiner's first initial peers")
    p.add_argument("--bootstrap-peers-url", metavar="URL",
                   help="fetch (and refresh) the bootstrap DHT's multiaddrs from its /multiaddrs route, e.g. "
                        "http://bootstrap-dht:9103/multiaddrs; added after --bootstrap-peers")
    p.add_argument("--lease-ttl", type=positive_float_arg, default=1200.0, metavar="S",
                   help="seconds a lease lives without a heartbeat (default: %(default)s, the 2022 trainer's 20 min)")
    p.add_argument("--peer-ttl", type=positive_float_arg, default=120.0, metavar="S",
                   help="seconds after its last heartbeat a peer counts as dead (default: %(default)s)")
    p.add_argument("--heartbeat-interval", type=positive_float_arg, default=30.0, metavar="S",
                   help="how often peers are told to heartbeat, in seconds (default: %(default)s)")
    p.add_argument("--credential-lifetime", type=positive_float_arg, default=600.0, metavar="S",
                   help="seconds a peer's swarm credential lives; peers renew it at half its life, and a revoked "
                        "token's peers are out of averaging within this (default: %(default)s)")
    p.add_argument("--sync-interval", type=positive_float_arg, default=5.0, metavar="S",
                   help="seconds between dataset index syncs (default: %(default)s)")
    p.add_argument("--sqlite-synchronous", choices=("normal", "full"), default="normal",
                   help="normal survives any crash of the process; full also survives power loss, at an fsync per "
                        "commit (default: %(default)s)")
    p.add_argument("--grpc-workers", type=int_range_arg(1, MAX_GRPC_WORKERS), default=4, metavar="N",
                   help="threads answering RPCs; calls are short and share one lock, so a few suffice "
                        "(default: %(default)s)")
    p.add_argument("--metrics-port", type=port_arg, default=9100, metavar="N",
                   help="Prometheus /metrics port; 0 picks a free one (default: %(default)s)")
    add_metrics_host_arg(p)
    p.add_argument("--ready-file", metavar="PATH",
                   help="write {grpc_address, metrics_port, ...} as JSON here once serving")
    page = p.add_argument_group("public status page", "a read-only web page of the run for everyone (off unless "
                                "--status-port is given): progress, charts, peers, how to join, health")
    page.add_argument("--status-port", type=port_arg, default=None, metavar="N",
                      help=f"serve the status page on this port, e.g. {DEFAULT_STATUS_PORT}; 0 picks a free one")
    page.add_argument("--status-host", default="0.0.0.0", metavar="HOST",
                      help="interface the status page listens on (default: %(default)s)")
    page.add_argument("--public-address", type=address_arg, metavar="HOST:PORT",
                      help="the coordinator address volunteers dial, shown in the page's join line (default: "
                           "--listen, with HOST for a wildcard host)")
    page.add_argument("--join-image", default=DEFAULT_JOIN_IMAGE, metavar="IMAGE",
                      help="trainer image in the page's join line (default: %(default)s)")
    page.add_argument("--token-contact", default=DEFAULT_TOKEN_CONTACT, metavar="TEXT",
                      help="where newcomers ask for a join token: a URL, a chat channel (default: %(default)r)")
    page.add_argument("--run-name", metavar="TEXT",
                      help="the run's public name on the page (default: MODEL fine-tune; the run id is never shown)")
    p.set_defaults(func=run_coordinator)

    token = subparsers.add_parser("token", help="create, list and revoke join tokens",
                                  description="Join tokens let peers (and the dataset service) call the coordinator. "
                                              "Only a hash of each token is stored.")
    token_sub = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    create = token_sub.add_parser("create", help="create a token and print it (shown once)")
    create.add_argument("--db", default=DEFAULT_DB, help="coordinator database (default: %(default)s)")
    create.add_argument("--name", default=None, help="a name to recognise and revoke it by (default: token-N)")
    create.add_argument("--join-address", type=address_arg, default=os.environ.get("SWARM_PUBLIC_ADDRESS") or None,
                        metavar="HOST:PORT",
                        help="the coordinator's public address: also print the volunteers' `docker run` join lines "
                             "for this token (default: env SWARM_PUBLIC_ADDRESS, which docker-compose.yml sets)")
    create.add_argument("--join-image", default=os.environ.get("SWARM_JOIN_IMAGE") or None, metavar="IMAGE",
                        help="the trainer image in the join lines (default: env SWARM_JOIN_IMAGE, else "
                             "swarm-diffusion/trainer:0.1.0)")
    create.add_argument("--tls-cert", default=os.environ.get("SWARM_TLS_CERT") or None, metavar="PEM",
                        help="the certificate the host serves: the join lines pin its fingerprint (default: env "
                             "SWARM_TLS_CERT, which docker-compose.yml sets, else tls.crt beside --db, which "
                             "`swarm host` makes; none: lines without a pin, for a plaintext loopback host)")
    create.set_defaults(func=run_token_create)
    listing = token_sub.add_parser("list", help="list tokens (names and first characters, never the tokens)")
    listing.add_argument("--db", default=DEFAULT_DB, help="coordinator database (default: %(default)s)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=run_token_list)
    revoke = token_sub.add_parser("revoke", help="revoke tokens by name, by the token itself, or its first characters",
                                  description="Revoke every live token with this name, or the token given (or the "
                                              "one token starting with it). A revoked token stops working within "
                                              "a few seconds.")
    revoke.add_argument("name_or_prefix", metavar="NAME_OR_PREFIX")
    revoke.add_argument("--db", default=DEFAULT_DB, help="coordinator database (default: %(default)s)")
    revoke.set_defaults(func=run_token_revoke)

    config = subparsers.add_parser(
        "config", help="show or change the run config of a swarm (versioned)",
        description="The run config lives in the coordinator database, versioned. `set` stores a new version; a "
                    "running coordinator picks it up within a second and peers apply it at their next chunk "
                    f"boundary. Changing any of {', '.join(sorted(RESTART_KEYS))} cannot be applied live: running "
                    "trainers stop with a message saying so and must be restarted.")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = config_sub.add_parser("show", help="print the current (or a given) config version as YAML")
    show.add_argument("--db", default=DEFAULT_DB, help="coordinator database (default: %(default)s)")
    show.add_argument("--version", type=int, default=0, help="version to show (default: the current one)")
    show.set_defaults(func=run_config_show)
    setp = config_sub.add_parser("set", help="store a new config version from a file and/or KEY=VALUE pairs",
                                 description="Examples: `swarm config set --db DB lr=5e-5 lr_scheduler=cosine`, "
                                             "`swarm config set --db DB --file run.yaml`. Keys "
                                             f"{', '.join(sorted(RESTART_KEYS))} need every trainer restarted.")
    setp.add_argument("assignments", nargs="*", metavar="KEY=VALUE", help="changes to the current config")
    setp.add_argument("--db", default=DEFAULT_DB, help="coordinator database (default: %(default)s)")
    setp.add_argument("--file", help="a whole run config YAML (KEY=VALUE pairs then apply on top of it)")
    setp.set_defaults(func=run_config_set)

    status = subparsers.add_parser("status", help="print a swarm's global progress",
                                   description="Samples and data epochs done, chunks queued/leased/done, peers "
                                               "alive, swarm epoch, current LR and what each peer contributed.")
    status.add_argument("--coordinator", type=address_arg, required=True, metavar="HOST:PORT",
                        help="coordinator address")
    status.add_argument("--token", default=None, help="join token (default: env SWARM_TOKEN)")
    status.add_argument("--json", action="store_true", help="print the progress as JSON")
    status.add_argument("--timeout", type=positive_float_arg, default=10.0, help="seconds to wait for an answer")
    add_client_tls_args(status)
    status.set_defaults(func=run_status)


def run_coordinator(args: argparse.Namespace) -> int:
    from swarm.cliargs import use_tls_args
    from swarm.errors import UsageError
    from swarm_coordinator.server import serve
    from swarm_coordinator.store import DatabaseInUse

    use_tls_args(args)  # --insecure: plaintext on a non-loopback --listen and to the dataset service
    if args.config and not os.path.isfile(args.config):
        raise UsageError(f"--config {args.config} does not exist")
    if args.dataset_public_address and not args.dataset:
        raise UsageError("--dataset-public-address needs --dataset (the address the coordinator syncs from)")
    try:
        settings = CoordinatorSettings(
            listen=args.listen, db_path=args.db, config_path=args.config, run_id=args.run_id or None,
            dataset=args.dataset,
            dataset_public_address=args.dataset_public_address,
            dataset_token=args.dataset_token or os.environ.get("SWARM_DATASET_TOKEN"),
            bootstrap_peers=tuple(args.bootstrap_peers), bootstrap_peers_url=args.bootstrap_peers_url,
            lease_ttl=args.lease_ttl, peer_ttl=args.peer_ttl, heartbeat_interval=args.heartbeat_interval,
            credential_lifetime=args.credential_lifetime,
            sync_interval=args.sync_interval, synchronous=args.sqlite_synchronous, max_workers=args.grpc_workers,
            metrics_port=args.metrics_port, metrics_host=args.metrics_host, ready_file=args.ready_file,
            status_page=_status_page(args), tls_cert=args.tls_cert, tls_key=args.tls_key,
            limits=Limits(peers_per_token=args.max_peers_per_token, leases_per_peer=args.max_leases_per_peer))
    except ValueError as e:  # ConfigError included: a bad --run-id
        raise UsageError(str(e)) from None
    try:
        return serve(settings)
    except (DatabaseInUse, OSError) as e:
        raise UsageError(str(e)) from None


def _status_page(args: argparse.Namespace) -> StatusPageSettings | None:
    """The status page's settings from the flags; None without --status-port (the page flags then do nothing)."""
    if args.status_port is None:
        return None
    return StatusPageSettings(port=args.status_port, host=args.status_host, public_address=args.public_address,
                              join_image=args.join_image, token_contact=args.token_contact, run_name=args.run_name)


def _int64_strings_to_ints(message, data):
    """MessageToDict writes int64 fields as strings; turn them back into numbers, recursing into messages."""
    from google.protobuf.descriptor import FieldDescriptor

    int64_types = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
                   FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}
    for field in message.DESCRIPTOR.fields:
        if field.name not in data:
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            values = getattr(message, field.name)
            if field.is_repeated:
                data[field.name] = [_int64_strings_to_ints(v, d) for v, d in zip(values, data[field.name])]
            else:
                data[field.name] = _int64_strings_to_ints(values, data[field.name])
        elif field.type in int64_types:
            value = data[field.name]
            data[field.name] = [int(v) for v in value] if isinstance(value, list) else int(value)
    return data


def _existing_db(path: str) -> str:
    """Admin commands act on the coordinator's database; a mistyped path must not quietly create a new, unused one."""
    from swarm.errors import UsageError

    if not os.path.isfile(path):
        raise UsageError(f"no coordinator database at {path}: pass the --db the coordinator uses "
                         f"(`swarm host` keeps it at DATA_DIR/coordinator.sqlite); start the coordinator once to "
                         f"create it")
    return path


def run_token_create(args: argparse.Namespace) -> int:
    from swarm_coordinator.tokens import create_token, list_tokens

    _existing_db(args.db)
    name = args.name or f"token-{len(list_tokens(args.db)) + 1}"
    token = create_token(args.db, name=name)
    print(token)
    print(f"(join token {name!r}: shown only this once; give it to the peer, who passes --token or SWARM_TOKEN)",
          file=sys.stderr)
    if args.join_address:
        from swarm_coordinator.joinline import DEFAULT_JOIN_IMAGE, join_lines

        lines = join_lines(token, coordinator=args.join_address, image=args.join_image or DEFAULT_JOIN_IMAGE,
                           tls_fingerprint=_host_fingerprint(args.tls_cert, db=args.db))
        # stderr, like the note above: stdout stays the bare token for scripts.
        print("\nThe volunteer joins with one line (README \"Join a swarm\"):", file=sys.stderr)
        for situation, line in lines.items():
            print(f"# {situation}\n{line}", file=sys.stderr)
    return 0


def _host_fingerprint(cert_path: str | None, *, db: str) -> str | None:
    """The fingerprint volunteers pin: of `cert_path`, else of tls.crt beside the database (`swarm host`)."""
    from swarm import tls

    beside_db = os.path.join(os.path.dirname(os.path.abspath(db)), "tls.crt")
    if cert_path is None and os.path.isfile(beside_db):
        cert_path = beside_db
    return tls.fingerprint_of_file(cert_path) if cert_path else None


def run_token_list(args: argparse.Namespace) -> int:
    from swarm_coordinator.tokens import list_tokens

    tokens = list_tokens(_existing_db(args.db))
    if args.json:
        print(json.dumps([{"name": t.name, "prefix": t.prefix, "created": t.created, "revoked": t.revoked}
                          for t in tokens], indent=2))
        return 0
    if not tokens:
        print("no tokens yet: `swarm token create --db DB --name NAME`")
        return 0
    rows = [("name", "token starts with", "created", "state")]
    for t in tokens:
        rows.append((t.name, t.prefix + "…", _when(t.created), f"revoked {_when(t.revoked)}" if t.revoked else "live"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def run_token_revoke(args: argparse.Namespace) -> int:
    from swarm_coordinator.tokens import revoke_tokens

    for t in revoke_tokens(_existing_db(args.db), args.name_or_prefix):
        print(f"revoked {t.name!r} ({t.prefix}…)")
    return 0


def run_config_show(args: argparse.Namespace) -> int:
    from swarm_coordinator.configs import show_config, to_yaml

    print(to_yaml(show_config(_existing_db(args.db), version=args.version)), end="")
    return 0


def run_config_set(args: argparse.Namespace) -> int:
    from swarm_coordinator.configs import changed_keys, restart_keys_changed, set_config

    previous, current, created = set_config(_existing_db(args.db), file=args.file, assignments=args.assignments)
    if not created:
        print(f"unchanged: config version {current.version} already says that")
        return 0
    changed = changed_keys(previous.config if previous else None, current.config)
    print(f"stored config version {current.version}" + (f" (changed: {', '.join(changed)})" if changed else ""))
    restart = restart_keys_changed(previous.config if previous else None, current.config)
    if restart:
        print(f"warning: {', '.join(restart)} cannot be applied to running peers: trainers will stop at their next "
              f"chunk boundary and must be restarted", file=sys.stderr)
    return 0


def run_status(args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf.json_format import MessageToDict

    from swarm.cliargs import use_tls_args
    from swarm.errors import UsageError
    from swarm_coordinator.status import describe_rpc_error, fetch_progress, format_progress

    use_tls_args(args, dials=args.coordinator)
    try:
        progress = fetch_progress(args.coordinator, token=args.token or os.environ.get("SWARM_TOKEN"),
                                  timeout=args.timeout)
    except grpc.RpcError as e:
        raise UsageError(describe_rpc_error(e, args.coordinator)) from None
    if args.json:
        # Every field, zeros included, and int64 counters as JSON numbers (proto3 JSON would make them strings).
        data = MessageToDict(progress, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
        print(json.dumps(_int64_strings_to_ints(progress, data), indent=2))
    else:
        print(format_progress(progress))
    return 0
