"""HTTP/2 from clients: h2c with prior knowledge and h2 over TLS (ALPN), one protocol object
per connection, each stream driven through the listener's handler like an HTTP/1.1 request.

Each stream becomes a sink (:class:`H2Stream`, the surface ``proxy.server.forward`` talks to)
and a request head shaped like the HTTP/1.1 parser's, and runs ``listener.handler(sink, head)``
as its own task. The request is validated with the fast-path validator first: a malformed
request is a stream error (RST_STREAM PROTOCOL_ERROR) and is never forwarded.

Protections (research/security-ops.md 6.4-6.6), all per connection:
Rapid Reset / MadeYouReset (premature resets of recent streams), CONTINUATION flood (h2 caps a
header block at 64 frames), HPACK bomb (the decoded header list is capped while decoding:
SETTINGS_MAX_HEADER_LIST_SIZE), header count, SETTINGS / PING floods (token buckets), empty
DATA frames, PRIORITY churn, control frames queued for a peer that does not read, and idle /
header timeouts through the listener's sweep. Each ends in GOAWAY (ENHANCE_YOUR_CALM for floods).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from proxy.http1 import parser as h1
from proxy.http2 import connection as ev
from proxy.http2 import frames as fr
from proxy.http2.errors import ErrorCode as ErrorCodes
from proxy.http2.errors import LocalProtocolError
from proxy.server import local_reply
from proxy.server.channel import ChannelClosed
from proxy.server.h2 import grpc
from proxy.server.h2._conn import CONN_WINDOW, STREAM_WINDOW, H2Base, StreamIO

log = logging.getLogger("meshlet.proxy.h2")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# connection-specific fields never sent in HTTP/2 (RFC 9113 8.2.2), plus framing we redo
_DROP_OUT = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding",
                       "upgrade", "te", "trailer", "content-length", "http2-settings"})


_PROVOKED = frozenset({ErrorCodes.PROTOCOL_ERROR, ErrorCodes.FLOW_CONTROL_ERROR,
                       ErrorCodes.STREAM_CLOSED, ErrorCodes.FRAME_SIZE_ERROR})


class Limits:
    """Per-connection budgets (research 6.6 "meshlet default limits")."""

    max_concurrent_streams = 100
    max_header_list_size = 65536
    max_headers = 100
    reset_window = 500  # the last N closed streams ...
    reset_budget = 250  # ... of which more than this many reset early -> GOAWAY
    premature = 1.0  # a reset within this many seconds of the stream's start is "early"
    ping_rate, ping_burst = 10.0, 50.0
    settings_rate, settings_burst = 10.0, 20.0
    max_empty_frames = 1  # consecutive empty DATA frames without END_STREAM
    priority_per_stream = 100
    max_queued_control = 1000  # control-frame answers queued while the peer is not reading
    stream_idle_timeout = 300.0  # seconds without DATA either way on a stream


class _Bucket:
    __slots__ = ("rate", "burst", "tokens", "at")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


def _engine_limits(lim: Limits) -> ev.Limits:
    """The connection's own budgets. Resets (Rapid Reset / MadeYouReset), PING and SETTINGS
    rates and the header count stay with this protocol, which counts them for the listener's
    metrics and answers 431; the connection enforces what only it sees (CONTINUATION floods,
    empty DATA, PRIORITY churn, queued control frames), with rate limits above the buckets'
    bursts as a backstop."""
    return ev.Limits(
        max_concurrent_streams=lim.max_concurrent_streams,
        stream_window=STREAM_WINDOW,
        connection_window=CONN_WINDOW,
        max_header_list_size=lim.max_header_list_size,
        max_header_count=0,
        pings_per_second=int(lim.ping_burst) * 4,
        settings_per_second=int(lim.settings_burst) * 4,
        max_outbound_control_frames=lim.max_queued_control,
        max_consecutive_empty_frames=lim.max_empty_frames,
        priority_frames_per_stream=lim.priority_per_stream,
        max_premature_resets=1 << 30,
    )


_WHY = (("continuation", "continuation flood"), ("empty data", "empty frames"),
        ("priority", "priority churn"), ("ping", "ping flood"),
        ("settings flood", "settings flood"), ("control frames", "control frames queued"))


def _why(code: int, debug: str) -> str:
    """The protection-metric label for a connection error the engine detected."""
    d = debug.lower()
    for key, label in _WHY:
        if key in d:
            return label
    return "protocol error"


class H2ServerProtocol(H2Base):
    """One client connection speaking HTTP/2."""

    def __init__(self, listener: Any, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        super().__init__(listener.loop, False, _engine_limits(self.limits))
        self.listener = listener
        self.handler = listener.handler
        self.sinks: dict[int, H2Stream] = {}
        self.peer = ("", 0)
        self.peer_principal = ""
        self.tls = False
        self.alpn = ""
        self.original_dst: tuple[str, int] | None = None  # transparent capture: the app's target
        self.started = self.loop.time()
        self.idle_since = self.started
        self.requests = 0
        self.recent: deque[int] = deque()
        self.recent_resets = 0
        self.queued_control = 0
        now = self.loop.time()
        lim = self.limits
        self.pings = _Bucket(lim.ping_rate, lim.ping_burst, now)
        self.settings = _Bucket(lim.settings_rate, lim.settings_burst, now)
        self._goaway_sent = False
        self._goaway_last = 0

    # -- lifecycle -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = (peer[0], peer[1])
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None:
            self.tls = True
            self.alpn = sslobj.selected_alpn_protocol() or ""
            ident = getattr(self.listener, "peer_identity", None)
            if ident is not None:
                self.peer_principal = ident(sslobj) or ""
        conns = getattr(self.listener, "connections", None)
        if conns is not None:
            conns.add(self)
        if getattr(self.listener, "transparent", False) and self.original_dst is None:
            from proxy.capture.original_dst import original_dst

            sock = transport.get_extra_info("socket")
            self.original_dst = original_dst(sock) if sock is not None else None
        # our SETTINGS and the connection window; the HPACK bomb guard applies from the first
        # header block, not from the peer's ACK of our SETTINGS
        self.h2.initiate_connection()
        self.flush()

    def adopt(self, transport: asyncio.BaseTransport, initial: bytes) -> None:
        """Take over a transport another protocol read ``initial`` bytes from."""
        transport.set_protocol(self)
        self.connection_made(transport)
        if initial:
            self.data_received(initial)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        conns = getattr(self.listener, "connections", None)
        if conns is not None:
            conns.discard(self)
        for sink in list(self.sinks.values()):
            sink.lost()
        self.sinks.clear()
        self.streams.clear()

    # the listener's sweep / drain surface (shared with the HTTP/1.1 Downstream)
    @property
    def task(self) -> Any:
        """Non-None while streams are in flight (the listener counts busy connections so)."""
        return self.sinks or None

    def sweep(self, now: float) -> None:
        lst = self.listener
        if self.closed:
            return
        self.now = now
        if getattr(lst, "draining", False) and not self._goaway_sent:
            self.shutdown()
            return
        if self.sinks:
            limit = getattr(lst, "stream_idle_timeout", self.limits.stream_idle_timeout)
            for sink in list(self.sinks.values()):
                if limit and now - sink.st.last > limit:
                    # no DATA either way for that long (Envoy stream_idle_timeout): 408 if no
                    # response has started (then RST_STREAM NO_ERROR ends the request side,
                    # RFC 9113 8.1), else a reset
                    sink.lost_reason = (408, "SI")
                    if not sink.headers_sent and not sink.st.closed:
                        sink.send_local(408, "SI", "stream timeout", ())
                        hook = getattr(lst, "on_local_reply", None)
                        if hook is not None:
                            hook(sink, 408, "SI")
                        code = ErrorCodes.NO_ERROR
                    else:
                        code = ErrorCodes.CANCEL
                    self._close_stream(sink.st, reset=True, code=code)
                    sink.lost()
            return
        if self._goaway_sent:
            self.close()
            return
        idle = getattr(lst, "idle_timeout", 0)
        hdr = getattr(lst, "header_timeout", 0)
        if not self.requests and hdr and now - self.started > hdr:
            self.goaway(ErrorCodes.NO_ERROR, b"no request")
        elif idle and now - self.idle_since > idle:
            self.goaway(ErrorCodes.NO_ERROR, b"idle")

    def shutdown(self) -> None:
        """Graceful: GOAWAY(NO_ERROR, last stream), finish in-flight streams, then close."""
        if self.closed or self._goaway_sent:
            return
        self._goaway_sent = True
        self.going_away = True
        # built by hand: h2's close_connection would refuse to send anything more on the
        # streams that are still finishing
        self._goaway_last = self.h2.highest_inbound_stream_id
        self.flush_now()
        if self.transport is not None:
            self.transport.write(fr.goaway(self._goaway_last, ErrorCodes.NO_ERROR, b""))
        if not self.sinks:
            self.close()

    def close(self) -> None:
        if not self.sinks and not self.closed:
            if not self._goaway_sent:
                self.shutdown()
                return
            self.flush_now()
            self.closed = True
            if self.transport is not None:
                self.transport.close()
        elif not self.closed:
            self.shutdown()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.closed = True

    def _calm(self, why: str) -> None:
        log.debug("h2 %s: %s; GOAWAY ENHANCE_YOUR_CALM", self.peer, why)
        self.listener_count(why)
        self.goaway(ErrorCodes.ENHANCE_YOUR_CALM, why.encode())

    def listener_count(self, why: str) -> None:
        hook = getattr(self.listener, "h2_protection_hook", None)
        if hook is not None:
            hook(why)

    # -- input -----------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        events = self.h2.receive_data(data)
        started: list[H2Stream] = []
        now = self.now = self.loop.time()
        for e in events:
            if self.closed:
                return
            t = type(e)
            if t is ev.DataReceived:
                self.on_data(self.streams.get(e.stream_id), e.stream_id, e.data,
                             e.flow_controlled_length)
                sink = self.sinks.get(e.stream_id)
                if sink is not None:
                    sink.received += len(e.data)
            elif t is ev.RequestReceived:
                sink = self._request(e)
                if sink is not None:
                    started.append(sink)
            elif t is ev.StreamEnded:
                self._remote_end(e.stream_id, None)
            elif t is ev.TrailersReceived:
                sink = self.sinks.get(e.stream_id)
                if sink is not None:
                    sink.trailers = [(n.decode("latin-1"), v.decode("latin-1"))
                                     for n, v in e.headers]
            elif t is ev.WindowUpdated:
                if e.stream_id:
                    st = self.streams.get(e.stream_id)
                    if st is not None:
                        self.push(st)
                else:
                    self.push_all()
            elif t is ev.StreamReset:
                if e.remote:
                    self._peer_reset(e, now)
                else:
                    self._stream_error(e)
            elif t is ev.PingReceived:
                if not self.pings.take(now):
                    return self._calm("ping flood")
                self._control_queued()
            elif t is ev.RemoteSettingsChanged:
                if not self.settings.take(now):
                    return self._calm("settings flood")
                self._control_queued()
                if fr.SETTINGS_INITIAL_WINDOW_SIZE in e.changes:
                    self.push_all()
            elif t is ev.ConnectionTerminated:
                if not e.remote:
                    # the peer broke the protocol: GOAWAY is queued; send it and close
                    why = e.debug.decode("latin-1", "replace")
                    log.debug("h2 %s: connection error %s", self.peer, why)
                    self.listener_count(_why(e.error_code, why))
                    self.flush_now()
                    self.abort_streams()
                    return
                self.going_away = True
                if not self.sinks:
                    self.close()
            if self.closed:
                return
        self.flush()
        # start handlers only after the whole read: a stream reset in the same read (Rapid
        # Reset) never costs a task
        for sink in started:
            if not sink.st.closed and not self.closed:
                sink.task = self.loop.create_task(self._run(sink))

    def abort_streams(self) -> None:
        """After a connection error: close the transport once GOAWAY is written."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        for sink in list(self.sinks.values()):
            sink.lost()

    def _stream_error(self, e: Any) -> None:
        """The connection reset a stream the client got wrong (malformed, flow control...)."""
        sid = e.stream_id
        refused = e.error_code == ErrorCodes.REFUSED_STREAM
        self.listener_count("refused stream" if refused else "malformed")
        log.debug("h2 stream %d reset: %s", sid, e.reason)
        if e.reason.startswith("header list too large"):
            # an HPACK bomb: the block decoded past SETTINGS_MAX_HEADER_LIST_SIZE
            self._calm("header list too large")
            return
        st = self.streams.pop(sid, None)
        sink = self.sinks.pop(sid, None)
        if st is not None:
            st.closed = True
            st.wake_always()
        if sink is not None:
            sink.lost()
        self._note_closed(e.error_code in _PROVOKED)
        if not self.sinks:
            self.idle_since = self.loop.time()
        if not self.closed and self.recent_resets > self.limits.reset_budget:
            self._calm("rapid reset")

    def _control_queued(self) -> None:
        if self.write_paused:
            self.queued_control += 1
            if self.queued_control > self.limits.max_queued_control:
                self.listener_count("control frames queued")
                self.abort()
        else:
            self.queued_control = 0

    def resume_writing(self) -> None:
        self.queued_control = 0
        super().resume_writing()

    def _request(self, e: Any) -> H2Stream | None:
        sid = e.stream_id
        st = StreamIO(self, sid)
        self.streams[sid] = st
        self.requests += 1
        if self._goaway_sent and sid > self._goaway_last:
            # opened after our GOAWAY: never processed, safe for the client to retry elsewhere
            self.reset_stream(st, ErrorCodes.REFUSED_STREAM)
            self.streams.pop(sid, None)
            return None
        ended = e.end_stream
        fields = e.fields  # validated by the connection (a malformed request never gets here)
        if len(fields.headers) > self.limits.max_headers:
            sink = H2Stream(self, st, None, False)
            self.sinks[sid] = sink
            sink.send_local(431, "DPE", "Request Header Fields Too Large", (), False)
            self._finished(sink)
            return None
        head = _head(fields, ended)
        if head is None:  # CONNECT (plain or extended): not proxied over HTTP/2
            sink = H2Stream(self, st, None, False)
            self.sinks[sid] = sink
            sink.send_local(501, "DPE", "CONNECT is not supported", (), False)
            self._finished(sink)
            return None
        sink = H2Stream(self, st, head, grpc.is_grpc(head.get("content-type")))
        if not ended:
            sink.body = st.open_body()
        else:
            st.ended_remote = True
        sink.expected = fields.content_length
        self.sinks[sid] = sink
        return sink

    def _remote_end(self, sid: int, _: Any) -> None:
        sink = self.sinks.get(sid)
        if sink is None:
            st = self.streams.get(sid)
            if st is not None:
                st.ended_remote = True
            return
        st = sink.st
        st.ended_remote = True
        if sink.body is not None and not sink.body.at_eof:
            sink.body.feed_eof(sink.trailers)
        self._maybe_done(sink)

    def _peer_reset(self, e: Any, now: float) -> None:
        sid = e.stream_id
        sink = self.sinks.get(sid)
        st = self.streams.get(sid)
        if st is not None:
            st.closed = True
            st.wake_always()
        early = st is not None and not st.ended_local and now - st.opened < self.limits.premature
        self._note_closed(early)
        if sink is not None:
            sink.lost()
            self.sinks.pop(sid, None)
        self.streams.pop(sid, None)
        if not self.closed and self.recent_resets > self.limits.reset_budget:
            self._calm("rapid reset")

    def _note_closed(self, reset: bool) -> None:
        r = self.recent
        r.append(1 if reset else 0)
        self.recent_resets += 1 if reset else 0
        if len(r) > self.limits.reset_window:
            self.recent_resets -= r.popleft()

    def _close_stream(self, st: StreamIO, reset: bool = False,
                      code: int = ErrorCodes.CANCEL) -> None:
        """Forget a stream; ``reset`` sends RST_STREAM (counted like a peer's early reset:
        resets the server is made to send are MadeYouReset)."""
        if reset:
            self.reset_stream(st, code)
            # only resets the client provoked count (MadeYouReset); an upstream failing
            # mid-response or an idle stream is not the client's doing
            self._note_closed(code in _PROVOKED)
            self.flush()
        else:
            self._note_closed(False)
        st.closed = True
        self.streams.pop(st.sid, None)
        self.sinks.pop(st.sid, None)
        if not self.sinks:
            self.idle_since = self.loop.time()
            if self.going_away and not self.closed:
                self.close()
        if not self.closed and self.recent_resets > self.limits.reset_budget:
            self._calm("rapid reset")

    def local_ended(self, st: StreamIO) -> None:
        sink = self.sinks.get(st.sid)
        if sink is not None:
            self._maybe_done(sink)

    def _maybe_done(self, sink: H2Stream) -> None:
        st = sink.st
        if st.ended_local and st.ended_remote and (sink.task is None or sink.task.done()):
            self._close_stream(st)

    async def _run(self, sink: H2Stream) -> None:
        try:
            await self.handler(sink, sink.head)
        except asyncio.CancelledError:
            if not sink.gone:
                raise
        except Exception:  # the handler answers every error itself; this is a last resort
            log.exception("h2 request handler failed")
            if not sink.st.closed and not sink.headers_sent:
                sink.send_local(500, "-", "internal error", (), False)
        finally:
            sink.task = None
        self._finished(sink)

    def _finished(self, sink: H2Stream) -> None:
        st = sink.st
        if self.closed or st.closed:
            self.sinks.pop(st.sid, None)
            self.streams.pop(st.sid, None)
            return
        if not st.out_end:
            # the handler returned without completing the response: abort the stream
            self._close_stream(st, reset=True, code=ErrorCodes.INTERNAL_ERROR)
            return
        if st.ended_local and not st.ended_remote:
            # answered before the request body ended: stop the client sending (RFC 9113 8.1)
            if sink.body is not None:
                sink.body.set_exception(ChannelClosed("response complete"))
            self.reset_stream(st, ErrorCodes.NO_ERROR)
            self.flush()
            self._close_stream(st)
            return
        if st.ended_local:
            self._close_stream(st)
        # else: the tail of the response waits for the peer's window; push() ends it, and the
        # stream is forgotten when StreamEnded/close happens


def _head(fields: Any, ended: bool) -> Any:
    """An HTTP/1.1-parser-shaped request head from validated HTTP/2 fields (``:authority`` is
    the host; cookie crumbs joined back; no framing fields: the stream carries them)."""
    if fields.path is None:
        return None
    method = fields.method.decode("ascii")
    target = fields.path.decode("latin-1")
    authority = fields.authority.decode("latin-1") if fields.authority else ""
    headers: list[tuple[str, str]] = [("host", authority)] if authority else []
    cookies: list[str] = []
    for n, v in fields.headers:
        name = n.decode("latin-1")
        if name == "host":
            continue
        if name == "cookie":
            cookies.append(v.decode("latin-1"))
            continue
        headers.append((name, v.decode("latin-1")))
    if cookies:
        headers.append(("cookie", "; ".join(cookies)))
    q = target.find("?")
    path, query = (target, "") if q < 0 else (target[:q], target[q + 1:])
    cl = fields.content_length
    if cl is None:
        cl = 0 if ended else -1
    # a body of unknown length is "chunked" to the forwarder: it must be framed as such on an
    # HTTP/1.1 upstream (never a client content-length copied unchecked: research 6.5)
    chunked = cl < 0
    return h1.RequestHead(method=method, target=target, path=path, query=query, version=20,
                          headers=headers, host=authority, content_length=cl, chunked=chunked,
                          keep_alive=True, upgrade="", expect_continue=False, connection=())


def _out_headers(headers: list[tuple[str, str]], connection_tokens: tuple[str, ...], extra: Any,
                 into: list[tuple[bytes, bytes]]) -> None:
    skip = frozenset(connection_tokens) if connection_tokens else None
    for name, value in headers:
        if name in _DROP_OUT or name[:1] == ":" or (skip is not None and name in skip):
            continue
        into.append((name.encode("latin-1"), value.encode("latin-1")))
    for line in extra:
        if isinstance(line, tuple):
            name, value = line
        else:
            name, _, value = line.partition(":")
            value = value.strip()
        name = name.strip().lower()
        if name in _DROP_OUT:
            continue
        into.append((name.encode("latin-1"), value.encode("latin-1")))


class H2Stream:
    """The sink of one HTTP/2 stream: what the forwarder writes the response to."""

    version = 20

    __slots__ = ("proto", "st", "head", "grpc", "body", "task", "headers_sent", "trailers",
                 "received", "expected", "gone", "method", "lost_reason")

    def __init__(self, proto: H2ServerProtocol, st: StreamIO, head: Any, is_grpc: bool) -> None:
        self.proto = proto
        self.st = st
        self.head = head
        self.grpc = is_grpc
        self.body: Any = None
        self.task: asyncio.Task[Any] | None = None
        self.headers_sent = False
        self.trailers: list[tuple[str, str]] | None = None
        self.received = 0
        self.expected: int | None = None
        self.gone = False
        self.method = head.method if head is not None else "GET"
        # why the sidecar ended the request itself (stream idle: (408, "SI")); None: the client
        self.lost_reason: tuple[int, str] | None = None

    # connection facts the forwarder and authorization read
    @property
    def peer(self) -> tuple[str, int]:
        return self.proto.peer

    @property
    def peer_principal(self) -> str:
        return self.proto.peer_principal

    @property
    def tls(self) -> bool:
        return self.proto.tls

    @property
    def original_dst(self) -> tuple[str, int] | None:
        return self.proto.original_dst

    @property
    def keep_alive(self) -> bool:
        return not self.proto.going_away

    @keep_alive.setter
    def keep_alive(self, value: bool) -> None:
        pass  # one stream cannot close the connection; the stream ends on its own

    @property
    def paused(self) -> bool:
        return self.st.paused

    @property
    def _paused_writing(self) -> bool:  # the pre-sink name, for older callers
        return self.st.paused

    async def drain(self) -> None:
        await self.st.drain()

    # -- the response ------------------------------------------------------------------------------
    def send_continue(self) -> None:
        pass  # HTTP/2 clients send the body without waiting for 100

    def send_response(self, status: int, reason: str, headers: list[tuple[str, str]],
                      connection_tokens: tuple[str, ...], extra: list[str], length: int, end: bool,
                      data: bytes = b"", no_body: bool = False) -> None:
        if self.st.closed or self.headers_sent:
            return
        out: list[tuple[bytes, bytes]] = [(b":status", b"%d" % status)]
        _out_headers(headers, connection_tokens, extra, out)
        if no_body:
            if length >= 0 and self.method == "HEAD":
                out.append((b"content-length", b"%d" % length))
            end, data = True, b""
        elif end:
            if data or status not in (204, 304):
                if not self.grpc:
                    out.append((b"content-length", b"%d" % len(data)))
        elif length >= 0:
            out.append((b"content-length", b"%d" % length))
        self._headers(out, end and not data)
        if data or (end and not self.st.ended_local and not self.st.out_end):
            self.proto.queue(self.st, data, end)
        self._after_send()

    def _headers(self, out: list[tuple[bytes, bytes]], end: bool) -> None:
        proto = self.proto
        self.headers_sent = True
        try:
            proto.h2.send_headers(self.st.sid, out, end_stream=end)
        except LocalProtocolError:
            self.st.closed = True
            return
        if end:
            self.st.out_end = True
            self.st.ended_local = True
        proto.flush()

    def send_data(self, data: bytes) -> None:
        if data:
            self.proto.queue(self.st, data)

    def send_end(self, trailers: list[tuple[str, str]] | None) -> None:
        t: list[tuple[bytes, bytes]] | None = None
        if trailers:
            t = []
            _out_headers(trailers, (), (), t)
        self.proto.queue(self.st, b"", True, t or None)
        self._after_send()

    def send_upgrade(self, resp: Any, headers: list[tuple[str, str]], extra: list[str]) -> None:
        self.reset()  # no 101 in HTTP/2 (RFC 9113 8.6)

    def send_local(self, status: int, flag: str, body: str | None, extra: Any,
                   draining: bool = False) -> None:
        """A local reply: a trailers-only gRPC error for a gRPC caller, else plain text."""
        if self.st.closed:
            return
        if self.headers_sent:
            self.reset()
            return
        text = local_reply.BODIES.get(flag, local_reply.reason(status)) if body is None else body
        if self.grpc:
            hdrs = grpc.local_reply_headers(status, flag, text or local_reply.reason(status),
                                            list(extra))
            self._headers([(n.encode("latin-1"), v.encode("latin-1")) for n, v in hdrs], True)
        else:
            data = text.encode()
            out = [(b":status", b"%d" % status), (b"content-type", b"text/plain"),
                   (b"content-length", b"%d" % len(data)),
                   (b"x-meshlet-response-flags", flag.encode("latin-1"))]
            if flag == "UO":
                out.append((b"x-envoy-overloaded", b"true"))
            elif flag == "RL":
                out.append((b"x-envoy-ratelimited", b"true"))
            for k, v in extra:
                out.append((k.lower().encode("latin-1"), str(v).encode("latin-1")))
            head_only = self.method == "HEAD" or not data
            self._headers(out, head_only)
            if not head_only:
                self.proto.queue(self.st, data, True)
        self._after_send()

    def reset(self) -> None:
        if not self.st.closed:
            self.proto._close_stream(self.st, reset=True, code=ErrorCodes.INTERNAL_ERROR)

    # the HTTP/1.1-only surface, for callers that have not switched to the sink methods
    def write(self, data: bytes) -> None:
        raise RuntimeError("raw HTTP/1.1 bytes written to an HTTP/2 stream")

    def close(self) -> None:
        self.reset()

    def start_tunnel(self, peer: Any) -> None:
        """No HTTP/1.1 upgrade over HTTP/2: the upstream side is dropped, the stream reset."""
        close = getattr(peer, "close", None)
        if close is not None:
            close()
        self.reset()

    def _after_send(self) -> None:
        if self.task is None and self.st.ended_local:
            self.proto._maybe_done(self)

    def lost(self) -> None:
        """The peer reset the stream or the connection went away: stop the request."""
        self.gone = True
        self.st.closed = True
        self.st.wake_always()
        if self.body is not None and not self.body.at_eof:
            self.body.set_exception(ChannelClosed("stream reset by the client"))
        t = self.task
        if t is not None and not t.done():
            t.cancel()


def h2_factory(listener: Any, transport: asyncio.BaseTransport, initial_bytes: bytes = b"",
               downstream: Any = None) -> H2ServerProtocol:
    """The hook the HTTP/1.1 downstream calls when it sees the HTTP/2 preface or ALPN "h2":
    build the HTTP/2 protocol, hand it the transport (``set_protocol``; the caller may call it
    again, harmlessly) and the bytes already read. ``downstream`` (the HTTP/1.1 protocol that
    gives the connection up) lends its peer facts, already read from the TLS handshake."""
    proto = H2ServerProtocol(listener)
    if downstream is not None:
        proto.original_dst = getattr(downstream, "original_dst", None)
    proto.adopt(transport, initial_bytes)
    return proto
