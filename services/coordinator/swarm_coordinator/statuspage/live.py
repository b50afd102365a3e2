"""The status page of a running coordinator: its settings, the history sampler, the snapshot from the store.

`LiveStatus` is the glue: an upkeep task samples one history point every `sample_interval` seconds into the store
(store/status_history.py), and each `/api/status` build (at most one per cache period) reads the store's progress
and history into a StatusSnapshot. The pure conversions are functions here, tested alone.
"""
from __future__ import annotations

from typing import Callable, Sequence

from swarm_coordinator.progress import ProgressSnapshot
from swarm_coordinator.statuspage.api import (
    JoinInfo,
    PeerRow,
    ServiceHealth,
    StatusSnapshot,
    build_status,
    swarm_loss,
    swarm_samples_per_s,
)
from swarm_coordinator.statuspage.history import Point
from swarm_coordinator.statuspage.server import StatusPageServer
from swarm_coordinator.statuspage.settings import StatusPageSettings


def join_address(settings: StatusPageSettings, *, bound: str) -> str:
    """The address the join line shows: the public one if given, else the bound one (a wildcard host as HOST)."""
    if settings.public_address:
        return settings.public_address
    host, _, port = bound.rpartition(":")
    return f"{'HOST' if host in ('0.0.0.0', '[::]', '::', '') else host}:{port}"


def peer_rows(progress: ProgressSnapshot) -> list[PeerRow]:
    return [PeerRow(peer_id=p.peer_id, name=p.name, samples=p.samples_contributed, chunks=p.chunks_contributed,
                    first_seen=p.first_seen, last_seen=p.last_seen, alive=p.peer_id in progress.alive_peer_ids,
                    client_mode=p.client_mode, finished=p.finished, loss=p.loss, samples_per_s=p.samples_per_s)
            for p in progress.peers]


def public_run_name(settings: StatusPageSettings, current) -> str:
    """--run-name, else a name made from the model: the run id stays off the page (only admitted peers learn it)."""
    if settings.run_name:
        return settings.run_name
    return f"{current.config.model} fine-tune" if current else ""


def run_mode(config) -> str:
    """What the page calls the run's training mode: the averaging mode, plus LoRA when only an adapter trains."""
    mode = getattr(config, "mode", "sync")
    return f"{mode}, LoRA" if getattr(config, "train", "full") == "lora" else mode


def history_point(progress: ProgressSnapshot, *, now: float) -> Point:
    rows = peer_rows(progress)
    return Point(t=now, samples_done=progress.samples_done, global_epoch=progress.swarm_epoch,
                 peers_online=progress.peers_alive, samples_per_s=swarm_samples_per_s(rows), loss=swarm_loss(rows))


def status_snapshot(progress: ProgressSnapshot, *, now: float, run_name: str, model: str, started: float | None,
                    join: JoinInfo, history: Sequence[Point] = (), services: Sequence[ServiceHealth] = (),
                    bootstrap_addresses: Sequence[str] = (), mode: str | None = None) -> StatusSnapshot:
    return StatusSnapshot(
        now=now, run_name=run_name, model=model, mode=mode, config_version=progress.config_version, started=started,
        samples_done=progress.samples_done, samples_total=progress.samples_total,
        data_epochs_done=progress.data_epochs_done, max_data_epochs=progress.max_data_epochs,
        run_complete=progress.run_complete, global_epoch=progress.swarm_epoch, lr=progress.lr,
        peers_online=progress.peers_alive, peers_training=progress.peers_training, join=join,
        peers=peer_rows(progress), history=list(history), services=list(services),
        bootstrap_addresses=list(bootstrap_addresses))


def host_services(*, dataset_up: bool | None, bootstrap_up: bool | None, bootstrap_url: bool) -> list[ServiceHealth]:
    """The host services as the coordinator last saw them (it is up: it is answering).

    `dataset_up`: whether the last dataset sync reached the dataset service (None: none configured);
    `bootstrap_up`: whether the last fetch of the bootstrap DHT's /multiaddrs worked (None: not tried yet), when
    `bootstrap_url` says the coordinator fetches them at all.
    """
    if dataset_up is None:
        dataset = ServiceHealth("dataset service", None, "none configured")
    else:
        dataset = ServiceHealth("dataset service", dataset_up,
                                "" if dataset_up else "the coordinator's last sync could not reach it")
    if not bootstrap_url:
        bootstrap = ServiceHealth("bootstrap DHT", None, "addresses given by flag; not checked")
    elif bootstrap_up is None:
        bootstrap = ServiceHealth("bootstrap DHT", None, "not checked yet")
    else:
        bootstrap = ServiceHealth("bootstrap DHT", bootstrap_up,
                                  "" if bootstrap_up else "its /multiaddrs did not answer the coordinator")
    return [ServiceHealth("coordinator", True), dataset, bootstrap]


class LiveStatus:
    """The status page of one coordinator's store. `sample_if_due` is an upkeep task; `start_server` serves."""

    def __init__(self, store, *, settings: StatusPageSettings, coordinator_address: str,
                 services: Callable[[], Sequence[ServiceHealth]] = lambda: (),
                 bootstrap_addresses: Callable[[], Sequence[str]] = lambda: (),
                 clock: Callable[[], float] | None = None, tls_fingerprint: str | None = None):
        self.store, self.settings, self.clock = store, settings, clock or store.clock
        self.join = JoinInfo(coordinator=join_address(settings, bound=coordinator_address),
                             image=settings.join_image, token_contact=settings.token_contact,
                             tls_fingerprint=tls_fingerprint)
        self._services, self._bootstrap = services, bootstrap_addresses
        self._last_sample: float | None = None

    def sample_if_due(self) -> bool:
        """Record one history point when `sample_interval` has passed since the last (or the clock went back)."""
        now = self.clock()
        last = self._last_sample
        if last is not None and 0.0 <= now - last < self.settings.sample_interval:
            return False
        self.store.history.record(history_point(self.store.progress(), now=now))
        self._last_sample = now
        return True

    def snapshot(self) -> StatusSnapshot:
        first = self.store.get_config(1)
        current = self.store.config
        return status_snapshot(
            self.store.progress(), now=self.clock(), run_name=public_run_name(self.settings, current),
            model=current.config.model if current else "", started=first.created if first else None,
            mode=run_mode(current.config) if current else None, join=self.join,
            history=self.store.history.points(), services=self._services(), bootstrap_addresses=self._bootstrap())

    def document(self) -> dict:
        return build_status(self.snapshot())

    def start_server(self) -> StatusPageServer:
        return StatusPageServer(self.document, host=self.settings.host, port=self.settings.port,
                                cache_s=self.settings.cache_s)
