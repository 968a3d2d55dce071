# cython: annotation_typing=False
"""Upstream HTTP/1.1 connections and their per-endpoint keep-alive pools.

A connection serves one request at a time (no upstream pipelining, as Envoy). Its response head
is parsed with the strict parser; the body is streamed through a :class:`BodyChannel`, which
pauses the upstream socket when the downstream client reads slowly. Idle connections are kept
LIFO per endpoint (the warmest first), dropped when the peer closes them or after the idle
timeout, so a request never picks a connection the upstream has already given up on.

This file is compiled a second time by Cython as ``_upstream_c`` (``_upstream_c.py`` is a symlink
to it and ``_upstream_c.pxd`` makes the connection and the pool ``cdef class`` objects with typed
attributes); ``proxy/server/upstream.py`` picks the build. So it stays plain Python that Cython can
type: the connection is an asyncio protocol by its methods, not by subclassing
``asyncio.Protocol`` (an extension type cannot derive from a Python class; uvloop and asyncio only
call the methods).
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

from proxy.http1 import parser as h1
from proxy.http1.errors import ProtocolError
from proxy.routes.table import UNLIMITED, PoolSettings
from proxy.server.channel import BodyChannel, ChannelClosed
from proxy.server.headers import request_head
from proxy.server.pool_limits import PendingTimeout, PoolOverflow

encode_chunk = h1.encode_chunk
encode_last_chunk = h1.encode_last_chunk
parse_response_head = h1.parse_response_head
response_body_mode = h1.response_body_mode
ChunkedDecoder = h1.ChunkedDecoder
# module constants (C ints in the compiled build) instead of an attribute lookup per use
MODE_NONE = h1.MODE_NONE
MODE_LENGTH = h1.MODE_LENGTH
MODE_CHUNKED = h1.MODE_CHUNKED
MODE_CLOSE = h1.MODE_CLOSE
_monotonic = time.monotonic


class UpstreamReset(Exception):
    """The upstream connection closed or reset; ``sent`` tells whether the request got out."""

    def __init__(self, message: str, response_started: bool = False) -> None:
        super().__init__(message)
        self.response_started = response_started


class UpstreamProtocolError(UpstreamReset):
    """The upstream's response head broke HTTP/1.1 (conflicting Content-Length, bad framing):
    Envoy's 502 ``UPE``, not a connection failure."""


def set_keepalive(transport: asyncio.BaseTransport, keepalive: tuple[int, ...]) -> None:
    """TCP keep-alive on an upstream socket (DestinationRule ``tcp.tcpKeepalive``): idle
    time, probe interval and probe count, 0 keeping the system's value."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    idle, interval, probes = keepalive
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for opt, value in (
        (getattr(socket, "TCP_KEEPIDLE", None), idle),
        (getattr(socket, "TCP_KEEPINTVL", None), interval),
        (getattr(socket, "TCP_KEEPCNT", None), probes),
    ):
        if opt is not None and value:
            sock.setsockopt(socket.IPPROTO_TCP, opt, value)


def _too_old(conn: Any, max_age: float) -> bool:
    return _monotonic() - conn.created >= max_age


class UpstreamConnection:
    __slots__ = (
        "pool",
        "transport",
        "buf",
        "head_waiter",
        "head",
        "body",
        "mode",
        "remaining",
        "chunked",
        "closed",
        "keep_alive",
        "request_method",
        "idle_since",
        "requests",
        "tunnel",
        "_paused_writing",
        "_drain_waiter",
        "got_bytes",
        "peer_principal",
        "chunked_request",
        "_timer",
        "_timer_when",
        "_t_deadline",
        "_t_fut",
        "tls_fresh",
        "counted",
        "created",
    )

    def __init__(self, pool: EndpointPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.head_waiter: asyncio.Future[Any] | None = None
        self.head: Any = None
        self.body: BodyChannel | None = None
        self.mode = 0
        self.remaining = 0
        self.chunked: Any = None
        self.closed = False
        self.keep_alive = True
        self.request_method = "GET"
        self.idle_since = 0.0
        self.requests = 0
        self.tunnel: Callable[[bytes], None] | None = None
        self._paused_writing = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self.got_bytes = False
        self.peer_principal = ""
        self.chunked_request = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._t_deadline = 0.0
        self._t_fut: asyncio.Future[Any] | None = None
        # a new TLS connection whose session (and TLS 1.3 ticket) the pool has not taken yet
        self.tls_fresh = False
        # counted in the pool's open connections (maxConnections) until discarded
        self.counted = False
        self.created = 0.0

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.created = _monotonic()
        if self.pool.keepalive:
            set_keepalive(transport, self.pool.keepalive)

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        w = self._drain_waiter
        if w is not None:
            self._drain_waiter = None
            if not w.done():
                w.set_result(None)

    async def drain(self) -> None:
        if self._paused_writing and not self.closed:
            self._drain_waiter = asyncio.get_running_loop().create_future()
            await self._drain_waiter

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return  # aborted, closing over TLS (see abort)
        self.got_bytes = True
        if self.tunnel is not None:
            self.tunnel(data)
            return
        if self.body is not None:
            self._feed_body(data)
            return
        if self.head_waiter is None:
            # bytes while idle: the upstream broke HTTP framing; never reuse this connection
            self.close()
            return
        self.buf += data
        self._parse_head()

    def _parse_head(self) -> None:
        try:
            while True:
                res = parse_response_head(self.buf)
                if res is None:
                    return
                head, n = res
                self.buf = self.buf[n:]
                if 100 <= head.status < 200 and head.status != 101:
                    continue  # interim responses are not forwarded (we answered 100 ourselves)
                break
        except ProtocolError as exc:
            self._fail(UpstreamProtocolError(f"malformed upstream response: {exc.reason}", False))
            self.close()
            return
        self.head = head
        self.keep_alive = head.keep_alive
        if head.status == 101:
            mode, length = MODE_CLOSE, 0
        else:
            mode, length = response_body_mode(head, self.request_method)
        self.mode = mode
        self.body = BodyChannel(self._pause_reading, self._resume_reading)
        if mode == MODE_CHUNKED:
            self.chunked = ChunkedDecoder()
        elif mode == MODE_LENGTH:
            self.remaining = length
        elif mode == MODE_CLOSE:
            self.keep_alive = False
        w = self.head_waiter
        self.head_waiter = None
        rest = self.buf
        self.buf = b""
        if mode == MODE_NONE or (mode == MODE_LENGTH and length == 0):
            self.body.feed_eof()
            if rest:
                self.keep_alive = False
        elif rest and head.status != 101:
            self._feed_body(rest)
        elif rest:
            self.buf = rest  # bytes after a 101 belong to the tunnel
        if w is not None and not w.done():
            w.set_result(head)

    def _feed_body(self, data: bytes) -> None:
        body = self.body
        assert body is not None
        mode = self.mode
        if mode == MODE_LENGTH:
            if len(data) >= self.remaining:
                extra = data[self.remaining :]
                body.feed(data[: self.remaining])
                self.remaining = 0
                body.feed_eof()
                if extra:
                    self.keep_alive = False
            else:
                self.remaining -= len(data)
                body.feed(data)
        elif mode == MODE_CHUNKED:
            dec = self.chunked
            try:
                for piece in dec.feed(data):
                    body.feed(piece)
            except ProtocolError as exc:
                body.set_exception(ChannelClosed(f"malformed chunked upstream body: {exc.reason}"))
                self.close()
                return
            if dec.done:
                if dec.unused:
                    self.keep_alive = False
                body.feed_eof(dec.trailers or None)
        else:
            body.feed(data)

    def _pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        if self.body is not None and self.mode == MODE_CLOSE:
            self.body.feed_eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.tunnel is not None:
            self.tunnel(b"")
            return
        if self.head_waiter is not None:
            self._fail(UpstreamReset("upstream connection closed before the response", False))
        elif self.body is not None and not self.body.at_eof:
            if self.mode == MODE_CLOSE:
                self.body.feed_eof()
            else:
                self.body.set_exception(ChannelClosed("upstream reset during the response body"))
        w = self._drain_waiter
        if w is not None and not w.done():
            w.set_result(None)

    # -- request side --------------------------------------------------------------------------
    def _fail(self, exc: Exception) -> None:
        w = self.head_waiter
        self.head_waiter = None
        if w is not None and not w.done():
            w.set_exception(exc)

    def start_request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        connection_tokens: tuple[str, ...],
        extra: list[str],
        drop: frozenset[str] | None = None,
    ) -> asyncio.Future[Any]:
        """Send a request head (hop-by-hop headers filtered, ``extra`` appended); the body, if
        any, follows with send_body/end_request. Returns the future of the response head."""
        self.chunked_request = "transfer-encoding: chunked" in extra
        return self.start(
            request_head(method, target, headers, connection_tokens, extra, drop), method
        )

    # -- the per-try timeout -----------------------------------------------------------------
    def arm_timeout(self, fut: asyncio.Future[Any], timeout: float) -> None:
        """Fail ``fut`` with TimeoutError after ``timeout`` s unless :meth:`disarm_timeout` is
        called first. A connection runs one request at a time, so it keeps one loop timer and
        re-arms it lazily when it fires early for a later request: no timer per request."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._t_deadline = deadline
        self._t_fut = fut
        t = self._timer
        if t is not None:
            if self._timer_when <= deadline:
                return  # fires first; _on_timer re-arms for this deadline
            t.cancel()
        self._timer_when = deadline
        self._timer = loop.call_at(deadline, self._on_timer)

    def disarm_timeout(self) -> None:
        self._t_fut = None

    def _on_timer(self) -> None:
        self._timer = None
        fut = self._t_fut
        if fut is None:
            return  # no try waiting: the timer stops until the next arm_timeout
        loop = asyncio.get_running_loop()
        deadline = self._t_deadline
        if loop.time() < deadline - 0.001:  # (the loop's timers have millisecond resolution)
            self._timer_when = deadline
            self._timer = loop.call_at(deadline, self._on_timer)
            return
        self._t_fut = None
        if not fut.done():
            fut.set_exception(TimeoutError())

    def send_body(self, data: bytes) -> None:
        self.write(encode_chunk(data) if self.chunked_request else data)

    def end_request(self, trailers: list[tuple[str, str]] | None) -> None:
        if self.chunked_request:
            self.write(encode_last_chunk(trailers))

    @property
    def paused(self) -> bool:
        return self._paused_writing

    def response_length(self) -> tuple[bool, int]:
        """(no body allowed, content-length or -1) of the current response."""
        mode = self.mode
        if mode == MODE_NONE:
            return True, self.head.content_length
        if mode == MODE_LENGTH:
            return False, self.head.content_length
        return False, -1

    def start(self, head_bytes: bytes, method: str) -> asyncio.Future[Any]:
        """Send a preformatted request head; returns the future of the response head."""
        self.requests += 1
        self.request_method = method
        self.head = None
        self.body = None
        self.chunked = None
        self.got_bytes = False
        self.buf = b""
        fut = asyncio.get_running_loop().create_future()
        self.head_waiter = fut
        assert self.transport is not None
        self.transport.write(head_bytes)
        return fut

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        self.pool.discard(self)

    def abort(self) -> None:
        """Give up on this connection (a cancelled or timed-out request, a hedge that lost).

        Over TLS it still ends with a close_notify, at once: OpenSSL drops from the peer's
        session cache the session of a connection that ends without one (as truncated), so
        a burst of cancelled requests would otherwise cost every connection opened after it a
        full handshake instead of a resumption. The peer sees the end of the connection just
        as soon; bytes it sends meanwhile are ignored."""
        self.closed = True
        t = self.transport
        if t is not None:
            if self.pool.ssl is not None:
                t.close()
            else:
                t.abort()
        self.pool.discard(self)

    @property
    def reusable(self) -> bool:
        return (
            self.keep_alive
            and not self.closed
            and self.body is not None
            and self.body.at_eof
            and self.head_waiter is None
            and not self.buf
        )


class EndpointPool:
    """Keep-alive connections to one endpoint (address:port, plaintext or TLS).

    Enforces the DestinationRule ``connectionPool`` thresholds of its cluster, as Envoy's circuit
    breakers: at most ``max_connections`` open (a request finding none idle and no room waits,
    as pending, for one to come back or close), at most ``max_pending`` waiting, at most
    ``max_active`` requests in flight; beyond those :class:`PoolOverflow`. Each check is one
    integer compare; the defaults are Istio's (2^32-1: no limit)."""

    __slots__ = (
        "host",
        "port",
        "ssl",
        "server_hostname",
        "idle",
        "active",
        "loop",
        "idle_timeout",
        "max_requests",
        "_sweeper",
        "verify_peer",
        "sessions",
        "max_connections",
        "max_pending",
        "max_active",
        "open",
        "waiters",
        "overflows",
        "on_overflow",
        "max_age",
        "keepalive",
    )

    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: Callable[[], ssl.SSLContext | None] | None = None,
        idle_timeout: float = 55.0,
        max_requests: int = 0,
        verify_peer: Callable[[Any], bool] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        # a factory, called per new connection: a renewed certificate is used at once
        self.ssl = ssl_context
        self.server_hostname = "" if ssl_context is not None else None
        self.idle: list[UpstreamConnection] = []
        self.active = 0  # requests holding a connection
        self.loop = asyncio.get_event_loop()
        self.idle_timeout = idle_timeout
        self.max_requests = max_requests
        self._sweeper: asyncio.TimerHandle | None = None
        self.verify_peer = verify_peer
        # TLS session resumption: the endpoint's last session, offered on new connections
        self.sessions: Any = None
        if ssl_context is not None:
            from proxy.server.tls_session import SessionCache

            self.sessions = SessionCache()
        self.max_connections = UNLIMITED
        self.max_pending = UNLIMITED
        self.max_active = UNLIMITED
        self.open = 0  # connections open or being opened
        # requests waiting for a connection: each future gets an idle connection, or None
        # when a connection closed (room to open one)
        self.waiters: collections.deque[asyncio.Future[UpstreamConnection | None]] = (
            collections.deque()
        )
        self.overflows = {"connections": 0, "pending": 0, "requests": 0}
        self.on_overflow: Callable[[str], None] | None = None
        self.max_age = 0.0  # tcp.maxConnectionDuration: no reuse of an older connection
        self.keepalive: tuple[int, ...] = ()  # tcp.tcpKeepalive for new connections

    def apply(self, settings: PoolSettings) -> None:
        """Take a cluster's ``pool_settings`` (at creation and when a config changes them);
        maxConcurrentStreams is for HTTP/2 pools only."""
        self.idle_timeout = settings.idle_timeout
        self.max_requests = settings.max_requests_per_connection
        self.max_connections = settings.max_connections
        self.max_pending = settings.max_pending
        self.max_active = settings.max_requests
        self.max_age = settings.max_connection_duration
        self.keepalive = settings.keepalive
        while self.waiters and self.open < self.max_connections:
            self._wake(None)  # a raised limit lets waiting requests connect

    def _overflow(self, kind: str) -> PoolOverflow:
        self.overflows[kind] += 1
        if self.on_overflow is not None:
            self.on_overflow(kind)
        return PoolOverflow(kind)

    def status(self) -> dict[str, Any]:
        """Limits and current counts, for the admin ``/clusters`` view."""
        return {
            "max_connections": self.max_connections,
            "max_pending_requests": self.max_pending,
            "max_requests": self.max_active,
            "max_requests_per_connection": self.max_requests,
            "connections": self.open,
            "pending_requests": len(self.waiters),
            "active_requests": self.active,
            "overflows": dict(self.overflows),
        }

    def take_idle(self) -> UpstreamConnection | None:
        """The warmest idle connection (counted active, as acquire's reuse), or None."""
        if self.active >= self.max_active:
            return None  # acquire answers the overflow
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                if self.max_age and _too_old(conn, self.max_age):
                    conn.close()
                    continue
                self.active += 1
                return conn
        return None

    async def acquire(
        self, timeout: float, wait_timeout: float | None = None
    ) -> tuple[UpstreamConnection, bool]:
        """A connection and whether it was reused from the pool (a reused one may be stale).

        ``timeout`` bounds opening a connection; ``wait_timeout`` (None: unbounded) the time
        spent pending, when ``max_connections`` are all open and busy."""
        if self.active >= self.max_active:
            raise self._overflow("requests")
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                if self.max_age and _too_old(conn, self.max_age):
                    conn.close()
                    continue
                self.active += 1
                return conn, True
        if self.open >= self.max_connections:
            got = await self._wait(wait_timeout)
            if got is not None:
                self.active += 1
                return got, True
        self.active += 1
        self.open += 1
        try:
            ctx = self.ssl() if self.ssl is not None else None
            conn = await self._connect(ctx, timeout)
        except BaseException:
            self.active -= 1
            self._closed_one()
            raise
        conn.counted = True  # from now on its slot is given back when it is discarded
        if conn.closed:
            self.discard(conn)
        if ctx is not None:
            # resumed or not: the session records the peer's certificate, checked again here
            if self.verify_peer is not None and not self.verify_peer(
                conn.transport.get_extra_info("ssl_object")  # type: ignore[union-attr]
            ):
                self.active -= 1
                self.sessions.forget()
                conn.abort()
                raise ConnectionError("upstream presented an unexpected identity")
            conn.tls_fresh = True
        return conn, False

    async def _wait(self, wait_timeout: float | None) -> UpstreamConnection | None:
        """Wait, as a pending request, until a connection is handed over (returned) or room
        to open one appears (None); raises PoolOverflow when the queue is full."""
        while True:
            if len(self.waiters) >= self.max_pending:
                raise self._overflow("pending")
            self.overflows["connections"] += 1  # Envoy's upstream_cx_overflow: it waits
            fut: asyncio.Future[UpstreamConnection | None] = self.loop.create_future()
            self.waiters.append(fut)
            try:
                if wait_timeout is None:
                    got = await fut
                else:
                    async with asyncio.timeout(wait_timeout):
                        got = await fut
            except BaseException as exc:
                if fut.done() and not fut.cancelled() and fut.result() is not None:
                    self._give_back(fut.result())  # handed over as we gave up: pass it on
                elif fut.done() and not fut.cancelled():
                    self._wake(None)  # our turn to connect: the next one's
                else:
                    try:
                        self.waiters.remove(fut)
                    except ValueError:
                        pass
                if isinstance(exc, TimeoutError):
                    raise PendingTimeout("no upstream connection in time") from None
                raise
            if got is not None:
                if not got.closed:
                    return got
                continue
            if self.open < self.max_connections:
                return None

    def _wake(self, conn: UpstreamConnection | None) -> bool:
        """Hand ``conn`` (or room for a connection, None) to the first waiting request."""
        waiters = self.waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return True
        return False

    def _give_back(self, conn: UpstreamConnection) -> None:
        if conn.closed:
            return
        if not self._wake(conn):
            conn.idle_since = _monotonic()
            self.idle.append(conn)
            if self._sweeper is None:
                self._sweeper = self.loop.call_later(self.idle_timeout, self._sweep)

    def _closed_one(self) -> None:
        self.open -= 1
        if self.waiters and self.open < self.max_connections:
            self._wake(None)

    async def _connect(self, ctx: ssl.SSLContext | None, timeout: float) -> UpstreamConnection:
        async with asyncio.timeout(timeout):
            if ctx is None:
                _, conn = await self.loop.create_connection(
                    lambda: UpstreamConnection(self), self.host, self.port
                )
                return conn
            from proxy.server.tls_session import open_connection

            # offers the endpoint's last TLS session (resumption), counts the handshake
            _, conn = await open_connection(
                self.loop,
                lambda: UpstreamConnection(self),
                self.host,
                self.port,
                ctx,
                self.sessions,
                server_hostname=self.server_hostname or "",
            )
            return conn

    def release(self, conn: UpstreamConnection) -> None:
        self.active -= 1
        if conn.tls_fresh:
            conn.tls_fresh = False
            if conn.head is not None and conn.transport is not None:
                # a response was read, so the TLS 1.3 ticket sent after the handshake was too
                self.sessions.remember(conn.transport.get_extra_info("ssl_object"))
        if (
            conn.reusable
            and (not self.max_requests or conn.requests < self.max_requests)
            and not (self.max_age and _too_old(conn, self.max_age))
        ):
            if self.waiters and self._wake(conn):
                return  # straight to a pending request
            conn.idle_since = _monotonic()
            self.idle.append(conn)
            if self._sweeper is None:
                self._sweeper = self.loop.call_later(self.idle_timeout, self._sweep)
        else:
            conn.close()

    def discard(self, conn: UpstreamConnection) -> None:
        if conn.counted:
            conn.counted = False
            self._closed_one()
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    def _sweep(self) -> None:
        self._sweeper = None
        cutoff = _monotonic() - self.idle_timeout
        keep = []
        for conn in self.idle:
            if conn.idle_since < cutoff:
                conn.closed = True
                if conn.transport is not None:
                    conn.transport.close()
            else:
                keep.append(conn)
        self.idle[:] = keep
        if keep:
            self._sweeper = self.loop.call_later(self.idle_timeout, self._sweep)

    def close(self) -> None:
        for conn in list(self.idle):
            conn.close()
        self.idle.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
