"""What one join token may stream (issue 13 items 2-4): rules as small functions, and the guard that applies them.

With token checks on (`--coordinator`), a StreamSamples call is refused when its token already has
`max_streams_per_token` streams open (RESOURCE_EXHAUSTED: four streams that never read used to hold a small
service's every worker), when it names a sample twice, or when it asks for originals (`as_stored`) without the
host's originals token. With `lease_check` (the coordinator's AuthorizeSamples, on by default with `--coordinator`),
a stream is refused PERMISSION_DENIED unless its token's live peers hold active leases on every id asked (the
originals token may read any sample). An open stream re-checks its token every `recheck_s` seconds (the check is
cached a few seconds), so a revoked token's stream ends within seconds instead of running on; and it asks the
coordinator again every `lease_recheck_s` whether the lease still stands, so a stream ends (PERMISSION_DENIED "stream
ended: the lease ...") within seconds of its lease being reported, released, expired or revoked (issue 13 items 3-4).
A coordinator that cannot answer a re-check does not end a stream it already authorized: the next re-check asks again.
Without token checks the service is open (a developer's loopback service) and none of this applies.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import threading
import time
from typing import Callable, Sequence

import grpc

from swarm.rpc import token_from_metadata

DEFAULT_STREAMS_PER_TOKEN = 8  # a volunteer may run several GPUs on one token, each with a stream or two
RECHECK_S = 1.0
# One AuthorizeSamples call per open stream this often: a trainer streams a chunk or two at a time, so the
# coordinator answers about one call per peer per LEASE_RECHECK_S.
LEASE_RECHECK_S = 2.0


class StreamRefused(Exception):
    def __init__(self, code: grpc.StatusCode, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def check_no_repeats(ids: Sequence[int]) -> None:
    """A chunk names each sample once; repeats would let one lease stream a sample many times."""
    if len(set(ids)) != len(ids):
        raise StreamRefused(grpc.StatusCode.INVALID_ARGUMENT, "invalid_argument",
                            "sample_ids repeats an id: name each sample once (a leased chunk's sample_ids)")


def may_stream_originals(token: str | None, *, originals_token: str | None) -> bool:
    """Originals (the stored bytes, full size) go only to the host's own originals token."""
    return bool(token and originals_token and hmac.compare_digest(token, originals_token))


def ended_by(refusal: StreamRefused) -> StreamRefused | None:
    """What ends an open stream when its lease re-check is refused: a lease no longer held ends it PERMISSION_DENIED,
    a rejected token UNAUTHENTICATED; a coordinator that cannot answer (UNAVAILABLE) ends nothing (None)."""
    if refusal.code == grpc.StatusCode.PERMISSION_DENIED:
        return StreamRefused(grpc.StatusCode.PERMISSION_DENIED, "lease_ended",
                             f"stream ended: the lease that authorized it is over (reported, released, expired or its "
                             f"token revoked): {refusal.message}")
    if refusal.code == grpc.StatusCode.UNAUTHENTICATED:
        return StreamRefused(refusal.code, refusal.reason, f"stream ended: {refusal.message}")
    return None


def check_stream_slots(open_streams: int, *, limit: int) -> None:
    if open_streams >= limit:
        raise StreamRefused(grpc.StatusCode.RESOURCE_EXHAUSTED, "too_many_streams",
                            f"limit of {limit} concurrent streams per join token reached: read or close one first")


class StreamGuard:
    """Applies the rules above to each stream; `token_check(token) -> error or None` is the service's (cached)
    coordinator check."""

    def __init__(self, *, token_check: Callable[[str | None], str | None],
                 max_streams_per_token: int = DEFAULT_STREAMS_PER_TOKEN, originals_token: str | None = None,
                 recheck_s: float = RECHECK_S, lease_recheck_s: float = LEASE_RECHECK_S,
                 lease_check: Callable[[str | None, Sequence[int]], None] | None = None):
        if max_streams_per_token < 1:
            raise ValueError(f"streams per token must be >= 1, got {max_streams_per_token}")
        self.token_check, self.limit = token_check, max_streams_per_token
        self.originals_token, self.recheck_s, self.lease_recheck_s = originals_token, recheck_s, lease_recheck_s
        self.lease_check = lease_check  # (token, ids) -> None, or raises StreamRefused; None: any sample (tests)
        self._open: dict[str, int] = {}  # sha256(token) -> open streams
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def stream(self, context, *, ids: Sequence[int], as_stored: bool):
        """Admit one stream (or raise StreamRefused); yields `still_allowed() -> StreamRefused or None`, which the
        stream's loop calls before each sample it sends and ends the stream on."""
        token = token_from_metadata(context.invocation_metadata())
        check_no_repeats(ids)
        if as_stored and not may_stream_originals(token, originals_token=self.originals_token):
            raise StreamRefused(grpc.StatusCode.PERMISSION_DENIED, "originals_refused",
                                "as_stored (the original files) is only for the host's originals token: ask for "
                                "resized samples instead")
        leased_only = self.lease_check is not None and not may_stream_originals(token,
                                                                                 originals_token=self.originals_token)
        if leased_only:
            self.lease_check(token, ids)  # one coordinator call before a slot is taken, then one per lease_recheck_s
        key = hashlib.sha256((token or "").encode()).hexdigest()
        with self._lock:
            check_stream_slots(self._open.get(key, 0), limit=self.limit)
            self._open[key] = self._open.get(key, 0) + 1
        token_checked_at = lease_checked_at = time.monotonic()

        def still_allowed() -> StreamRefused | None:
            nonlocal token_checked_at, lease_checked_at
            now = time.monotonic()
            if now - token_checked_at >= self.recheck_s:
                token_checked_at = now
                if (error := self.token_check(token)) is not None:
                    return StreamRefused(grpc.StatusCode.UNAUTHENTICATED, "token_rejected", f"stream ended: {error}")
            if leased_only and now - lease_checked_at >= self.lease_recheck_s:
                lease_checked_at = now
                try:
                    self.lease_check(token, ids)
                except StreamRefused as refusal:
                    return ended_by(refusal)
            return None

        try:
            yield still_allowed
        finally:
            with self._lock:
                left = self._open[key] - 1
                if left:
                    self._open[key] = left
                else:
                    del self._open[key]
