"""The coordinator's protocol rules as pure functions: no clock, no database, no gRPC.

The store (store/) and the in-memory lease queue (queue.py) apply these rules; the unit tests check each rule alone.
A few rules are reference models: `select_chunks`, `data_epochs_done`, `run_complete` and `swarm_epochs` define in
plain O(n) code what queue.ChunkQueue and peers.PeerTable compute incrementally on the hot path. Production calls the
indexed versions; tests/coordinator/test_queue_and_lr.py drives those through random operations and checks them
against these after every step, so a rule change is made here first and the index must follow.
The 2022 chunk server got every one of these wrong at least once (see REFERENCE.md): asking for one task returned
none, asking for more than was free failed, late reports counted twice, and dead peers stayed in the peer list.
"""
from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

MAX_CHUNKS_PER_LEASE = 1024
MAX_LEASE_IDS_PER_CALL = 1024
MAX_MULTIADDRS = 32
MAX_INITIAL_PEERS = 64
PEER_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+=-]{0,127}$")
LEASE_ID_PATTERN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
NAME_PATTERN = re.compile(r"^[^\x00-\x1f\x7f]{0,64}$")


class LeaseState(str, enum.Enum):
    ACTIVE = "active"
    DONE = "done"  # reported by its owner while valid: the chunk's times_trained went up by one for it
    EXPIRED = "expired"
    RELEASED = "released"


class Outcome(enum.IntEnum):
    """Values match swarm.v1.ReportChunkDoneResponse.Outcome."""
    COUNTED = 1
    STALE = 2
    DUPLICATE = 3


class InvalidRequest(ValueError):
    """A request field that cannot be used; the message names the field and what to send instead."""


# ---------------------------------------------------------------------------------------------------- leases

@dataclass(frozen=True)
class ChunkView:
    """What lease selection needs to know about one chunk."""
    chunk_id: int
    times_trained: int
    lease_deadline: float | None = None  # deadline of its active lease, None when it has none


def is_leasable(chunk: ChunkView, *, now: float, max_data_epochs: int) -> bool:
    """A chunk can be leased when it still needs training and no unexpired lease holds it."""
    held = chunk.lease_deadline is not None and not lease_expired(chunk.lease_deadline, now=now)
    return chunk.times_trained < max_data_epochs and not held


def select_chunks(chunks: Iterable[ChunkView], *, count: int, now: float, max_data_epochs: int) -> list[int]:
    """Ids of up to `count` leasable chunks, least-trained first, ties broken by chunk id.

    Asking for more than is free returns what is free (possibly nothing); asking for 1 returns 1 when any is free.
    Reference model: ChunkQueue.peek_free implements the same order with heaps (and is tested against this).
    """
    if count <= 0:
        return []
    free = [c for c in chunks if is_leasable(c, now=now, max_data_epochs=max_data_epochs)]
    free.sort(key=lambda c: (c.times_trained, c.chunk_id))
    return [c.chunk_id for c in free[:count]]


def lease_expired(deadline: float, *, now: float) -> bool:
    """A lease is valid up to and including its deadline."""
    return now > deadline


def extended_deadline(deadline: float, *, now: float, ttl: float) -> float | None:
    """The new deadline after a heartbeat, or None when the lease already expired (heartbeats never revive one).

    Never shortens a lease: a heartbeat right after a longer-TTL grant keeps the later deadline.
    """
    if lease_expired(deadline, now=now):
        return None
    return max(deadline, now + ttl)


def report_outcome(*, lease_state: LeaseState, lease_deadline: float, now: float, lease_is_current: bool) -> Outcome:
    """How a ReportChunkDone for one lease is answered.

    COUNTED only for the chunk's current, unexpired, not yet reported lease; DUPLICATE when that lease was already
    counted; STALE when it expired, was released, or the chunk was leased again since (the work counts for that lease).
    """
    if lease_state is LeaseState.DONE:
        return Outcome.DUPLICATE
    if lease_state is not LeaseState.ACTIVE or not lease_is_current or lease_expired(lease_deadline, now=now):
        return Outcome.STALE
    return Outcome.COUNTED


# ---------------------------------------------------------------------------------------------------- peers

@dataclass(frozen=True)
class PeerView:
    peer_id: str
    multiaddrs: tuple[str, ...]
    client_mode: bool
    last_seen: float
    global_epoch: int = 0
    finished: bool = False


def peer_alive(last_seen: float, *, now: float, peer_ttl: float) -> bool:
    return now - last_seen <= peer_ttl


def initial_peers(bootstrap: Sequence[str], peers: Iterable[PeerView], *, now: float, peer_ttl: float,
                  exclude_peer_id: str | None = None, limit: int = MAX_INITIAL_PEERS) -> list[str]:
    """Multiaddrs a joiner dials: the bootstrap DHT first, then live non-client peers, most recently seen first.

    Client-mode peers accept no inbound connections, and a dead address stalls hivemind's DHT start (the 2022
    trainer never pruned its list), so neither appears. Duplicates are dropped, keeping the first occurrence.
    """
    result: list[str] = []
    seen: set[str] = set()

    def add(addr: str) -> None:
        if addr and addr not in seen:
            seen.add(addr)
            result.append(addr)

    for addr in bootstrap:
        add(addr)
    live = [p for p in peers if not p.client_mode and p.peer_id != exclude_peer_id
            and peer_alive(p.last_seen, now=now, peer_ttl=peer_ttl)]
    live.sort(key=lambda p: (-p.last_seen, p.peer_id))
    added_peers = 0
    for peer in live:
        if added_peers >= limit:
            break
        fresh = [a for a in peer.multiaddrs if dialable(a) and a not in seen]
        for addr in fresh:
            add(addr)
        added_peers += bool(fresh)
    return result


def may_register(*, owner: str | None, caller: str | None, last_seen: float, now: float, peer_ttl: float) -> bool:
    """A peer id belongs to the join token that registered it. Another token may take it over only once the peer
    has been silent for the peer TTL (a peer moved to a new token); while it lives, nobody else can speak for it."""
    if owner is None or caller is None or owner == caller:
        return True
    return not peer_alive(last_seen, now=now, peer_ttl=peer_ttl)


def may_act_for(*, owner: str | None, caller: str | None) -> bool:
    """Lease, heartbeat, report and release for a peer need the token it registered with."""
    return owner is None or caller is None or owner == caller


@dataclass(frozen=True)
class SwarmEpochs:
    swarm_epoch: int  # highest global epoch among live peers
    swarm_epoch_min: int  # lowest global epoch among live peers
    peers_alive: int
    peers_training: int  # live and not finished


def swarm_epochs(peers: Iterable[PeerView], *, now: float, peer_ttl: float) -> SwarmEpochs:
    """Epochs and counts over live peers. Reference model of PeerTable.epochs (kept counted per heartbeat there)."""
    live = [p for p in peers if peer_alive(p.last_seen, now=now, peer_ttl=peer_ttl)]
    if not live:
        return SwarmEpochs(0, 0, 0, 0)
    epochs = [p.global_epoch for p in live]
    return SwarmEpochs(max(epochs), min(epochs), len(live), sum(not p.finished for p in live))


# ---------------------------------------------------------------------------------------------------- chunks

Bucket = tuple[int, int]


def cut_chunks(pending: Mapping[Bucket, Sequence[int]], new_samples: Iterable[tuple[int, int, int]], *,
               chunk_size: int, flush: bool) -> tuple[list[tuple[Bucket, list[int]]], dict[Bucket, list[int]]]:
    """Cut sample refs into chunks of `chunk_size` samples of one aspect bucket each.

    `pending` holds samples of earlier syncs not yet in any chunk; `new_samples` are (sample_id, width, height) in
    id order. Full chunks are cut at once; the remainder of each bucket waits for more samples unless `flush` (the
    dataset stopped growing), when it becomes one last, smaller chunk. Existing chunks are never touched: a later
    sync only adds chunks. Returns (new chunks ordered by their first sample id, what is still pending).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    buckets: dict[Bucket, list[int]] = {bucket: list(ids) for bucket, ids in pending.items() if ids}
    chunks: list[tuple[Bucket, list[int]]] = []
    for sample_id, width, height in new_samples:
        ids = buckets.setdefault((width, height), [])
        ids.append(sample_id)
        if len(ids) == chunk_size:
            chunks.append(((width, height), ids))
            buckets[(width, height)] = []
    if flush:
        chunks.extend((bucket, ids) for bucket, ids in buckets.items() if ids)
        buckets = {}
    chunks.sort(key=lambda chunk: chunk[1][0])
    return chunks, {bucket: ids for bucket, ids in buckets.items() if ids}


def data_epochs_done(times_trained: Iterable[int]) -> int:
    """Complete passes over the dataset: the least-trained chunk's count (0 with no chunks).

    Reference model of ChunkQueue.data_epochs_done (kept counted there)."""
    return min(times_trained, default=0)


def run_complete(times_trained: Iterable[int], *, max_data_epochs: int) -> bool:
    """Every chunk reached the data-epoch limit. Never true without chunks: an empty dataset is not a finished run.

    Reference model of ChunkQueue.run_complete."""
    counts = list(times_trained)
    return bool(counts) and min(counts) >= max_data_epochs


# ---------------------------------------------------------------------------------------------------- validation

def check_peer_id(peer_id: str) -> str:
    if not peer_id:
        raise InvalidRequest("peer_id is empty: send the peer's stable id (its hivemind peer ID)")
    if not PEER_ID_PATTERN.fullmatch(peer_id):
        raise InvalidRequest(f"peer_id {peer_id[:80]!r} is not valid: use 1-128 letters, digits or ._:@+=- "
                             f"starting with a letter or digit")
    return peer_id


def check_lease_id(lease_id: str) -> str:
    if not lease_id:
        raise InvalidRequest("lease_id is empty: send the lease_id LeaseChunks returned")
    return check_lease_ids([lease_id])[0]


def check_lease_ids(lease_ids: Sequence[str]) -> list[str]:
    if len(lease_ids) > MAX_LEASE_IDS_PER_CALL:
        raise InvalidRequest(f"{len(lease_ids)} lease ids in one call; send at most {MAX_LEASE_IDS_PER_CALL}")
    for lease_id in lease_ids:
        if not LEASE_ID_PATTERN.fullmatch(lease_id):
            raise InvalidRequest(f"lease id {lease_id[:80]!r} is not valid: send a lease_id exactly as LeaseChunks "
                                 f"returned it (a lowercase UUID)")
    return list(dict.fromkeys(lease_ids))


def check_max_chunks(max_chunks: int) -> int:
    if not 1 <= max_chunks <= MAX_CHUNKS_PER_LEASE:
        raise InvalidRequest(f"max_chunks must be between 1 and {MAX_CHUNKS_PER_LEASE}, got {max_chunks}")
    return max_chunks


def dialable(addr: str) -> bool:
    """A wildcard listen address (0.0.0.0, ::) cannot be dialled by anyone; it never reaches a joiner."""
    return bool(addr) and not addr.startswith(("/ip4/0.0.0.0/", "/ip6/::/"))


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidRequest("name must be at most 64 printable characters")
    return name


def check_heartbeat_numbers(*, global_epoch: int, loss: float, samples_per_s: float) -> float | None:
    """Validates a heartbeat's numbers; returns the loss to store (None when not finite: a diverged peer says so)."""
    if global_epoch < 0:
        raise InvalidRequest(f"global_epoch must be >= 0, got {global_epoch}")
    if not math.isfinite(samples_per_s) or samples_per_s < 0:
        raise InvalidRequest(f"samples_per_s must be a finite number >= 0, got {samples_per_s}")
    return loss if math.isfinite(loss) else None


MAX_SAMPLE_IDS_PER_AUTHORIZE = 10_000  # the dataset service's own cap on ids per StreamSamples call


def check_sample_ids(sample_ids: Sequence[int]) -> list[int]:
    if not sample_ids:
        raise InvalidRequest("sample_ids is empty: name the samples to authorize")
    if len(sample_ids) > MAX_SAMPLE_IDS_PER_AUTHORIZE:
        raise InvalidRequest(f"{len(sample_ids)} sample ids; at most {MAX_SAMPLE_IDS_PER_AUTHORIZE} per call")
    return list(sample_ids)


def unleased_samples(sample_ids: Iterable[int], leased: Iterable[Iterable[int]]) -> list[int]:
    """Of `sample_ids`, those in none of the `leased` chunks (each an active lease's sample ids), in order asked:
    a token may stream only what its live peers hold active leases on (issue 13 item 3)."""
    covered = {sample_id for chunk in leased for sample_id in chunk}
    return [sample_id for sample_id in sample_ids if sample_id not in covered]


def describe_unleased(unleased: Sequence[int]) -> str:
    shown = ", ".join(str(i) for i in unleased[:10])
    more = f" and {len(unleased) - 10} more" if len(unleased) > 10 else ""
    return (f"sample(s) {shown}{more} are not leased to this join token: stream only the sample_ids of an active "
            f"lease that one of your peers holds (LeaseChunks), before it is reported or released")
