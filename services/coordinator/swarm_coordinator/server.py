"""The coordinator's gRPC server (swarm.v1.Coordinator): a thin shell over the store and the pure rules.

Each handler validates its request (INVALID_ARGUMENT with what to fix), calls one store method (one transaction),
and builds the response. Errors the state decides (unregistered peer, unknown config version, someone else's lease)
map to FAILED_PRECONDITION, NOT_FOUND or PERMISSION_DENIED; a failure of our own is INTERNAL with a pointer to the
log, and the server keeps serving either way.
"""
from __future__ import annotations

import functools
import math
import signal
import sqlite3
import threading
import time
from typing import Callable, Sequence

import grpc
import sqlalchemy.exc

from swarm.logs import get_logger
from swarm.metrics import MetricsServer
from swarm.procs import write_ready_file
from swarm.rpc import TokenAuthInterceptor, bind, make_server, set_serving, token_from_metadata
from swarm.runconfig import RunConfig, load_yaml, validate_run_id
from swarm.v1 import coordinator_pb2 as pb
from swarm.v1 import coordinator_pb2_grpc as pb_grpc
from swarm_coordinator import db, metrics, rules
from swarm_coordinator.peers import PeerRecord
from swarm_coordinator.progress import current_lr, lr_total_steps
from swarm_coordinator.errors import ConfigNotFound, StoreError
from swarm_coordinator.store import Store
from swarm_coordinator.sync import DatasetSync
from swarm_coordinator.bootstrap_source import BootstrapPeersSource
from swarm_coordinator.tokens import TokenChecker, create_token, hash_token

logger = get_logger(__name__)

SERVICE_NAME = "swarm.v1.Coordinator"
_STORE_ERROR_CODES = {"failed_precondition": grpc.StatusCode.FAILED_PRECONDITION,
                      "not_found": grpc.StatusCode.NOT_FOUND,
                      "permission_denied": grpc.StatusCode.PERMISSION_DENIED}
_recorder = metrics.RpcRecorder()


def _handler(method: str):
    """Maps rule and store errors to gRPC statuses with their message, and records every call's code and latency."""
    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(self, request, context):
            started = time.perf_counter()
            code, message = grpc.StatusCode.OK, ""
            try:
                return fn(self, request, context)
            except rules.InvalidRequest as e:
                code, message = grpc.StatusCode.INVALID_ARGUMENT, str(e)
            except StoreError as e:
                code, message = _STORE_ERROR_CODES[e.kind], str(e)
            except (sqlalchemy.exc.OperationalError, sqlite3.OperationalError) as e:
                logger.error(f"{method}: database error: {e}")
                code, message = grpc.StatusCode.UNAVAILABLE, "the coordinator's database is busy or failing; retry"
            except Exception:
                logger.exception(f"{method} failed")
                code, message = grpc.StatusCode.INTERNAL, f"{method} failed inside the coordinator; see its log"
            finally:
                _recorder.record(method, code.name, time.perf_counter() - started)
            context.abort(code, message)
        return wrapper
    return decorate


_token_hashes: dict[str, str] = {}


def _caller(context) -> str | None:
    """Who is calling: the sha256 of its join token (the interceptor already checked the token is valid)."""
    token = token_from_metadata(context.invocation_metadata())
    if not token:
        return None
    digest = _token_hashes.get(token)
    if digest is None:
        if len(_token_hashes) > 10_000:  # valid tokens only reach here, but stay bounded anyway
            _token_hashes.clear()
        digest = _token_hashes[token] = hash_token(token)
    return digest


def _peer_info(peer: PeerRecord, *, alive: bool) -> pb.PeerInfo:
    return pb.PeerInfo(peer_id=peer.peer_id, name=peer.name, multiaddrs=peer.multiaddrs, client_mode=peer.client_mode,
                       last_seen_unix_ms=int(peer.last_seen * 1000), samples_contributed=peer.samples_contributed,
                       global_epoch=peer.global_epoch, finished=peer.finished,
                       loss=math.nan if peer.loss is None else peer.loss, samples_per_s=peer.samples_per_s,
                       chunks_contributed=peer.chunks_contributed, alive=alive)


class CoordinatorServicer(pb_grpc.CoordinatorServicer):
    def __init__(self, store: Store, *, bootstrap_peers: Sequence[str] = (), dataset_address: str = "",
                 heartbeat_interval: float = 30.0):
        self.store, self.bootstrap_peers = store, list(bootstrap_peers)
        self.dataset_address, self.heartbeat_interval = dataset_address, heartbeat_interval

    def _config_message(self, version) -> pb.RunConfig:
        return pb.RunConfig(version=version.version, run_id=version.run_id, config_json=version.config_json)

    @_handler("RegisterPeer")
    def RegisterPeer(self, request, context):
        peer_id = rules.check_peer_id(request.peer_id)
        multiaddrs = rules.check_multiaddrs(request.multiaddrs)
        name = rules.check_name(request.name)
        if request.batch_size < 0:
            raise rules.InvalidRequest(f"batch_size must be >= 0, got {request.batch_size}")
        self.store.register(peer_id, name=name, multiaddrs=multiaddrs, client_mode=request.client_mode,
                            batch_size=request.batch_size, caller=_caller(context))
        initial = self.store.initial_peers(self.bootstrap_peers, exclude_peer_id=peer_id)
        return pb.RegisterPeerResponse(config=self._config_message(self.store.config), initial_peers=initial,
                                       dataset_address=self.dataset_address, lease_ttl_s=self.store.lease_ttl,
                                       heartbeat_interval_s=self.heartbeat_interval)

    @_handler("GetConfig")
    def GetConfig(self, request, context):
        if request.version < 0:
            raise rules.InvalidRequest(f"version must be >= 0 (0 means the current one), got {request.version}")
        version = self.store.get_config(request.version)
        if version is None:
            raise ConfigNotFound(f"config version {request.version} does not exist; the latest is "
                                 f"{self.store.config.version}")
        return self._config_message(version)

    @_handler("LeaseChunks")
    def LeaseChunks(self, request, context):
        peer_id = rules.check_peer_id(request.peer_id)
        count = rules.check_max_chunks(request.max_chunks)
        self.store.check_config_version(request.config_version)
        grants = self.store.lease(peer_id, count, caller=_caller(context))
        return pb.LeaseChunksResponse(
            leases=[pb.Lease(lease_id=g.lease_id, chunk_id=g.chunk_id, sample_ids=g.sample_ids,
                             deadline_unix_ms=int(g.deadline * 1000), times_trained=g.times_trained,
                             bucket_width=g.bucket_width, bucket_height=g.bucket_height) for g in grants],
            run_complete=self.store.run_complete(), config_version=self.store.config.version)

    @_handler("Heartbeat")
    def Heartbeat(self, request, context):
        peer_id = rules.check_peer_id(request.peer_id)
        lease_ids = rules.check_lease_ids(request.lease_ids)
        loss = rules.check_heartbeat_numbers(global_epoch=request.global_epoch, loss=request.loss,
                                             samples_per_s=request.samples_per_s)
        states = self.store.heartbeat(peer_id, lease_ids, global_epoch=request.global_epoch, loss=loss,
                                      samples_per_s=request.samples_per_s, finished=request.finished,
                                      caller=_caller(context))
        epochs = self.store.epochs()
        config = self.store.config
        samples_total = self.store.queue.samples_total
        return pb.HeartbeatResponse(
            leases=[pb.LeaseState(lease_id=lid, valid=valid, deadline_unix_ms=int(deadline * 1000))
                    for lid, valid, deadline in states],
            config_version=config.version, run_complete=self.store.run_complete(), swarm_epoch=epochs.swarm_epoch,
            peers_training=epochs.peers_training, swarm_epoch_min=epochs.swarm_epoch_min,
            lr=current_lr(config.config, epoch=epochs.swarm_epoch, samples_total=samples_total),
            lr_total_steps=lr_total_steps(config.config, samples_total=samples_total))

    @_handler("ReportChunkDone")
    def ReportChunkDone(self, request, context):
        peer_id = rules.check_peer_id(request.peer_id)
        lease_id = rules.check_lease_id(request.lease_id)
        result = self.store.report(peer_id, lease_id, caller=_caller(context))
        metrics.count_report(result.outcome.name)
        return pb.ReportChunkDoneResponse(outcome=int(result.outcome), message=result.message,
                                          samples_counted=result.samples_counted)

    @_handler("ReleaseLeases")
    def ReleaseLeases(self, request, context):
        peer_id = rules.check_peer_id(request.peer_id)
        lease_ids = rules.check_lease_ids(request.lease_ids)
        return pb.ReleaseLeasesResponse(released=self.store.release(peer_id, lease_ids, caller=_caller(context)))

    @_handler("ListPeers")
    def ListPeers(self, request, context):
        return pb.ListPeersResponse(peers=[_peer_info(p, alive=True) for p in self.store.live_peers()],
                                    initial_peers=self.store.initial_peers(self.bootstrap_peers))

    @_handler("GetProgress")
    def GetProgress(self, request, context):
        p = self.store.progress()
        return pb.Progress(
            samples_done=p.samples_done, data_epochs_done=p.data_epochs_done, chunks_total=p.chunks_total,
            chunks_queued=p.chunks_queued, chunks_leased=p.chunks_leased, chunks_done=p.chunks_done,
            peers_alive=p.peers_alive, swarm_epoch=p.swarm_epoch, config_version=p.config_version,
            run_complete=p.run_complete, max_data_epochs=p.max_data_epochs, lr=p.lr, lr_total_steps=p.lr_total_steps,
            samples_total=p.samples_total, samples_pending=p.samples_pending, swarm_epoch_min=p.swarm_epoch_min,
            peers_training=p.peers_training,
            peers=[_peer_info(peer, alive=peer.peer_id in p.alive_peer_ids) for peer in p.peers])


class Coordinator:
    """A running coordinator: store, gRPC server, dataset sync, upkeep loop and metrics. Stop it with stop()."""

    def __init__(self, *, store: Store, server: grpc.Server, address: str, health, metrics_server, sync,
                 cleanup: Callable[[], object], upkeep_interval: float):
        self.store, self.server, self.address, self.health = store, server, address, health
        self.metrics_server, self.sync = metrics_server, sync
        self.metrics_port = metrics_server.port if metrics_server else None
        self._cleanup = cleanup
        self._stopped = threading.Event()
        self._upkeep = threading.Thread(target=self._upkeep_loop, args=(upkeep_interval,), name="upkeep", daemon=True)
        self._upkeep.start()

    def _upkeep_loop(self, interval: float) -> None:
        """Reap expired leases (so progress and metrics are exact) and pick up `swarm config set` versions."""
        while not self._stopped.wait(interval):
            try:
                if self.store.refresh_config():
                    logger.info(f"run config version {self.store.config.version} is now current")
                expired = self.store.reap()
                if expired:
                    logger.info(f"{expired} lease(s) expired; their chunks are queued again")
            except Exception:
                logger.exception("upkeep failed; retrying")

    def stop(self, *, grace: float = 2.0) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        if self.sync is not None:
            self.sync.stop()
        self._upkeep.join(timeout=10)
        self._cleanup()
        if self.metrics_server is not None:
            self.metrics_server.close()
        self.store.close()
        logger.info("coordinator stopped")


def serve(*, listen: str = "0.0.0.0:50051", db_path: str = "coordinator.sqlite", config_path: str | None = None,
          config: RunConfig | None = None, run_id: str = "swarm-diffusion", dataset: str | None = None,
          dataset_public_address: str | None = None, dataset_token: str | None = None,
          bootstrap_peers: Sequence[str] = (), bootstrap_peers_url: str | None = None, lease_ttl: float = 1200.0, peer_ttl: float = 120.0,
          heartbeat_interval: float = 30.0, metrics_port: int | None = 9100, metrics_host: str = "0.0.0.0",
          ready_file: str | None = None, sync_interval: float = 5.0, upkeep_interval: float = 1.0,
          synchronous: str = "normal", max_workers: int = 4, token_cache_ttl: float = 5.0,
          clock: Callable[[], float] = time.time, wait: bool = True) -> Coordinator | None:
    """Start a coordinator. With `wait` (the CLI) block until SIGTERM/SIGINT and stop cleanly; else return it running."""
    validate_run_id(run_id)
    if config_path:
        config = load_yaml(config_path)
    store = Store.open(db_path, clock=clock, lease_ttl=lease_ttl, peer_ttl=peer_ttl, synchronous=synchronous)
    started = []
    try:
        version, created = store.ensure_config(config, run_id=run_id)
        if dataset and not dataset_token:
            # The dataset service checks tokens against this coordinator, so a token of our own, made fresh at each
            # start (older ones revoked), lets us list the dataset with no token copied around by hand.
            dataset_token = create_token(db_path, name="coordinator-internal", replace=True)
        logger.info(f"run config version {version.version} ({'new' if created else 'unchanged'}), run id {run_id}")
        token_engine = db.make_engine(db_path, immediate=False)
        started.append(token_engine.dispose)
        checker = TokenChecker(token_engine, ttl=token_cache_ttl)

        def check(token):
            error = checker(token)
            if error is not None:
                metrics.AUTH_FAILURES.inc()
            return error

        server, health = make_server(max_workers=max_workers, interceptors=[TokenAuthInterceptor(check)])
        servicer = CoordinatorServicer(store, bootstrap_peers=bootstrap_peers,
                                       dataset_address=dataset_public_address or dataset or "",
                                       heartbeat_interval=heartbeat_interval)
        pb_grpc.add_CoordinatorServicer_to_server(servicer, server)
        if bootstrap_peers_url:
            source = BootstrapPeersSource(bootstrap_peers_url, static=bootstrap_peers,
                                          publish=lambda peers: setattr(servicer, "bootstrap_peers", peers))
            source.start()
            started.append(source.stop)
        address = bind(server, listen)
        sync = (DatasetSync(store, address=dataset, token=dataset_token, interval=sync_interval,
                            retry_interval=min(2.0, sync_interval)) if dataset else None)
        collector = metrics.ProgressCollector(store.progress, dataset_up=lambda: sync.up if sync else None)
        unregister = metrics.register_collector(collector)
        started.append(unregister)
        metrics_server = MetricsServer(host=metrics_host, port=metrics_port) if metrics_port is not None else None
        server.start()
        set_serving(health, SERVICE_NAME)
        if sync is not None:
            sync.start()
        else:
            logger.warning("no --dataset given: no samples will be synced, so no chunks can be leased")
        coordinator = Coordinator(store=store, server=server, address=address, health=health,
                                  metrics_server=metrics_server, sync=sync,
                                  cleanup=lambda: [undo() for undo in started],
                                  upkeep_interval=upkeep_interval)
    except BaseException:
        for undo in started:
            undo()
        store.close()
        raise
    stop = threading.Event()
    if wait:  # before the ready file: whoever reads it may send SIGTERM at once
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    write_ready_file(ready_file, grpc_address=address, metrics_port=coordinator.metrics_port,
                     config_version=store.config.version, run_id=run_id)
    logger.info(f"coordinator serving on {address} (metrics on port {coordinator.metrics_port})")
    if not wait:
        return coordinator
    while not stop.wait(1.0):
        pass
    coordinator.stop()
    return None
