"""The peer registry in memory (the store writes it through to the database first).

Liveness is a rule of last_seen and the peer TTL (rules.peer_alive): nothing is ever deleted, so per-peer
contributions stay on record, but a peer not seen within the TTL is dead and its addresses reach no joiner.
"""
from __future__ import annotations

import heapq
import json
from collections import Counter
from dataclasses import dataclass

from swarm_coordinator.rules import MAX_INITIAL_PEERS, PeerView, SwarmEpochs, initial_peers, peer_alive

EPOCHS_CACHE_S = 1.0


@dataclass(slots=True)
class PeerRecord:
    peer_id: str
    name: str
    multiaddrs: tuple[str, ...]
    client_mode: bool
    batch_size: int
    first_seen: float
    last_seen: float
    samples_contributed: int = 0
    chunks_contributed: int = 0
    global_epoch: int = 0
    finished: bool = False
    loss: float | None = None
    samples_per_s: float = 0.0
    owner: str | None = None  # sha256 of the join token that registered it

    def view(self) -> PeerView:
        return PeerView(self.peer_id, self.multiaddrs, self.client_mode, self.last_seen, self.global_epoch,
                        self.finished)


class PeerTable:
    def __init__(self, *, peer_ttl: float):
        self.peer_ttl = peer_ttl
        self._peers: dict[str, PeerRecord] = {}
        # rules.swarm_epochs is O(peers), and a thousand peers heartbeating would make that O(peers^2). So the live
        # peers' epochs are kept counted: a heartbeat moves one peer's count (exact at once), and a full recount
        # (rules.swarm_epochs) runs at most every EPOCHS_CACHE_S to drop peers that went silent.
        self._live: dict[str, tuple[int, bool]] = {}  # live peer id -> (global epoch, finished)
        self._epoch_counts: Counter[int] = Counter()
        self._training = 0
        self._counted_at: float | None = None
        self._candidates: tuple[float, list[PeerView]] | None = None  # (computed at, initial-peer candidates)

    def __len__(self) -> int:
        return len(self._peers)

    def get(self, peer_id: str) -> PeerRecord | None:
        return self._peers.get(peer_id)

    def all(self) -> list[PeerRecord]:
        return list(self._peers.values())

    def load(self, row) -> None:
        self._peers[row.peer_id] = PeerRecord(
            peer_id=row.peer_id, name=row.name, multiaddrs=tuple(json.loads(row.multiaddrs)),
            client_mode=bool(row.client_mode), batch_size=row.batch_size, first_seen=row.first_seen,
            last_seen=row.last_seen, samples_contributed=row.samples_contributed,
            chunks_contributed=row.chunks_contributed, global_epoch=row.global_epoch, finished=bool(row.finished),
            loss=row.loss, samples_per_s=row.samples_per_s, owner=row.token_hash)
        self._counted_at = None

    def register(self, peer_id: str, *, now: float, name: str, multiaddrs: tuple[str, ...], client_mode: bool,
                 batch_size: int, owner: str | None) -> PeerRecord:
        peer = self._peers.get(peer_id)
        if peer is None:
            peer = self._peers[peer_id] = PeerRecord(peer_id, name, multiaddrs, client_mode, batch_size,
                                                     first_seen=now, last_seen=now, owner=owner)
        else:
            peer.name, peer.multiaddrs, peer.client_mode, peer.batch_size = name, multiaddrs, client_mode, batch_size
            peer.last_seen = now
            peer.owner = owner if owner is not None else peer.owner
        self._count_live(peer)
        return peer

    def heartbeat(self, peer: PeerRecord, *, now: float, global_epoch: int, loss: float | None, samples_per_s: float,
                  finished: bool) -> None:
        peer.last_seen, peer.global_epoch, peer.finished = now, global_epoch, finished
        peer.loss, peer.samples_per_s = loss, samples_per_s
        self._count_live(peer)

    def _count_live(self, peer: PeerRecord) -> None:
        """Count a peer just seen alive with its current epoch and finished flag (replacing its earlier count)."""
        old = self._live.get(peer.peer_id)
        if old is not None:
            self._uncount(*old)
        self._live[peer.peer_id] = (peer.global_epoch, peer.finished)
        self._epoch_counts[peer.global_epoch] += 1
        self._training += not peer.finished

    def _uncount(self, epoch: int, finished: bool) -> None:
        self._epoch_counts[epoch] -= 1
        if not self._epoch_counts[epoch]:
            del self._epoch_counts[epoch]
        self._training -= not finished

    @staticmethod
    def contributed(peer: PeerRecord, *, samples: int) -> None:
        peer.samples_contributed += samples
        peer.chunks_contributed += 1

    def alive(self, peer: PeerRecord, *, now: float) -> bool:
        return peer_alive(peer.last_seen, now=now, peer_ttl=self.peer_ttl)

    def live(self, *, now: float) -> list[PeerRecord]:
        return [p for p in self._peers.values() if self.alive(p, now=now)]

    def epochs(self, *, now: float) -> SwarmEpochs:
        if self._counted_at is None or not 0.0 <= now - self._counted_at < EPOCHS_CACHE_S:
            self._recount(now)
        if not self._live:
            return SwarmEpochs(0, 0, 0, 0)
        return SwarmEpochs(max(self._epoch_counts), min(self._epoch_counts), len(self._live), self._training)

    def _recount(self, now: float) -> None:
        live = [p for p in self._peers.values() if self.alive(p, now=now)]
        self._live = {p.peer_id: (p.global_epoch, p.finished) for p in live}
        self._epoch_counts = Counter(p.global_epoch for p in live)
        self._training = sum(not p.finished for p in live)
        self._counted_at = now

    def initial_peers(self, bootstrap: list[str], *, now: float, exclude_peer_id: str | None = None) -> list[str]:
        """rules.initial_peers over the most recently seen candidates only: a burst of joins (a whole swarm
        re-registering after a restart) must not sort every peer for every join. The candidates are recomputed at
        most every EPOCHS_CACHE_S; a peer that joined within that time reaches joiners a moment later."""
        cached = self._candidates
        if cached is None or not 0.0 <= now - cached[0] < EPOCHS_CACHE_S:
            live = (p for p in self._peers.values() if not p.client_mode and self.alive(p, now=now))
            top = heapq.nlargest(2 * MAX_INITIAL_PEERS + 1, live, key=lambda p: (p.last_seen, p.peer_id))
            cached = self._candidates = (now, [p.view() for p in top])
        return initial_peers(bootstrap, cached[1], now=now, peer_ttl=self.peer_ttl, exclude_peer_id=exclude_peer_id)
