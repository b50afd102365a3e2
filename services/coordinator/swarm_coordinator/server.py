"""A running coordinator: the store, the gRPC server answering swarm.v1.Coordinator, dataset sync, upkeep, metrics.

`start(settings)` brings every piece up and returns a running `Coordinator` (tests, the demo, anything embedding
it); `serve(settings)` is the command's entry point: it starts one and blocks until SIGTERM/SIGINT, then stops it.
Each piece started registers how to undo it, so a start that fails half-way leaves nothing running, and `stop()`
takes the pieces down newest first. A new piece (an HTTP status page, say) starts in `start` and registers its stop.
"""
from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from pathlib import Path
from typing import Callable

import grpc

from swarm.logs import get_logger
from swarm.metrics import MetricsServer
from swarm.procs import write_ready_file
from swarm.rpc import TokenAuthInterceptor, bind, make_server, set_serving
from swarm.runconfig import load_yaml
from swarm.shutdown import stop_event_on_signals
from swarm.tls import fingerprint_of_file
from swarm.v1 import coordinator_pb2_grpc as pb_grpc
from swarm_coordinator import db, metrics
from swarm_coordinator.admission import AdmissionRpcs, ContributionBook, RevocationWatch, random_run_id
from swarm_coordinator.bootstrap_source import BootstrapPeersSource
from swarm_coordinator.reachability import ReachabilityRpcs
from swarm_coordinator.servicers import (
    SERVICE_NAME,
    ConfigRpcs,
    LeaseRpcs,
    PeerRpcs,
    ProgressRpcs,
    SampleAccessRpcs,
    compose,
)
from swarm_coordinator.settings import CoordinatorSettings
from swarm_coordinator.statuspage.live import LiveStatus, host_services
from swarm_coordinator.store import Store
from swarm_coordinator.sync import DatasetSync
from swarm_coordinator.tokens import TokenChecker, create_token, hash_token
from swarm_coordinator.upkeep import Upkeep

logger = get_logger(__name__)


class Coordinator:
    """A running coordinator (from `start`); `address` and `metrics_port` are what was actually bound."""

    def __init__(self, *, settings: CoordinatorSettings, store: Store, server: grpc.Server, health, address: str,
                 metrics_port: int | None, sync: DatasetSync | None, pieces: contextlib.ExitStack,
                 status_port: int | None = None):
        self.settings, self.store, self.server, self.health = settings, store, server, health
        self.address, self.metrics_port, self.sync, self.status_port = address, metrics_port, sync, status_port
        self._pieces = pieces
        self._stopped = False

    def stop(self, *, grace: float = 2.0) -> None:
        """Say NOT_SERVING, let calls in flight finish (up to `grace` seconds), then stop every piece."""
        if self._stopped:
            return
        self._stopped = True
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self._pieces.close()
        logger.info("coordinator stopped")


def servicer_parts(store: Store, settings: CoordinatorSettings, *, contributions: ContributionBook | None = None,
                   dataset_token: str | None = None) -> dict[str, object]:
    """The servicer parts answering swarm.v1.Coordinator (servicers.compose checks every RPC has one)."""
    admission = AdmissionRpcs(db_path=settings.db_path, signing_key_path=settings.signing_key_file,
                              run_id=settings.run_id, lifetime_s=settings.credential_lifetime,
                              max_weight=lambda: store.config.config.target_batch_size)
    return {"peers": PeerRpcs(store, bootstrap_peers=settings.bootstrap_peers,
                              dataset_address=settings.dataset_public_address or settings.dataset or "",
                              heartbeat_interval=settings.heartbeat_interval),
            "config": ConfigRpcs(store), "leases": LeaseRpcs(store, contributions=contributions),
            "progress": ProgressRpcs(store, contributions=contributions, credentials=admission.book),
            "admission": admission,
            "samples": SampleAccessRpcs(store, full_access_token_hashes=[hash_token(dataset_token)] if dataset_token
                                        else []),
            "reachability": ReachabilityRpcs(store)}


def _token_check(settings: CoordinatorSettings, pieces: contextlib.ExitStack) -> Callable[[str], str | None]:
    """The join token check of every RPC but health, on a connection of its own (no waiting on the store's lock)."""
    token_engine = db.make_engine(settings.db_path, immediate=False)
    pieces.callback(token_engine.dispose)
    checker = TokenChecker(token_engine, ttl=settings.token_cache_ttl)

    def check(token):
        error = checker(token)
        if error is not None:
            metrics.AUTH_FAILURES.inc()
        return error

    return check


def _upkeep_tasks(store: Store) -> list[tuple[str, Callable[[], object]]]:
    def refresh_config() -> None:
        if store.refresh_config():
            logger.info(f"run config version {store.config.version} is now current")

    def reap_leases() -> None:
        expired = store.reap()
        if expired:
            logger.info(f"{expired} lease(s) expired; their chunks are queued again")

    return [("config refresh", refresh_config), ("lease reaping", reap_leases)]


def start(settings: CoordinatorSettings, *, clock: Callable[[], float] = time.time) -> Coordinator:
    """Start a coordinator and return it serving; stop it with `Coordinator.stop()`."""
    config = load_yaml(settings.config_path) if settings.config_path else settings.config
    with contextlib.ExitStack() as pieces:
        store = Store.open(settings.db_path, clock=clock, lease_ttl=settings.lease_ttl, peer_ttl=settings.peer_ttl,
                           synchronous=settings.synchronous, limits=settings.limits)
        pieces.callback(store.close)
        if settings.run_id is None:
            settings = settings.replace(run_id=store.config.run_id if store.config else random_run_id())
        # run.yaml is applied when the file itself changed, not whenever it differs from the stored config.
        digest = hashlib.sha256(Path(settings.config_path).read_bytes()).hexdigest() if settings.config_path else None
        version, created = store.ensure_config(config, run_id=settings.run_id, source_digest=digest)
        logger.info(f"run config version {version.version} ({'new' if created else 'unchanged'}), "
                    f"run id {settings.run_id}")
        dataset_token = settings.dataset_token
        if settings.dataset and not dataset_token:
            # The dataset service checks tokens against this coordinator, so a token of our own, made fresh at each
            # start (older ones revoked), lets us list the dataset with no token copied around by hand.
            dataset_token = create_token(settings.db_path, name="coordinator-internal", replace=True)

        server, health = make_server(max_workers=settings.max_workers,
                                     interceptors=[TokenAuthInterceptor(_token_check(settings, pieces))])
        pieces.callback(lambda: server.stop(0))
        contributions = ContributionBook()
        pieces.callback(metrics.register_collector(contributions))
        parts = servicer_parts(store, settings, contributions=contributions, dataset_token=dataset_token)
        pieces.callback(parts["admission"].close)
        pieces.callback(metrics.register_collector(parts["admission"].book))  # credentials per peer and token
        pb_grpc.add_CoordinatorServicer_to_server(compose(parts.values()), server)
        source = None
        if settings.bootstrap_peers_url:
            source = BootstrapPeersSource(settings.bootstrap_peers_url, static=settings.bootstrap_peers,
                                          publish=parts["peers"].set_bootstrap_peers)
            source.start()
            pieces.callback(source.stop)
        address = bind(server, settings.listen, tls_cert=settings.tls_cert, tls_key=settings.tls_key)

        sync = None
        if settings.dataset:
            sync = DatasetSync(store, address=settings.dataset, token=dataset_token, interval=settings.sync_interval,
                               retry_interval=min(2.0, settings.sync_interval))
        collector = metrics.ProgressCollector(store.progress, dataset_up=lambda: sync.up if sync else None)
        pieces.callback(metrics.register_collector(collector))
        metrics_server = None
        if settings.metrics_port is not None:
            metrics_server = MetricsServer(host=settings.metrics_host, port=settings.metrics_port)
            pieces.callback(metrics_server.close)

        server.start()
        set_serving(health, SERVICE_NAME)
        if sync is not None:
            sync.start()
            pieces.callback(sync.stop)
        else:
            logger.warning("no --dataset given: no samples will be synced, so no chunks can be leased")
        upkeep_tasks = _upkeep_tasks(store)
        revocations = RevocationWatch(store, db_path=settings.db_path)
        pieces.callback(revocations.close)
        upkeep_tasks.append(("revoked tokens' leases", revocations))
        status_port = None
        if settings.status_page is not None:
            status = LiveStatus(store, settings=settings.status_page, coordinator_address=address,
                                services=lambda: host_services(
                                    dataset_up=sync.up if sync else None, bootstrap_up=source.up if source else None,
                                    bootstrap_url=source is not None),
                                bootstrap_addresses=lambda: parts["peers"].bootstrap_peers,
                                # the page's join line pins the certificate served here, as token create's do
                                tls_fingerprint=fingerprint_of_file(settings.tls_cert) if settings.tls_cert else None)
            status_server = status.start_server()
            pieces.callback(status_server.close)
            upkeep_tasks.append(("status history", status.sample_if_due))
            status_port = status_server.port
        upkeep = Upkeep(upkeep_tasks, interval=settings.upkeep_interval).start()
        pieces.callback(upkeep.stop)

        coordinator = Coordinator(settings=settings, store=store, server=server, health=health, address=address,
                                  metrics_port=metrics_server.port if metrics_server else None, sync=sync,
                                  pieces=pieces.pop_all(), status_port=status_port)
    logger.info(f"coordinator serving on {address} (metrics on port {coordinator.metrics_port}"
                + (f", status page on port {status_port}" if status_port is not None else "") + ")")
    return coordinator


def serve(settings: CoordinatorSettings, *, stop: threading.Event | None = None) -> int:
    """Run a coordinator until SIGTERM/SIGINT (or `stop` is set), then stop it cleanly; the command's entry point.

    Writes `settings.ready_file` once serving, after the signal handlers are in: whoever reads it may send SIGTERM
    at once."""
    coordinator = start(settings)
    try:
        stop = stop_event_on_signals(stop, doing="stopping the coordinator")
        write_ready_file(settings.ready_file, grpc_address=coordinator.address, metrics_port=coordinator.metrics_port,
                         config_version=coordinator.store.config.version, run_id=settings.run_id,
                         status_port=coordinator.status_port)
        while not stop.wait(1.0):
            pass
    finally:
        coordinator.stop()
    return 0
