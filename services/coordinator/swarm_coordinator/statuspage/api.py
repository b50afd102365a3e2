"""`/api/status`: the status page's one JSON document, built from a plain snapshot (pure functions).

The snapshot holds what the coordinator knows at one moment; `build_status` turns it into the public document.
Public means: no IP address and no multiaddr of any peer, no token, nothing that lets a reader act on the run.
What the coordinator does not know (yet) is null, and `unknown` says why, so the page can say so instead of guessing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from swarm_coordinator.statuspage.history import Point, downsample, eta_seconds

API_VERSION = 1
MAX_LEADERBOARD_ROWS = 50
REFRESH_S = 5.0


@dataclass(frozen=True)
class PeerRow:
    """One peer as the leaderboard sees it (multiaddrs are deliberately not here: they hold IP addresses)."""
    peer_id: str
    name: str
    samples: int
    chunks: int
    first_seen: float
    last_seen: float
    alive: bool
    client_mode: bool
    finished: bool = False
    loss: float | None = None
    samples_per_s: float = 0.0


@dataclass(frozen=True)
class ServiceHealth:
    name: str
    up: bool | None  # None: not checked (e.g. no dataset service configured)
    detail: str = ""


@dataclass(frozen=True)
class JoinInfo:
    coordinator: str  # HOST:PORT peers dial
    image: str
    token_contact: str  # where a newcomer asks for a join token
    tls_fingerprint: str | None = None  # of the certificate the coordinator serves: the join line pins it


@dataclass(frozen=True)
class StatusSnapshot:
    now: float
    run_name: str
    model: str
    config_version: int
    started: float | None  # when the run's first config version was stored
    samples_done: int
    samples_total: int  # samples in one data epoch
    data_epochs_done: int
    max_data_epochs: int
    run_complete: bool
    global_epoch: int
    lr: float
    peers_online: int
    peers_training: int
    join: JoinInfo
    mode: str | None = None  # the run config's averaging mode (sync | diloco), plus LoRA; None before a config
    peers: Sequence[PeerRow] = ()
    history: Sequence[Point] = ()
    services: Sequence[ServiceHealth] = ()
    bootstrap_addresses: Sequence[str] = ()
    sample_grid_url: str | None = None
    checkpoint: str | None = None
    export: str | None = None
    extra_unknown: dict[str, str] = field(default_factory=dict)


def swarm_loss(peers: Sequence[PeerRow]) -> float | None:
    """Mean loss over live peers that reported a finite one (each peer's loss is its own recent average)."""
    losses = [p.loss for p in peers if p.alive and p.loss is not None and math.isfinite(p.loss)]
    return sum(losses) / len(losses) if losses else None


def swarm_samples_per_s(peers: Sequence[PeerRow]) -> float:
    """What the live peers say they train per second, summed (finished peers train no more)."""
    return sum(p.samples_per_s for p in peers if p.alive and not p.finished and math.isfinite(p.samples_per_s))


def short_peer_id(peer_id: str) -> str:
    return peer_id if len(peer_id) <= 16 else f"{peer_id[:6]}…{peer_id[-6:]}"


def leaderboard(peers: Sequence[PeerRow], *, now: float, limit: int = MAX_LEADERBOARD_ROWS) -> list[dict[str, Any]]:
    """Peers by samples credited (most first; online before offline on a tie), at most `limit` rows.

    `hours_online` spans first to last seen: the coordinator records no gaps in between.
    """
    ranked = sorted(peers, key=lambda p: (-p.samples, not p.alive, -p.last_seen, p.peer_id))
    return [{
        "name": p.name or short_peer_id(p.peer_id),
        "peer": short_peer_id(p.peer_id),
        "samples": p.samples,
        "chunks": p.chunks,
        "hours_online": round(max(0.0, p.last_seen - p.first_seen) / 3600.0, 3),
        "last_seen": p.last_seen,
        "last_seen_ago_s": round(max(0.0, now - p.last_seen), 1),
        "online": p.alive,
        "finished": p.finished,
        "reachable": not p.client_mode,
        "mode": "client" if p.client_mode else "reachable",
        "samples_per_s": _finite(p.samples_per_s) if p.alive else 0.0,
    } for p in ranked[:limit]]


def history_series(points: Sequence[Point]) -> dict[str, list]:
    """Column-wise history for the charts (oldest first); a loss no peer had reported is null."""
    ordered = sorted(points, key=lambda p: p.t)
    return {
        "t": [p.t for p in ordered],
        "samples_done": [p.samples_done for p in ordered],
        "global_epoch": [p.global_epoch for p in ordered],
        "peers_online": [p.peers_online for p in ordered],
        "samples_per_s": [_finite(p.samples_per_s) for p in ordered],
        "loss": [_finite(p.loss) if p.loss is not None else None for p in ordered],
    }


def join_command(join: JoinInfo) -> str:
    """The one line a volunteer runs (as in the README), with TOKEN to replace by the token they were given."""
    pin = f" --tls-fingerprint {join.tls_fingerprint}" if join.tls_fingerprint else ""
    return (f"docker run --gpus all --rm --shm-size=8g -v swarm-trainer:/data -e SWARM_TOKEN=TOKEN {join.image} "
            f"swarm train --coordinator {join.coordinator}{pin} --output-dir /data/run --client-mode --use-auto-relay")


def build_status(s: StatusSnapshot) -> dict[str, Any]:
    """The `/api/status` document (plain JSON types only; NaN and infinities become null)."""
    samples_target = s.samples_total * s.max_data_epochs
    history = downsample(s.history, now=s.now)  # bounded whatever the caller kept
    unknown = dict(s.extra_unknown)
    if s.mode is None:
        unknown["mode"] = "no run config is stored yet"
    if s.sample_grid_url is None:
        unknown["sample_grid"] = "no trainer has uploaded a sample grid to the host"
    if s.checkpoint is None:
        unknown["checkpoint"] = "trainers keep checkpoints on their own disks; the host has no copy it knows of"
    if s.export is None:
        unknown["export"] = "no exported model is known to the host"
    eta = eta_seconds(history, now=s.now, samples_done=s.samples_done, samples_target=samples_target,
                      complete=s.run_complete)
    if eta is None:
        unknown["eta"] = ("no data synced yet" if samples_target <= 0 else
                          "not enough recent progress to estimate")
    return {
        "api_version": API_VERSION,
        "generated_at": s.now,
        "refresh_s": REFRESH_S,
        "run": {
            "name": s.run_name,
            "model": s.model,
            "mode": s.mode,
            "config_version": s.config_version,
            "started": s.started,
            "complete": s.run_complete,
            "data_epochs_done": s.data_epochs_done,
            "max_data_epochs": s.max_data_epochs,
            "data_epochs_to_go": max(0, s.max_data_epochs - s.data_epochs_done),
            "samples_done": s.samples_done,
            "samples_per_data_epoch": s.samples_total,
            "samples_target": samples_target,
            "progress": 1.0 if s.run_complete else (min(1.0, s.samples_done / samples_target) if samples_target
                                                     else 0.0),
            "eta_s": None if eta is None else round(eta, 1),
        },
        "swarm": {
            "global_epoch": s.global_epoch,
            "lr": _finite(s.lr),
            "samples_per_s": round(swarm_samples_per_s(s.peers), 4),
            "loss": _finite(swarm_loss(s.peers)),
            "peers_online": s.peers_online,
            "peers_training": s.peers_training,
        },
        "history": history_series(history),
        "leaderboard": {"peers": leaderboard(s.peers, now=s.now), "total": len(s.peers),
                        "online": sum(p.alive for p in s.peers)},
        "join": {"coordinator": s.join.coordinator, "image": s.join.image, "token": s.join.token_contact,
                 "command": join_command(s.join)},
        "artifacts": {"sample_grid_url": s.sample_grid_url, "checkpoint": s.checkpoint, "export": s.export},
        "health": {"services": [{"name": h.name, "up": h.up, "detail": h.detail} for h in s.services],
                   "bootstrap": list(s.bootstrap_addresses)},
        "unknown": unknown,
    }


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
