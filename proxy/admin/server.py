"""The sidecar's admin port: readiness, metrics, config and cluster views, drain.

Served by a small HTTP/1.1 protocol on the proxy's own strict parser rather than aiohttp: the
admin port is all a sidecar with a static config needs a web framework for, and aiohttp.web
with its dependencies is about 15 MB of the idle process (issue 18: idle RSS). Every answer
reads live state at request time, so what an operator sees is what the data path uses now.
Requests are tiny and rare; one connection answers one request at a time, in order.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from proxy.http1 import parser as h1
from proxy.http1.errors import ProtocolError

TEXT = "text/plain; charset=utf-8"
JSON = "application/json; charset=utf-8"
MAX_BODY = 64 * 1024  # admin POSTs carry nothing we read; a bigger body is refused
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            413: "Payload Too Large", 503: "Service Unavailable"}  # fmt: skip

Reply = tuple[int, str, bytes]
Handler = Callable[[dict[str, str]], Reply]


def _json(doc: Any, status: int = 200) -> Reply:
    return status, JSON, json.dumps(doc).encode()


def build_routes(sidecar: Any) -> dict[str, tuple[str, Handler]]:
    """path -> (method, handler). GET routes answer HEAD too (without the body)."""
    rt = sidecar.runtime

    def ready(q: dict[str, str]) -> Reply:
        if sidecar.ready and not rt.draining:
            return 200, TEXT, b"LIVE\n"
        reason = "draining" if rt.draining else sidecar.not_ready_reason()
        return 503, TEXT, f"NOT READY: {reason}\n".encode()

    def metrics(q: dict[str, str]) -> Reply:
        body, ctype = sidecar.render_metrics()
        return 200, ctype, body

    def drain(q: dict[str, str]) -> Reply:
        sidecar.request_drain()
        return _json({"draining": True, "at": time.time()})

    return {
        "/healthz/ready": ("GET", ready),
        "/ready": ("GET", ready),
        "/metrics": ("GET", metrics),
        "/stats/prometheus": ("GET", metrics),
        "/config_dump": ("GET", lambda q: _json(sidecar.config_dump())),
        "/clusters": ("GET", lambda q: _json(sidecar.clusters_view())),
        "/certs": ("GET", lambda q: _json(sidecar.certs_view())),
        "/drain": ("POST", drain),
        "/quitquitquit": ("POST", drain),
        "/explain": ("GET", lambda q: _json(sidecar.explain(q))),
    }


def _query(raw: str) -> dict[str, str]:
    """The first value of each parameter (as aiohttp's ``dict(request.query)`` gave)."""
    out: dict[str, str] = {}
    for k, v in parse_qsl(raw, keep_blank_values=True):
        out.setdefault(k, v)
    return out


def render(status: int, ctype: str, body: bytes, *, close: bool, head_only: bool,
           extra: tuple[str, ...] = ()) -> bytes:  # fmt: skip
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
             f"Content-Type: {ctype}", f"Content-Length: {len(body)}", *extra]  # fmt: skip
    if close:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


class AdminProtocol(asyncio.Protocol):
    """One admin connection: parse a head, skip its body, answer, repeat."""

    def __init__(self, server: AdminServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.skip = 0  # body bytes of the current request still to discard

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.transport is not None and not self.transport.is_closing():
            if self.skip:
                n = min(self.skip, len(self.buf))
                self.skip -= n
                self.buf = self.buf[n:]
                if self.skip:
                    return
            try:
                res = h1.parse_request_head(self.buf, 16384, 100, 8192)
            except ProtocolError as exc:
                self._send(exc.status, TEXT, f"{exc.reason}\n".encode(), True, False)
                return
            if res is None:
                return
            head, n = res
            self.buf = self.buf[n:]
            if head.chunked or head.content_length > MAX_BODY:
                self._send(413, TEXT, b"admin requests take no body\n", True, False)
                return
            self.skip = max(head.content_length, 0)
            self._answer(head)

    def _answer(self, head: Any) -> None:
        close = not head.keep_alive
        head_only = head.method == "HEAD"
        route = self.server.routes.get(head.path)
        if route is None:
            self._send(404, TEXT, b"404: Not Found", close, head_only)
            return
        method, handler = route
        if head.method != method and not (head_only and method == "GET"):
            allow = "GET, HEAD" if method == "GET" else method
            body = b"405: Method Not Allowed"
            self._send(405, TEXT, body, close, head_only, ("Allow: " + allow,))
            return
        try:
            status, ctype, body = handler(_query(head.query))
        except Exception:  # a view's bug answers 500 and is logged; the port stays up
            self.server.log.exception("admin %s failed", head.path)
            status, ctype, body = 500, TEXT, b"500: Internal Server Error"
        self._send(status, ctype, body, close, head_only)

    def _send(self, status: int, ctype: str, body: bytes, close: bool, head_only: bool,
              extra: tuple[str, ...] = ()) -> None:  # fmt: skip
        assert self.transport is not None
        self.transport.write(render(status, ctype, body, close=close, head_only=head_only,
                                    extra=extra))  # fmt: skip
        if close:
            self.transport.close()


class AdminServer:
    """The admin listener: ``await start(host, port)``, then ``port``; ``await close()``."""

    def __init__(self, sidecar: Any, log: Any) -> None:
        self.routes = build_routes(sidecar)
        self.log = log
        self.connections: set[AdminProtocol] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: AdminProtocol(self), host, port, reuse_address=True
        )
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for c in list(self.connections):
            if c.transport is not None:
                c.transport.close()
        if self.server is not None:
            await self.server.wait_closed()
