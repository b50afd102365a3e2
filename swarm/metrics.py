"""Prometheus `/metrics` (and small JSON routes such as the bootstrap DHT's `/multiaddrs`) over plain HTTP.

Every service's `--metrics-host` defaults to loopback, so a host's metrics (peer names, rates, addresses) are not on
the internet by accident; the container images set SWARM_METRICS_HOST=0.0.0.0 (a container's port is reachable only
where it is published, and Prometheus scrapes it over the compose network).
"""
from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

METRICS_HOST_ENV = "SWARM_METRICS_HOST"
LOOPBACK = "127.0.0.1"


def default_metrics_host() -> str:
    """The interface /metrics binds when no --metrics-host is given: $SWARM_METRICS_HOST, else loopback."""
    return os.environ.get(METRICS_HOST_ENV) or LOOPBACK


def add_metrics_host_arg(parser) -> None:
    """The one --metrics-host flag every service has."""
    parser.add_argument("--metrics-host", default=default_metrics_host(), metavar="HOST",
                        help=f"interface of the /metrics server (default: %(default)s; ${METRICS_HOST_ENV} changes "
                             f"it; 0.0.0.0 for a Prometheus on another machine)")


class MetricsServer:
    """Serves `/metrics` from the default registry, `/healthz`, and any extra JSON routes given."""

    def __init__(self, *, host: str | None = None, port: int = 0,
                 json_routes: dict[str, Callable[[], Any]] | None = None):
        host = host or default_metrics_host()
        routes = dict(json_routes or {})

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, ctype, code = generate_latest(REGISTRY), CONTENT_TYPE_LATEST, 200
                elif path == "/healthz":
                    body, ctype, code = b"ok\n", "text/plain", 200
                elif path in routes:
                    body, ctype, code = json.dumps(routes[path]()).encode(), "application/json", 200
                else:
                    body, ctype, code = b"not found: try /metrics\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # scrapes every few seconds would flood the logs
                pass

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
