"""HBONE's CONNECT streams over one HTTP/2 connection, without I/O (RFC 9113 8.5).

:class:`TunnelConnection` drives meshlet's sans-I/O :class:`~proxy.http2.connection.H2Connection`
for opaque TCP: the client opens a stream per TCP connection with ``:method CONNECT`` and
``:authority host:port`` (no ``:scheme``, no ``:path``); the server answers ``200`` and then
both sides send DATA. Half-close is END_STREAM (each direction closes on its own); a TCP reset
is RST_STREAM CONNECT_ERROR.

Flow control is the backpressure: bytes to send wait in a per-stream buffer until the peer's
windows allow them; :meth:`send` returns True when that buffer is over the high-water mark, so
the I/O shell stops reading the TCP socket, and an ``WRITABLE`` event says when to read again.
Received bytes reopen the connection window at once (a stalled stream must not starve the
others) but their stream's window only when the shell says they were consumed
(:meth:`consumed`): a reader that does not read stops its sender. Events are tuples
``(kind, stream_id, value)`` to keep the per-chunk cost low.
"""

from __future__ import annotations

from typing import Any

from proxy.http2 import connection as h2
from proxy.http2.errors import ErrorCode

OPENED = 1  # server: (OPENED, sid, "host:port") a CONNECT request
ESTABLISHED = 2  # client: (ESTABLISHED, sid, status) the answer to our CONNECT
DATA = 3  # (DATA, sid, bytes)
ENDED = 4  # (ENDED, sid, None) the peer half-closed
RESET = 5  # (RESET, sid, error code) the stream is gone (either side's reset)
WRITABLE = 6  # (WRITABLE, sid, None) the send buffer drained below the low-water mark
CLOSED = 7  # (CLOSED, 0, reason) the connection ended (our protocol error)
GOAWAY = 8  # (GOAWAY, last stream id, error code) the peer is going away (a drain)
SETTINGS = 9  # (SETTINGS, 0, None) the peer's SETTINGS arrived (its stream limit is known)

CONNECT_ERROR = ErrorCode.CONNECT_ERROR if hasattr(ErrorCode, "CONNECT_ERROR") else 0xA
REFUSED_STREAM = ErrorCode.REFUSED_STREAM

HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024

#: HBONE connections carry many long-lived streams and bulk data: large windows and frames,
#: many concurrent streams (Istio's ztunnel allows 100 per connection and opens more
#: connections; meshlet allows more so 1,000 idle database connections share one tunnel)
LIMITS = h2.Limits(
    max_concurrent_streams=4096,
    stream_window=4 << 20,
    connection_window=16 << 20,
    max_frame_size=(1 << 20) - 1,
)


class _Stream:
    __slots__ = ("sid", "pending", "pending_len", "end_after", "local_ended", "remote_ended",
                 "blocked")  # fmt: skip

    def __init__(self, sid: int) -> None:
        self.sid = sid
        self.pending: list[bytes] = []
        self.pending_len = 0
        self.end_after = False  # END_STREAM once pending is sent
        self.local_ended = False
        self.remote_ended = False
        self.blocked = False  # send() returned True: the shell stopped reading


class TunnelConnection:
    def __init__(self, client_side: bool, limits: h2.Limits | None = None) -> None:
        self.h2 = h2.H2Connection(client_side=client_side, limits=limits or LIMITS)
        self.client_side = client_side
        self.streams: dict[int, _Stream] = {}
        self._waiting: dict[int, _Stream] = {}  # streams with bytes held back by flow control
        # server: the last-stream-id of the GOAWAY we sent (a drain), None before
        self.goaway_last: int | None = None
        self.settings_received = False  # client: the peer's stream limit is known
        self.h2.initiate_connection()

    # -- state -----------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """No new stream may be opened here (either side said GOAWAY, or the connection
        failed); the open ones may still be running."""
        return self.h2.closed or self.h2.goaway_received or self.goaway_last is not None

    def can_open(self) -> bool:
        return not self.closed and len(self.streams) < min(
            self.h2.remote_max_concurrent_streams, 1 << 30
        )

    def data_to_send(self) -> bytes:
        return self.h2.data_to_send()

    # -- commands ----------------------------------------------------------------------------
    def open(self, authority: str, headers: list[tuple[bytes, bytes]] | None = None) -> int:
        """Client: a new CONNECT stream to ``authority`` (``host:port``)."""
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(
            sid, [(b":method", b"CONNECT"), (b":authority", authority.encode()), *(headers or ())]
        )
        self.streams[sid] = _Stream(sid)
        return sid

    def accept(self, sid: int) -> None:
        """Server: the target is connected; bytes may flow."""
        self.h2.send_headers(sid, [(b":status", b"200")])

    def refuse(self, sid: int, status: int) -> None:
        """Server: answer the CONNECT with an error status and end the stream."""
        st = self.streams.pop(sid, None)
        self._waiting.pop(sid, None)
        if st is not None:
            self.h2.send_headers(sid, [(b":status", str(status).encode())], end_stream=True)
            if not st.remote_ended:
                self._reset_quietly(sid, ErrorCode.NO_ERROR)

    def send(self, sid: int, data: bytes) -> bool:
        """Queue bytes on a stream; True means "stop reading your socket until WRITABLE"."""
        st = self.streams.get(sid)
        if st is None or st.local_ended or st.end_after:
            return False
        if st.pending_len:
            st.pending.append(data)
            st.pending_len += len(data)
        else:
            window = self.h2.local_flow_control_window(sid)
            n = len(data)
            if n <= window:
                self.h2.send_data(sid, data)
                return False
            if window > 0:
                self.h2.send_data(sid, data[:window])
                data = data[window:]
            st.pending.append(data)
            st.pending_len = len(data)
            self._waiting[sid] = st
        if st.pending_len > HIGH_WATER:
            st.blocked = True
            return True
        return False

    def end(self, sid: int) -> None:
        """Half-close our direction (the TCP peer sent FIN)."""
        st = self.streams.get(sid)
        if st is None or st.local_ended:
            return
        if st.pending_len:
            st.end_after = True
            return
        st.local_ended = True
        self.h2.end_stream(sid)
        self._maybe_done(st)

    def reset(self, sid: int, code: int = CONNECT_ERROR) -> None:
        """Abort the stream (the TCP peer reset, or a policy refused it)."""
        if self.streams.pop(sid, None) is not None:
            self._waiting.pop(sid, None)
            self._reset_quietly(sid, code)

    def consumed(self, sid: int, n: int) -> None:
        """``n`` received bytes of ``sid`` left the process: reopen that stream's window."""
        self.h2.acknowledge_stream_data(sid, n)

    def close(self) -> None:
        if not self.h2.closed:
            self.h2.close_connection()

    def goaway(self) -> bool:
        """Server: graceful GOAWAY (the sidecar drains), last-stream-id the highest stream
        already processed. Those streams go on; any stream the peer opens after is refused
        with REFUSED_STREAM (never processed: the peer retries it on another connection).
        False if the connection is already going away or closed."""
        if self.goaway_last is not None or self.h2.closed:
            return False
        self.goaway_last = self.h2.highest_inbound_stream_id
        self.h2.send_goaway(self.goaway_last)
        return True

    # -- input -------------------------------------------------------------------------------
    def receive(self, data: bytes) -> list[tuple[int, int, object]]:
        return self._events(self.h2.receive_data(data))

    def get_buffer(self, hint: int) -> memoryview:
        """Where the transport reads (decrypts) into next (``asyncio.BufferedProtocol``)."""
        return self.h2.get_buffer(hint)

    def buffer_updated(self, n: int) -> list[tuple[int, int, object]]:
        """``n`` bytes were put in the last :meth:`get_buffer` view: as :meth:`receive`."""
        return self._events(self.h2.buffer_updated(n))

    def data_to_send_chunks(self) -> list[bytes | memoryview]:
        return self.h2.data_to_send_chunks()

    def _events(self, events: list[Any]) -> list[tuple[int, int, object]]:
        out: list[tuple[int, int, object]] = []
        for ev in events:  # dispatched on type(): exact classes
            t = type(ev)
            if t is h2.DataReceived:
                self.h2.acknowledge_connection_data(ev.flow_controlled_length)
                if ev.data and ev.stream_id in self.streams:
                    out.append((DATA, ev.stream_id, ev.data))
                if ev.end_stream:
                    self._remote_end(ev.stream_id, out)
            elif t is h2.StreamEnded:
                self._remote_end(ev.stream_id, out)
            elif t is h2.WindowUpdated:
                self._flush(ev.stream_id, out)
            elif t is h2.RequestReceived:
                self._request(ev, out)
            elif t is h2.ResponseReceived:
                status = getattr(ev.fields, "status", 0)
                if ev.stream_id in self.streams:
                    out.append((ESTABLISHED, ev.stream_id, status))
                    if status != 200:
                        self.reset(ev.stream_id, ErrorCode.CANCEL)
                        out.append((RESET, ev.stream_id, ErrorCode.CANCEL))
                        continue
                if ev.end_stream:
                    self._remote_end(ev.stream_id, out)
            elif t is h2.StreamReset:
                if self.streams.pop(ev.stream_id, None) is not None:
                    self._waiting.pop(ev.stream_id, None)
                    out.append((RESET, ev.stream_id, ev.error_code))
            elif t is h2.RemoteSettingsChanged:
                self._flush(0, out)
                if not self.settings_received:
                    self.settings_received = True
                    out.append((SETTINGS, 0, None))
            elif t is h2.ConnectionTerminated:
                if not ev.remote:
                    why = ev.debug or b"GOAWAY"
                    out.append((CLOSED, 0, b"local: " + why))
                    continue
                # the peer goes away: streams of ours above ``last`` were never processed
                # (the h2 layer already forgot them); they are refused, to be retried on another
                # connection; the others run to their end
                last = ev.last_stream_id or 0
                mine = 1 if self.client_side else 0
                for sid in [i for i in self.streams if i > last and (i & 1) == mine]:
                    del self.streams[sid]
                    self._waiting.pop(sid, None)
                    out.append((RESET, sid, REFUSED_STREAM))
                out.append((GOAWAY, last, ev.error_code))
        return out

    def _request(self, ev: h2.RequestReceived, out: list[tuple[int, int, object]]) -> None:
        f: Any = ev.fields
        sid = ev.stream_id
        if self.goaway_last is not None and sid > self.goaway_last:
            # opened after our GOAWAY crossed it: never processed, the peer may retry it
            self._reset_quietly(sid, REFUSED_STREAM)
            return
        self.streams[sid] = _Stream(sid)
        if getattr(f, "method", b"") != b"CONNECT" or getattr(f, "protocol", None) is not None:
            self.refuse(sid, 405)  # HBONE carries CONNECT only
            return
        out.append((OPENED, sid, (f.authority or b"").decode("ascii", "replace")))
        if ev.end_stream:
            self._remote_end(sid, out)

    def _remote_end(self, sid: int, out: list[tuple[int, int, object]]) -> None:
        st = self.streams.get(sid)
        if st is None or st.remote_ended:
            return
        st.remote_ended = True
        out.append((ENDED, sid, None))
        self._maybe_done(st)

    def _flush(self, sid: int, out: list[tuple[int, int, object]]) -> None:
        if sid:
            st = self._waiting.get(sid)
            if st is not None:
                self._drain(st, out)
            return
        for st in list(self._waiting.values()):
            self._drain(st, out)
            # a stream whose own window is spent (its reader is slow) must not keep the
            # connection window from the streams behind it: only a spent connection window
            # ends the pass (else a stream with room would wait for an update that never comes)
            if self.h2.connection_send_window <= 0:
                break

    def _drain(self, st: _Stream, out: list[tuple[int, int, object]]) -> None:
        try:
            window = self.h2.local_flow_control_window(st.sid)
        except Exception:
            self._waiting.pop(st.sid, None)
            return
        while st.pending and window > 0:
            chunk = st.pending[0]
            if len(chunk) <= window:
                st.pending.pop(0)
            else:
                st.pending[0] = chunk[window:]
                chunk = chunk[:window]
            self.h2.send_data(st.sid, chunk)
            st.pending_len -= len(chunk)
            window -= len(chunk)
        if not st.pending:
            self._waiting.pop(st.sid, None)
            if st.end_after:
                st.end_after = False
                st.local_ended = True
                self.h2.end_stream(st.sid)
                self._maybe_done(st)
        if st.blocked and st.pending_len < LOW_WATER:
            st.blocked = False
            out.append((WRITABLE, st.sid, None))

    def _maybe_done(self, st: _Stream) -> None:
        if st.local_ended and st.remote_ended:
            self.streams.pop(st.sid, None)

    def _reset_quietly(self, sid: int, code: int) -> None:
        try:
            self.h2.reset_stream(sid, code)
        except Exception:  # already closed in the h2 state machine (both ends ended)
            pass
