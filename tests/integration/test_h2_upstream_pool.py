"""The HTTP/2 upstream pool against meshlet's own HTTP/2 server with a small
SETTINGS_MAX_CONCURRENT_STREAMS: requests beyond the peer's limit wait for a slot or use another
connection (never refused), a GOAWAY'd connection is retired, resets before the response are
``UpstreamReset``, and flow control holds a slow reader's response back."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from proxy.server.h2.client import H2UpstreamPool
from proxy.server.h2.server import H2ServerProtocol, Limits
from proxy.server.upstream import UpstreamReset
from tests.support import until


class _Upstream:
    def __init__(self, streams: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.connections: set[Any] = set()
        self.active = 0
        self.peak = 0
        self.held = 0  # handlers waiting for the client to open its flow-control window
        self.gate = asyncio.Event()
        self.limits = Limits()
        self.limits.max_concurrent_streams = streams

    async def handler(self, sink: Any, head: Any) -> None:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            if head.path == "/reset":
                sink.reset()
                return
            if head.path == "/big":
                sink.send_response(200, "OK", [], (), [], -1, False)
                for _ in range(64):
                    sink.send_data(b"b" * 65536)
                    if sink.paused:
                        self.held += 1
                        try:
                            await sink.drain()
                        finally:
                            self.held -= 1
                sink.send_end([("x-trailer", "done")])
                return
            await self.gate.wait()
            sink.send_response(200, "OK", [("content-type", "text/plain")], (), [], -1, True,
                               head.path.encode())
        finally:
            self.active -= 1


@pytest.fixture
async def upstream():
    up = _Upstream(streams=2)
    srv = await up.loop.create_server(lambda: H2ServerProtocol(up, up.limits), "127.0.0.1", 0)
    up.port = srv.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    yield up
    srv.close()
    for c in list(up.connections):
        c.abort()


async def _get(pool: H2UpstreamPool, path: str) -> tuple[int, bytes, Any]:
    s, _ = await pool.acquire(5)
    try:
        resp = await s.start_request("GET", path, [("host", "up")], (), [])
        body = b""
        while True:
            piece = await s.body.read()
            if not piece:
                break
            body += piece
        return resp.status, body, s.body.trailers
    finally:
        pool.release(s)


async def test_streams_beyond_the_peer_limit_wait_or_spread(upstream):
    pool = H2UpstreamPool("127.0.0.1", upstream.port, max_connections=2)
    tasks = [asyncio.ensure_future(_get(pool, f"/r{i}")) for i in range(10)]
    await until(lambda: upstream.active >= 4, what="4 streams at the upstream")
    assert upstream.active == 4  # 2 connections x 2 streams; the rest queue in the pool
    upstream.gate.set()
    results = await asyncio.gather(*tasks)
    assert sorted(r[1] for r in results) == sorted(f"/r{i}".encode() for i in range(10))
    assert all(r[0] == 200 for r in results)
    assert len(pool.conns) == 2 and all(c.reserved == 0 for c in pool.conns)
    pool.close()


async def test_reset_before_response_is_upstream_reset(upstream):
    pool = H2UpstreamPool("127.0.0.1", upstream.port)
    s, _ = await pool.acquire(5)
    with pytest.raises(UpstreamReset):
        await s.start_request("GET", "/reset", [("host", "up")], (), [])
    pool.release(s)
    upstream.gate.set()
    assert (await _get(pool, "/after"))[1] == b"/after"  # the connection lives on
    assert len(pool.conns) == 1
    pool.close()


async def test_slow_reader_holds_the_response_back_then_gets_it_all(upstream):
    pool = H2UpstreamPool("127.0.0.1", upstream.port)
    s, _ = await pool.acquire(5)
    resp = await s.start_request("GET", "/big", [("host", "up")], (), [])
    assert resp.status == 200 and s.response_length() == (False, -1)
    # not reading: the windows close and the server's handler waits for them to open
    await until(lambda: upstream.held == 1, what="the upstream held back by flow control")
    buffered = s.body._size
    assert buffered <= 262144 + 2 * 65536
    total = 0
    while True:
        piece = await s.body.read()
        if not piece:
            break
        total += len(piece)
    assert total == 64 * 65536 and s.body.trailers == [("x-trailer", "done")]
    pool.release(s)
    pool.close()


async def test_goaway_retires_the_connection(upstream):
    pool = H2UpstreamPool("127.0.0.1", upstream.port)
    upstream.gate.set()
    assert (await _get(pool, "/one"))[0] == 200
    first = pool.conns[0]
    for c in list(upstream.connections):
        c.shutdown()  # GOAWAY(NO_ERROR)
    await until(lambda: first.going_away, what="GOAWAY seen")
    assert first.going_away and first not in pool.conns
    assert (await _get(pool, "/two"))[1] == b"/two"
    assert pool.conns and pool.conns[0] is not first
    pool.close()


async def test_a_graceful_goaway_lets_streams_in_flight_finish(upstream):
    """The upstream shuts down gracefully (GOAWAY with the last stream it took) while a response
    is pending: that response still arrives whole, and later requests use a new connection."""
    pool = H2UpstreamPool("127.0.0.1", upstream.port)
    pending = asyncio.create_task(_get(pool, "/pending"))
    await until(lambda: upstream.active, what="the request at the upstream")
    for c in list(upstream.connections):
        c.shutdown()  # GOAWAY(NO_ERROR, last stream = the pending one)
    first = pool.conns[0]
    await until(lambda: first.going_away, what="GOAWAY seen")
    upstream.gate.set()
    status, body, _ = await asyncio.wait_for(pending, 5)
    assert (status, body) == (200, b"/pending")
    assert (await _get(pool, "/after"))[1] == b"/after"
    assert pool.conns and pool.conns[0] is not first
    pool.close()
