"""What the HTTP/2 server and client protocols share: one ``h2`` engine driven by an asyncio
transport, and per-stream flow control tied to backpressure in both directions.

Receiving: DATA is acknowledged (WINDOW_UPDATE) only while the stream's :class:`BodyChannel`
is below its high-water mark; once the reader falls behind, the stream's acknowledgements are
held back, so the peer's stream window closes and it stops sending on that stream. The
connection window is always reopened at once, so a stalled stream does not stall its
neighbours. Nothing is buffered per stream beyond one window plus the channel's high-water
mark.

Sending: each stream queues outgoing DATA and sends what the peer's windows allow; the stream
reports ``paused`` while more than ``OUT_HIGH`` bytes wait or the transport's write buffer is
full, and :meth:`StreamIO.drain` resumes the producer once the window opens again.

The engine is meshlet's own sans-I/O connection (``proxy.http2.connection``) on the compiled
frame and HPACK codec: the ``h2`` library, with the fast codec plugged in, still spent most of a
request in its state machine and events (research: 75 % of a minimal proxy's time in h2). ``h2``
stays the reference the connection is differential-tested against. Header validation happens
in the connection, so a malformed message is a *stream* error and never forwarded.
"""

from __future__ import annotations

import asyncio
from collections import deque

from proxy.http2 import frames as fr
from proxy.http2.connection import H2Connection, Limits
from proxy.http2.errors import LocalProtocolError
from proxy.server.channel import BodyChannel

OUT_HIGH = 65536  # bytes queued on a stream before its producer is told to wait
STREAM_WINDOW = 65535
CONN_WINDOW = 1 << 20
BODY_HIGH = 262144


class StreamIO:
    """Per-stream state: the inbound body channel and the outbound queue."""

    __slots__ = ("sid", "proto", "body", "out", "out_off", "out_size", "out_end", "out_trailers",
                 "ended_local", "ended_remote", "closed", "unacked", "in_paused", "_drain",
                 "opened", "last")

    def __init__(self, proto: H2Base, sid: int) -> None:
        self.sid = sid
        self.proto = proto
        self.body: BodyChannel | None = None
        self.out: deque[bytes] = deque()
        self.out_off = 0
        self.out_size = 0
        self.out_end = False
        self.out_trailers: list[tuple[bytes, bytes]] | None = None
        self.ended_local = False
        self.ended_remote = False
        self.closed = False
        self.unacked = 0
        self.in_paused = False
        self._drain: asyncio.Future[None] | None = None
        self.opened = self.last = proto.now

    # -- inbound body with held-back acknowledgements ------------------------------------------
    def open_body(self) -> BodyChannel:
        self.body = BodyChannel(self._pause_in, self._resume_in, high=BODY_HIGH)
        return self.body

    def _pause_in(self) -> None:
        self.in_paused = True

    def _resume_in(self) -> None:
        self.in_paused = False
        n = self.unacked
        if n and not self.proto.closed:
            self.unacked = 0
            self.proto.h2.acknowledge_stream_data(self.sid, n)  # the connection's was at once
            self.proto.flush()

    # -- outbound ---------------------------------------------------------------------------------
    @property
    def paused(self) -> bool:
        return (self.out_size >= OUT_HIGH or self.proto.write_paused) and not self.closed

    async def drain(self) -> None:
        while self.paused:
            if self._drain is None or self._drain.done():
                self._drain = self.proto.loop.create_future()
            await self._drain

    def wake(self) -> None:
        w = self._drain
        if w is not None and not w.done() and not self.paused:
            self._drain = None
            w.set_result(None)

    def wake_always(self) -> None:
        w = self._drain
        if w is not None and not w.done():
            self._drain = None
            w.set_result(None)


class H2Base(asyncio.Protocol):
    """A sans-I/O HTTP/2 connection over an asyncio transport (either side)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client_side: bool, limits: Limits) -> None:
        self.loop = loop
        self.h2 = H2Connection(client_side=client_side, limits=limits, clock=loop.time)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, StreamIO] = {}
        self.closed = False
        self.write_paused = False
        self.going_away = False
        self._flush_pending = False
        self.now = loop.time()  # refreshed once per read: a coarse clock for per-stream idleness

    # -- output -----------------------------------------------------------------------------------
    def flush(self) -> None:
        """Write what the engine has queued, once per event-loop turn: the frames of every
        stream answered in this turn go out in one ``write`` (one syscall, not one per frame)."""
        if not self._flush_pending:
            self._flush_pending = True
            self.loop.call_soon(self.flush_now)

    def flush_now(self) -> None:
        self._flush_pending = False
        data = self.h2.data_to_send()
        if data and not self.closed and self.transport is not None:
            self.transport.write(data)

    def ack(self, sid: int, n: int) -> None:
        self.h2.acknowledge_received_data(sid, n)

    def on_data(self, st: StreamIO | None, sid: int, data: bytes, flow_len: int) -> None:
        """DATA for ``st``: into its body, acknowledged now or once the reader catches up."""
        if st is None or st.body is None or st.closed:
            self.ack(sid, flow_len)  # a stream we no longer read: keep the connection window open
            return
        st.last = self.now
        if data:
            st.body.feed(data)
        if st.in_paused:
            # hold back only the stream's window; the connection's reopens at once, so one
            # stalled stream never blocks the others (its buffer is bounded by its own window)
            st.unacked += flow_len
            self.h2.acknowledge_connection_data(flow_len)
        elif flow_len:
            self.ack(sid, flow_len)

    def queue(self, st: StreamIO, data: bytes, end: bool = False,
              trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        if st.closed or st.out_end:
            return
        st.last = self.now
        if data:
            st.out.append(data)
            st.out_size += len(data)
        if end:
            st.out_end = True
            st.out_trailers = trailers
        self.push(st)
        self.flush()

    def push(self, st: StreamIO) -> None:
        """Send what the windows allow from ``st``'s queue (then END_STREAM / trailers)."""
        if st.closed or st.ended_local:
            return
        h2 = self.h2
        sid = st.sid
        out = st.out
        try:
            while out:
                win = h2.local_flow_control_window(sid)
                if win <= 0:
                    break
                n = win  # the connection splits DATA at the peer's frame size
                chunk = out[0]
                off = st.out_off
                left = len(chunk) - off
                if left <= n:
                    piece = chunk[off:] if off else chunk
                    out.popleft()
                    st.out_off = 0
                    last = not out and st.out_end and st.out_trailers is None
                    h2.send_data(sid, piece, end_stream=last)
                    st.out_size -= left
                    if last:
                        st.ended_local = True
                        self.local_ended(st)
                        break
                else:
                    h2.send_data(sid, chunk[off:off + n])
                    st.out_off = off + n
                    st.out_size -= n
            if not out and st.out_end and not st.ended_local:
                st.ended_local = True
                if st.out_trailers:
                    h2.send_headers(sid, st.out_trailers, end_stream=True)
                else:
                    h2.end_stream(sid)
                self.local_ended(st)
        except LocalProtocolError:  # the stream is gone (reset, or the connection closed)
            st.closed = True
            st.wake_always()
            return
        st.wake()

    def local_ended(self, st: StreamIO) -> None:
        """Hook: ``st`` has sent END_STREAM."""

    def push_all(self) -> None:
        for st in list(self.streams.values()):
            if st.out or (st.out_end and not st.ended_local):
                self.push(st)

    def reset_stream(self, st: StreamIO, code: int) -> None:
        if not st.closed:
            st.closed = True
            try:
                self.h2.reset_stream(st.sid, code)
            except LocalProtocolError:
                pass
            st.out.clear()
            st.out_size = 0
            st.wake_always()

    def goaway(self, code: int, debug: bytes = b"") -> None:
        """GOAWAY and close: a connection error (built by hand, valid in any engine state)."""
        if self.closed or self.transport is None:
            return
        self.flush_now()
        self.transport.write(fr.goaway(self.h2.highest_inbound_stream_id, code, debug[:256]))
        self.transport.close()
        self.closed = True

    # -- asyncio.Protocol --------------------------------------------------------------------------
    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        for st in list(self.streams.values()):
            st.wake()
