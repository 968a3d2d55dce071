"""The admin port's HTTP/1.1 server on a real loopback socket, with a stand-in for the sidecar
whose views it serves (the views themselves are covered by tests/integration/test_admin_port.py):
idle connections are closed, a failing view is a 500 that leaves the port up, a large body is
refused, and repeated query parameters keep their first value as aiohttp's did."""

from __future__ import annotations

import asyncio
import json
import logging
from types import SimpleNamespace

from proxy.admin.server import AdminServer


class _Sidecar:
    def __init__(self) -> None:
        self.runtime = SimpleNamespace(draining=False)
        self.ready = True
        self.seen: list[dict[str, str]] = []

    def explain(self, query: dict[str, str]) -> dict[str, str]:
        self.seen.append(query)
        return query

    def clusters_view(self) -> dict:
        raise RuntimeError("a bug in a view")


async def _exchange(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.read(), 5)  # until the server closes
    finally:
        writer.close()
        await writer.wait_closed()


async def _server(idle: float = 30.0) -> tuple[AdminServer, _Sidecar]:
    sc = _Sidecar()
    srv = AdminServer(sc, logging.getLogger("test.admin"), idle_timeout=idle)
    await srv.start("127.0.0.1", 0)
    return srv, sc


async def test_idle_connection_is_closed():
    srv, _ = await _server(idle=0.2)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        # nothing sent: the server closes it once the idle timeout passes (bounded wait)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await writer.wait_closed()
        # a half-sent head is idle too
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"GET /ready HTTP/1.1\r\nHo")
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await writer.wait_closed()
    finally:
        await srv.close()


async def test_failing_view_is_500_and_port_stays_up(caplog):
    srv, _ = await _server()
    try:
        with caplog.at_level(logging.ERROR, logger="test.admin"):
            out = await _exchange(srv.port, b"GET /clusters HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 500 ")
        assert "admin /clusters failed" in caplog.text
        out = await _exchange(srv.port, b"GET /ready HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\nLIVE\n")
    finally:
        await srv.close()


async def test_large_or_chunked_body_is_refused():
    srv, _ = await _server()
    try:
        big = b"POST /drain HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n"
        out = await _exchange(srv.port, big)
        assert out.startswith(b"HTTP/1.1 413 ") and b"Connection: close" in out
        chunked = b"POST /drain HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        assert (await _exchange(srv.port, chunked)).startswith(b"HTTP/1.1 413 ")
    finally:
        await srv.close()


async def test_query_keeps_first_value_and_decodes():
    srv, sc = await _server()
    try:
        out = await _exchange(
            srv.port,
            b"GET /explain?host=a%2Eb&path=/x&host=c&empty= HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        assert out.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"Content-Type: application/json; charset=utf-8\r\n" in out
        assert json.loads(out.split(b"\r\n\r\n", 1)[1]) == {"host": "a.b", "path": "/x", "empty": ""}
        assert sc.seen == [{"host": "a.b", "path": "/x", "empty": ""}]
    finally:
        await srv.close()
