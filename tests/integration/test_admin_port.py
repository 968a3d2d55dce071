"""The sidecar's admin port (its own small HTTP/1.1 server since issue 18 took aiohttp.web off
the idle sidecar): every view answers as before, wrong methods and paths get 405/404, HEAD,
keep-alive and pipelining work, a body on an admin POST is skipped, and a static-config
sidecar does not import aiohttp at all (idle RSS)."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

from tests.support import start_app, start_sidecar, wait_until

SE = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: inventory}}
spec:
  hosts: [inventory]
  ports: [{{number: 8080, name: http}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}, labels: {{version: v1}}}}]
"""


def _req(port: int, path: str, method: str = "GET", body: bytes | None = None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _raw(port: int, data: bytes, responses: int) -> bytes:
    """Send ``data`` on one connection; read until ``responses`` complete answers arrived."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        got = b""
        while not responses or got.count(b"HTTP/1.1 ") < responses or not _complete(got, responses):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def _complete(buf: bytes, n: int) -> bool:
    """``n`` responses with their Content-Length bodies are in ``buf`` (no HEAD among them)."""
    pos = 0
    for _ in range(n):
        end = buf.find(b"\r\n\r\n", pos)
        if end < 0:
            return False
        head = buf[pos:end].decode("latin-1").lower()
        length = int(head.split("content-length:", 1)[1].split("\r\n", 1)[0])
        pos = end + 4 + length
        if pos > len(buf):
            return False
    return True


def test_admin_views_methods_and_framing(tmp_path):
    app, port = start_app(tmp_path, "inventory")
    sc = start_sidecar(tmp_path, "orders", port, SE.format(port=port))
    try:
        status, headers, body = _req(sc.admin, "/ready")
        assert (status, body) == (200, b"LIVE\n")
        assert headers["Content-Type"] == "text/plain; charset=utf-8"
        assert _req(sc.admin, "/healthz/ready")[0] == 200

        status, headers, body = _req(sc.admin, "/metrics")
        assert status == 200 and b"# TYPE" in body
        assert headers["Content-Type"].startswith("text/plain")
        assert _req(sc.admin, "/stats/prometheus")[2].startswith(body[:20])

        for path in ("/config_dump", "/clusters", "/certs"):
            status, headers, body = _req(sc.admin, path)
            assert status == 200, path
            assert headers["Content-Type"] == "application/json; charset=utf-8"
            json.loads(body)
        status, _, body = _req(sc.admin, "/explain?host=inventory&path=/x&host=ignored")
        assert status == 200 and isinstance(json.loads(body), dict)

        assert _req(sc.admin, "/nope")[0] == 404
        status, headers, _ = _req(sc.admin, "/drain")  # GET on a POST route
        assert (status, headers["Allow"]) == (405, "POST")
        status, headers, _ = _req(sc.admin, "/metrics", "POST", b"x")
        assert (status, headers["Allow"]) == (405, "GET, HEAD")

        # HEAD: the GET's head, no body
        out = _raw(sc.admin, b"HEAD /ready HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 0)
        assert out.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: 5\r\n" in out
        assert out.endswith(b"\r\n\r\n")

        # keep-alive and pipelining: two answers, in order, on one connection
        out = _raw(
            sc.admin,
            b"GET /ready HTTP/1.1\r\nHost: a\r\n\r\nGET /nope HTTP/1.1\r\nHost: a\r\n\r\n",
            2,
        )
        assert out.index(b"200 OK") < out.index(b"404 Not Found")

        # a malformed head is 400 and the connection closes
        out = _raw(sc.admin, b"GET /ready HTTP/1.1\r\nBad Header\r\n\r\n", 1)
        assert out.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in out

        # a POST body is skipped, the next request on the connection is answered; drain works
        out = _raw(
            sc.admin,
            b"POST /drain HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /nope HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            2,
        )
        first, second = out.split(b"HTTP/1.1 ")[1:3]
        assert first.startswith(b"200") and b'"draining": true' in first
        assert second.startswith(b"404")
        # the drain ends with the process (nothing is in flight)
        wait_until(lambda: sc.proc.p.poll() is not None, 15, what="sidecar exit after drain")
    finally:
        sc.stop()
        app.stop()


def test_static_config_sidecar_does_not_import_aiohttp(tmp_path):
    """aiohttp (about 15 MB resident with its dependencies) is only for the control-plane
    stream and the CSR; a sidecar from a config file never loads it."""
    app, port = start_app(tmp_path, "inventory")
    sc = start_sidecar(tmp_path, "orders", port, SE.format(port=port))
    try:
        pid = sc.proc.p.pid
        wait_until(lambda: _req(sc.admin, "/ready")[0] == 200, 10, what="ready")
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "aiohttp" not in maps  # no aiohttp extension module mapped
        assert "multidict" not in maps and "yarl" not in maps
    finally:
        sc.stop()
        app.stop()
