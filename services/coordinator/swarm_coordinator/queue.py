"""The lease queue in memory: which chunk is free, held, or due, in O(log n) per operation.

It holds no I/O and no clock: callers pass `now`. The store mirrors the database into it at startup and applies a
change here only after the database transaction committed, so the database stays the truth and this is a fast
index over it. Its lease order, data epochs and completion are the reference rules `rules.select_chunks`,
`data_epochs_done` and `run_complete` (the tests check they agree).
"""
from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass

from swarm_coordinator.rules import ChunkView, lease_expired


@dataclass(slots=True)
class ChunkSlot:
    chunk_id: int
    n_samples: int
    times_trained: int
    lease_id: str | None = None  # the chunk's active lease (its current one), if any
    peer_id: str | None = None  # owner of that lease
    deadline: float = 0.0


class ChunkQueue:
    """Free chunks in a heap by (times_trained, chunk_id); held chunks in a heap by lease deadline.

    Heap entries go stale when a chunk changes (leased, trained, deadline extended); stale entries are skipped when
    they surface instead of being searched for, so every operation stays O(log n).
    """

    def __init__(self) -> None:
        self.chunks: dict[int, ChunkSlot] = {}
        self.leases: dict[str, int] = {}  # active lease id -> chunk id
        self.times_trained_counts: Counter[int] = Counter()
        self.samples_total = 0
        self.samples_done = 0  # sum of n_samples * times_trained
        self._free: list[tuple[int, int]] = []
        self._expiry: list[tuple[float, int, str]] = []

    # -------------------------------------------------------------------------------------------- building

    def add_chunk(self, chunk_id: int, *, n_samples: int, times_trained: int = 0) -> None:
        if chunk_id in self.chunks:
            raise ValueError(f"chunk {chunk_id} is already queued")
        self.chunks[chunk_id] = ChunkSlot(chunk_id, n_samples, times_trained)
        self.times_trained_counts[times_trained] += 1
        self.samples_total += n_samples
        self.samples_done += n_samples * times_trained
        heapq.heappush(self._free, (times_trained, chunk_id))

    def hold(self, chunk_id: int, lease_id: str, *, peer_id: str, deadline: float) -> None:
        """Mark a chunk held by an active lease (a new grant, or an active lease loaded from the database)."""
        slot = self.chunks[chunk_id]
        if slot.lease_id is not None:
            raise ValueError(f"chunk {chunk_id} is already held by lease {slot.lease_id}")
        slot.lease_id, slot.peer_id, slot.deadline = lease_id, peer_id, deadline
        self.leases[lease_id] = chunk_id
        heapq.heappush(self._expiry, (deadline, chunk_id, lease_id))

    # -------------------------------------------------------------------------------------------- queries

    def due_expired(self, *, now: float) -> list[tuple[str, int]]:
        """(lease id, chunk id) of every active lease past its deadline; they stay held until `free` is called."""
        due: list[tuple[str, int]] = []
        while self._expiry and lease_expired(self._expiry[0][0], now=now):
            deadline, chunk_id, lease_id = heapq.heappop(self._expiry)
            slot = self.chunks[chunk_id]
            if slot.lease_id != lease_id:
                continue  # reported or released since
            if slot.deadline > deadline:  # extended by a heartbeat: file it under its new deadline
                heapq.heappush(self._expiry, (slot.deadline, chunk_id, lease_id))
                continue
            due.append((lease_id, chunk_id))
        # Put them back until the caller has recorded the expiry: a failed write must leave them findable.
        for lease_id, chunk_id in due:
            heapq.heappush(self._expiry, (self.chunks[chunk_id].deadline, chunk_id, lease_id))
        return due

    def peek_free(self, count: int, *, max_data_epochs: int) -> list[int]:
        """Up to `count` free chunk ids in lease order (least-trained, then lowest id), without taking them.

        Call `due_expired` and `free` first: a chunk whose lease expired but was not freed yet is not offered.
        """
        picked: list[int] = []
        popped: list[tuple[int, int]] = []
        seen: set[int] = set()
        while self._free and len(picked) < count:
            entry = heapq.heappop(self._free)
            times_trained, chunk_id = entry
            slot = self.chunks[chunk_id]
            if slot.lease_id is not None or slot.times_trained != times_trained or chunk_id in seen:
                continue  # stale (leased or trained since it was filed) or a twin filed by an earlier free()
            seen.add(chunk_id)
            popped.append(entry)
            if times_trained >= max_data_epochs:
                break  # heap order: every valid entry left is trained at least as often
            picked.append(chunk_id)
        for entry in popped:
            heapq.heappush(self._free, entry)
        return picked

    def lease_chunk(self, lease_id: str) -> ChunkSlot | None:
        chunk_id = self.leases.get(lease_id)
        return None if chunk_id is None else self.chunks[chunk_id]

    def peer_leases(self, peer_id: str) -> list[str]:
        return [lease_id for lease_id, chunk_id in self.leases.items() if self.chunks[chunk_id].peer_id == peer_id]

    def views(self) -> list[ChunkView]:
        """Every chunk as the reference rule rules.select_chunks sees it (for the tests that compare the two)."""
        return [ChunkView(s.chunk_id, s.times_trained, s.deadline if s.lease_id else None)
                for s in self.chunks.values()]

    # -------------------------------------------------------------------------------------------- changes

    def extend(self, lease_id: str, *, deadline: float) -> None:
        self.chunks[self.leases[lease_id]].deadline = deadline  # the expiry heap catches up lazily

    def free(self, lease_id: str, *, trained: bool) -> ChunkSlot:
        """End an active lease (reported when `trained`, else expired or released); the chunk goes back in line."""
        slot = self.chunks[self.leases.pop(lease_id)]
        slot.lease_id, slot.peer_id, slot.deadline = None, None, 0.0
        if trained:
            self.times_trained_counts[slot.times_trained] -= 1
            if not self.times_trained_counts[slot.times_trained]:
                del self.times_trained_counts[slot.times_trained]
            slot.times_trained += 1
            self.times_trained_counts[slot.times_trained] += 1
            self.samples_done += slot.n_samples
        heapq.heappush(self._free, (slot.times_trained, slot.chunk_id))
        return slot

    # -------------------------------------------------------------------------------------------- progress

    def data_epochs_done(self) -> int:
        return min(self.times_trained_counts, default=0)

    def run_complete(self, *, max_data_epochs: int) -> bool:
        return bool(self.chunks) and self.data_epochs_done() >= max_data_epochs

    def chunk_states(self, *, now: float, max_data_epochs: int) -> dict[str, int]:
        """Chunks leased (held by an unexpired lease), done (trained in the current data epoch, or finished for the
        run) and queued (still to train in the current data epoch)."""
        epoch = self.data_epochs_done()
        leased = done = 0
        for slot in self.chunks.values():
            if slot.lease_id is not None and not lease_expired(slot.deadline, now=now):
                leased += 1
            elif slot.times_trained > epoch or slot.times_trained >= max_data_epochs:
                done += 1
        return {"queued": len(self.chunks) - leased - done, "leased": leased, "done": done}
