# cython: annotation_typing=False
"""The downstream side of a listener: one protocol object per client connection.

It parses request heads with the strict parser and runs one request task at a time; pipelined
requests wait in the buffer and are parsed only after the previous response is complete, so
responses go out in order. A malformed head is answered with 400/431/501 and the connection is
closed: nothing half-parsed reaches the app. The header-read timeout (slowloris) and the idle
timeout arm no timer per request: the connection stamps when it became idle or started a head,
and the listener's once-a-second sweep closes the ones past their limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from proxy.http1 import parser as h1
from proxy.http1.errors import ProtocolError
from proxy.server import local_reply
from proxy.server.channel import BodyChannel, ChannelClosed, MalformedBody
from proxy.server.headers import response_head

encode_chunk = h1.encode_chunk
encode_last_chunk = h1.encode_last_chunk
parse_request_head = h1.parse_request_head
ChunkedDecoder = h1.ChunkedDecoder
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# states
HEAD, BODY, WAIT, TUNNEL, CLOSED = range(5)


class Downstream:
    """Drives HTTP/1.1 requests from one client through ``handler(conn, head)``."""

    def __init__(self, listener: Any) -> None:
        self.listener = listener
        self.handler: Callable[[Downstream, Any], Any] = listener.handler
        self.loop = listener.loop
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.state = HEAD
        self.body: BodyChannel | None = None
        self.remaining = 0
        self.chunked: Any = None
        self.task: asyncio.Task[Any] | None = None
        self.peer = ("", 0)
        self.peer_principal = ""
        self.tls = False
        self.alpn = ""
        self.keep_alive = True
        self.idle_since = self.loop.time()
        self.head_since = 0.0
        self._paused_writing = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self.tunnel_peer: Any = None
        self.requests = 0
        self.read_paused = False
        self.method = "GET"
        self.version = 11
        self.original_dst: tuple[str, int] | None = None
        self._chunk_out = False
        # stream idle timeout: ``io`` counts reads and writes; the sweep notes when it last
        # moved, so the hot path pays one increment, no clock read and no timer
        self.io = 0
        self._io_seen = -1
        self._io_since = 0.0
        self.responded = False
        # why the request's task was cancelled, when not because the client left
        self.lost_reason: tuple[int, str] | None = None

    # -- connection lifecycle ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = (peer[0], peer[1])
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None:
            self.tls = True
            self.alpn = sslobj.selected_alpn_protocol() or ""
            ident = self.listener.peer_identity
            if ident is not None:
                self.peer_principal = ident(sslobj) or ""
        self.listener.connections.add(self)
        if self.listener.transparent:
            # iptables capture: where the app meant to go (one getsockopt per connection)
            from proxy.capture.original_dst import original_dst

            sock = transport.get_extra_info("socket")
            self.original_dst = original_dst(sock) if sock is not None else None
        if self.alpn == "h2":
            self._hand_over_to_h2(b"")

    def _hand_over_to_h2(self, initial: bytes) -> None:
        """HTTP/2 (ALPN h2, or the h2c prior-knowledge preface): the connection moves to the
        HTTP/2 protocol; this object is done with it."""
        factory = self.listener.h2_factory
        if factory is None:
            self.close()
            return
        self.state = CLOSED
        self.listener.connections.discard(self)
        proto = factory(self.listener, self.transport, initial, self)
        self.transport.set_protocol(proto)  # type: ignore[union-attr]

    def sweep(self, now: float) -> None:
        """Called by the listener about once a second: enforce header, idle and stream idle
        timeouts."""
        if self.task is not None:
            if self.state != TUNNEL and self.state != CLOSED:
                self._sweep_stream(now)
            return
        if self.state != HEAD:
            return
        lst = self.listener
        if self.buf:
            if now - self.head_since > lst.header_timeout:
                # slowloris: a head that never completes
                self._reply_and_close(408, "DPE", "request header timeout")
        elif lst.idle_timeout and now - self.idle_since > lst.idle_timeout:
            self.close()

    def _sweep_stream(self, now: float) -> None:
        limit = self.listener.stream_idle_timeout
        if not limit:
            return
        if self.io != self._io_seen:
            self._io_seen = self.io
            self._io_since = now
        elif now - self._io_since > limit:
            self._stream_idle()

    def _stream_idle(self) -> None:
        """No byte either way for the stream idle timeout (Envoy's ``stream_idle_timeout``): a
        stuck upstream or a client that stopped reading must not hold the connection, its
        buffers and its task forever. 408 ``stream timeout`` (flag SI) when no response has
        started, as Envoy answers; otherwise the connection closes mid-response (a reset).
        The request is cancelled either way, which resets the upstream connection."""
        self.lost_reason = (408, "SI")
        self.keep_alive = False
        if self.responded:
            self.close()
        else:
            self._reply_and_close(408, "SI", "stream timeout")
        task = self.task
        if task is not None and not task.done():
            task.cancel()

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        self.listener.connections.discard(self)
        if self.body is not None and not self.body.at_eof:
            self.body.set_exception(ChannelClosed("downstream disconnected"))
        if self.tunnel_peer is not None:
            self.tunnel_peer.close()
        w = self._drain_waiter
        if w is not None and not w.done():
            w.set_result(None)
        if self.task is not None and not self.task.done():
            self.listener.on_downstream_lost(self)

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
        if self._paused_writing and self.state != CLOSED:
            self._drain_waiter = self.loop.create_future()
            await self._drain_waiter

    # -- input ---------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self.io += 1
        state = self.state
        if state == TUNNEL:
            if self.tunnel_peer is None:
                self.buf += data  # the passthrough connection is still opening
            else:
                self.tunnel_peer.write(data)
            return
        if state == BODY:
            self._feed_body(data)
            return
        if state == CLOSED:
            return
        self.buf += data if self.buf else data
        if state == HEAD and self.task is None:
            self._next_request()
        elif len(self.buf) > self.listener.max_head and not self.read_paused:
            # pipelined bytes beyond one head's worth wait until the current response is out
            self.read_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        if self.state == BODY and self.body is not None and self.remaining < 0:
            self.body.feed_eof()
        return False

    def _next_request(self) -> None:
        if not self.buf:
            return
        lst = self.listener
        if self.requests == 0 and self.original_dst is not None and not 65 <= self.buf[0] <= 90:
            # a captured connection that does not start like HTTP (a method is uppercase
            # letters): TLS to an external :443, a database protocol... passed through unchanged
            self._passthrough_tcp()
            return
        if self.requests == 0 and self.buf[:1] == b"P" and H2_PREFACE.startswith(self.buf[:24]):
            if len(self.buf) < 24:
                return  # wait for the whole preface
            buf, self.buf = self.buf, b""
            self._hand_over_to_h2(buf)
            return
        try:
            res = parse_request_head(self.buf, lst.max_head, lst.max_headers, lst.max_uri)
        except ProtocolError as exc:
            self._reply_and_close(exc.status, "DPE", exc.reason)
            return
        if res is None:
            if not self.head_since:
                self.head_since = self.loop.time()
            return
        head, n = res
        self.method = head.method
        self.version = head.version
        rest = self.buf[n:]
        self.buf = b""
        self.requests += 1
        self.responded = False
        self.keep_alive = head.keep_alive and not lst.draining
        self.head_since = 0.0
        if head.chunked:
            self.body = BodyChannel(self._pause_reading, self._resume_reading)
            self.chunked = ChunkedDecoder()
            self.state = BODY
        elif head.content_length > 0:
            self.body = BodyChannel(self._pause_reading, self._resume_reading)
            self.remaining = head.content_length
            self.chunked = None
            self.state = BODY
        else:
            self.body = None
            self.state = WAIT
        self.task = self.loop.create_task(self._run(head))
        if rest:
            if self.state == BODY:
                self._feed_body(rest)
            else:
                self.buf = rest

    def _feed_body(self, data: bytes) -> None:
        body = self.body
        assert body is not None
        if self.chunked is None:
            if len(data) >= self.remaining:
                rest = data[self.remaining :]
                body.feed(data[: self.remaining])
                self.remaining = 0
                body.feed_eof()
                self.state = WAIT
                if rest:
                    self.buf += rest
            else:
                self.remaining -= len(data)
                body.feed(data)
            return
        dec = self.chunked
        try:
            for piece in dec.feed(data):
                body.feed(piece)
        except ProtocolError as exc:
            body.set_exception(MalformedBody(f"malformed chunked body: {exc.reason}"))
            self.keep_alive = False
            self.state = WAIT
            return
        if dec.done:
            body.feed_eof(dec.trailers or None)
            self.state = WAIT
            if dec.unused:
                self.buf += dec.unused

    def _pause_reading(self) -> None:
        if self.transport is not None and self.state != CLOSED:
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.transport is not None and self.state != CLOSED:
            self.transport.resume_reading()

    async def _run(self, head: Any) -> None:
        try:
            await self.handler(self, head)
        except Exception:  # the handler answers every error itself; this is a last resort
            self.listener.log.exception("request handler failed")
            self.keep_alive = False
            if self.state != CLOSED:
                self.close()
        finally:
            self.task = None
        self._request_done()

    def _request_done(self) -> None:
        if self.state == CLOSED or self.state == TUNNEL:
            return
        if not self.keep_alive or self.listener.draining:
            self.close()
            return
        if self.body is not None and not self.body.at_eof:
            # the handler answered without reading the whole body (a local reply): the rest of
            # the stream cannot be trusted to start at a request boundary
            self.close()
            return
        self.body = None
        self.state = HEAD
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        if self.buf:
            self._next_request()
        if self.state == HEAD and self.task is None:
            self.idle_since = self.loop.time()

    # -- output --------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.state != CLOSED:
            self.io += 1
            self.responded = True
            self.transport.write(data)  # type: ignore[union-attr]

    # -- the sink surface the forwarder uses (an HTTP/2 stream offers the same) -----------------
    @property
    def paused(self) -> bool:
        return self._paused_writing

    def send_continue(self) -> None:
        self.write(_CONTINUE)

    def send_response(
        self,
        status: int,
        reason: str,
        headers: list[tuple[str, str]],
        connection_tokens: tuple[str, ...],
        extra: list[str],
        length: int,
        end: bool,
        data: bytes = b"",
        no_body: bool = False,
    ) -> None:
        """The response head (and the whole body when ``end``), framed for this client."""
        keep = self.keep_alive and not self.listener.draining
        self._chunk_out = False
        if no_body:
            if length >= 0 and self.method == "HEAD":
                extra.append("content-length: %d" % length)
        elif end and length < 0:
            extra.append("content-length: %d" % len(data))
        elif length >= 0:
            extra.append("content-length: %d" % length)
        elif self.version == 11:
            extra.append("transfer-encoding: chunked")
            self._chunk_out = True
        else:
            keep = False  # HTTP/1.0 without a length: the close ends the body
        if not keep:
            extra.append("connection: close")
            self.keep_alive = False
        out = response_head(status, reason, headers, connection_tokens, extra, version=self.version)
        self.write(out + data if data else out)

    def send_data(self, data: bytes) -> None:
        self.write(encode_chunk(data) if self._chunk_out else data)

    def send_end(self, trailers: list[tuple[str, str]] | None) -> None:
        if self._chunk_out:
            self.write(encode_last_chunk(trailers))
            self._chunk_out = False

    def send_upgrade(self, resp: Any, headers: list[tuple[str, str]], extra: list[str]) -> None:
        extra.append("connection: upgrade")
        extra.append("upgrade: " + (resp.get("upgrade") or "websocket"))
        self.write(
            response_head(101, resp.reason, headers, resp.connection, extra, version=self.version)
        )

    def send_local(
        self,
        status: int,
        flag: str,
        body: str | None,
        extra: tuple[tuple[str, str], ...],
        draining: bool,
    ) -> None:
        close = not self.keep_alive or (self.body is not None and not self.body.at_eof) or draining
        if close:
            self.keep_alive = False
        self.write(
            local_reply.render(
                status,
                flag,
                body,
                close=close,
                extra=extra,
                head_only=self.method == "HEAD",
                version=self.version,
            )
        )

    def reset(self) -> None:
        self.keep_alive = False
        self.close()

    def _reply_and_close(self, status: int, flag: str, body: str) -> None:
        self.listener.on_local_reply(self, status, flag)
        self.write(local_reply.render(status, flag, body, close=True))
        self.close()

    def close(self) -> None:
        if self.state != CLOSED:
            self.state = CLOSED
            if self.transport is not None:
                self.transport.close()

    def _passthrough_tcp(self) -> None:
        assert self.original_dst is not None
        self.state = TUNNEL
        self.task = self.loop.create_task(self._open_passthrough(self.original_dst))

    async def _open_passthrough(self, dst: tuple[str, int]) -> None:
        try:
            _, peer = await self.loop.create_connection(lambda: _RawPeer(self), dst[0], dst[1])
        except OSError:
            self.close()
            return
        finally:
            self.task = None
        self.listener.on_passthrough(self, dst)
        self.tunnel_peer = peer
        if self.buf:
            peer.write(self.buf)
            self.buf = b""

    def start_tunnel(self, peer: Any) -> None:
        """After a 101: bytes flow unchanged both ways until either side closes."""
        self.state = TUNNEL
        self.tunnel_peer = peer
        if self.buf:
            peer.write(self.buf)
            self.buf = b""
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]


class _RawPeer(asyncio.Protocol):
    """The upstream end of a TCP passthrough: bytes both ways, unchanged."""

    def __init__(self, down: Downstream) -> None:
        self.down = down
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.down.write(data)

    def eof_received(self) -> bool:
        self.down.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.down.close()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
