"""gRPC plumbing shared by the services: servers with the standard health service, channels, join-token metadata."""
from __future__ import annotations

from concurrent import futures
from typing import Callable, Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from swarm import tls as swarm_tls
from swarm.logs import get_logger

logger = get_logger(__name__)

TOKEN_HEADER = "authorization"
HEALTH_PREFIX = "/grpc.health.v1.Health/"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# What a server reads of one request: every request of ours is small (ids, names, a few numbers), and gRPC refuses
# a bigger one with RESOURCE_EXHAUSTED while reading it, before any token check or handler runs.
MAX_REQUEST_BYTES = 1024 * 1024
# Keepalive so a dead peer's stream is noticed, and long server streams survive idle NATs.
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]


def token_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return ((TOKEN_HEADER, f"Bearer {token}"),) if token else ()


def token_from_metadata(metadata: Iterable[tuple[str, str]] | None) -> str | None:
    for key, value in metadata or ():
        if key == TOKEN_HEADER:
            return value[len("Bearer "):].strip() if value.startswith("Bearer ") else value.strip()
    return None


def _abort_handler(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    def abort(request, context):
        context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(abort)


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Rejects every call but the health service unless its token passes `check(token) -> error message or None`."""

    def __init__(self, check: Callable[[str | None], str | None]):
        self._check = check

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith(HEALTH_PREFIX):
            return continuation(handler_call_details)
        error = self._check(token_from_metadata(handler_call_details.invocation_metadata))
        if error is not None:
            handler = continuation(handler_call_details)
            if handler is not None and handler.response_streaming:
                def abort_stream(request, context):
                    context.abort(grpc.StatusCode.UNAUTHENTICATED, error)
                    yield  # pragma: no cover

                if handler.request_streaming:
                    return grpc.stream_stream_rpc_method_handler(abort_stream)
                return grpc.unary_stream_rpc_method_handler(abort_stream)
            return _abort_handler(grpc.StatusCode.UNAUTHENTICATED, error)
        return continuation(handler_call_details)


def server_options(*, max_request_bytes: int = MAX_REQUEST_BYTES) -> list[tuple[str, int]]:
    """Channel options of a server: replies up to MAX_MESSAGE_BYTES, requests up to `max_request_bytes`."""
    options = dict(CHANNEL_OPTIONS)
    options["grpc.max_receive_message_length"] = max_request_bytes
    return list(options.items())


def make_server(*, max_workers: int = 16, interceptors: Iterable[grpc.ServerInterceptor] = (),
                max_concurrent_rpcs: int | None = None, max_request_bytes: int = MAX_REQUEST_BYTES
                ) -> tuple[grpc.Server, health.HealthServicer]:
    """A gRPC server with the health service. `max_concurrent_rpcs` (default: 8 per worker thread) bounds the calls
    queued or running at once: more are refused with RESOURCE_EXHAUSTED instead of piling up behind slow ones."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), interceptors=list(interceptors),
                         options=server_options(max_request_bytes=max_request_bytes),
                         maximum_concurrent_rpcs=max_concurrent_rpcs or 8 * max_workers)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    return server, health_servicer


def bind(server: grpc.Server, address: str, *, tls_cert: str | None = None, tls_key: str | None = None,
         insecure: bool | None = None) -> str:
    """Bind `host:port` (port 0 picks a free one) and return the address actually bound; TLS with `tls_cert` and
    `tls_key` (PEM files, swarm.tls), else plaintext: only on loopback, or with `insecure` (None: $SWARM_INSECURE,
    what --insecure sets); elsewhere TlsError saying what to pass (tokens would cross in the clear)."""
    host = address.rpartition(":")[0]
    if (tls_cert is None) != (tls_key is None):
        raise swarm_tls.TlsError("TLS needs both a certificate (--tls-cert) and its key (--tls-key)")
    if tls_cert:
        bound = server.add_secure_port(address, swarm_tls.server_credentials(tls_cert, tls_key))
    else:
        _check_plaintext(address, server=True, insecure=insecure)
        bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"could not listen on {address}: is the port in use?")
    return f"{host}:{bound}"


def set_serving(health_servicer: health.HealthServicer, *services: str) -> None:
    for name in ("", *services):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)


def _check_plaintext(address: str, *, server: bool, insecure: bool | None) -> None:
    """TlsError unless plaintext at `address` is allowed: loopback, or insecure (None: $SWARM_INSECURE)."""
    insecure = swarm_tls.insecure_from_env() if insecure is None else insecure
    refusal = swarm_tls.plaintext_refusal(address, server=server)
    if refusal is None:
        return
    if not insecure:
        raise swarm_tls.TlsError(refusal)
    logger.warning(f"plaintext gRPC {'served on' if server else 'to'} {address} (--insecure): join tokens cross "
                   f"the network in the clear")


def channel(address: str, *, tls: "swarm_tls.ClientTls | None" = None, insecure: bool | None = None) -> grpc.Channel:
    """A channel to `address`: TLS checked by `tls` (or $SWARM_TLS_FINGERPRINT / $SWARM_TLS_CA_FILE), else
    plaintext, which only loopback or `insecure` (None: $SWARM_INSECURE) allows (TlsError saying what to pass).
    With a pinned fingerprint the server's certificate is fetched and checked first (TlsError)."""
    tls = tls or swarm_tls.ClientTls.from_env()
    if tls is None:
        _check_plaintext(address, server=False, insecure=insecure)
        return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    credentials, options = swarm_tls.channel_credentials(address, tls)
    return grpc.secure_channel(address, credentials, options=CHANNEL_OPTIONS + options)


def wait_healthy(address: str, *, timeout: float = 30.0) -> None:
    """Block until the server at `address` answers SERVING on the standard health service."""
    with channel(address) as ch:
        grpc.channel_ready_future(ch).result(timeout=timeout)
        response = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        if response.status != health_pb2.HealthCheckResponse.SERVING:
            raise RuntimeError(f"{address} is not serving (status {response.status})")
