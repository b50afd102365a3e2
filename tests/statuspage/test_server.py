"""The status page's HTTP server over real sockets: routes, read-only, the cached JSON, the security headers."""
from __future__ import annotations

import http.client
import json
import threading

import pytest

from swarm_coordinator.statuspage.server import CachedDocument, StatusPageServer

pytestmark = pytest.mark.timeout(30)


class Counting:
    """A document builder that counts its calls (the coordinator's real one reads the store)."""

    def __init__(self):
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self):
        with self.lock:
            self.calls += 1
            return {"calls": self.calls}


@pytest.fixture
def served():
    build = Counting()
    server = StatusPageServer(build, host="127.0.0.1", port=0, cache_s=60.0)
    yield server, build
    server.close()


def _request(server, method, path):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_the_page_and_its_files_are_served_with_security_headers(served):
    server, _ = served
    status, headers, body = _request(server, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'<script src="app.js"' in body and b"http" not in body.split(b"<body>")[0]  # nothing from a CDN
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["Referrer-Policy"] == "no-referrer"
    assert "Python" not in headers["Server"]
    for path, ctype in (("/app.js", "text/javascript"), ("/charts.js", "text/javascript"), ("/style.css", "text/css"),
                        ("/favicon.svg", "image/svg+xml")):
        status, headers, body = _request(server, "GET", path)
        assert status == 200 and headers["Content-Type"].startswith(ctype) and body, path


def test_status_json_is_cached_so_a_crowd_builds_it_once(served):
    server, build = served
    bodies = []

    def viewer():
        bodies.append(_request(server, "GET", "/api/status?x=1")[2])

    threads = [threading.Thread(target=viewer) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert build.calls == 1
    assert {json.loads(b)["calls"] for b in bodies} == {1}
    status, headers, _ = _request(server, "GET", "/api/status")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert headers["Cache-Control"] == "public, max-age=60" and headers["Access-Control-Allow-Origin"] == "*"


def test_the_cache_expires():
    clock = [0.0]
    document = CachedDocument(Counting(), ttl=2.0, clock=lambda: clock[0])
    assert json.loads(document.get()) == {"calls": 1}
    clock[0] = 1.9
    assert json.loads(document.get()) == {"calls": 1}
    clock[0] = 2.0
    assert json.loads(document.get()) == {"calls": 2}


def test_a_failing_build_serves_the_last_document_or_503():
    fail = [False]

    def build():
        if fail[0]:
            raise RuntimeError("database busy")
        return {"ok": True}

    server = StatusPageServer(build, host="127.0.0.1", port=0, cache_s=0.0)
    try:
        assert _request(server, "GET", "/api/status")[0] == 200
        fail[0] = True
        status, _, body = _request(server, "GET", "/api/status")
        assert status == 200 and json.loads(body) == {"ok": True}
    finally:
        server.close()
    broken = StatusPageServer(lambda: 1 / 0, host="127.0.0.1", port=0)
    try:
        status, headers, body = _request(broken, "GET", "/api/status")
        assert status == 503 and b"retry" in body and headers["Cache-Control"] == "no-store"
    finally:
        broken.close()


def test_read_only_and_unknown_paths(served):
    server, build = served
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
        status, headers, _ = _request(server, method, "/api/status")
        assert status == 405 and headers["Allow"] == "GET, HEAD", method
    assert build.calls == 0
    status, headers, body = _request(server, "HEAD", "/api/status")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
    for path in ("/nope", "/../server.py", "/static/app.js"):
        assert _request(server, "GET", path)[0] == 404, path
