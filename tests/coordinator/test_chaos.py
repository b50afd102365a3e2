"""Chaos: SIGKILL the coordinator (twice) and a peer mid-chunk while peers lease and report, restart them; audit.

Real processes: `python -m swarm_launcher coordinator` on a fixed loopback port (a restarted coordinator keeps its
address, as in production), peers as threads with real gRPC clients plus one peer process that is killed holding leases.
Whatever dies when: every chunk ends trained exactly max_data_epochs times, every report a peer saw COUNTED is in
the database once, a lease granted before a kill is still honoured after the restart, and the killed peer's chunks
go back to the queue once its leases expire.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from swarm.procs import free_port
from swarm.rpc import channel, token_metadata
from swarm.runconfig import RunConfig
from swarm.v1 import coordinator_pb2 as pb
from swarm.v1 import coordinator_pb2_grpc as pb_grpc
from swarm_coordinator.audit import audit_chunks
from swarm_coordinator.store import Store
from swarm_coordinator.tokens import create_token
from swarm_launcher.processes import ServiceProcess, start_service

pytestmark = [pytest.mark.timeout(240)]

CHUNKS, EPOCHS, LEASE_TTL = 40, 3, 8.0
TRAIN_S = 0.01  # a peer's 'training' time per chunk, so the kills land mid-run
OUTCOME = pb.ReportChunkDoneResponse


class Swarm:
    """What the peer threads share: the coordinator's address, whether it is up, and the ledger of answers."""

    def __init__(self, address: str, token: str, version: int):
        self.address, self.metadata, self.version = address, token_metadata(token), version
        self.up = threading.Event()
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.counted: list[str] = []  # leases a peer saw counted (COUNTED, or DUPLICATE after a lost answer)
        self.outcomes: list[tuple[str, str, bool]] = []  # (lease id, outcome, answer to a retried report)
        self.errors: list[str] = []

    def record(self, lease_id: str, outcome: int, retried: bool) -> None:
        with self.lock:
            self.outcomes.append((lease_id, OUTCOME.Outcome.Name(outcome), retried))
            if outcome == OUTCOME.COUNTED or (outcome == OUTCOME.DUPLICATE and retried):
                self.counted.append(lease_id)


def _call(swarm: Swarm, fn, request):
    """Call until answered: while the coordinator is down, wait for the test to say it is back."""
    retried = False
    while not swarm.stop.is_set():
        try:
            return fn(request, metadata=swarm.metadata, timeout=5), retried
        except grpc.RpcError as e:
            if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                grpc.StatusCode.CANCELLED):
                raise
            retried = True
            swarm.up.wait(timeout=30)
    raise RuntimeError("stopped")


def _peer(swarm: Swarm, peer_id: str) -> None:
    try:
        with channel(swarm.address) as ch:
            stub = pb_grpc.CoordinatorStub(ch)
            _call(swarm, stub.RegisterPeer, pb.RegisterPeerRequest(peer_id=peer_id))
            while not swarm.stop.is_set():
                reply, _ = _call(swarm, stub.LeaseChunks, pb.LeaseChunksRequest(
                    peer_id=peer_id, max_chunks=1, config_version=swarm.version))
                if reply.run_complete:
                    return
                if not reply.leases:  # the rest is leased to others (or the killed peer): ask again shortly
                    swarm.stop.wait(0.05)
                    continue
                lease_id = reply.leases[0].lease_id
                swarm.stop.wait(TRAIN_S)
                _call(swarm, stub.Heartbeat, pb.HeartbeatRequest(peer_id=peer_id, lease_ids=[lease_id]))
                answer, retried = _call(swarm, stub.ReportChunkDone, pb.ReportChunkDoneRequest(
                    peer_id=peer_id, lease_id=lease_id))
                swarm.record(lease_id, answer.outcome, retried)
    except Exception as e:  # noqa: BLE001 (reported by the test, which asserts there were none)
        swarm.errors.append(f"{peer_id}: {e!r}")


def _start_coordinator(workdir: Path, db_path: str, port: int, n: int) -> ServiceProcess:
    proc = start_service(f"coordinator-{n}", [
        "coordinator", "--listen", f"127.0.0.1:{port}", "--db", db_path, "--metrics-port", "0",
        "--lease-ttl", str(LEASE_TTL), "--peer-ttl", "60"], workdir=workdir)
    proc.wait_ready(timeout=60)
    return proc


def _wait_for(condition, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_sigkill_coordinator_and_peer_mid_work_loses_nothing_and_counts_nothing_twice(tmp_path, processes):
    db_path = str(tmp_path / "coordinator.sqlite")
    store = Store.open(db_path)
    store.ensure_config(RunConfig(max_data_epochs=EPOCHS, chunk_size=4), run_id="chaos")
    store.add_chunks(((64, 64), range(i * 4 + 1, i * 4 + 5)) for i in range(CHUNKS))
    version = store.config.version
    store.close()
    token = create_token(db_path, name="chaos")
    port = free_port()
    coordinator = _start_coordinator(tmp_path, db_path, port, 0)
    processes.append(coordinator)
    swarm = Swarm(f"127.0.0.1:{port}", token, version)
    swarm.up.set()
    # Three peers, plus the killed one restarted (same peer id and token, its leases forgotten with its process).
    peers = [threading.Thread(target=_peer, args=(swarm, name), daemon=True)
             for name in ("peer-0", "peer-1", "peer-2", "doomed")]

    with channel(swarm.address) as ch:
        stub = pb_grpc.CoordinatorStub(ch)
        md = swarm.metadata
        # A peer process that will die holding two leases.
        out_file = tmp_path / "doomed.json"
        doomed = subprocess.Popen([sys.executable, "-m", "tests.coordinator.peer_process", swarm.address, token,
                                   "doomed", str(version), str(out_file)], stdin=subprocess.PIPE,
                                  cwd=Path(__file__).resolve().parents[2])
        try:
            _wait_for(out_file.exists, timeout=60, what="the doomed peer's leases")
        finally:
            doomed.send_signal(signal.SIGKILL)
            doomed.wait(timeout=10)
        doomed_leases = json.loads(out_file.read_text())["lease_ids"]
        assert len(doomed_leases) == 2
        for thread in peers:
            thread.start()

        # A lease taken just before the coordinator dies must still be honoured after its restart.
        stub.RegisterPeer(pb.RegisterPeerRequest(peer_id="keeper"), metadata=md, timeout=5)
        _wait_for(lambda: len(swarm.counted) >= 10, timeout=60, what="peers to report chunks")
        (kept,) = stub.LeaseChunks(pb.LeaseChunksRequest(peer_id="keeper", max_chunks=1, config_version=version),
                                   metadata=md, timeout=5).leases

        for n in (1, 2):
            swarm.up.clear()
            coordinator.popen.send_signal(signal.SIGKILL)  # mid-work: peers are leasing and reporting right now
            coordinator.popen.wait(timeout=10)
            coordinator = _start_coordinator(tmp_path, db_path, port, n)
            processes.append(coordinator)
            swarm.up.set()
            if n == 1:
                beat = stub.Heartbeat(pb.HeartbeatRequest(peer_id="keeper", lease_ids=[kept.lease_id]),
                                      metadata=md, timeout=10, wait_for_ready=True)
                assert beat.leases[0].valid
                answer = stub.ReportChunkDone(pb.ReportChunkDoneRequest(peer_id="keeper", lease_id=kept.lease_id),
                                              metadata=md, timeout=10)
                assert answer.outcome == OUTCOME.COUNTED
                swarm.record(kept.lease_id, answer.outcome, False)
                before = len(swarm.counted)
                _wait_for(lambda: len(swarm.counted) >= before + 10, timeout=60, what="more reports")

        for thread in peers:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in peers), "peers did not finish the run"
        assert not swarm.errors, swarm.errors
        # The killed peer's leases expired; its chunks were trained by others; its late reports are stale.
        for lease_id in doomed_leases:
            late = stub.ReportChunkDone(pb.ReportChunkDoneRequest(peer_id="doomed", lease_id=lease_id),
                                        metadata=md, timeout=10)
            assert late.outcome == OUTCOME.STALE
        progress = stub.GetProgress(pb.GetProgressRequest(), metadata=md, timeout=10)
        assert progress.run_complete and progress.data_epochs_done == EPOCHS

    assert coordinator.stop(timeout=20) == 0  # SIGTERM: a clean stop
    audit = audit_chunks(db_path, counted_lease_ids=swarm.counted)
    assert audit["times_trained"] == {EPOCHS: CHUNKS}, audit
    assert audit["lost"] == 0 and audit["double_counted"] == 0 and audit["double_leased"] == 0, audit
    assert len(swarm.counted) == len(set(swarm.counted)) == CHUNKS * EPOCHS
    assert audit["leases"]["done"] == CHUNKS * EPOCHS
    # A DUPLICATE answer only ever follows a report whose first answer was lost to a kill.
    assert all(retried for _, outcome, retried in swarm.outcomes if outcome == "DUPLICATE")
