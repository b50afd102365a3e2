"""The status page of a running coordinator: its settings, the history sampler, the snapshot from the store.

`LiveStatus` is the glue: an upkeep task samples one history point every `sample_interval` seconds into the store
(store/status_history.py), and each `/api/status` build (at most one per cache period) reads the store's progress
and history into a StatusSnapshot. The pure conversions are functions here, tested alone.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

from swarm import cliargs
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
from swarm_coordinator.statuspage.server import CACHE_S, StatusPageServer

DEFAULT_STATUS_PORT = 8080
DEFAULT_JOIN_IMAGE = "swarm-diffusion/trainer:0.1.0"
DEFAULT_TOKEN_CONTACT = "ask the swarm's host"
SAMPLE_INTERVAL_S = 5.0


@dataclass(frozen=True)
class StatusPageSettings:
    port: int = DEFAULT_STATUS_PORT  # 0 picks a free one
    host: str = "0.0.0.0"
    public_address: str | None = None  # the coordinator's HOST:PORT for volunteers; None: from its listen address
    join_image: str = DEFAULT_JOIN_IMAGE
    token_contact: str = DEFAULT_TOKEN_CONTACT  # where a newcomer asks for a join token (a URL, a chat channel)
    sample_interval: float = SAMPLE_INTERVAL_S
    cache_s: float = CACHE_S

    def __post_init__(self) -> None:
        cliargs.check_port(self.port, name="status page port")
        if self.public_address is not None and not cliargs.is_address(self.public_address):
            raise ValueError(f"public address {self.public_address!r} is not HOST:PORT")
        for name in ("join_image", "token_contact", "host"):
            value = getattr(self, name)
            if not value.strip() or len(value) > 200 or any(ord(c) < 32 for c in value):
                raise ValueError(f"{name} must be one line of 1 to 200 characters, got {value!r}")
        if not self.sample_interval > 0 or not self.cache_s >= 0:
            raise ValueError("the status page's sample interval must be > 0 and its cache time >= 0")


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


def history_point(progress: ProgressSnapshot, *, now: float) -> Point:
    rows = peer_rows(progress)
    return Point(t=now, samples_done=progress.samples_done, global_epoch=progress.swarm_epoch,
                 peers_online=progress.peers_alive, samples_per_s=swarm_samples_per_s(rows), loss=swarm_loss(rows))


def status_snapshot(progress: ProgressSnapshot, *, now: float, run_name: str, model: str, started: float | None,
                    join: JoinInfo, history: Sequence[Point] = (), services: Sequence[ServiceHealth] = (),
                    bootstrap_addresses: Sequence[str] = ()) -> StatusSnapshot:
    return StatusSnapshot(
        now=now, run_name=run_name, model=model, config_version=progress.config_version, started=started,
        samples_done=progress.samples_done, samples_total=progress.samples_total,
        data_epochs_done=progress.data_epochs_done, max_data_epochs=progress.max_data_epochs,
        run_complete=progress.run_complete, global_epoch=progress.swarm_epoch, lr=progress.lr,
        peers_online=progress.peers_alive, peers_training=progress.peers_training, join=join,
        peers=peer_rows(progress), history=list(history), services=list(services),
        bootstrap_addresses=list(bootstrap_addresses))


class LiveStatus:
    """The status page of one coordinator's store. `sample_if_due` is an upkeep task; `start_server` serves."""

    def __init__(self, store, *, settings: StatusPageSettings, coordinator_address: str,
                 services: Callable[[], Sequence[ServiceHealth]] = lambda: (),
                 bootstrap_addresses: Callable[[], Sequence[str]] = lambda: (),
                 clock: Callable[[], float] = time.time):
        self.store, self.settings, self.clock = store, settings, clock
        self.join = JoinInfo(coordinator=join_address(settings, bound=coordinator_address),
                             image=settings.join_image, token_contact=settings.token_contact)
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
            self.store.progress(), now=self.clock(), run_name=current.run_id if current else "",
            model=current.config.model if current else "", started=first.created if first else None,
            join=self.join, history=self.store.history.points(), services=self._services(),
            bootstrap_addresses=self._bootstrap())

    def document(self) -> dict:
        return build_status(self.snapshot())

    def start_server(self) -> StatusPageServer:
        return StatusPageServer(self.document, host=self.settings.host, port=self.settings.port,
                                cache_s=self.settings.cache_s)
