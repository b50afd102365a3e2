"""What every coordinator RPC handler shares: errors mapped to gRPC statuses, per-call metrics, and who is calling.

A handler validates its request (rules.InvalidRequest: INVALID_ARGUMENT with what to fix) and calls the store.
Errors the state decides (StoreError) map to FAILED_PRECONDITION, NOT_FOUND or PERMISSION_DENIED; a database that
is busy or failing is UNAVAILABLE (retry); a failure of our own is INTERNAL with a pointer to the log, and the
server keeps serving either way.
"""
from __future__ import annotations

import functools
import sqlite3
import time

import grpc
import sqlalchemy.exc

from swarm.logs import get_logger
from swarm.rpc import token_from_metadata
from swarm_coordinator import metrics, rules
from swarm_coordinator.errors import StoreError
from swarm_coordinator.tokens import hash_token

logger = get_logger(__name__)

_STORE_ERROR_CODES = {"failed_precondition": grpc.StatusCode.FAILED_PRECONDITION,
                      "not_found": grpc.StatusCode.NOT_FOUND,
                      "permission_denied": grpc.StatusCode.PERMISSION_DENIED,
                      "resource_exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED}
_recorder = metrics.RpcRecorder()


def rpc_handler(method: str):
    """Decorates a servicer method: maps rule and store errors to gRPC statuses with their message, and records every
    call's code and latency under `method`."""
    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(self, request, context):
            started = time.perf_counter()
            code, message = grpc.StatusCode.OK, ""
            try:
                return fn(self, request, context)
            except rules.InvalidRequest as e:
                code, message = grpc.StatusCode.INVALID_ARGUMENT, str(e)
            except StoreError as e:
                code, message = _STORE_ERROR_CODES[e.kind], str(e)
            except (sqlalchemy.exc.OperationalError, sqlite3.OperationalError) as e:
                logger.error(f"{method}: database error: {e}")
                code, message = grpc.StatusCode.UNAVAILABLE, "the coordinator's database is busy or failing; retry"
            except Exception:
                logger.exception(f"{method} failed")
                code, message = grpc.StatusCode.INTERNAL, f"{method} failed inside the coordinator; see its log"
            finally:
                _recorder.record(method, code.name, time.perf_counter() - started)
            context.abort(code, message)
        return wrapper
    return decorate


_token_hashes: dict[str, str] = {}


def caller(context) -> str | None:
    """Who is calling: the sha256 of its join token (the interceptor already checked the token is valid)."""
    token = token_from_metadata(context.invocation_metadata())
    if not token:
        return None
    digest = _token_hashes.get(token)
    if digest is None:
        if len(_token_hashes) > 10_000:  # valid tokens only reach here, but stay bounded anyway
            _token_hashes.clear()
        digest = _token_hashes[token] = hash_token(token)
    return digest
