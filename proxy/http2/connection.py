"""A sans-I/O HTTP/2 connection (server or client) on meshlet's frame and HPACK codec.

Bytes in (:meth:`H2Connection.receive_data`), events out; what to send accumulates for
:meth:`H2Connection.data_to_send`. All state transitions are here: stream states, flow-control
windows, SETTINGS, and the per-connection budgets of research/security-ops.md 6.6 (Rapid Reset
and MadeYouReset, CONTINUATION flood, HPACK bomb, SETTINGS/PING floods, empty-frame floods,
outbound control-frame cap). A peer's violation never raises: a stream error resets the stream
(:class:`StreamReset` with ``remote=False``), a connection error queues GOAWAY and ends in
:class:`ConnectionTerminated` with ``remote=False``. Only this endpoint's own mistakes raise
(:class:`LocalProtocolError`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from proxy.http2 import frames as fr
from proxy.http2.errors import (
    ErrorCode,
    H2Error,
    HeaderListTooLarge,
    HPACKError,
    LocalProtocolError,
)
from proxy.http2.hpack import Decoder, Encoder
from proxy.http2.validate import (
    check_content_length,
    validate_request_headers,
    validate_response_headers,
    validate_trailers,
)

DEFAULT_WINDOW = 65535
#: a chunk of output at least this long is written on its own (a full TLS record's plaintext)
_OWN_RECORD = 16384
#: DATA at least this long is queued without copying its payload into the frame
_ZERO_COPY = 4 * _OWN_RECORD


@dataclass(slots=True)
class Event:
    pass


@dataclass(slots=True)
class RequestReceived(Event):
    stream_id: int
    headers: list
    fields: object  # RequestFields
    end_stream: bool
    #: positions in ``headers`` sent never-indexed: pass to ``send_headers`` when forwarding
    never_indexed: list = field(default_factory=list)


@dataclass(slots=True)
class ResponseReceived(Event):
    stream_id: int
    headers: list
    fields: object  # ResponseFields
    end_stream: bool
    never_indexed: list = field(default_factory=list)


@dataclass(slots=True)
class InformationalResponseReceived(Event):
    stream_id: int
    headers: list


@dataclass(slots=True)
class TrailersReceived(Event):
    stream_id: int
    headers: list
    never_indexed: list = field(default_factory=list)


@dataclass(slots=True)
class DataReceived(Event):
    stream_id: int
    data: bytes
    flow_controlled_length: int
    end_stream: bool


@dataclass(slots=True)
class StreamEnded(Event):
    stream_id: int


@dataclass(slots=True)
class StreamReset(Event):
    stream_id: int
    error_code: int
    remote: bool = True
    reason: str = ""


@dataclass(slots=True)
class WindowUpdated(Event):
    stream_id: int
    delta: int


@dataclass(slots=True)
class RemoteSettingsChanged(Event):
    changes: dict


@dataclass(slots=True)
class SettingsAcknowledged(Event):
    pass


@dataclass(slots=True)
class PingReceived(Event):
    data: bytes


@dataclass(slots=True)
class PingAckReceived(Event):
    data: bytes


@dataclass(slots=True)
class ConnectionTerminated(Event):
    error_code: int
    last_stream_id: int
    debug: bytes = b""
    remote: bool = True


@dataclass
class Limits:
    """Per-connection budgets; defaults from research/security-ops.md 6.6 (Envoy-compatible)."""

    max_concurrent_streams: int = 100
    stream_window: int = 65536
    connection_window: int = 1 << 20
    max_frame_size: int = 16384
    max_header_list_size: int = 65536
    max_header_count: int = 100
    max_continuation_frames: int = 64
    pings_per_second: int = 10
    settings_per_second: int = 10
    max_outbound_control_frames: int = 1000
    max_consecutive_empty_frames: int = 1
    #: PRIORITY frames allowed per connection: this many times (1 + streams opened) (Envoy)
    priority_frames_per_stream: int = 100
    #: premature resets (peer RST_STREAM, or ours provoked by the peer, within a second of the
    #: stream opening) among the last ``reset_window`` closed streams before GOAWAY
    max_premature_resets: int = 250
    reset_window: int = 500
    premature_seconds: float = 1.0


@dataclass(slots=True)
class _Stream:
    stream_id: int
    send_window: int
    recv_window: int
    opened_at: float
    headers_received: bool = False  # the next HEADERS block carries trailers
    recv_closed: bool = False
    send_closed: bool = False
    content_length: int | None = None
    received: int = 0
    unacked: int = 0  # consumed octets not yet returned in a WINDOW_UPDATE
    informational: bool = field(default=False)


class _Budget:
    """At most ``limit`` events per second (a one-second fixed window)."""

    __slots__ = ("limit", "clock", "start", "count")

    def __init__(self, limit: int, clock: Callable[[], float]) -> None:
        self.limit, self.clock, self.start, self.count = limit, clock, clock(), 0

    def spend(self) -> bool:
        now = self.clock()
        if now - self.start >= 1.0:
            self.start, self.count = now, 0
        self.count += 1
        return self.count <= self.limit


class H2Connection:
    """One HTTP/2 connection. ``client_side`` picks the role (meshlet is both)."""

    def __init__(
        self,
        client_side: bool = False,
        limits: Limits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client_side = client_side
        self.limits = lim = limits or Limits()
        self._clock = clock
        self._out: list[bytes] = []
        self._control_queued = 0
        self._parser = fr.FrameParser(lim.max_frame_size, expect_preface=not client_side)
        self._decoder = Decoder(4096, lim.max_header_list_size, lim.max_header_count)
        self._encoder = Encoder()
        self._streams: dict[int, _Stream] = {}
        self._highest_remote = 0
        self._next_local = 1 if client_side else 2
        self._send_window = DEFAULT_WINDOW
        self._recv_window = lim.connection_window
        self._conn_unacked = 0
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame_size = fr.DEFAULT_MAX_FRAME_SIZE
        self._peer_max_concurrent = 1 << 31
        self.peer_settings: dict[int, int] = {}
        # header block being assembled: (stream_id, end_stream, [fragments], frame count, size)
        self._block: tuple[int, bool, list[bytes], int, int] | None = None
        self._empty_frames = 0
        self._pings = _Budget(lim.pings_per_second, clock)
        self._settings = _Budget(lim.settings_per_second, clock)
        self._recent_resets: deque[bool] = deque(maxlen=lim.reset_window)
        self._premature = 0
        # streams we reset: frames already in flight on them are ignored (RFC 9113 5.4.2)
        self._reset_ids: deque[int] = deque(maxlen=128)
        self._self_dependent = 0
        self._priority_frames = 0
        self._streams_opened = 0
        self.closed = False  # we sent GOAWAY (or the connection failed): nothing more is read
        self.goaway_received = False  # the peer sent GOAWAY: no new streams of ours

    # -- sending ---------------------------------------------------------------------------

    def initiate_connection(self) -> None:
        """Queue our preface: SETTINGS (and the connection window above the default)."""
        lim = self.limits
        settings = {
            fr.SETTINGS_MAX_CONCURRENT_STREAMS: lim.max_concurrent_streams,
            fr.SETTINGS_INITIAL_WINDOW_SIZE: lim.stream_window,
            fr.SETTINGS_MAX_FRAME_SIZE: lim.max_frame_size,
            fr.SETTINGS_MAX_HEADER_LIST_SIZE: lim.max_header_list_size,
        }
        if self.client_side:
            settings[fr.SETTINGS_ENABLE_PUSH] = 0
            self._out.append(fr.PREFACE)
        self._out.append(fr.settings_frame(settings))
        if lim.connection_window > DEFAULT_WINDOW:
            self._out.append(fr.window_update(0, lim.connection_window - DEFAULT_WINDOW))

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        self._control_queued = 0
        return out

    def data_to_send_chunks(self) -> list[bytes | memoryview]:
        """What :meth:`data_to_send` returns, as a list for ``transport.writelines``: a large
        DATA payload stays the caller's buffer (a view of it, not a copy) and runs of small
        frames are joined, so that a TLS transport writes full records and few tiny ones."""
        out = self._out
        self._control_queued = 0
        if len(out) == 1:
            chunks = [out[0]]
        else:
            chunks = []
            run: list[bytes | memoryview] = []
            for c in out:
                if len(c) >= _OWN_RECORD:
                    if run:
                        chunks.append(run[0] if len(run) == 1 else b"".join(run))
                        run = []
                    chunks.append(c)
                else:
                    run.append(c)
            if run:
                chunks.append(run[0] if len(run) == 1 else b"".join(run))
        out.clear()
        return chunks

    def get_next_available_stream_id(self) -> int:
        return self._next_local

    @property
    def highest_inbound_stream_id(self) -> int:
        """The last stream id the peer opened (a GOAWAY's last-stream-id)."""
        return self._highest_remote

    @property
    def remote_max_concurrent_streams(self) -> int:
        """The peer's SETTINGS_MAX_CONCURRENT_STREAMS (unlimited until its SETTINGS arrive)."""
        return self._peer_max_concurrent

    def send_headers(
        self,
        stream_id: int,
        headers: list,
        end_stream: bool = False,
        never_indexed: list | None = None,
    ) -> None:
        """Queue HEADERS (+ CONTINUATION). ``never_indexed``: positions in ``headers`` to send
        never-indexed (a proxy passes on the ``never_indexed`` of the event it forwards)."""
        stream = self._streams.get(stream_id)
        if stream is None:
            if stream_id != self._next_local or not self.client_side:
                raise LocalProtocolError(f"stream {stream_id} cannot be opened here")
            if self.goaway_received:
                raise LocalProtocolError("the peer sent GOAWAY: no new streams")
            # a client's streams are all its own (push is disabled), so no count is needed
            if len(self._streams) >= self._peer_max_concurrent:
                raise LocalProtocolError("peer's SETTINGS_MAX_CONCURRENT_STREAMS reached")
            stream = self._open(stream_id)
            self._next_local += 2
        if stream.send_closed:
            raise LocalProtocolError(f"stream {stream_id} is closed for sending")
        block = self._encoder.encode(headers, True, never_indexed)
        self._out.append(fr.headers_frame(stream_id, block, end_stream, self._peer_max_frame_size))
        if end_stream:
            self._close_send(stream)

    @property
    def connection_send_window(self) -> int:
        """What the peer's connection window lets us send now (all streams together)."""
        return self._send_window

    def local_flow_control_window(self, stream_id: int) -> int:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise LocalProtocolError(f"stream {stream_id} is not open")
        return min(self._send_window, stream.send_window)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        stream = self._streams.get(stream_id)
        if stream is None or stream.send_closed:
            raise LocalProtocolError(f"stream {stream_id} is closed for sending")
        n = len(data)
        if n > min(self._send_window, stream.send_window):
            raise LocalProtocolError("data exceeds the flow-control window")
        self._send_window -= n
        stream.send_window -= n
        if n < _ZERO_COPY or n > self._peer_max_frame_size or type(data) is not bytes:
            self._out.append(fr.data_frame(stream_id, data, end_stream, self._peer_max_frame_size))
        else:
            # one frame, not copied whole: its header with the first TLS record's worth of the
            # payload, then a view of the rest (see data_to_send_chunks); only of immutable
            # bytes, as the view is read after this call returns
            flags = fr.FLAG_END_STREAM if end_stream else 0
            lead = _OWN_RECORD - 9  # the frame header
            self._out.append(
                n.to_bytes(3, "big") + bytes((fr.DATA, flags)) + stream_id.to_bytes(4, "big")
                + data[:lead]
            )  # fmt: skip
            self._out.append(memoryview(data)[lead:])
        if end_stream:
            self._close_send(stream)

    def end_stream(self, stream_id: int) -> None:
        self.send_data(stream_id, b"", True)

    def reset_stream(self, stream_id: int, error_code: int = ErrorCode.CANCEL) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is None:
            raise LocalProtocolError(f"stream {stream_id} is not open")
        self._reset_ids.append(stream_id)
        self._out.append(fr.rst_stream(stream_id, error_code))

    def acknowledge_received_data(self, stream_id: int, n: int) -> None:
        """The application consumed ``n`` flow-controlled octets: reopen the windows, in batches
        of half a window so that a dribble of data does not become a flood of WINDOW_UPDATEs."""
        self.acknowledge_connection_data(n)
        self.acknowledge_stream_data(stream_id, n)

    def acknowledge_connection_data(self, n: int) -> None:
        """Reopen only the connection window: a proxy does so as soon as DATA is buffered on
        its stream, so that a stream whose reader stalls (its own window closes) cannot starve
        the other streams of the connection window (Envoy does the same)."""
        self._conn_unacked += n
        if self._conn_unacked >= self.limits.connection_window // 2:
            self._out.append(fr.window_update(0, self._conn_unacked))
            self._recv_window += self._conn_unacked
            self._conn_unacked = 0

    def acknowledge_stream_data(self, stream_id: int, n: int) -> None:
        """Reopen only ``stream_id``'s window (its reader caught up)."""
        stream = self._streams.get(stream_id)
        if stream is not None and not stream.recv_closed:
            stream.unacked += n
            if stream.unacked >= self.limits.stream_window // 2:
                self._out.append(fr.window_update(stream_id, stream.unacked))
                stream.recv_window += stream.unacked
                stream.unacked = 0

    def ping(self, data: bytes) -> None:
        self._out.append(fr.ping(False, data))

    def send_goaway(self, last_stream_id: int, error_code: int = ErrorCode.NO_ERROR) -> None:
        """A graceful GOAWAY (a drain): the peer opens no stream above ``last_stream_id`` and
        may retry those elsewhere, while the streams at or below it go on; unlike
        :meth:`close_connection`, frames keep being read and sent."""
        self._out.append(fr.goaway(last_stream_id, error_code, b""))

    def close_connection(self, error_code: int = ErrorCode.NO_ERROR, debug: bytes = b"") -> None:
        self._out.append(fr.goaway(self._highest_remote, error_code, debug))
        self.closed = True

    # -- receiving -------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        return self._receive(data, 0)

    def get_buffer(self, hint: int) -> memoryview:
        """Where the transport should put the next bytes it reads (``asyncio.BufferedProtocol``):
        frames are then cut from them in place (see :meth:`FrameParser.get_buffer`)."""
        return self._parser.get_buffer(hint)

    def buffer_updated(self, n: int) -> list[Event]:
        """``n`` bytes were written into the last :meth:`get_buffer` view: as
        :meth:`receive_data`. One connection uses one of the two ways of receiving."""
        return self._receive(None, n)

    def _receive(self, data: bytes | None, n: int) -> list[Event]:
        events: list[Event] = []
        if self.closed:
            if data is None:
                self._parser.clear()
            return events
        try:
            frames = self._parser.feed(data) if data is not None else self._parser.parse(n)
            for ftype, flags, stream_id, payload in frames:
                try:
                    self._frame(ftype, flags, stream_id, payload, events)
                except H2Error as exc:
                    if not exc.stream_id:
                        raise
                    self._stream_error(exc.stream_id, exc.code, exc.message, events)
                if self.closed:
                    break
        except H2Error as exc:
            self._connection_error(exc.code, exc.message, events)
        except HPACKError as exc:
            self._connection_error(ErrorCode.COMPRESSION_ERROR, str(exc), events)
        return events

    def _frame(self, ftype: int, flags: int, sid: int, payload: bytes, events: list) -> None:
        if self._block is not None and ftype != fr.CONTINUATION:
            raise H2Error(ErrorCode.PROTOCOL_ERROR, "header block interrupted")
        if ftype == fr.DATA:
            self._data(flags, sid, payload, events)
        elif ftype == fr.HEADERS:
            fragment, priority = fr.parse_headers(flags, sid, payload)
            if priority is not None and priority[0] == sid:
                self._self_dependent = sid  # reset once the block is decoded
            self._headers_start(sid, flags, fragment, events)
        elif ftype == fr.CONTINUATION:
            self._continuation(flags, sid, fr.parse_continuation(flags, sid, payload), events)
        elif ftype == fr.SETTINGS:
            self._settings_frame(flags, sid, payload, events)
        elif ftype == fr.WINDOW_UPDATE:
            self._window_update(sid, fr.parse_window_update(sid, payload), events)
        elif ftype == fr.RST_STREAM:
            code = fr.parse_rst_stream(sid, payload)
            self._check_not_idle(sid)
            stream = self._streams.pop(sid, None)
            if stream is not None:
                events.append(StreamReset(sid, code, True))
                lifetime = self._clock() - stream.opened_at
                self._count_close(sid, lifetime < self.limits.premature_seconds)
        elif ftype == fr.PING:
            data = fr.parse_ping(flags, sid, payload)
            if flags & fr.FLAG_ACK:
                events.append(PingAckReceived(data))
                return
            if not self._pings.spend():
                raise H2Error(ErrorCode.ENHANCE_YOUR_CALM, "PING flood")
            self._control(fr.ping(True, data))
            events.append(PingReceived(data))
        elif ftype == fr.GOAWAY:
            # The peer opens no more streams and processed none of ours above ``last``; the
            # streams at or below it carry on to the end (a graceful shutdown drains them), so
            # frames keep being read. The peer closes the connection when it is done.
            last, code, debug = fr.parse_goaway(sid, payload)
            self.goaway_received = True
            mine = 1 if self.client_side else 0
            for gone in [i for i in self._streams if i > last and (i & 1) == mine]:
                del self._streams[gone]
                self._reset_ids.append(gone)  # frames still in flight on it are ignored
            events.append(ConnectionTerminated(code, last, debug, True))
        elif ftype == fr.PRIORITY:
            fr.parse_priority(sid, payload)  # RFC 9113 deprecates priority: checked, ignored
            self._priority_frames += 1
            budget = self.limits.priority_frames_per_stream * (1 + self._streams_opened)
            if self._priority_frames > budget:
                raise H2Error(ErrorCode.ENHANCE_YOUR_CALM, "PRIORITY flood")
        elif ftype == fr.PUSH_PROMISE:
            fr.parse_push_promise(flags, sid, payload)  # always refused: push is disabled
        # unknown frame types are ignored (RFC 9113 5.5)

    def _check_not_idle(self, sid: int) -> None:
        highest = self._highest_remote if (sid & 1) != self.client_side else self._next_local - 2
        if sid > highest and sid not in self._streams:
            raise H2Error(ErrorCode.PROTOCOL_ERROR, f"frame on idle stream {sid}")

    def _open(self, sid: int) -> _Stream:
        stream = _Stream(sid, self._peer_initial_window, self.limits.stream_window, self._clock())
        self._streams[sid] = stream
        self._streams_opened += 1
        return stream

    def _data(self, flags: int, sid: int, payload: bytes, events: list) -> None:
        data = fr.parse_data(flags, sid, payload)
        n = len(payload)
        end = bool(flags & fr.FLAG_END_STREAM)
        if n == 0 and not end:
            self._empty_frames += 1
            if self._empty_frames > self.limits.max_consecutive_empty_frames:
                raise H2Error(ErrorCode.ENHANCE_YOUR_CALM, "empty DATA frame flood")
        else:
            self._empty_frames = 0
        # the connection window counts every DATA frame, even on a stream we already reset
        if n > self._recv_window:
            raise H2Error(ErrorCode.FLOW_CONTROL_ERROR, "connection flow-control window exceeded")
        self._recv_window -= n
        stream = self._streams.get(sid)
        if stream is None or stream.recv_closed or not stream.headers_received:
            self._check_not_idle(sid)
            self._conn_unacked += n  # never delivered: returned with the next WINDOW_UPDATE
            if sid in self._reset_ids:
                return
            raise H2Error(ErrorCode.STREAM_CLOSED, f"DATA on closed stream {sid}", sid)
        if n > stream.recv_window:
            raise H2Error(ErrorCode.FLOW_CONTROL_ERROR, "stream flow-control window exceeded", sid)
        stream.recv_window -= n
        stream.received += len(data)
        check_content_length(stream.content_length, stream.received, end, sid)
        events.append(DataReceived(sid, data, n, end))
        if end:
            self._close_recv(stream, events)

    def _headers_start(self, sid: int, flags: int, fragment: bytes, events: list) -> None:
        end_stream = bool(flags & fr.FLAG_END_STREAM)
        if flags & fr.FLAG_END_HEADERS:
            self._headers_done(sid, end_stream, fragment, events)
        else:
            self._block = (sid, end_stream, [fragment], 1, len(fragment))

    def _continuation(self, flags: int, sid: int, fragment: bytes, events: list) -> None:
        if self._block is None or self._block[0] != sid:
            raise H2Error(ErrorCode.PROTOCOL_ERROR, "unexpected CONTINUATION")
        _, end_stream, parts, count, size = self._block
        count += 1
        size += len(fragment)
        # CONTINUATION flood: cap the block while it arrives, not only once it is decoded
        if (
            count > self.limits.max_continuation_frames
            or size > 2 * self.limits.max_header_list_size
        ):
            raise H2Error(ErrorCode.ENHANCE_YOUR_CALM, "header block too long (CONTINUATION flood)")
        parts.append(fragment)
        if flags & fr.FLAG_END_HEADERS:
            self._block = None
            self._headers_done(sid, end_stream, b"".join(parts), events)
        else:
            self._block = (sid, end_stream, parts, count, size)

    def _headers_done(self, sid: int, end_stream: bool, block: bytes, events: list) -> None:
        try:
            headers = self._decoder.decode(block)  # always decode: HPACK state must advance
            too_large = False
        except HeaderListTooLarge:
            headers, too_large = [], True
        if self._self_dependent == sid:
            self._self_dependent = 0
            if sid > self._highest_remote and (sid & 1) != self.client_side:
                self._highest_remote = sid
            raise H2Error(ErrorCode.PROTOCOL_ERROR, "stream depends on itself", sid)
        stream = self._streams.get(sid)
        if stream is None:
            if sid in self._reset_ids:
                return  # in flight when we reset the stream
            remote = (sid & 1) != self.client_side
            if remote and sid <= self._highest_remote or not remote and sid < self._next_local:
                raise H2Error(ErrorCode.STREAM_CLOSED, f"HEADERS on closed stream {sid}", sid)
            if not remote:
                raise H2Error(ErrorCode.PROTOCOL_ERROR, f"HEADERS on idle stream {sid}")
            self._highest_remote = sid
            if self.client_side:
                raise H2Error(ErrorCode.PROTOCOL_ERROR, "server-initiated stream")
            stream = self._open(sid)
            if len(self._streams) > self.limits.max_concurrent_streams:
                raise H2Error(ErrorCode.REFUSED_STREAM, "too many concurrent streams", sid)
        if stream.recv_closed:
            raise H2Error(ErrorCode.STREAM_CLOSED, f"HEADERS on closed stream {sid}", sid)
        if too_large:
            raise H2Error(ErrorCode.PROTOCOL_ERROR, "header list too large (431)", sid)
        if stream.headers_received:  # trailers
            if not end_stream:
                raise H2Error(ErrorCode.PROTOCOL_ERROR, "trailers without END_STREAM", sid)
            trailers = validate_trailers(headers, sid)
            events.append(TrailersReceived(sid, trailers, self._decoder.never_indexed))
            check_content_length(stream.content_length, stream.received, True, sid)
        elif self.client_side:
            fields = validate_response_headers(headers, sid)
            if fields.status < 200:
                if end_stream:
                    raise H2Error(ErrorCode.PROTOCOL_ERROR, "1xx with END_STREAM", sid)
                events.append(InformationalResponseReceived(sid, headers))
                return
            stream.headers_received = True
            stream.content_length = fields.content_length
            events.append(
                ResponseReceived(sid, headers, fields, end_stream, self._decoder.never_indexed)
            )
        else:
            fields = validate_request_headers(headers, sid)
            stream.headers_received = True
            stream.content_length = fields.content_length
            if end_stream:
                check_content_length(fields.content_length, 0, True, sid)
            events.append(
                RequestReceived(sid, headers, fields, end_stream, self._decoder.never_indexed)
            )
        if end_stream:
            self._close_recv(stream, events)

    def _settings_frame(self, flags: int, sid: int, payload: bytes, events: list) -> None:
        changes = fr.parse_settings(flags, sid, payload)
        if flags & fr.FLAG_ACK:
            events.append(SettingsAcknowledged())
            return
        if not self._settings.spend():
            raise H2Error(ErrorCode.ENHANCE_YOUR_CALM, "SETTINGS flood")
        applied: dict[int, int] = {}
        for ident, value in changes:
            applied[ident] = value
            if ident == fr.SETTINGS_HEADER_TABLE_SIZE:
                self._encoder.header_table_size = min(value, 4096)
            elif ident == fr.SETTINGS_INITIAL_WINDOW_SIZE:
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for stream in self._streams.values():
                    stream.send_window += delta
                    if stream.send_window > fr.MAX_WINDOW:
                        raise H2Error(ErrorCode.FLOW_CONTROL_ERROR, "window overflow")
            elif ident == fr.SETTINGS_MAX_FRAME_SIZE:
                self._peer_max_frame_size = value
            elif ident == fr.SETTINGS_MAX_CONCURRENT_STREAMS:
                self._peer_max_concurrent = value
        self.peer_settings.update(applied)
        self._control(fr.settings_ack())
        events.append(RemoteSettingsChanged(applied))

    def _window_update(self, sid: int, increment: int, events: list) -> None:
        if sid == 0:
            self._send_window += increment
            if self._send_window > fr.MAX_WINDOW:
                raise H2Error(ErrorCode.FLOW_CONTROL_ERROR, "connection window overflow")
        else:
            self._check_not_idle(sid)
            stream = self._streams.get(sid)
            if stream is None:
                return  # a closed stream: allowed, ignored
            stream.send_window += increment
            if stream.send_window > fr.MAX_WINDOW:
                raise H2Error(ErrorCode.FLOW_CONTROL_ERROR, "stream window overflow", sid)
        events.append(WindowUpdated(sid, increment))

    # -- state -----------------------------------------------------------------------------

    def _control(self, frame: bytes) -> None:
        self._control_queued += 1
        if self._control_queued > self.limits.max_outbound_control_frames:
            raise H2Error(ErrorCode.ENHANCE_YOUR_CALM, "too many queued control frames")
        self._out.append(frame)

    def _close_recv(self, stream: _Stream, events: list) -> None:
        stream.recv_closed = True
        events.append(StreamEnded(stream.stream_id))
        if stream.send_closed:
            self._streams.pop(stream.stream_id, None)
            self._count_close(stream.stream_id, premature=False)

    def _close_send(self, stream: _Stream) -> None:
        stream.send_closed = True
        if stream.recv_closed:
            self._streams.pop(stream.stream_id, None)
            self._count_close(stream.stream_id, premature=False)

    def _count_close(self, sid: int, premature: bool) -> None:
        """Rapid Reset / MadeYouReset accounting over the last ``reset_window`` streams."""
        if (sid & 1) == self.client_side:
            return  # our own streams
        if len(self._recent_resets) == self._recent_resets.maxlen:
            self._premature -= self._recent_resets[0]
        self._recent_resets.append(premature)
        self._premature += premature
        if self._premature > self.limits.max_premature_resets:
            raise H2Error(ErrorCode.ENHANCE_YOUR_CALM, "too many reset streams (Rapid Reset)")

    def _stream_error(self, sid: int, code: int, reason: str, events: list) -> None:
        stream = self._streams.pop(sid, None)
        self._reset_ids.append(sid)
        self._out.append(fr.rst_stream(sid, code))
        events.append(StreamReset(sid, code, False, reason))
        if stream is not None:
            premature = self._clock() - stream.opened_at < self.limits.premature_seconds
            try:
                self._count_close(sid, premature)
            except H2Error as exc:
                self._connection_error(exc.code, exc.message, events)

    def _connection_error(self, code: int, reason: str, events: list) -> None:
        if self.closed:
            return
        self._out.append(fr.goaway(self._highest_remote, code, reason.encode()[:256]))
        self.closed = True
        events.append(ConnectionTerminated(code, self._highest_remote, reason.encode(), False))
