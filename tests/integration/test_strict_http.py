"""HTTP/1.1 to the letter through a real sidecar, and what the access log says about it.

One standalone sidecar. ``inventory`` is the sample app; ``raw`` is a socket server in this
module that records what reaches it and answers with scripted bytes, so a test can see whether a
request got upstream, and can make the upstream misbehave. Clients are raw sockets where curl or
aiohttp cannot produce the bytes (a broken chunked body, an over-long request line, CONNECT).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from tests.support import (
    free_port,
    start_app,
    start_sidecar,
    static_service_entry,
    stopped_at_end,
    wait_until,
)

RAW_VS = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: raw}
spec:
  hosts: [raw]
  http:
  - match: [{headers: {x-retry: {exact: "yes"}}}]
    retries: {attempts: 2, retryOn: reset}
    route: [{destination: {host: raw}}]
  - route: [{destination: {host: raw}}]
"""


def _config(app: int, raw: int) -> str:
    entries = [
        static_service_entry(name, port, hosts=f"{name}.default.svc.cluster.local",
                             protocol="HTTP")
        for name, port in (("inventory", app), ("raw", raw))
    ]
    return "---\n".join([*entries, RAW_VS])


class RawUpstream:
    """A loopback server that records each connection's bytes and answers with ``reply``
    once a request head has arrived (None: never answers)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.reply: bytes | None = None
        self.conns: list[dict] = []
        self._stop = False
        self._t = threading.Thread(target=self._serve, daemon=True)
        self._t.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            rec = {"data": b"", "closed": False}
            self.conns.append(rec)
            threading.Thread(target=self._conn, args=(c, rec), daemon=True).start()

    def _conn(self, c: socket.socket, rec: dict) -> None:
        c.settimeout(20)
        answered = False
        with c:
            while True:
                try:
                    d = c.recv(65536)
                except OSError:
                    d = b""
                if not d:
                    rec["closed"] = True
                    return
                rec["data"] += d
                if not answered and b"\r\n\r\n" in rec["data"] and self.reply is not None:
                    answered = True
                    c.sendall(self.reply)

    def stop(self) -> None:
        self._stop = True
        self.sock.close()
        self._t.join(2)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("strict-http")
    with stopped_at_end() as started:
        app, app_port = start_app(work, "inventory")
        started.append(app)
        raw = RawUpstream()
        started.append(raw)
        sc = start_sidecar(work, "orders", app_port, _config(app_port, raw.port))
        started.append(sc)
        yield {"sidecar": sc, "raw": raw, "work": work}


def _read_all(s: socket.socket, timeout: float = 10.0) -> bytes:
    s.settimeout(timeout)
    out = b""
    while True:
        try:
            d = s.recv(65536)
        except ConnectionResetError:
            return out
        if not d:
            return out
        out += d


def _exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the sidecar answered and closed before taking it all
        return _read_all(s)


def _flag(out: bytes) -> str:
    m = re.search(rb"x-meshlet-response-flags: (\S+)", out)
    return m.group(1).decode() if m else ""


def test_malformed_chunked_body_after_the_head_went_upstream_is_400_dpe(mesh):
    raw = mesh["raw"]
    n = len(raw.conns)
    with socket.create_connection(("127.0.0.1", mesh["sidecar"].outbound), timeout=10) as s:
        s.sendall(
            b"POST /upload HTTP/1.1\r\nHost: raw\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n"
        )
        # the head (and the first chunk) reached the upstream before the body goes bad
        wait_until(lambda: len(raw.conns) > n and b"hello" in raw.conns[n]["data"],
                   what="request head upstream")
        s.sendall(b"zz\r\nnot a chunk\r\n")
        out = _read_all(s)  # ends: the sidecar closes the connection
    assert out.startswith(b"HTTP/1.1 400 "), out[:200]
    assert _flag(out) == "DPE"
    assert out.count(b"HTTP/1.1") == 1
    # the upstream request was reset, not left half-sent
    wait_until(lambda: raw.conns[n]["closed"], what="upstream request reset")


def test_request_line_over_the_limit_is_414(mesh):
    out = _exchange(
        mesh["sidecar"].outbound,
        b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: inventory\r\n\r\n",
    )
    assert out.startswith(b"HTTP/1.1 414 "), out[:200]
    assert _flag(out) == "DPE"


def test_connect_on_the_outbound_listener_is_refused_and_not_forwarded(mesh):
    raw = mesh["raw"]
    n = len(raw.conns)
    out = _exchange(
        mesh["sidecar"].outbound,
        b"CONNECT raw:8080 HTTP/1.1\r\nHost: raw:8080\r\n\r\n"
        b"GET /tunnelled HTTP/1.1\r\nHost: raw\r\n\r\n",
    )
    assert out.startswith(b"HTTP/1.1 404 "), out[:200]
    assert _flag(out) == "NR"
    assert out.count(b"HTTP/1.1") == 1  # closed: the tunnel bytes are not read as a request
    assert len(raw.conns) == n  # nothing went upstream


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello",
        b"HTTP/1.1 2000 OK\r\n\r\n",
    ],
    ids=["conflicting-content-length", "unknown-coding", "cl-and-te", "bad-status-line"],
)
def test_malformed_upstream_response_is_502_upe(mesh, reply):
    raw = mesh["raw"]
    raw.reply = reply
    try:
        out = _exchange(
            mesh["sidecar"].outbound,
            b"GET /x HTTP/1.1\r\nHost: raw\r\nConnection: close\r\n\r\n",
        )
    finally:
        raw.reply = None
    assert out.startswith(b"HTTP/1.1 502 "), out[:200]
    assert _flag(out) == "UPE"


def test_malformed_upstream_response_is_a_reset_to_the_retry_policy(mesh):
    raw = mesh["raw"]
    raw.reply = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxy"
    n = len(raw.conns)
    try:
        out = _exchange(
            mesh["sidecar"].outbound,
            b"GET /x HTTP/1.1\r\nHost: raw\r\nx-retry: yes\r\nConnection: close\r\n\r\n",
        )
    finally:
        raw.reply = None
    assert out.startswith(b"HTTP/1.1 502 "), out[:200]
    assert _flag(out) == "UPE"
    assert b"reset reason: protocol error" in out
    assert len(raw.conns) - n == 3  # the try and its two retries (retryOn: reset)


def test_inbound_absolute_form_authority_replaces_host(mesh):
    out = _exchange(
        mesh["sidecar"].inbound,
        b"GET http://other.example:8080/echo?q=1 HTTP/1.1\r\nHost: orders\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert out.startswith(b"HTTP/1.1 200 "), out[:200]
    body = json.loads(out.split(b"\r\n\r\n", 1)[1])
    assert body["headers"]["host"] == "other.example:8080"
    assert body["path"] == "/echo" and body["query"] == "q=1"


def _log_lines(work: Path, name: str = "sidecar-orders") -> list[dict]:
    text = (work / f"{name}.out").read_text(errors="replace")
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _logged(work: Path, request_id: str) -> dict:
    def find() -> dict | None:
        for rec in _log_lines(work):
            if rec.get("request_id") == request_id:
                return rec
        return None

    return wait_until(find, what=f"access log line for {request_id}")  # type: ignore[return-value]


def test_access_log_http11_protocol_and_remote_address(mesh):
    with socket.create_connection(("127.0.0.1", mesh["sidecar"].outbound), timeout=10) as s:
        local = s.getsockname()
        s.sendall(b"GET /echo HTTP/1.1\r\nHost: inventory\r\nx-request-id: log-h1\r\n"
                  b"Connection: close\r\n\r\n")
        out = _read_all(s)
    assert out.startswith(b"HTTP/1.1 200 ")
    rec = _logged(mesh["work"], "log-h1")
    assert rec["protocol"] == "HTTP/1.1"
    assert rec["downstream_remote_address"] == f"{local[0]}:{local[1]}"


def test_access_log_h2c_protocol_and_remote_address(mesh):
    port = free_port()
    for _ in range(5):  # the chosen source port may be taken by someone else in between
        r = subprocess.run(
            ["curl", "-sS", "--http2-prior-knowledge", "--local-port", str(port),
             "-H", "Host: inventory", "-H", "x-request-id: log-h2", "-o", "/dev/null",
             "-w", "%{http_code} %{http_version}",
             f"http://127.0.0.1:{mesh['sidecar'].outbound}/echo"],
            capture_output=True, text=True, timeout=30,
        )
        if r.returncode != 45:  # 45: could not bind the local port
            break
        port = free_port()
    assert r.stdout == "200 2", (r.stdout, r.stderr)
    rec = _logged(mesh["work"], "log-h2")
    assert rec["protocol"] == "HTTP/2"
    assert rec["downstream_remote_address"] == f"127.0.0.1:{port}"
