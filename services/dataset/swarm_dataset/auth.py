"""Join-token checks for the dataset service, delegated to the coordinator (which owns the tokens).

An unknown token is validated by calling the coordinator's GetConfig with it; the answer is cached (~60 s for a good
token, a few seconds for a rejected one) so a streaming swarm costs the coordinator one call per peer per minute.
An unreachable coordinator is never cached: the next call asks again.

`samples_leased(token, ids)` asks the coordinator's AuthorizeSamples whether the token's live peers hold active leases
on every id (issue 13 item 3), when a stream opens and again every few seconds while it is open (stream_guard.py),
never cached: a released, reported, expired or revoked lease ends access, open streams included, within seconds.
"""
from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict

import grpc

from swarm import rpc
from swarm.logs import get_logger
from swarm.v1 import coordinator_pb2, coordinator_pb2_grpc
from swarm_dataset.stream_guard import StreamRefused

logger = get_logger(__name__)

REJECTED_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


class CoordinatorTokenCheck:
    """`check(token) -> None` when the coordinator accepts the token, else the message to send back."""

    def __init__(self, coordinator_address: str, *, ttl_s: float = 60.0, rejected_ttl_s: float = 5.0,
                 timeout_s: float = 5.0, max_entries: int = 10_000):
        self.coordinator_address = coordinator_address
        self.ttl_s, self.rejected_ttl_s = ttl_s, rejected_ttl_s
        self.timeout_s, self.max_entries = timeout_s, max_entries
        self._channel = rpc.channel(coordinator_address)
        self._stub = coordinator_pb2_grpc.CoordinatorStub(self._channel)
        # sha256(token) -> (expires at, error or None); tokens themselves are never kept in memory longer than a call
        self._cache: OrderedDict[str, tuple[float, str | None]] = OrderedDict()
        self._lock = threading.Lock()

    def close(self) -> None:
        self._channel.close()

    def __call__(self, token: str | None) -> str | None:
        if not token:
            return "a join token is required: send it as `authorization: Bearer TOKEN` metadata"
        digest = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(digest)
            if cached is not None and cached[0] > now:
                return cached[1]
        error, ttl = self._ask_coordinator(token)
        if ttl > 0:
            with self._lock:
                self._cache[digest] = (now + ttl, error)
                self._cache.move_to_end(digest)
                while len(self._cache) > self.max_entries:
                    self._cache.popitem(last=False)
        return error

    def _ask_coordinator(self, token: str) -> tuple[str | None, float]:
        try:
            self._stub.GetConfig(coordinator_pb2.GetConfigRequest(), metadata=rpc.token_metadata(token),
                                 timeout=self.timeout_s)
            return None, self.ttl_s
        except grpc.RpcError as e:
            if e.code() in REJECTED_CODES:
                return f"the coordinator rejected this join token: {e.details()}", self.rejected_ttl_s
            logger.warning(f"could not check a join token with the coordinator at {self.coordinator_address}: "
                           f"{e.code().name} {e.details()}")
            return (f"the join token could not be checked: the coordinator at {self.coordinator_address} answered "
                    f"{e.code().name}; try again shortly"), 0.0

    def samples_leased(self, token: str | None, ids) -> None:
        """Return when the coordinator says `token` holds active leases on all `ids`; else raise StreamRefused
        (PERMISSION_DENIED naming the samples, or UNAVAILABLE when the coordinator cannot answer: retry)."""
        try:
            answer = self._stub.AuthorizeSamples(coordinator_pb2.AuthorizeSamplesRequest(sample_ids=list(ids)),
                                                 metadata=rpc.token_metadata(token or ""), timeout=self.timeout_s)
        except grpc.RpcError as e:
            if e.code() in REJECTED_CODES:
                raise StreamRefused(grpc.StatusCode.UNAUTHENTICATED, "token_rejected",
                                    f"the coordinator rejected this join token: {e.details()}") from None
            logger.warning(f"could not check leases with the coordinator at {self.coordinator_address}: "
                           f"{e.code().name} {e.details()}")
            raise StreamRefused(grpc.StatusCode.UNAVAILABLE, "lease_check_failed",
                                f"could not check this stream's leases: the coordinator at {self.coordinator_address} "
                                f"answered {e.code().name}; try again shortly") from None
        if not answer.allowed:
            raise StreamRefused(grpc.StatusCode.PERMISSION_DENIED, "not_leased", answer.reason)
