"""The HTTP/2 and HPACK error types shared by both twins of the codec.

They live in a plain module so that the compiled codec and its pure-Python twin raise the very
same classes: callers (and the differential tests) catch one set of exceptions whichever
implementation ``_accel`` picked.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """RFC 9113 section 7."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


class H2Error(Exception):
    """A protocol violation by the peer.

    ``stream_id == 0`` means a connection error (send GOAWAY with ``code`` and close); a non-zero
    ``stream_id`` means a stream error (RST_STREAM that stream with ``code``, the connection lives).
    """

    def __init__(self, code: int, message: str, stream_id: int = 0) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message
        self.stream_id = stream_id

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.code.name}, {self.message!r}, stream_id={self.stream_id})"
        )


class MalformedMessage(H2Error):
    """RFC 9113 section 8.1.1: a malformed request or response; a stream error PROTOCOL_ERROR.

    A server may answer 400 before resetting the stream; an intermediary must not forward it.
    """

    def __init__(self, message: str, stream_id: int = 0) -> None:
        super().__init__(ErrorCode.PROTOCOL_ERROR, message, stream_id)


class HPACKError(Exception):
    """The header block cannot be decoded: a connection error COMPRESSION_ERROR.

    After this the decoder's dynamic table is out of step with the peer's encoder, so the
    connection cannot continue.
    """

    code = ErrorCode.COMPRESSION_ERROR


class HeaderListTooLarge(HPACKError):
    """The decoded header list exceeds ``max_header_list_size`` (or the field count limit).

    Unlike its base class this is recoverable: the decoder finished the block, so its dynamic
    table is still in step; answer 431 (or RST_STREAM) and keep the connection.
    """


class LocalProtocolError(Exception):
    """This endpoint tried something HTTP/2 forbids (a bug in the caller, not the peer's fault):
    sending on a closed stream, beyond the flow-control window or the peer's stream limit."""
