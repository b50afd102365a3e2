"""`swarm host`: the host's side of a swarm (coordinator, dataset service, bootstrap DHT) as three child processes.

The same `start_host` serves `swarm demo` and the end-to-end tests, on loopback with port 0. In Docker Compose each
service runs in its own container instead; this command is for hosts without Docker and for trying things out.
Off loopback the coordinator and the dataset service serve TLS with a self-signed certificate made once in the data
folder (tls.crt, tls.key), whose fingerprint volunteers pin, unless `insecure` (plaintext, tokens in the clear).
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from swarm.cliargs import port_arg
from swarm.logs import get_logger
from swarm.metrics import LOOPBACK
from swarm.procs import free_port, write_ready_file
from swarm.shutdown import interrupt_on_sigterm
from swarm_launcher.processes import ServiceProcess, start_service

logger = get_logger(__name__)


@dataclass
class HostServices:
    workdir: Path
    bootstrap: ServiceProcess
    coordinator: ServiceProcess
    dataset: ServiceProcess
    bootstrap_maddrs: list[str] = field(default_factory=list)
    coordinator_address: str = ""
    dataset_address: str = ""
    status_url: str = ""  # the coordinator's public status page; empty when it serves none
    tls_fingerprint: str | None = None  # of the certificate both gRPC services serve; None: plaintext

    @property
    def processes(self) -> list[ServiceProcess]:
        return [self.dataset, self.coordinator, self.bootstrap]

    def metrics_ports(self) -> dict[str, int]:
        return {p.name: p.info["metrics_port"] for p in self.processes}

    def stop(self) -> None:
        for proc in self.processes:  # dataset first: it calls the coordinator, which the DHT outlives
            proc.stop()


def _connect_address(bound: str, public_host: str | None) -> str:
    """The address clients dial: a wildcard bind is reached through the public host (or loopback)."""
    host, _, port = bound.rpartition(":")
    if host in ("0.0.0.0", "[::]", "::", ""):
        host = public_host or "127.0.0.1"
    return f"{host}:{port}"


def start_host(workdir: str | os.PathLike, *, config_path: str | None = None, run_id: str | None = None,
               index_path: str | None = None, storage: str | None = None, s3_endpoint_url: str | None = None,
               bind_host: str = "0.0.0.0", public_host: str | None = None, coordinator_port: int = 50051,
               dataset_port: int = 50052, dht_port: int = 31337, dht_announce_maddrs: list[str] | None = None,
               metrics_ports: tuple[int, int, int] = (9100, 9101, 9103), metrics_host: str | None = None,
               lease_ttl: float | None = None,
               peer_ttl: float | None = None, heartbeat_interval: float | None = None,
               credential_lifetime: float | None = None,
               status_port: int | None = 8080, token_contact: str | None = None, insecure: bool = False,
               ready_timeout: float = 120.0) -> HostServices:
    """Start bootstrap DHT, coordinator and dataset service; return once all three serve.

    `status_port` (None: off, 0: a free one) is the coordinator's public status page. `metrics_host` is where the
    three /metrics servers listen (None: each service's default, loopback unless $SWARM_METRICS_HOST). Off loopback
    the gRPC services serve TLS (see the module) unless `insecure`.
    """
    # The coordinator and the dataset service each need the other's address before either is up, so port 0 is
    # resolved to a free port here rather than by the services themselves.
    coordinator_port = coordinator_port or free_port()
    dataset_port = dataset_port or free_port()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    db_path = workdir / "coordinator.sqlite"
    index_path = index_path or str(workdir / "dataset.sqlite")
    storage = storage or f"file://{workdir / 'objects'}"
    coordinator_metrics, dataset_metrics, dht_metrics = metrics_ports
    logs = workdir / "logs"
    metrics_host_args = ["--metrics-host", metrics_host] if metrics_host else []
    # Where the coordinator reads the bootstrap DHT's /multiaddrs: that interface, or loopback for a wildcard.
    metrics_reach = LOOPBACK if metrics_host in (None, "", "0.0.0.0", "::") else metrics_host
    tls_args, tls_env, fingerprint = _host_tls(workdir, bind_host=bind_host, public_host=public_host,
                                               insecure=insecure)

    started: list[ServiceProcess] = []
    try:
        bootstrap = start_service("bootstrap-dht", [
            "bootstrap-dht", "--identity-path", str(workdir / "bootstrap.key"),
            # The coordinator's key (beside its database): the DHT admits only peers with its credentials.
            "--coordinator-key-file", str(workdir / "coordinator-signing.key"),
            "--host-maddrs", f"/ip4/{bind_host}/tcp/{dht_port}", "--metrics-port", str(dht_metrics), *metrics_host_args,
            *(["--announce-maddrs", *dht_announce_maddrs] if dht_announce_maddrs else []),
        ], workdir=logs)
        started.append(bootstrap)
        maddrs = bootstrap.wait_ready(timeout=ready_timeout)["multiaddrs"]

        # The coordinator fetches the bootstrap multiaddrs from the node's /multiaddrs, as in Docker Compose, and
        # makes itself a token to list the dataset with (the dataset service checks tokens against it).
        coordinator_args = [
            "coordinator", "--listen", f"{bind_host}:{coordinator_port}", "--db", str(db_path),
            *(["--run-id", run_id] if run_id else []),
            # The coordinator syncs from the dataset service where it listens (loopback for a wildcard bind);
            # volunteers are told the public host's address for it.
            "--dataset", _connect_address(f"{bind_host}:{dataset_port}", None),
            *(["--dataset-public-address", f"{public_host}:{dataset_port}"] if public_host else []),
            "--metrics-port", str(coordinator_metrics),
            "--bootstrap-peers-url", f"http://{metrics_reach}:{bootstrap.info['metrics_port']}/multiaddrs",
            *metrics_host_args, *tls_args,
        ]
        for flag, value in (("--config", config_path), ("--lease-ttl", lease_ttl), ("--peer-ttl", peer_ttl),
                            ("--heartbeat-interval", heartbeat_interval),
                            ("--credential-lifetime", credential_lifetime), ("--status-port", status_port),
                            ("--token-contact", token_contact)):
            if value is not None:
                coordinator_args += [flag, str(value)]
        if status_port is not None and public_host:  # the page's join line shows the address volunteers dial
            coordinator_args += ["--public-address", f"{public_host}:{coordinator_port}"]
        coordinator = start_service("coordinator", coordinator_args, workdir=logs, env=tls_env)
        started.append(coordinator)
        coordinator_address = _connect_address(coordinator.wait_ready(timeout=ready_timeout)["grpc_address"],
                                               "127.0.0.1")
        page_port = coordinator.info.get("status_port")
        status_url = f"http://{_connect_address(f'{bind_host}:{page_port}', public_host)}/" if page_port else ""
        dataset = start_service("dataset", [
            "dataset", "serve", "--listen", f"{bind_host}:{dataset_port}", "--index", index_path,
            "--storage", storage, "--coordinator", coordinator_address, "--metrics-port", str(dataset_metrics),
            *metrics_host_args, *tls_args,
            *(["--s3-endpoint-url", s3_endpoint_url] if s3_endpoint_url else []),
        ], workdir=logs, env=tls_env)
        started.append(dataset)
        dataset_address = _connect_address(dataset.wait_ready(timeout=ready_timeout)["grpc_address"], public_host)
    except BaseException:
        for proc in reversed(started):
            proc.stop()
        raise
    return HostServices(workdir=workdir, bootstrap=bootstrap, coordinator=coordinator, dataset=dataset,
                        bootstrap_maddrs=maddrs, coordinator_address=coordinator_address,
                        dataset_address=dataset_address, status_url=status_url, tls_fingerprint=fingerprint)


def _host_tls(workdir: Path, *, bind_host: str, public_host: str | None,
              insecure: bool) -> tuple[list[str], dict[str, str], str | None]:
    """(service flags, service environment, fingerprint) for the two gRPC services. Loopback: plaintext, nothing to
    set up (the demo, tests). Elsewhere: TLS with the data folder's self-signed pair, made at the first start and
    kept (volunteers' join lines pin it); the services dial each other over loopback with it as their CA. With
    `insecure`: plaintext off loopback, which the services refuse without --insecure."""
    from swarm import tls

    if tls.is_loopback(bind_host):
        return [], {}, None
    if insecure:
        return ["--insecure"], {}, None
    cert, key = str(workdir / "tls.crt"), str(workdir / "tls.key")
    bound = _connect_address(f"{bind_host}:0", None).rpartition(":")[0]  # 127.0.0.1 for a wildcard bind
    names = tls.certificate_names([public_host or "", bound, "localhost", "127.0.0.1"])
    fingerprint = tls.make_self_signed(cert, key, hostnames=names)
    # The children's own clients (the dataset service checking tokens, the coordinator syncing the index) dial the
    # bound address (127.0.0.1 for a wildcard), which the certificate names; a pin the user exported for other hosts
    # must not override it.
    return ["--tls-cert", cert, "--tls-key", key], {tls.CA_FILE_ENV: cert, tls.FINGERPRINT_ENV: ""}, fingerprint


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "host", help="run a swarm's host services: coordinator + dataset service + bootstrap DHT",
        description="Run the coordinator, the dataset service and the bootstrap DHT together as local processes. "
                    "Ingest a dataset first (`swarm ingest FOLDER --index DIR/dataset.sqlite`), create join tokens "
                    "with `swarm token create --db DIR/coordinator.sqlite`, and give peers the coordinator address.")
    p.add_argument("--data-dir", default="./swarm-data",
                   help="folder for every piece of host state: coordinator.sqlite, dataset.sqlite, objects/, "
                        "bootstrap.key, logs/ (default: %(default)s)")
    p.add_argument("--config", help="run config YAML (keys: model, resolution, lr, lr_scheduler, ...)")
    p.add_argument("--run-id",
                   help="the swarm's name on the DHT; two swarms sharing a DHT need different run ids (default: the "
                        "stored run's, else a random one: only token holders learn it)")
    p.add_argument("--index", help="dataset index (default: DATA_DIR/dataset.sqlite)")
    p.add_argument("--storage", help="object storage: s3://bucket/prefix or file:///path (default: DATA_DIR/objects)")
    p.add_argument("--s3-endpoint-url", help="S3-compatible endpoint, e.g. http://minio:9000")
    p.add_argument("--bind-host", default="0.0.0.0", help="interface the services listen on (default: %(default)s)")
    p.add_argument("--public-host", help="host name or IP peers use to reach this host (told to peers)")
    p.add_argument("--coordinator-port", type=port_arg, default=50051)
    p.add_argument("--dataset-port", type=port_arg, default=50052)
    p.add_argument("--dht-port", type=port_arg, default=31337, help="TCP port of the bootstrap DHT (forward it)")
    p.add_argument("--dht-announce-maddrs", nargs="*", help="public multiaddrs of the bootstrap DHT")
    p.add_argument("--status-port", type=port_arg, default=8080,
                   help="port of the public, read-only status page (default: %(default)s)")
    p.add_argument("--no-status-page", action="store_true", help="serve no status page")
    p.add_argument("--metrics-ports", type=port_arg, nargs=3, default=[9100, 9101, 9103],
                   metavar=("COORDINATOR", "DATASET", "DHT"),
                   help="/metrics ports of the coordinator, dataset service and bootstrap DHT; 0 picks a free one "
                        "(default: %(default)s)")
    p.add_argument("--metrics-host", default=None, metavar="HOST",
                   help="interface of the three /metrics servers (default: loopback, or $SWARM_METRICS_HOST); "
                        "0.0.0.0 for a Prometheus on another machine")
    p.add_argument("--token-contact", metavar="TEXT",
                   help="where newcomers ask for a join token (a URL, a chat channel), shown on the status page")
    p.add_argument("--ready-file", help="write the addresses as JSON once every service serves")
    p.add_argument("--insecure", action="store_true",
                   help="serve plaintext gRPC off loopback (join tokens in the clear; only on a network you trust); "
                        "default: TLS with a self-signed certificate made once in DATA_DIR (tls.crt), whose "
                        "fingerprint volunteers pass as --tls-fingerprint")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from swarm.errors import UsageError

    if args.config and not Path(args.config).is_file():
        raise UsageError(f"--config {args.config} does not exist")
    index = args.index or str(Path(args.data_dir) / "dataset.sqlite")
    interrupt_on_sigterm()
    if not Path(index).is_file():
        raise UsageError(f"no dataset index at {index}: ingest your images first with "
                         f"`swarm ingest SOURCE --index {index}{' --config ' + args.config if args.config else ''}`")
    try:
        host = start_host(args.data_dir, config_path=args.config, run_id=args.run_id, index_path=index,
                          storage=args.storage, s3_endpoint_url=args.s3_endpoint_url, bind_host=args.bind_host,
                          public_host=args.public_host, coordinator_port=args.coordinator_port,
                          dataset_port=args.dataset_port, dht_port=args.dht_port,
                          dht_announce_maddrs=args.dht_announce_maddrs, metrics_ports=tuple(args.metrics_ports),
                          metrics_host=args.metrics_host,
                          status_port=None if args.no_status_page else args.status_port,
                          token_contact=args.token_contact, insecure=args.insecure)
    except (RuntimeError, TimeoutError) as e:  # a service that would not start says why in its log tail
        logger.error(f"the host services did not start: {e}")
        return 1
    except KeyboardInterrupt:  # start_host already stopped whatever it had started
        return 0
    write_ready_file(args.ready_file, coordinator=host.coordinator_address, dataset=host.dataset_address,
                     bootstrap_maddrs=host.bootstrap_maddrs, metrics_ports=host.metrics_ports(),
                     status_url=host.status_url, tls_fingerprint=host.tls_fingerprint)
    print(f"swarm host is up.\n  coordinator: {host.coordinator_address}\n  dataset:     {host.dataset_address}\n"
          f"  bootstrap:   {' '.join(host.bootstrap_maddrs)}\n"
          + (f"  status page: {host.status_url}\n" if host.status_url else "") +
          f"Create a join token:  swarm token create --db {host.workdir / 'coordinator.sqlite'} --name NAME\n"
          f"Peers join with:      swarm train --coordinator "
          f"{args.public_host or 'HOST'}:{host.coordinator_address.rpartition(':')[2]} "
          f"--token TOKEN" + (f" --tls-fingerprint {host.tls_fingerprint}" if host.tls_fingerprint else ""),
          flush=True)
    try:
        while True:
            dead = [p.name for p in host.processes if p.popen.poll() is not None]
            if dead:
                logger.error(f"{', '.join(dead)} exited; stopping the host (see {host.workdir / 'logs'})")
                return 1
            time.sleep(1.0)
    except KeyboardInterrupt:
        logger.info("stopping the host services")
        return 0
    finally:
        host.stop()
