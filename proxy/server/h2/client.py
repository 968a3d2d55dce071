"""HTTP/2 to upstreams: few multiplexed connections per endpoint, one stream per request.

:class:`H2UpstreamPool` has the surface of the HTTP/1.1 ``EndpointPool`` (``acquire(timeout)``
-> ``(conn, reused)``, ``release(conn)``, ``active``, ``close()``), and the per-request object
it hands out (:class:`H2UpstreamStream`) the surface of an ``UpstreamConnection``
(``start_request``, ``send_body``, ``end_request``, ``body``, ``response_length``, ``paused``,
``drain``, ``abort``), so the forwarder drives HTTP/1.1 and HTTP/2 upstreams the same way.

Streams are spread over at most ``max_connections`` connections, each carrying no more than the
peer's SETTINGS_MAX_CONCURRENT_STREAMS (capped at ``max_streams``); a request waits for a slot
rather than exceed them. A GOAWAY retires a connection: its streams above the last stream id
fail as resets with nothing received (safe to retry), the others finish.

h2c (prior knowledge) to a local app; h2 over mTLS between sidecars, where the TLS context must
offer ALPN "h2" and the peer must select it (else the connection is refused: the caller falls
back to HTTP/1.1).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from proxy.http1 import parser as h1
from proxy.http2 import connection as ev
from proxy.http2 import frames as fr
from proxy.http2.errors import ErrorCode as ErrorCodes
from proxy.http2.errors import LocalProtocolError
from proxy.routes.table import UNLIMITED, PoolSettings
from proxy.server.channel import ChannelClosed
from proxy.server.h2._conn import CONN_WINDOW, STREAM_WINDOW, H2Base, StreamIO
from proxy.server.pool_limits import PoolOverflow
from proxy.server.upstream import UpstreamReset, set_keepalive

# hop-by-hop and framing fields never sent in HTTP/2; ``te: trailers`` is re-added for gRPC
_DROP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "transfer-encoding",
                   "upgrade", "trailer", "proxy-authenticate", "proxy-authorization",
                   "content-length", "expect", "http2-settings", "host"})
_NO_BODY_STATUS = (204, 304)
SETTINGS_WAIT = 1.0  # seconds a new connection waits for the peer's SETTINGS at most


# responses are validated by the connection: a malformed one resets its stream (-> 502)
_LIMITS = ev.Limits(stream_window=STREAM_WINDOW, connection_window=CONN_WINDOW,
                    max_header_list_size=65536, max_header_count=0)


class H2ClientConnection(H2Base):
    def __init__(self, pool: H2UpstreamPool) -> None:
        super().__init__(pool.loop, True, _LIMITS)
        self.pool = pool
        self.by_sid: dict[int, H2UpstreamStream] = {}
        self.reserved = 0  # acquired, not yet released (started or not)
        self.started = 0
        self.idle_since = self.created = time.monotonic()
        self.scheme = b"http"
        self.peer_principal = ""
        # the peer's first SETTINGS (its MAX_CONCURRENT_STREAMS) before streams are opened
        self.settings_seen: asyncio.Future[None] = pool.loop.create_future()

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.pool.keepalive:
            set_keepalive(transport, self.pool.keepalive)
        if transport.get_extra_info("ssl_object") is not None:
            self.scheme = b"https"
        self.h2.initiate_connection()  # preface, SETTINGS (push off), connection window
        self.flush()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        events = self.h2.receive_data(data)
        for e in events:
            t = type(e)
            if t is ev.DataReceived:
                s = self.by_sid.get(e.stream_id)
                self.on_data(s.st if s is not None else None, e.stream_id, e.data,
                             e.flow_controlled_length)
            elif t is ev.ResponseReceived:
                s = self.by_sid.get(e.stream_id)
                if s is not None:
                    s.on_response(e.headers, e.end_stream)
            elif t is ev.TrailersReceived:
                s = self.by_sid.get(e.stream_id)
                if s is not None:
                    s.trailers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in e.headers]
            elif t is ev.StreamEnded:
                s = self.by_sid.get(e.stream_id)
                if s is not None:
                    s.on_end()
            elif t is ev.StreamReset:
                s = self.by_sid.get(e.stream_id)
                if s is not None:
                    s.on_reset(f"upstream reset the stream ({e.error_code!r})",
                               e.error_code == ErrorCodes.REFUSED_STREAM)
            elif t is ev.WindowUpdated:
                if e.stream_id:
                    s = self.by_sid.get(e.stream_id)
                    if s is not None and s.st is not None:
                        self.push(s.st)
                else:
                    self.push_all()
            elif t is ev.RemoteSettingsChanged:
                if fr.SETTINGS_INITIAL_WINDOW_SIZE in e.changes:
                    self.push_all()
                if not self.settings_seen.done():
                    self.settings_seen.set_result(None)
                self.pool.wake()
            elif t is ev.ConnectionTerminated:
                if not e.remote:
                    # the upstream broke the protocol: our GOAWAY is queued; send it, fail all
                    self.flush_now()
                    self.abort()
                    self.pool.discard(self)
                    self._fail_all("upstream HTTP/2 protocol error: "
                                   + e.debug.decode("latin-1", "replace"))
                    return
                self.going_away = True
                last = e.last_stream_id if e.last_stream_id is not None else 0
                for sid, s in list(self.by_sid.items()):
                    if sid > last:
                        s.on_reset("upstream sent GOAWAY", True)
                self.pool.discard(self)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.discard(self)
        if not self.settings_seen.done():
            self.settings_seen.set_result(None)
        self._fail_all("upstream connection closed")

    def _fail_all(self, why: str) -> None:
        for s in list(self.by_sid.values()):
            s.on_reset(why, False)

    # -- capacity ----------------------------------------------------------------------------------
    def capacity(self) -> int:
        if self.closed or self.going_away:
            return 0
        limit = min(self.h2.remote_max_concurrent_streams, self.pool.max_streams)
        return limit - self.reserved

    def close(self) -> None:
        if not self.closed:
            self.h2.close_connection()
            self.flush_now()
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class H2UpstreamStream:
    """One request on a pooled HTTP/2 connection, with an ``UpstreamConnection``'s surface."""

    __slots__ = ("conn", "st", "head_waiter", "head", "body", "mode", "length", "trailers",
                 "got_bytes", "keep_alive", "tunnel", "closed", "request_method", "released",
                 "no_body", "requests")

    def __init__(self, conn: H2ClientConnection) -> None:
        self.conn = conn
        self.st: StreamIO | None = None
        self.head_waiter: asyncio.Future[Any] | None = None
        self.head: Any = None
        self.body: Any = None
        self.mode = h1.MODE_CHUNKED
        self.length = -1
        self.trailers: list[tuple[str, str]] | None = None
        self.got_bytes = False
        self.keep_alive = True
        self.tunnel = None
        self.closed = False
        self.request_method = "GET"
        self.released = False
        self.no_body = False
        self.requests = 1

    @property
    def peer_principal(self) -> str:
        return self.conn.peer_principal

    # -- request ---------------------------------------------------------------------------------
    def start_request(self, method: str, target: str, headers: list[tuple[str, str]],
                      connection_tokens: tuple[str, ...], extra: list[str],
                      drop: frozenset[str] | None = None) -> asyncio.Future[Any]:
        conn = self.conn
        fut: asyncio.Future[Any] = conn.loop.create_future()
        self.head_waiter = fut
        self.request_method = method
        if conn.closed or conn.going_away:
            self.head_waiter = None
            fut.set_exception(UpstreamReset("upstream connection closed before the request"))
            return fut
        authority = ""
        regular: list[tuple[bytes, bytes]] = []
        skip = frozenset(connection_tokens) if connection_tokens else None
        grpc_te = False
        for name, value in headers:
            if name == "host":
                if not authority:
                    authority = value
                continue
            if name == "te":
                grpc_te = grpc_te or value.strip().lower() == "trailers"
                continue
            if name in _DROP or (drop is not None and name in drop) or (skip and name in skip):
                continue
            if name == "content-type" and value.startswith("application/grpc"):
                grpc_te = True
            regular.append((name.encode("latin-1"), value.encode("latin-1")))
        has_body = False
        for line in extra:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            value = value.strip()
            if name == "transfer-encoding":
                has_body = True
                continue
            if name == "content-length":
                if value != "0":
                    has_body = True
                    regular.append((b"content-length", value.encode("latin-1")))
                continue
            if name in _DROP:
                continue
            regular.append((name.encode("latin-1"), value.encode("latin-1")))
        if grpc_te:
            regular.append((b"te", b"trailers"))
        out = [(b":method", method.encode("latin-1")), (b":scheme", conn.scheme),
               (b":authority", authority.encode("latin-1")), (b":path", target.encode("latin-1"))]
        out.extend(regular)
        h2 = conn.h2
        try:
            sid = h2.get_next_available_stream_id()
            h2.send_headers(sid, out, end_stream=not has_body)
        except LocalProtocolError as exc:
            self.head_waiter = None
            fut.set_exception(UpstreamReset(f"upstream stream refused: {exc}"))
            return fut
        st = StreamIO(conn, sid)
        st.open_body()
        self.body = st.body
        if not has_body:
            st.out_end = True
            st.ended_local = True
        self.st = st
        conn.streams[sid] = st
        conn.by_sid[sid] = self
        conn.started += 1
        conn.flush()
        return fut

    def send_body(self, data: bytes) -> None:
        if self.st is not None and data:
            self.conn.queue(self.st, data)

    def end_request(self, trailers: list[tuple[str, str]] | None) -> None:
        st = self.st
        if st is None or st.out_end:
            return
        t = None
        if trailers:
            t = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in trailers
                 if n not in _DROP and n[:1] != ":"]
        self.conn.queue(st, b"", True, t or None)

    # the pre-sink name and raw write, kept for older callers
    def write(self, data: bytes) -> None:
        self.send_body(data)

    @property
    def paused(self) -> bool:
        return self.st is not None and self.st.paused

    @property
    def _paused_writing(self) -> bool:
        return self.paused

    async def drain(self) -> None:
        if self.st is not None:
            await self.st.drain()

    def response_length(self) -> tuple[bool, int]:
        return self.no_body, self.length

    # -- response --------------------------------------------------------------------------------
    def on_response(self, raw: list[tuple[bytes, bytes]], ended: bool) -> None:
        self.got_bytes = True
        status = 0
        headers: list[tuple[str, str]] = []
        length = -1
        for n, v in raw:
            if n == b":status":
                status = int(v)
                continue
            if n[:1] == b":":
                continue
            name = n.decode("latin-1")
            value = v.decode("latin-1")
            if name == "content-length":
                length = int(value)
            headers.append((name, value))
        from proxy.server.local_reply import reason

        head = h1.ResponseHead(status=status, reason=reason(status), version=20, headers=headers,
                               content_length=length, chunked=False, keep_alive=True,
                               connection=())
        self.head = head
        if status in _NO_BODY_STATUS or self.request_method == "HEAD":
            self.no_body = True
            self.mode = h1.MODE_NONE
            self.length = length
        elif ended:
            self.mode = h1.MODE_LENGTH
            self.length = 0
            head.content_length = 0
        elif length >= 0:
            self.mode = h1.MODE_LENGTH
            self.length = length
        else:
            self.mode = h1.MODE_CHUNKED
        if ended and self.body is not None:
            self.body.feed_eof()
        w = self.head_waiter
        self.head_waiter = None
        if w is not None and not w.done():
            w.set_result(head)

    def on_end(self) -> None:
        st = self.st
        if st is not None:
            st.ended_remote = True
        if self.body is not None and not self.body._eof:
            self.body.feed_eof(self.trailers)
        self._maybe_forget()

    def on_reset(self, why: str, refused: bool) -> None:
        self.closed = True
        st = self.st
        if st is not None:
            st.closed = True
            st.wake_always()
        w = self.head_waiter
        self.head_waiter = None
        if w is not None and not w.done():
            if refused:
                self.got_bytes = False
            w.set_exception(UpstreamReset(why, False))
        elif self.body is not None and not self.body.at_eof:
            self.body.set_exception(ChannelClosed(why))
        self._forget()

    def _maybe_forget(self) -> None:
        st = self.st
        if st is not None and st.ended_remote and st.ended_local:
            self._forget()

    def _forget(self) -> None:
        st = self.st
        if st is not None:
            self.conn.streams.pop(st.sid, None)
            self.conn.by_sid.pop(st.sid, None)

    # -- teardown ----------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        st = self.st
        return st is not None and st.ended_local and st.ended_remote and not self.closed

    def abort(self) -> None:
        """Give up on this request (RST_STREAM CANCEL); the connection lives on."""
        st = self.st
        if st is not None and not st.closed and not (st.ended_local and st.ended_remote):
            self.conn.reset_stream(st, ErrorCodes.CANCEL)
            self.conn.flush()
        self.closed = True
        w = self.head_waiter
        self.head_waiter = None
        if w is not None and not w.done():
            w.cancel()
        self._forget()

    def close(self) -> None:
        self.abort()

    @property
    def reusable(self) -> bool:
        return False


def _release_on_done(pool: H2UpstreamPool, s: H2UpstreamStream, _task: Any) -> None:
    pool.release(s)


class H2UpstreamPool:
    """HTTP/2 connections to one endpoint (address:port, h2c or h2 over mTLS)."""

    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: Callable[[], ssl.SSLContext | None] | None = None,
        idle_timeout: float = 55.0,
        max_requests: int = 0,
        verify_peer: Callable[[Any], bool] | None = None,
        max_connections: int = 4,
        max_streams: int = 100,
    ) -> None:
        self.host = host
        self.port = port
        self.ssl = ssl_context
        self.server_hostname = "" if ssl_context is not None else None
        self.idle_timeout = idle_timeout
        self.max_requests = max_requests
        self.verify_peer = verify_peer
        self.max_connections = max_connections
        self._connections_cap = max_connections  # meshlet's own bound; maxConnections lowers it
        self.max_streams = max_streams
        self._streams_default = max_streams
        # DestinationRule connectionPool thresholds (see pool_limits.py): no limit by default
        self.max_pending = UNLIMITED
        self.max_active = UNLIMITED
        self.max_age = 0.0
        self.keepalive: tuple[int, ...] = ()
        self.acquiring = 0
        self.overflows = {"connections": 0, "pending": 0, "requests": 0}
        self.on_overflow: Callable[[str], None] | None = None
        self.conns: list[H2ClientConnection] = []
        self.connecting = 0
        self.active = 0
        self.loop = asyncio.get_event_loop()
        self._waiters: list[asyncio.Future[None]] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self.peer_principal = ""
        # TLS session resumption: the endpoint's last session, offered on new connections
        self.sessions: Any = None
        if ssl_context is not None:
            from proxy.server.tls_session import SessionCache

            self.sessions = SessionCache()

    def apply(self, settings: PoolSettings) -> None:
        """Take a cluster's ``pool_settings``: idleTimeout, maxRequestsPerConnection,
        maxConnections, http1MaxPendingRequests (streams waiting for a slot),
        http2MaxRequests (streams in flight), maxConcurrentStreams (per connection, under
        the peer's own SETTINGS limit; 0 keeps meshlet's default), maxConnectionDuration (an
        older connection takes no new stream and closes when its last one ends) and
        tcpKeepalive."""
        self.idle_timeout = settings.idle_timeout
        self.max_requests = settings.max_requests_per_connection
        self.max_connections = min(self._connections_cap, settings.max_connections)
        self.max_pending = settings.max_pending
        self.max_active = settings.max_requests
        self.max_streams = settings.max_concurrent_streams or self._streams_default
        self.max_age = settings.max_connection_duration
        self.keepalive = settings.keepalive
        self.wake()

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
            "max_concurrent_streams": self.max_streams,
            "connections": len(self.conns) + self.connecting,
            "pending_requests": len(self._waiters),
            "active_requests": self.active,
            "overflows": dict(self.overflows),
        }

    async def acquire(
        self, timeout: float, wait_timeout: float | None = None
    ) -> tuple[H2UpstreamStream, bool]:
        """A stream slot on a connection with room (opening one when needed) and whether the
        connection had carried streams before (a reused one may have just gone away)."""
        if self.active + self.acquiring >= self.max_active:
            raise self._overflow("requests")
        best = self._roomiest()
        if best is not None:  # the common case, without a timeout scope
            return self._reserve(best, best.started > 0)
        self.loop = asyncio.get_running_loop()
        self.acquiring += 1  # in flight for max_active while its connection opens
        try:
            return await self._acquire_slow(timeout)
        finally:
            self.acquiring -= 1

    async def _acquire_slow(self, timeout: float) -> tuple[H2UpstreamStream, bool]:
        async with asyncio.timeout(timeout):
            while True:
                best = self._roomiest()
                if best is not None:
                    return self._reserve(best, best.started > 0)
                if len(self.conns) + self.connecting < self.max_connections:
                    conn = await self._connect()
                    return self._reserve(conn, False)
                if len(self._waiters) >= self.max_pending:
                    raise self._overflow("pending")
                self.overflows["connections"] += 1
                fut = self.loop.create_future()
                self._waiters.append(fut)
                try:
                    await fut
                finally:
                    if fut in self._waiters:
                        self._waiters.remove(fut)

    def _roomiest(self) -> H2ClientConnection | None:
        """The connection with the most free stream slots (an unused one at once), or None."""
        if self.max_age:
            self._retire_old()
        best = None
        best_room = 0
        for c in self.conns:
            room = c.capacity()
            if room > best_room:
                best, best_room = c, room
                if c.reserved == 0:
                    break
        return best

    def _retire_old(self) -> None:
        """maxConnectionDuration: a connection past it takes no new stream (Envoy drains it)."""
        cutoff = time.monotonic() - self.max_age
        for c in list(self.conns):
            if c.created < cutoff and not c.going_away:
                c.going_away = True
                self.conns.remove(c)
                if not c.reserved:
                    c.close()

    def _reserve(self, conn: H2ClientConnection, reused: bool) -> tuple[H2UpstreamStream, bool]:
        conn.reserved += 1
        self.active += 1
        s = H2UpstreamStream(conn)
        task = asyncio.current_task()
        if task is not None:
            # a request task cancelled mid-response (its client went away) may never release
            # its stream: the slot comes back, and the stream is reset, when the task ends
            task.add_done_callback(partial(_release_on_done, self, s))
        return s, reused

    async def _connect(self) -> H2ClientConnection:
        self.connecting += 1  # until the connection is in ``conns`` (or failed)
        conn: H2ClientConnection | None = None
        try:
            ctx = self.ssl() if self.ssl is not None else None
            sslobj = None
            if ctx is None:
                _, conn = await self.loop.create_connection(
                    lambda: H2ClientConnection(self), self.host, self.port
                )
            else:
                from proxy.server.tls_session import open_connection

                # offers the endpoint's last TLS session (resumption), counts the handshake
                _, conn = await open_connection(
                    self.loop, lambda: H2ClientConnection(self), self.host, self.port, ctx,
                    self.sessions, server_hostname=self.server_hostname or "",
                )
                sslobj = conn.transport.get_extra_info("ssl_object")  # type: ignore[union-attr]
                if sslobj is None or sslobj.selected_alpn_protocol() != "h2":
                    raise ConnectionError("upstream did not negotiate h2 (ALPN)")
                # resumed or not: the session records the peer's certificate, checked here
                if self.verify_peer is not None and not self.verify_peer(sslobj):
                    self.sessions.forget()
                    raise ConnectionError("upstream presented an unexpected identity")
            # one round trip on a new connection: opening more streams than the peer allows
            # before its SETTINGS arrive would be refused (or end the connection)
            try:
                async with asyncio.timeout(SETTINGS_WAIT):
                    await asyncio.shield(conn.settings_seen)
            except TimeoutError:
                pass
            if conn.closed:
                raise ConnectionError("upstream closed the connection before its SETTINGS")
            if sslobj is not None:
                # a TLS 1.3 ticket arrives after the handshake, before the peer's SETTINGS
                self.sessions.remember(sslobj)
            self.conns.append(conn)
        except BaseException:
            if conn is not None and not conn.closed:
                conn.abort()
            raise
        finally:
            self.connecting -= 1
            self.wake()
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.idle_timeout, self._sweep)
        return conn

    def release(self, s: H2UpstreamStream) -> None:
        if s.released:
            return
        s.released = True
        self.active -= 1
        conn = s.conn
        conn.reserved -= 1
        if s.st is not None and not s.finished:
            s.abort()
        if not conn.reserved:
            conn.idle_since = time.monotonic()
            if conn.going_away and not conn.by_sid:
                conn.close()
        if self.max_requests and conn.started >= self.max_requests and not conn.going_away:
            conn.going_away = True  # no new streams; it closes when its last one is released
            self.discard(conn)
            if not conn.reserved:
                conn.close()
        self.wake()

    def wake(self) -> None:
        for w in self._waiters:
            if not w.done():
                w.set_result(None)
        self._waiters.clear()

    def discard(self, conn: H2ClientConnection) -> None:
        try:
            self.conns.remove(conn)
        except ValueError:
            pass
        self.wake()

    def _sweep(self) -> None:
        self._sweeper = None
        cutoff = time.monotonic() - self.idle_timeout
        for c in list(self.conns):
            if not c.reserved and c.idle_since < cutoff:
                self.conns.remove(c)
                c.close()
        if self.conns:
            self._sweeper = self.loop.call_later(self.idle_timeout, self._sweep)

    def close(self) -> None:
        for c in list(self.conns):
            c.close()
        self.conns.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self.wake()
