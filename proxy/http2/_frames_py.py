# cython: annotation_typing=False
"""HTTP/2 framing (RFC 9113 sections 4 and 6): split bytes into frames, check and decode each
frame's payload, and serialize the frames an endpoint sends.

This is the readable twin; ``_frames_c.pxd`` gives the same source C types and ``setup.py``
compiles it as ``_frames_c``. A parsed frame is a plain tuple ``(type, flags, stream_id,
payload)``: the connection dispatches on ``type`` and calls the matching ``parse_*`` function,
which checks what RFC 9113 requires of that frame and raises :class:`H2Error` (a connection
error when its ``stream_id`` is 0, else a stream error) on any violation.
"""

from __future__ import annotations

from proxy.http2.errors import ErrorCode, H2Error

DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

FLAG_END_STREAM = 0x1
FLAG_ACK = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8
FLAG_PRIORITY = 0x20

SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6
SETTINGS_ENABLE_CONNECT_PROTOCOL = 0x8

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DEFAULT_MAX_FRAME_SIZE = 16384
MAX_MAX_FRAME_SIZE = (1 << 24) - 1
MAX_WINDOW = (1 << 31) - 1
FRAME_HEADER_SIZE = 9
#: the buffered mode's smallest read and buffer
_MIN_READ = 64 * 1024
_MIN_BUFFER = 1024 * 1024

_PROTOCOL_ERROR = ErrorCode.PROTOCOL_ERROR
_FRAME_SIZE_ERROR = ErrorCode.FRAME_SIZE_ERROR
_FLOW_CONTROL_ERROR = ErrorCode.FLOW_CONTROL_ERROR
_PREFACE_LEN = len(PREFACE)
# C-typed copies of the constants for the compiled twin (the public names stay Python objects)
_HDR = FRAME_HEADER_SIZE
_PADDED = FLAG_PADDED
_PRIO = FLAG_PRIORITY
_ACK = FLAG_ACK
_END_STREAM = FLAG_END_STREAM
_END_HEADERS = FLAG_END_HEADERS


class FrameParser:
    """Splits a byte stream into ``(type, flags, stream_id, payload)`` tuples.

    Checks only what the 9-octet header can show: the length against ``max_frame_size`` (the
    SETTINGS_MAX_FRAME_SIZE we advertised; FRAME_SIZE_ERROR). The reserved bit of the stream
    identifier is ignored, as RFC 9113 4.1 requires. Unknown frame types are returned too (the
    caller must ignore them). With ``expect_preface`` (a server), the client connection preface
    must come first (PROTOCOL_ERROR otherwise).
    """

    def __init__(
        self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, expect_preface: bool = False
    ) -> None:
        self.max_frame_size = max_frame_size
        self._pending = bytearray()
        self._need = 0  # octets _pending must reach before another frame can complete
        self._preface = expect_preface
        # the buffered mode's input (get_buffer/parse): octets held are _buf[_start:_end]
        self._buf = bytearray()
        self._mv = memoryview(self._buf)
        self._start = 0
        self._end = 0

    def feed(self, data: bytes) -> list:
        frames: list = []
        if self._pending:
            # Only join once a frame can be complete: trickled input stays linear.
            if len(self._pending) + len(data) < self._need:
                self._pending += data
                return frames
            buf = bytes(self._pending) + data
            self._pending = bytearray()
        else:
            buf = data
        b = buf
        end = len(buf)
        pos = 0
        if self._preface:
            n = min(end, _PREFACE_LEN)
            if buf[:n] != PREFACE[:n]:
                raise H2Error(_PROTOCOL_ERROR, "invalid connection preface")
            if n < _PREFACE_LEN:
                self._pending += buf
                self._need = _PREFACE_LEN
                return frames
            self._preface = False
            pos = _PREFACE_LEN
        while end - pos >= _HDR:
            length = (b[pos] << 16) | (b[pos + 1] << 8) | b[pos + 2]
            if length > self.max_frame_size:
                raise H2Error(
                    _FRAME_SIZE_ERROR,
                    f"frame of {length} octets exceeds SETTINGS_MAX_FRAME_SIZE "
                    f"{self.max_frame_size}",
                )
            if end - pos - _HDR < length:
                break
            ftype = b[pos + 3]
            flags = b[pos + 4]
            stream_id = (
                ((b[pos + 5] & 0x7F) << 24) | (b[pos + 6] << 16) | (b[pos + 7] << 8) | b[pos + 8]
            )
            pos += _HDR
            frames.append((ftype, flags, stream_id, buf[pos : pos + length]))
            pos += length
        if pos < end:
            self._pending += buf[pos:]
            if end - pos >= _HDR:
                self._need = _HDR + ((b[pos] << 16) | (b[pos + 1] << 8) | b[pos + 2])
            else:
                self._need = _HDR
        return frames

    @property
    def buffered(self) -> int:
        """Octets received but not yet part of a complete frame."""
        return len(self._pending) + self._end - self._start

    # -- buffered mode (asyncio.BufferedProtocol): the transport fills our buffer -------------
    #
    # ``feed`` costs a copy of every octet into ``_pending`` and one more to join a frame that
    # came in pieces (a bulk DATA frame always does), on top of the copy the transport made to
    # hand over ``data``. Here TLS decrypts (or the socket reads) straight into ``_buf`` and each
    # frame's payload is copied out once; octets of a frame not yet complete move only when the
    # buffer's tail is too short (a memcpy of at most one frame, at most once per buffer).

    def get_buffer(self, hint: int) -> memoryview:
        """Room for the next read: at least ``hint`` octets (a transport's size hint, at least
        64 KiB), and enough to complete the frame held in part."""
        start = self._start
        end = self._end
        held = end - start
        need = hint if hint > _MIN_READ else _MIN_READ
        if held >= _HDR and not self._preface:
            b = self._buf
            total = _HDR + ((b[start] << 16) | (b[start + 1] << 8) | b[start + 2])
            if total - held > need:
                need = total - held
        cap = len(self._buf)
        if cap - end >= need:
            return self._mv[end:]
        if held == 0:
            start = end = 0
            self._start = self._end = 0
            if cap >= need:
                return self._mv
        elif held <= start and cap - held >= need:
            # the held octets move to the front (the two ranges do not overlap)
            self._buf[0:held] = self._mv[start:end]
            self._start = 0
            self._end = held
            return self._mv[held:]
        # a bigger buffer (the old one stays exported until the transport lets go of its view)
        size = held + need
        if size < _MIN_BUFFER:
            size = _MIN_BUFFER
        buf = bytearray(size)
        if held:
            buf[0:held] = self._mv[start:end]
        self._buf = buf
        self._mv = memoryview(buf)
        self._start = 0
        self._end = held
        return self._mv[held:]

    def parse(self, n: int) -> list:
        """``n`` octets were written at the start of the last :meth:`get_buffer` view: the
        frames now complete, as :meth:`feed` returns them."""
        frames: list = []
        end = self._end + n
        self._end = end
        pos = self._start
        b = self._buf
        mv = self._mv
        if self._preface:
            n = min(end - pos, _PREFACE_LEN)
            if bytes(mv[pos : pos + n]) != PREFACE[:n]:
                raise H2Error(_PROTOCOL_ERROR, "invalid connection preface")
            if n < _PREFACE_LEN:
                return frames
            self._preface = False
            pos += _PREFACE_LEN
        while end - pos >= _HDR:
            length = (b[pos] << 16) | (b[pos + 1] << 8) | b[pos + 2]
            if length > self.max_frame_size:
                raise H2Error(
                    _FRAME_SIZE_ERROR,
                    f"frame of {length} octets exceeds SETTINGS_MAX_FRAME_SIZE "
                    f"{self.max_frame_size}",
                )
            if end - pos - _HDR < length:
                break
            ftype = b[pos + 3]
            flags = b[pos + 4]
            stream_id = (
                ((b[pos + 5] & 0x7F) << 24) | (b[pos + 6] << 16) | (b[pos + 7] << 8) | b[pos + 8]
            )
            pos += _HDR
            frames.append((ftype, flags, stream_id, bytes(mv[pos : pos + length])))
            pos += length
        if pos == end:
            self._start = self._end = 0
        else:
            self._start = pos
        return frames

    def clear(self) -> None:
        """Drop what the buffered mode holds (the connection reads no more frames)."""
        self._start = self._end = 0


def _padded(payload: bytes, flags: int, skip: int) -> tuple:
    """Strip ``skip`` leading octets and, with PADDED, the pad length octet and the padding."""
    n = len(payload)
    if flags & _PADDED:
        if n < 1 + skip:
            raise H2Error(_FRAME_SIZE_ERROR, "frame too short for its padding")
        b = payload
        pad = b[0]
        if pad > n - 1 - skip:
            raise H2Error(_PROTOCOL_ERROR, "padding longer than the frame payload")
        return 1 + skip, n - pad
    if n < skip:
        raise H2Error(_FRAME_SIZE_ERROR, "frame too short")
    return skip, n


def parse_data(flags: int, stream_id: int, payload: bytes) -> bytes:
    """DATA (6.1): the data without padding. Flow control counts ``len(payload)``."""
    if stream_id == 0:
        raise H2Error(_PROTOCOL_ERROR, "DATA on stream 0")
    if not flags & _PADDED:
        return payload
    start, stop = _padded(payload, flags, 0)
    return payload[start:stop]


def parse_headers(flags: int, stream_id: int, payload: bytes) -> tuple:
    """HEADERS (6.2): ``(block_fragment, priority)``; ``priority`` is None or
    ``(depends_on, weight, exclusive)`` with ``weight`` in 1..256.

    A stream depending on itself is a stream error, but the caller must still decode the block
    (HPACK state is per connection), so that check is the caller's: ``priority[0] == stream_id``.
    """
    if stream_id == 0:
        raise H2Error(_PROTOCOL_ERROR, "HEADERS on stream 0")
    if not flags & (_PADDED | _PRIO):
        return payload, None
    if flags & _PRIO:
        start, stop = _padded(payload, flags, 5)
        priority = _priority(payload, start - 5, stream_id)
    else:
        start, stop = _padded(payload, flags, 0)
        priority = None
    return payload[start:stop], priority


def _priority(payload: bytes, at: int, stream_id: int) -> tuple:
    b = payload
    depends_on = ((b[at] & 0x7F) << 24) | (b[at + 1] << 16) | (b[at + 2] << 8) | b[at + 3]
    return depends_on, b[at + 4] + 1, bool(b[at] & 0x80)


def parse_priority(stream_id: int, payload: bytes) -> tuple:
    """PRIORITY (6.3, deprecated but must be parsed): ``(depends_on, weight, exclusive)``."""
    if stream_id == 0:
        raise H2Error(_PROTOCOL_ERROR, "PRIORITY on stream 0")
    if len(payload) != 5:
        raise H2Error(_FRAME_SIZE_ERROR, "PRIORITY payload is not 5 octets", stream_id)
    priority = _priority(payload, 0, stream_id)
    if priority[0] == stream_id:
        raise H2Error(_PROTOCOL_ERROR, "stream depends on itself", stream_id)
    return priority


def _u32(payload: bytes, at: int) -> int:
    b = payload
    hi = b[at]  # an unsigned long once compiled: the shift must not overflow a C int
    return (hi << 24) | (b[at + 1] << 16) | (b[at + 2] << 8) | b[at + 3]


def parse_rst_stream(stream_id: int, payload: bytes) -> int:
    """RST_STREAM (6.4): the error code (unknown codes are allowed)."""
    if stream_id == 0:
        raise H2Error(_PROTOCOL_ERROR, "RST_STREAM on stream 0")
    if len(payload) != 4:
        raise H2Error(_FRAME_SIZE_ERROR, "RST_STREAM payload is not 4 octets")
    return _u32(payload, 0)


def parse_settings(flags: int, stream_id: int, payload: bytes) -> list:
    """SETTINGS (6.5): ``[(identifier, value), ...]`` in order (empty for an ACK).

    Known settings are range-checked; unknown ones are returned for the caller to ignore.
    """
    if stream_id != 0:
        raise H2Error(_PROTOCOL_ERROR, "SETTINGS on a stream")
    n = len(payload)
    if flags & _ACK:
        if n:
            raise H2Error(_FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
        return []
    if n % 6:
        raise H2Error(_FRAME_SIZE_ERROR, "SETTINGS payload is not a multiple of 6 octets")
    b = payload
    out: list = []
    for at in range(0, n, 6):
        ident = (b[at] << 8) | b[at + 1]
        value = _u32(payload, at + 2)
        if ident == SETTINGS_ENABLE_PUSH or ident == SETTINGS_ENABLE_CONNECT_PROTOCOL:  # noqa: SIM109
            if value > 1:
                raise H2Error(_PROTOCOL_ERROR, f"setting 0x{ident:x} must be 0 or 1")
        elif ident == SETTINGS_INITIAL_WINDOW_SIZE:
            if value > MAX_WINDOW:
                raise H2Error(_FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1")
        elif ident == SETTINGS_MAX_FRAME_SIZE:
            if value < DEFAULT_MAX_FRAME_SIZE or value > MAX_MAX_FRAME_SIZE:
                raise H2Error(_PROTOCOL_ERROR, "SETTINGS_MAX_FRAME_SIZE out of range")
        out.append((ident, value))
    return out


def parse_push_promise(
    flags: int, stream_id: int, payload: bytes, push_enabled: bool = False
) -> tuple:
    """PUSH_PROMISE (6.6): ``(promised_stream_id, block_fragment)``.

    A server never enables push and a meshlet client sends SETTINGS_ENABLE_PUSH=0, so by default
    receiving one is a connection error PROTOCOL_ERROR (8.4).
    """
    if not push_enabled:
        raise H2Error(_PROTOCOL_ERROR, "PUSH_PROMISE received with push disabled")
    if stream_id == 0:
        raise H2Error(_PROTOCOL_ERROR, "PUSH_PROMISE on stream 0")
    start, stop = _padded(payload, flags, 4)
    promised = _u32(payload, start - 4) & 0x7FFFFFFF
    return promised, payload[start:stop]


def parse_ping(flags: int, stream_id: int, payload: bytes) -> bytes:
    """PING (6.7): the 8 opaque octets."""
    if stream_id != 0:
        raise H2Error(_PROTOCOL_ERROR, "PING on a stream")
    if len(payload) != 8:
        raise H2Error(_FRAME_SIZE_ERROR, "PING payload is not 8 octets")
    return payload


def parse_goaway(stream_id: int, payload: bytes) -> tuple:
    """GOAWAY (6.8): ``(last_stream_id, error_code, debug_data)``."""
    if stream_id != 0:
        raise H2Error(_PROTOCOL_ERROR, "GOAWAY on a stream")
    if len(payload) < 8:
        raise H2Error(_FRAME_SIZE_ERROR, "GOAWAY payload shorter than 8 octets")
    return _u32(payload, 0) & 0x7FFFFFFF, _u32(payload, 4), payload[8:]


def parse_window_update(stream_id: int, payload: bytes) -> int:
    """WINDOW_UPDATE (6.9): the increment, 1..2^31-1."""
    if len(payload) != 4:
        raise H2Error(_FRAME_SIZE_ERROR, "WINDOW_UPDATE payload is not 4 octets")
    increment = _u32(payload, 0) & 0x7FFFFFFF
    if increment == 0:
        raise H2Error(_PROTOCOL_ERROR, "WINDOW_UPDATE with a zero increment", stream_id)
    return increment


def parse_continuation(flags: int, stream_id: int, payload: bytes) -> bytes:
    """CONTINUATION (6.10): the block fragment."""
    if stream_id == 0:
        raise H2Error(_PROTOCOL_ERROR, "CONTINUATION on stream 0")
    return payload


def frame(ftype: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    """One frame: the 9-octet header, then ``payload``."""
    n = len(payload)
    if n > MAX_MAX_FRAME_SIZE:
        raise ValueError("frame payload too large")
    header = bytearray(_HDR)
    h = header
    h[0] = (n >> 16) & 0xFF
    h[1] = (n >> 8) & 0xFF
    h[2] = n & 0xFF
    h[3] = ftype
    h[4] = flags
    h[5] = (stream_id >> 24) & 0x7F
    h[6] = (stream_id >> 16) & 0xFF
    h[7] = (stream_id >> 8) & 0xFF
    h[8] = stream_id & 0xFF
    return bytes(h[:_HDR]) + payload


def _check_stream(stream_id: int) -> None:
    if stream_id <= 0 or stream_id > MAX_WINDOW:
        raise ValueError(f"invalid stream id {stream_id}")


def data_frame(
    stream_id: int,
    data: bytes,
    end_stream: bool = False,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
) -> bytes:
    """DATA frame(s) carrying ``data``: split at ``max_frame_size``, END_STREAM on the last.

    Flow control is the caller's: it must not pass more than the send window allows.
    """
    _check_stream(stream_id)
    n = len(data)
    if n <= max_frame_size:
        return frame(DATA, _END_STREAM if end_stream else 0, stream_id, data)
    parts = []
    for at in range(0, n, max_frame_size):
        last = at + max_frame_size >= n
        flags = _END_STREAM if end_stream and last else 0
        parts.append(frame(DATA, flags, stream_id, data[at : at + max_frame_size]))
    return b"".join(parts)


def headers_frame(
    stream_id: int,
    block: bytes,
    end_stream: bool = False,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
) -> bytes:
    """A HEADERS frame carrying the HPACK ``block``, split into CONTINUATION frames when it
    exceeds ``max_frame_size`` (the peer's SETTINGS_MAX_FRAME_SIZE)."""
    _check_stream(stream_id)
    flags = _END_STREAM if end_stream else 0
    n = len(block)
    if n <= max_frame_size:
        return frame(HEADERS, flags | _END_HEADERS, stream_id, block)
    parts = [frame(HEADERS, flags, stream_id, block[:max_frame_size])]
    for at in range(max_frame_size, n, max_frame_size):
        last = at + max_frame_size >= n
        parts.append(
            frame(
                CONTINUATION,
                _END_HEADERS if last else 0,
                stream_id,
                block[at : at + max_frame_size],
            )
        )
    return b"".join(parts)


def settings_frame(settings: dict) -> bytes:
    """A SETTINGS frame with ``{identifier: value}``."""
    payload = bytearray()
    for ident, value in settings.items():
        if not 0 <= ident <= 0xFFFF or not 0 <= value <= 0xFFFFFFFF:
            raise ValueError(f"invalid setting 0x{ident:x}={value}")
        payload += ident.to_bytes(2, "big") + value.to_bytes(4, "big")
    return frame(SETTINGS, 0, 0, bytes(payload))


def settings_ack() -> bytes:
    return frame(SETTINGS, _ACK, 0, b"")


def ping(ack: bool, data: bytes) -> bytes:
    if len(data) != 8:
        raise ValueError("PING data must be 8 octets")
    return frame(PING, _ACK if ack else 0, 0, data)


def rst_stream(stream_id: int, code: int) -> bytes:
    _check_stream(stream_id)
    return frame(RST_STREAM, 0, stream_id, int(code).to_bytes(4, "big"))


def goaway(last_stream_id: int, code: int, debug: bytes = b"") -> bytes:
    if not 0 <= last_stream_id <= MAX_WINDOW:
        raise ValueError(f"invalid last stream id {last_stream_id}")
    return frame(
        GOAWAY, 0, 0, last_stream_id.to_bytes(4, "big") + int(code).to_bytes(4, "big") + debug
    )


def window_update(stream_id: int, increment: int) -> bytes:
    """WINDOW_UPDATE for ``stream_id`` (0: the connection), increment 1..2^31-1."""
    if not 0 <= stream_id <= MAX_WINDOW:
        raise ValueError(f"invalid stream id {stream_id}")
    if not 1 <= increment <= MAX_WINDOW:
        raise ValueError("WINDOW_UPDATE increment must be 1..2^31-1")
    return frame(WINDOW_UPDATE, 0, stream_id, increment.to_bytes(4, "big"))
