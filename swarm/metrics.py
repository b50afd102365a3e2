"""Prometheus `/metrics` (and small JSON routes such as the bootstrap DHT's `/multiaddrs`) over plain HTTP."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest


class MetricsServer:
    """Serves `/metrics` from the default registry, `/healthz`, and any extra JSON routes given."""

    def __init__(self, *, host: str = "0.0.0.0", port: int = 0,
                 json_routes: dict[str, Callable[[], Any]] | None = None):
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
