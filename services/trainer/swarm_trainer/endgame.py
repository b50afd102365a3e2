"""The end of a run: every peer leaves with the same parameters.

Gradient averaging keeps peers identical only while every round includes everyone. Two peers that start at the
same moment may each finish the first epoch alone, and a failed round makes a peer step with its local gradients;
afterwards their parameters (and Adam statistics) differ slightly for good. So after the coordinator's barrier
(every live peer finished, all at the swarm's epoch; laggards already downloaded the newest state) the peers run
this final sync through the DHT:

1. One ANCHOR is chosen without talking (choose_anchor): among the finished non-client peers (client-mode peers
   take no inbound connections and cannot serve their state), the one the COORDINATOR credited with the most
   samples, ties broken by sha256(run_id/peer_id). Never by the peer id alone: a peer can grind keys for a small id,
   but not for a hash salted with the run id, which only admitted peers learn.
2. Every other peer stops serving its own state, then publishes a fingerprint of its parameters.
3. Once everyone has published (or a deadline passed), each non-anchor whose fingerprint differs from the anchor's
   downloads the state with load_state_from_peers(); only the anchor still serves, and downloads are uncompressed,
   so it gets exactly the anchor's parameters. In the common case (every round averaged) nothing is downloaded.
4. Each non-anchor publishes "synced"; the anchor stays up until all have, so nobody is left without a source.
"""
from __future__ import annotations

import hashlib
import time
from typing import Callable, Iterable, NamedTuple, Sequence

import torch

from swarm.logs import get_logger

logger = get_logger(__name__)

# A fingerprint holds, per tensor, its RMS and PROJECTIONS random +-1 projections scaled by 1/sqrt(numel): the
# difference of two projections is about the RMS of the element-wise difference, so the tolerance below reads like an
# element-wise one (10x stricter than "equal within float tolerance" at atol 1e-5, rtol 1e-4), while plain sums
# would average real divergence away.
PROJECTIONS = 2
FINGERPRINT_RTOL = 1e-5
FINGERPRINT_ATOL = 1e-6
_PROJECTION_SEED = 20221
DHT_TIMEOUT = 10.0  # seconds for one DHT read or write of the final sync's records


def parameter_fingerprint(params: Iterable[torch.Tensor]) -> list[float]:
    """[rms, projection 1, projection 2] per tensor: a few floats per tensor, small enough for the DHT."""
    values: list[float] = []
    generator = torch.Generator().manual_seed(_PROJECTION_SEED)
    with torch.no_grad():
        for p in params:
            flat = p.detach().reshape(-1).to("cpu", torch.float64)
            scale = 1.0 / max(1, flat.numel()) ** 0.5
            values.append(float(flat.norm()) * scale)
            for _ in range(PROJECTIONS):
                signs = torch.randint(0, 2, flat.shape, generator=generator, dtype=torch.int8).to(torch.float64)
                values.append(float(flat @ (signs * 2 - 1)) * scale)
    return values


def fingerprints_match(a: Sequence[float], b: Sequence[float], *, rtol: float = FINGERPRINT_RTOL,
                       atol: float = FINGERPRINT_ATOL) -> bool:
    """Equal within float tolerance (peers that averaged every round differ by rounding only)."""
    if len(a) != len(b):
        return False
    stride = PROJECTIONS + 1
    for start in range(0, len(a), stride):
        rms = max(abs(a[start]), abs(b[start]))
        if any(abs(x - y) > atol + rtol * rms for x, y in zip(a[start:start + stride], b[start:start + stride])):
            return False
    return True


class Participant(NamedTuple):
    """A finished peer at the end barrier, as the coordinator lists it (ListPeers)."""
    peer_id: str
    client_mode: bool
    samples_contributed: int = 0  # credited by the coordinator for reported chunks, not claimed by the peer


def anchor_tiebreak(run_id: str, peer_id: str) -> str:
    """sha256(run_id/peer_id): the run id is random and secret, so no peer can grind its id to win ties."""
    return hashlib.sha256(f"{run_id}/{peer_id}".encode()).hexdigest()


def choose_anchor(participants: Iterable[Participant | tuple], *, run_id: str) -> str | None:
    """The peer every other copies at the end: among the participants that can serve state (not client mode), the
    one the coordinator credited with the most samples, ties broken by the smallest anchor_tiebreak. None if none can.

    Every peer computes it alone from the same ListPeers answer; samples no longer change once the run is complete.
    """
    candidates = [Participant(*p) for p in participants]
    candidates = [p for p in candidates if not p.client_mode]
    if not candidates:
        return None
    return min(candidates, key=lambda p: (-p.samples_contributed, anchor_tiebreak(run_id, p.peer_id))).peer_id


def swarm_step_pending(records: Iterable[dict], *, local_epoch: int) -> tuple[int, int]:
    """(the swarm's epoch, samples accumulated toward its next step) from hivemind progress records
    ({"epoch", "samples_accumulated", "client_mode"} per peer), counted as hivemind's ProgressTracker counts them:
    the epoch is the highest of this peer's and the listening peers' (client-mode peers do not lead), and only
    records at that epoch count their samples.

    At the end barrier a peer may leave only when this is (local_epoch, 0). Samples still accumulated mean the swarm
    owes one more global step (it comes once hivemind's ETA passes, e.g. after a SIGKILLed peer's lost batches left
    the sample count off the target's multiple): a peer that left before it would end one epoch behind the peers
    that took it, which then wait for it forever.
    """
    records = [r for r in records if isinstance(r, dict)]
    epoch = max([local_epoch] + [int(r.get("epoch", 0)) for r in records if not r.get("client_mode")])
    samples = sum(int(r.get("samples_accumulated", 0)) for r in records if int(r.get("epoch", -1)) == epoch)
    return epoch, samples


def joined_a_finished_run(*, samples_trained: int, chunks_reported: int, other_live_peers: int) -> bool:
    """At a passed end barrier: this peer trained nothing in this run and no other live peer is left to sync with.
    The run was over before it could take part, and what it holds is not the run's result: the seed weights, or an
    epoch hivemind moved it to without a state (its catch-up does that when no peer serves one), or an owed step
    taken with zero gradients. A checkpoint of that would pass for the result. (A joiner that finds peers still up
    syncs with them instead: the final sync downloads the anchor's state.)"""
    return samples_trained == 0 and chunks_reported == 0 and other_live_peers == 0


def read_progress_records(dht, key: str, *, timeout: float = 10.0) -> list[dict] | None:
    """A fresh read of hivemind's progress records under `key` (the tracker's own view is refetched only every
    few seconds); None when the DHT did not answer in time."""
    from swarm.dht_process import read_records

    records = read_records(dht, key, timeout=timeout)
    return None if records is None else list(records.values())


def _sync_key(run_id: str) -> str:
    return f"{run_id}_final_sync"


def _read_records(dht, run_id: str) -> dict[str, dict]:
    """The final-sync records under this run's key; empty when the DHT did not answer in time (the callers poll
    until their deadline, so a silent DHT ends the sync at its timeout instead of hanging the peer)."""
    from swarm.dht_process import read_records

    return read_records(dht, _sync_key(run_id), timeout=DHT_TIMEOUT) or {}


def _publish(dht, run_id: str, peer_id: str, record: dict, *, ttl: float) -> None:
    from hivemind.utils import get_dht_time

    future = dht.store(_sync_key(run_id), subkey=peer_id, value=record, expiration_time=get_dht_time() + ttl,
                       return_future=True)
    try:
        future.result(timeout=DHT_TIMEOUT)
    except Exception as e:  # noqa: BLE001 - the others then see no record from this peer and sync without it
        logger.warning(f"final sync: could not publish this peer's record: {e!r}")


def _poll(predicate: Callable[[], bool], *, deadline: float, interval: float = 0.5) -> bool:
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def final_sync(*, optimizer, dht, run_id: str, peer_id: str, participants: Sequence[Participant | tuple],
               params: Sequence[torch.Tensor], timeout: float = 300.0) -> str:
    """Run the final sync; returns "anchor", "matched", "downloaded", "alone" or "timeout" (logged as a warning).

    `participants`: Participant (or (peer_id, client_mode[, samples_contributed]) tuples), this peer included.
    """
    participants = [Participant(*p) for p in participants]
    peer_ids = sorted({p.peer_id for p in participants} | {peer_id})
    if len(peer_ids) == 1:
        return "alone"
    anchor = choose_anchor(participants, run_id=run_id)
    if anchor is None:
        logger.warning("final sync: every finished peer is in client mode, none can serve its state; skipping")
        return "timeout"
    deadline = time.monotonic() + timeout
    ttl = timeout + 60
    # Background state averaging from the last epoch must land before the fingerprint is taken.
    optimizer.state_averager.step(wait_for_delayed_updates=True)
    is_anchor = peer_id == anchor
    if not is_anchor:
        _stop_sharing_state(optimizer)
    fingerprint = parameter_fingerprint(params)
    _publish(dht, run_id, peer_id, {"fingerprint": fingerprint, "synced": is_anchor}, ttl=ttl)

    if is_anchor:
        others = [pid for pid in peer_ids if pid != peer_id]
        done = _poll(lambda: all(_read_records(dht, run_id).get(pid, {}).get("synced") for pid in others),
                     deadline=deadline)
        if not done:
            missing = [pid for pid in others if not _read_records(dht, run_id).get(pid, {}).get("synced")]
            logger.warning(f"final sync: gave up waiting for {missing} after {timeout:.0f} s")
            return "timeout"
        return "anchor"

    # Wait for everyone's record: a record means that peer no longer serves state, so a download can only come
    # from the anchor.
    everyone = _poll(lambda: set(peer_ids) <= set(_read_records(dht, run_id)), deadline=deadline)
    records = _read_records(dht, run_id)
    if anchor not in records:
        logger.warning(f"final sync: the anchor {anchor} never published its fingerprint; keeping own parameters")
        return "timeout"
    if not everyone:
        logger.warning("final sync: not every peer published; syncing with the anchor anyway")
    outcome, downloads = "matched", 0
    # hivemind's load_state_from_peers returns as if it had loaded when no download arrived (a timeout), so the
    # fingerprint is checked again after each try; the anchor stays up until this peer publishes "synced".
    while not fingerprints_match(fingerprint, records[anchor]["fingerprint"]):
        if downloads and time.monotonic() >= deadline:
            logger.warning(f"final sync: parameters still differ from the anchor {anchor} after {downloads} "
                           f"download(s) in {timeout:.0f} s; leaving with own parameters")
            outcome = "timeout"
            break
        if downloads:
            time.sleep(1.0)
        logger.info(f"final sync: parameters differ from the anchor {anchor}; downloading its state")
        optimizer.load_state_from_peers()
        downloads += 1
        outcome = "downloaded"
        fingerprint = parameter_fingerprint(params)
    _publish(dht, run_id, peer_id, {"fingerprint": fingerprint, "synced": True}, ttl=ttl)
    return outcome


def _stop_sharing_state(optimizer) -> None:
    for averager in (optimizer.state_averager, getattr(optimizer, "grad_averager", None)):
        if averager is not None and not averager.client_mode:
            averager.allow_state_sharing = False
