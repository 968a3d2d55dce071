"""Bodies in flight: the replayable request body, its pump upstream, the response body cut by
the route timeout, and an upgraded connection's tunnel."""

from __future__ import annotations

import asyncio
from typing import Any

from proxy.server.channel import ChannelClosed, MalformedBody

from .exchange import Exchange

REPLAY_LIMIT = 65536


class ReplayBody:
    """A request body that a retry can send again: the first 64 KiB are kept as they stream.

    Envoy buffers request bodies for retries the same way (up to a limit); a larger body is
    still streamed, but the request is no longer retried once part of it went upstream.
    """

    __slots__ = ("ch", "buf", "size", "overflow", "started")

    def __init__(self, channel: Any) -> None:
        self.ch = channel
        self.buf: list[bytes] = []
        self.size = 0
        self.overflow = False
        self.started = False

    @property
    def replayable(self) -> bool:
        return not self.overflow

    @property
    def total(self) -> int:
        return self.ch.total

    @property
    def malformed(self) -> bool:
        """The client's body broke its framing (the pump then reset the upstream request)."""
        return type(self.ch._exc) is MalformedBody

    @property
    def trailers(self) -> Any:
        return self.ch.trailers

    def complete(self) -> list[bytes] | None:
        """The whole body, when it has all arrived already (a unary gRPC call, a small POST:
        HEADERS and DATA in one read), so the try sends it at once instead of starting a pump
        task; None while more is to come."""
        ch = self.ch
        if not ch._eof or ch._exc is not None or self.overflow:
            return None
        if not self.started:
            self.started = True
            data = ch.read_nowait()
            if data:
                if self.size + len(data) <= REPLAY_LIMIT:
                    self.buf.append(data)
                    self.size += len(data)
                else:
                    self.overflow = True
                    self.buf = []
                    return [data]
        elif ch._chunks:
            return None  # a retry of a body the first try did not read whole: use the pump
        return self.buf

    async def pieces(self) -> Any:
        self.started = True
        for d in list(self.buf):
            yield d
        while True:
            d = await self.ch.read()
            if not d:
                return
            if not self.overflow:
                if self.size + len(d) <= REPLAY_LIMIT:
                    self.buf.append(d)
                    self.size += len(d)
                else:
                    self.overflow = True
                    self.buf = []
            yield d


def send_body(source: ReplayBody, conn: Any) -> Any:
    """The request body upstream: at once when it is all here, else a pump task (returned)."""
    whole = source.complete()
    if whole is None:
        return asyncio.get_running_loop().create_task(_pump(source, conn))
    for data in whole:
        conn.send_body(data)
    conn.end_request(source.trailers)
    return None


async def _pump(source: ReplayBody, conn: Any) -> None:
    """Request body -> upstream; the connection frames it (re-chunked for HTTP/1.1: never raw
    client chunk bytes)."""
    try:
        async for data in source.pieces():
            conn.send_body(data)
            if conn.paused:
                await conn.drain()
        conn.end_request(source.trailers)
    except ChannelClosed:
        conn.abort()


def cancel(task: Any) -> None:
    if task is not None and not task.done():
        task.cancel()


def request_done(down: Any, conn: Any, source: ReplayBody, pump: Any, ex: Exchange) -> None:
    if pump is not None and not pump.done():
        # the upstream answered before reading the whole request body
        cancel(pump)
        down.keep_alive = False
        conn.keep_alive = False
    ex.req_bytes = source.total


def cut_body(conn: Any, rbody: Any, down: Any, ex: Exchange) -> None:
    """The route timeout fired while the response body was streaming: reset both sides. The
    status already went out, so the client learns it from the broken framing (HTTP/1.1: the
    connection closes before the body's end; HTTP/2: RST_STREAM), as from Envoy."""
    ex.flags = "UT"
    rbody.set_exception(ChannelClosed("route timeout during the response body"))
    conn.abort()
    down.reset()


def tunnel(down: Any, conn: Any) -> None:
    """An upgraded (101) connection: bytes both ways until either side closes."""

    def to_down(data: bytes) -> None:
        if data:
            down.write(data)
        else:
            down.close()

    conn.tunnel = to_down
    if conn.buf:
        down.write(conn.buf)
        conn.buf = b""
    down.start_tunnel(conn)
