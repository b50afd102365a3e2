"""The status page's HTTP server: read-only, GET and HEAD only, the JSON cached briefly, no client addresses logged.

One page, its script and style (files beside this module, read once at start), and `/api/status`. The document is
built at most once per `cache_s` however many viewers ask (one builder at a time; the others get the cached bytes),
so a crowd following a link cannot load the coordinator. Nothing here writes to the run.
"""
from __future__ import annotations

import json
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Callable

from swarm.logs import get_logger

logger = get_logger(__name__)

CACHE_S = 2.0
REQUEST_TIMEOUT_S = 10.0  # a client that stops sending mid-request frees its thread after this
STATIC_FILES = {  # URL path -> (file beside this module, content type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/charts.js": ("charts.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
}
SECURITY_HEADERS = {
    # Scripts, styles and data from this origin only: no inline script, no third party, nothing framing the page.
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), interest-cohort=()",
}


class CachedDocument:
    """`build()` serialised to JSON bytes, rebuilt at most every `ttl` seconds; a failing build keeps the last."""

    def __init__(self, build: Callable[[], dict[str, Any]], *, ttl: float = CACHE_S,
                 clock: Callable[[], float] = time.monotonic):
        self._build, self.ttl, self._clock = build, ttl, clock
        self._lock = threading.Lock()
        self._body: bytes | None = None
        self._built_at = -float("inf")
        self.builds = 0

    def get(self) -> bytes:
        with self._lock:  # one builder at a time: viewers arriving meanwhile wait and get its result
            now = self._clock()
            if self._body is None or not 0.0 <= now - self._built_at < self.ttl:
                try:
                    self._body = json.dumps(self._build(), allow_nan=False, separators=(",", ":")).encode()
                    self.builds += 1
                except Exception:
                    if self._body is None:
                        raise
                    logger.exception("building the status document failed; serving the previous one")
                self._built_at = now
            return self._body


def load_static() -> dict[str, tuple[bytes, str]]:
    folder = resources.files("swarm_coordinator.statuspage") / "static"
    return {path: ((folder / name).read_bytes(), ctype) for path, (name, ctype) in STATIC_FILES.items()}


class StatusPageServer:
    """Serves the page on host:port (0 picks a free port, see `.port`) until close()."""

    def __init__(self, build: Callable[[], dict[str, Any]], *, host: str = "0.0.0.0", port: int = 0,
                 cache_s: float = CACHE_S):
        self.document = CachedDocument(build, ttl=cache_s)
        static = load_static()
        document = self.document

        class Handler(BaseHTTPRequestHandler):
            server_version = "swarm-status"
            sys_version = ""
            timeout = REQUEST_TIMEOUT_S
            protocol_version = "HTTP/1.1"

            def _send(self, code: int, body: bytes, ctype: str, *, cache: str, head: bool = False,
                      extra: dict[str, str] | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", cache)
                for name, value in {**SECURITY_HEADERS, **(extra or {})}.items():
                    self.send_header(name, value)
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _get(self, head: bool) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/api/status":
                    try:
                        body = document.get()
                    except Exception:
                        logger.exception("building the status document failed")
                        self._send(503, b'{"error": "status unavailable, retry shortly"}\n', "application/json",
                                   cache="no-store", head=head)
                        return
                    self._send(200, body, "application/json", cache=f"public, max-age={int(document.ttl)}",
                               head=head, extra={"Access-Control-Allow-Origin": "*"})
                elif path in static:
                    body, ctype = static[path]
                    self._send(200, body, ctype, cache="public, max-age=60", head=head)
                else:
                    self._send(404, b"not found: the status page is at /, its data at /api/status\n",
                               "text/plain; charset=utf-8", cache="no-store", head=head)

            def do_GET(self):  # noqa: N802 (http.server's name)
                self._get(head=False)

            def do_HEAD(self):  # noqa: N802
                self._get(head=True)

            def _refuse(self):
                self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"read-only: GET or HEAD\n", "text/plain; charset=utf-8",
                           cache="no-store", extra={"Allow": "GET, HEAD"})

            do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse  # noqa: N815

            def log_message(self, *args):  # access logs would record viewers' addresses: none are kept
                pass

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.host, self.port = host, self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="status-page", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)
