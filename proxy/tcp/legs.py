"""The I/O shell of opaque TCP: an HBONE connection (HTTP/2 over mTLS carrying CONNECT streams)
and the TCP sockets piped into its streams, or straight into another socket.

Backpressure both ways, with no unbounded buffer:
* socket -> stream: :meth:`TunnelConnection.send` holds bytes the peer's flow-control windows do
  not allow yet and says when to stop reading; the socket resumes on ``WRITABLE``;
* stream -> socket: bytes written to a socket whose transport is over its write high-water mark
  are not acknowledged to the peer (its stream window stays shut) until ``resume_writing``;
* the HBONE transport itself over its high-water mark pauses reading on every socket it serves.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

from proxy.tcp.conn import TcpRecord

# proxy.tcp.tunnel, bound by the first HBONE connection: it loads the HTTP/2 stack (~2 MB of
# idle RSS), which a sidecar without a mesh identity (no HBONE) never needs
tn: Any = None


def _tunnel_module() -> Any:
    global tn
    if tn is None:
        from proxy.tcp import tunnel

        tn = tunnel
    return tn


log = logging.getLogger("meshlet.proxy.tcp")

_LINGER0 = struct.pack("ii", 1, 0)
WRITE_HIGH = 1 << 20
#: a client's bytes kept until the peer sidecar answers the CONNECT (a stream the peer refused
#: unprocessed, GOAWAY or its stream limit, is opened again elsewhere with them); over this the
#: socket is not read until the answer
REPLAY_MAX = 256 * 1024
#: how many times one TCP connection's stream may be refused unprocessed and opened again
MAX_REOPENS = 3


def abort_with_rst(transport: Any) -> None:
    """Close a TCP transport with a reset (RST), as the peer's reset is carried on."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
        except OSError:
            pass
    transport.abort()


class HboneConnection(asyncio.BufferedProtocol):
    """One HTTP/2 connection of CONNECT streams, client or server side.

    A buffered protocol: the TLS layer decrypts straight into the frame parser's buffer, rather
    than into a new bytes object per TLS record that are then joined and copied again into the
    parser (bulk throughput is bound by those copies, not by the cipher). Output goes out with
    ``writelines``, large DATA payloads as views of the bytes read from the TCP socket.
    """

    def __init__(
        self,
        client_side: bool,
        on_open: Callable[[HboneConnection, int, str], None] | None = None,
        on_lost: Callable[[HboneConnection], None] | None = None,
        limits: Any = None,
    ) -> None:
        self.tunnel = _tunnel_module().TunnelConnection(client_side, limits)
        self.on_open = on_open
        self.on_lost = on_lost
        self.legs: dict[int, Any] = {}
        self.transport: Any = None
        self.peer = ""  # the peer's SPIFFE ID (verified by the TLS layer)
        self.peer_address = ""
        self.write_paused = False
        self.lost = False
        self.streams_total = 0
        self.idle_since = 0.0
        # GOAWAY sent (a drain) or received: no new stream here; closed once the last leg ends
        self.going_away = False
        self.on_goaway: Callable[[HboneConnection], None] | None = None  # a peer's GOAWAY
        self.settings_waiter: asyncio.Future[None] | None = None  # client: peer's SETTINGS

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer_address = f"{peer[0]}:{peer[1]}" if peer else ""
        self.flush()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.tunnel.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self._dispatch(self.tunnel.buffer_updated(nbytes))

    def data_received(self, data: bytes) -> None:
        """The same bytes handed over whole (a transport without buffered reads)."""
        self._dispatch(self.tunnel.receive(data))

    def _dispatch(self, events: list[tuple[int, int, object]]) -> None:
        legs = self.legs
        for kind, sid, value in events:
            if kind == tn.DATA:
                leg = legs.get(sid)
                if leg is not None:
                    leg.from_tunnel(value)
            elif kind == tn.OPENED:
                if self.on_open is not None:
                    self.on_open(self, sid, value)  # type: ignore[arg-type]
            elif kind == tn.ENDED:
                leg = legs.get(sid)
                if leg is not None:
                    leg.tunnel_ended()
            elif kind == tn.WRITABLE:
                leg = legs.get(sid)
                if leg is not None and not self.write_paused:
                    leg.resume_source()
            elif kind == tn.ESTABLISHED:
                leg = legs.get(sid)
                if leg is not None:
                    leg.established(value)
            elif kind == tn.RESET:
                leg = legs.pop(sid, None)
                if leg is not None:
                    leg.tunnel_reset(value)
            elif kind == tn.GOAWAY:
                # the peer drains (or closes): the streams it processed run to their end, the
                # refused ones were reset just before (RESET REFUSED_STREAM: retried elsewhere)
                if log.isEnabledFor(logging.INFO):  # once per connection
                    log.info("HBONE connection with %s: GOAWAY (last stream %d, code %r)",
                             self.peer_address, sid, value)  # fmt: skip
                if not self.going_away:
                    self.going_away = True
                    if self.on_goaway is not None:
                        self.on_goaway(self)
                if not self.legs:
                    self.tunnel.close()
            elif kind == tn.SETTINGS:
                w = self.settings_waiter
                if w is not None and not w.done():
                    w.set_result(None)
            elif kind == tn.CLOSED:
                if log.isEnabledFor(logging.INFO):  # once per connection
                    log.info("HBONE connection with %s ended: %r", self.peer_address, value)
                self.tunnel.close()
        self.flush()
        if self.tunnel.h2.closed and self.transport is not None:
            self.transport.close()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if exc is not None:
            log.info("HBONE connection with %s lost: %r", self.peer_address, exc)
        for leg in list(self.legs.values()):
            leg.tunnel_reset(-1)
        self.legs.clear()
        w = self.settings_waiter
        if w is not None and not w.done():
            w.set_exception(ConnectionError("HBONE connection lost before the peer's SETTINGS"))
        if self.on_lost is not None:
            self.on_lost(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        for leg in self.legs.values():
            leg.pause_source()

    def resume_writing(self) -> None:
        self.write_paused = False
        for leg in list(self.legs.values()):
            leg.resume_source()

    # -- use -----------------------------------------------------------------------------------
    def flush(self) -> None:
        chunks = self.tunnel.data_to_send_chunks()
        if chunks and self.transport is not None and not self.lost:
            if len(chunks) == 1:
                self.transport.write(chunks[0])
            else:
                self.transport.writelines(chunks)

    def usable(self) -> bool:
        return not self.lost and self.tunnel.can_open()

    def open_stream(self, authority: str, leg: Any) -> int:
        sid = self.tunnel.open(authority)
        self.legs[sid] = leg
        self.streams_total += 1
        self.flush()
        return sid

    def flow_view(self, limit: int = 16) -> dict[str, Any]:
        """Where bytes wait, for ``/clusters`` (a stalled transfer shows which side holds it):
        the connection's send window and pause, and up to ``limit`` streams that hold bytes
        back, are blocked, or whose socket is not being read."""
        tunnel = self.tunnel
        held = []
        for sid, leg in self.legs.items():
            st = tunnel.streams.get(sid)
            t = getattr(leg, "transport", None)
            reading = t.is_reading() if t is not None and not t.is_closing() else None
            pending = st.pending_len if st is not None else 0
            blocked = st.blocked if st is not None else False
            if pending or blocked or reading is False:
                try:
                    window = tunnel.h2.local_flow_control_window(sid)
                except Exception:  # closed for sending in the h2 state machine
                    window = None
                held.append({"stream": sid, "pending": pending, "blocked": blocked,
                             "send_window": window, "socket_reading": reading,
                             "socket_write_paused": getattr(leg, "write_paused", None),
                             "unacked": getattr(leg, "unacked", 0)})  # fmt: skip
                if len(held) >= limit:
                    break
        return {"write_paused": self.write_paused,
                "send_window": tunnel.h2.connection_send_window, "held_streams": held}  # fmt: skip

    def forget(self, sid: int) -> None:
        self.legs.pop(sid, None)
        if self.going_away and not self.legs and not self.lost and self.tunnel.client_side:
            # the last stream of a connection going away ended: close it once the leg's own
            # last frames (END_STREAM, RST_STREAM) are queued
            asyncio.get_running_loop().call_soon(self._close_if_done)

    def goaway(self) -> bool:
        """Server, on drain: graceful GOAWAY (see :meth:`TunnelConnection.goaway`). The peer
        closes the connection once its streams are done (or the drain's end does)."""
        if self.lost or not self.tunnel.goaway():
            return False
        self.going_away = True
        self.flush()
        return True

    def _close_if_done(self) -> None:
        if not self.legs and not self.lost and self.tunnel.client_side:
            self.close()

    def close(self) -> None:
        self.tunnel.close()
        self.flush()
        if self.transport is not None:
            self.transport.close()


class StreamLeg(asyncio.Protocol):
    """A TCP socket joined to one CONNECT stream. ``downstream``: the socket is the client's
    (bytes it sends are the request direction); else it is the app's."""

    def __init__(self, rec: TcpRecord, downstream: bool) -> None:
        self.rec = rec
        self.downstream = downstream
        self.conn: HboneConnection | None = None
        self.sid = 0
        self.transport: Any = None
        self.write_paused = False
        self.unacked = 0
        self.local_eof = False
        self.remote_eof = False
        self.closed = False
        self.early: list[bytes] = []  # tunnel bytes that came before the socket connected
        self.early_end = False
        self.last = 0.0
        self.idle_timeout = 3600.0
        # client side, until the CONNECT is answered: the bytes sent on the stream, and who
        # opens the stream again when the peer refuses it unprocessed (REFUSED_STREAM)
        self.replay: list[bytes] | None = [] if downstream else None
        self.replay_len = 0
        self.replay_paused = False
        self.reopen: Callable[[StreamLeg], None] | None = None
        self.reopens = 0

    def attach(self, conn: HboneConnection, sid: int) -> None:
        self.conn, self.sid = conn, sid
        conn.legs[sid] = self

    # -- the socket side ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        # the socket's own buffer may hold up to half a stream window before the peer's
        # window stays shut (bulk transfers keep flowing while the app reads in bursts)
        transport.set_write_buffer_limits(high=WRITE_HIGH)  # type: ignore[attr-defined]
        if self.closed:  # the stream was refused or reset before the socket was adopted
            abort_with_rst(transport)
            return
        if not self.downstream and self.conn is not None and self.sid in self.conn.tunnel.streams:
            # the app is connected: answer the CONNECT now, before any byte the app may send
            # (HEADERS must precede DATA on the stream)
            self.conn.tunnel.accept(self.sid)
            self.conn.flush()
        if self.early:
            for chunk in self.early:
                self.from_tunnel(chunk)
            self.early.clear()
            if self.conn is not None:
                # their stream window goes back now: a client that spent it (a bulk transfer
                # started while the app was dialled) waits for exactly this WINDOW_UPDATE, and
                # nothing else may come to flush it (the bulk stall of loadtests/README.md)
                self.conn.flush()
        if self.early_end:
            self.tunnel_ended()

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if self.closed:
            return
        n = len(data)
        if conn is None:
            if self.replay is not None:  # the stream is being opened again: sent then
                self.rec.rx(n)
                self.replay.append(data)
                self.replay_len += n
                self.transport.pause_reading()
            return
        if self.downstream:
            self.rec.rx(n)
        else:
            self.rec.tx(n)
        replay = self.replay
        if replay is not None:
            replay.append(data)
            self.replay_len += n
            if self.replay_len > REPLAY_MAX:
                self.replay_paused = True
                self.transport.pause_reading()
        if conn.tunnel.send(self.sid, data) or conn.write_paused:
            self.transport.pause_reading()
        conn.flush()

    def eof_received(self) -> bool:
        self.local_eof = True
        conn = self.conn
        if conn is not None and not self.closed:
            conn.tunnel.end(self.sid)
            conn.flush()
        self._maybe_finish()
        return True  # keep the socket open for the other direction (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        conn = self.conn
        if conn is not None and not (self.local_eof and self.remote_eof):
            conn.forget(self.sid)
            conn.tunnel.reset(self.sid)
            conn.flush()
            self.rec.close("downstream reset" if self.downstream else "upstream reset",
                           "" if exc is None else ("DR" if self.downstream else "UR"))  # fmt: skip
        else:
            self.rec.close("closed")

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        conn = self.conn
        if self.unacked and conn is not None:
            conn.tunnel.consumed(self.sid, self.unacked)
            self.unacked = 0
            conn.flush()

    # -- the tunnel side -----------------------------------------------------------------------
    def from_tunnel(self, data: bytes) -> None:
        t = self.transport
        if t is None:
            self.early.append(data)  # bounded by the stream window (not acknowledged)
            return
        n = len(data)
        if self.downstream:
            self.rec.tx(n)
        else:
            self.rec.rx(n)
        t.write(data)
        if self.write_paused:
            self.unacked += n
        elif self.conn is not None:
            self.conn.tunnel.consumed(self.sid, n)

    def tunnel_ended(self) -> None:
        if self.transport is None:
            self.early_end = True
            return
        self.remote_eof = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._maybe_finish()

    def tunnel_reset(self, code: Any) -> None:
        if self.closed:
            return
        if (code == tn.REFUSED_STREAM and self.replay is not None and self.reopen is not None
                and self.reopens < MAX_REOPENS):  # fmt: skip
            # refused unprocessed (the peer's GOAWAY or stream limit): nothing reached the
            # app, so the stream is opened again on another connection with the same bytes
            self.reopens += 1
            self.conn, self.sid = None, 0
            if self.transport is not None:
                self.transport.pause_reading()
            self.reopen(self)
            return
        self.closed = True
        self.conn = None
        self.rec.close("tunnel reset" if code != -1 else "tunnel lost",
                       self.rec.flags or ("UR" if self.downstream else "DR"))  # fmt: skip
        if self.transport is not None:
            abort_with_rst(self.transport)

    def established(self, status: Any) -> None:
        if status != 200:  # the peer sidecar refused: its policy, no such port, app down
            self.rec.flags = {403: "RBAC", 404: "NR"}.get(status, "UF")
            return
        self.replay = None  # processed: the stream is never opened again
        if self.replay_paused:
            self.replay_paused = False
            self._resume_unless_held()

    def reattach(self, conn: HboneConnection, sid: int) -> None:
        """The stream opened again (after REFUSED_STREAM): the bytes sent so far go again, and
        the half-close if the client had sent it."""
        self.attach(conn, sid)
        for chunk in self.replay or ():
            conn.tunnel.send(sid, chunk)
        if self.local_eof:
            conn.tunnel.end(sid)
        conn.flush()
        self._resume_unless_held()

    def _resume_unless_held(self) -> None:
        """Read the socket again unless something else still holds it (the tunnel's send
        buffer over its mark, a paused HBONE transport, the replay limit)."""
        conn, t = self.conn, self.transport
        if t is None or self.closed or conn is None or self.local_eof:
            return
        st = conn.tunnel.streams.get(self.sid)
        if conn.write_paused or self.replay_paused or (st is not None and st.blocked):
            return
        t.resume_reading()

    def pause_source(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_source(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def _maybe_finish(self) -> None:
        if self.local_eof and self.remote_eof and not self.closed:
            self.closed = True
            if self.conn is not None:
                self.conn.forget(self.sid)
            self.rec.close("closed")
            self.transport.close()

    def abort(self, reason: str, flags: str) -> None:
        """Close both ways now (idle timeout, policy)."""
        if self.closed:
            return
        self.closed = True
        if self.conn is not None:
            self.conn.forget(self.sid)
            self.conn.tunnel.reset(self.sid, tn.ErrorCode.CANCEL)
            self.conn.flush()
        self.rec.close(reason, flags)
        if self.transport is not None:
            self.transport.close()


class RawLeg(asyncio.Protocol):
    """One side of a plain TCP splice (no tunnel): the other side is ``peer``."""

    def __init__(self, rec: TcpRecord, downstream: bool) -> None:
        self.rec = rec
        self.downstream = downstream
        self.peer: RawLeg | None = None
        self.transport: Any = None
        self.pending: list[bytes] = []
        self.closed = False
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.downstream:
            self.rec.rx(len(data))
        else:
            self.rec.tx(len(data))
        p = self.peer
        if p is None or p.transport is None:
            self.pending.append(data)
            self.transport.pause_reading()
            return
        p.transport.write(data)

    def start(self) -> None:
        """Both sockets are open: pass on what either side sent before (a server-first
        protocol's banner arrives while the client's socket is still being adopted)."""
        for leg in (self, self.peer):
            assert leg is not None and leg.peer is not None
            p = leg.peer
            for chunk in leg.pending:
                p.transport.write(chunk)
            leg.pending.clear()
            if leg.eof and p.transport.can_write_eof():
                p.transport.write_eof()
            if not leg.closed:
                leg.transport.resume_reading()
            else:
                p.transport.close()  # that side already went away: the rest is flushed first

    def eof_received(self) -> bool:
        self.eof = True
        p = self.peer
        if p is not None and p.transport is not None and p.transport.can_write_eof():
            p.transport.write_eof()
            if p.eof:
                self.transport.close()
                p.transport.close()
        return True

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        p = self.peer
        if p is not None and not p.closed and p.transport is not None:
            if exc is not None:
                abort_with_rst(p.transport)
            else:
                p.transport.close()
        if exc is not None:
            self.rec.close("reset", "DR" if self.downstream else "UR")
        elif p is None or p.closed:
            self.rec.close("closed")

    def abort(self, reason: str, flags: str) -> None:
        self.rec.close(reason, flags)
        for leg in (self, self.peer):
            if leg is not None and leg.transport is not None:
                leg.transport.close()
