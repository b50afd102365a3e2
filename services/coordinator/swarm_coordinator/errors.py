"""Errors the coordinator's state raises; `kind` picks the gRPC status the server answers with."""
from __future__ import annotations


class StoreError(Exception):
    """A request the state does not allow; `kind` picks the gRPC status the server answers with."""
    kind = "failed_precondition"


class PeerNotRegistered(StoreError):
    pass


class UnknownConfigVersion(StoreError):
    pass


class LeaseNotFound(StoreError):
    kind = "not_found"


class ConfigNotFound(StoreError):
    kind = "not_found"


class NotLeaseOwner(StoreError):
    kind = "permission_denied"


class DatabaseInUse(RuntimeError):
    pass


class PeerOfAnotherToken(StoreError):
    kind = "permission_denied"


class LimitExceeded(StoreError):
    """A per-token limit (limits.py): RESOURCE_EXHAUSTED, the message names the limit."""
    kind = "resource_exhausted"
