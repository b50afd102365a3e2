"""The trainer's side of the coordinator contract: one method per RPC, a timeout on each, retries on outages.

Transient failures (coordinator restarting, a flaky link) are retried with backoff for up to `retry_for` seconds;
answers that say the request itself is wrong are raised at once. A bad join token becomes a clear UsageError.
"""
from __future__ import annotations

import threading
import time
from typing import Sequence

import grpc

from swarm import rpc
from swarm.errors import UsageError
from swarm.logs import get_logger
from swarm.v1 import coordinator_pb2 as pb
from swarm.v1 import coordinator_pb2_grpc

logger = get_logger(__name__)

RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)


class CoordinatorClient:
    def __init__(self, address: str, *, token: str | None, timeout: float = 30.0, retry_for: float = 300.0,
                 stop: threading.Event | None = None):
        self.address, self.timeout, self.retry_for = address, timeout, retry_for
        self._metadata = rpc.token_metadata(token)
        self._channel = rpc.channel(address)
        self._stub = coordinator_pb2_grpc.CoordinatorStub(self._channel)
        self._stop = stop or threading.Event()
        # What this peer's averagers counted about its groupmates, sent with every heartbeat (admission.py sets it).
        self.contributions_source = lambda: ()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: str, request, *, retry_for: float | None = None):
        retry_for = self.retry_for if retry_for is None else retry_for
        deadline = time.monotonic() + retry_for
        delay = 0.5
        while True:
            try:
                return getattr(self._stub, method)(request, metadata=self._metadata, timeout=self.timeout)
            except grpc.RpcError as e:
                code = e.code()
                if code == grpc.StatusCode.UNAUTHENTICATED:
                    raise UsageError(f"the coordinator at {self.address} refused the join token: {e.details()} "
                                     f"(pass a valid --token or set SWARM_TOKEN; the host creates one with "
                                     f"`swarm token create`)") from None
                if code not in RETRYABLE or time.monotonic() + delay > deadline or self._stop.is_set():
                    raise
                logger.warning(f"coordinator {method} failed ({code.name}: {e.details()}); retrying in {delay:.1f} s")
                if self._stop.wait(delay):
                    raise
                delay = min(delay * 2, 10.0)

    def list_peers(self) -> pb.ListPeersResponse:
        return self._call("ListPeers", pb.ListPeersRequest())

    def register(self, *, peer_id: str, multiaddrs: Sequence[str], client_mode: bool, name: str,
                 batch_size: int) -> pb.RegisterPeerResponse:
        # The coordinator takes only addresses ending in /p2p/<our id>; an --announce-maddrs address often lacks it.
        own = [addr if addr.rstrip("/").endswith(f"/p2p/{peer_id}") else f"{addr.rstrip('/')}/p2p/{peer_id}"
               for addr in multiaddrs]
        return self._call("RegisterPeer", pb.RegisterPeerRequest(
            peer_id=peer_id, multiaddrs=own, client_mode=client_mode, name=name, batch_size=batch_size))

    def check_reachability(self, *, peer_id: str) -> pb.CheckReachabilityResponse:
        """Ask the coordinator to dial this peer's registered addresses back (reachability.py); short retries."""
        return self._call("CheckReachability", pb.CheckReachabilityRequest(peer_id=peer_id),
                          retry_for=min(self.retry_for, 10.0))

    def get_config(self, version: int = 0) -> pb.RunConfig:
        return self._call("GetConfig", pb.GetConfigRequest(version=version))

    def lease(self, *, peer_id: str, max_chunks: int, config_version: int) -> pb.LeaseChunksResponse:
        return self._call("LeaseChunks", pb.LeaseChunksRequest(peer_id=peer_id, max_chunks=max_chunks,
                                                               config_version=config_version))

    def heartbeat(self, *, peer_id: str, lease_ids: Sequence[str], global_epoch: int, loss: float,
                  samples_per_s: float, finished: bool) -> pb.HeartbeatResponse:
        # A heartbeat is retried briefly only: the next one is due soon anyway.
        return self._call("Heartbeat", pb.HeartbeatRequest(
            peer_id=peer_id, lease_ids=list(lease_ids), global_epoch=global_epoch, loss=loss,
            samples_per_s=samples_per_s, finished=finished, contributions=list(self.contributions_source())),
            retry_for=min(self.retry_for, 10.0))

    def get_credential(self, *, peer_id: str, dht_public_key: bytes) -> pb.GetCredentialResponse:
        """A fresh credential for this hivemind peer (swarm.trust); the token is proven by the call's metadata."""
        return self._call("GetCredential", pb.GetCredentialRequest(peer_id=peer_id, dht_public_key=dht_public_key))

    def report_done(self, *, peer_id: str, lease_id: str) -> pb.ReportChunkDoneResponse:
        return self._call("ReportChunkDone", pb.ReportChunkDoneRequest(peer_id=peer_id, lease_id=lease_id))

    def release(self, *, peer_id: str, lease_ids: Sequence[str] = ()) -> int:
        """Release the leases named (all of this peer's when none are); short retries: used while stopping."""
        response = self._call("ReleaseLeases", pb.ReleaseLeasesRequest(peer_id=peer_id, lease_ids=list(lease_ids)),
                              retry_for=min(self.retry_for, 10.0))
        return response.released
