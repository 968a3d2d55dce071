"""HTTP/2 framing for the fast path: the compiled codec, or its pure-Python twin.

``FrameParser(max_frame_size=16384, expect_preface=False).feed(data) -> [(type, flags,
stream_id, payload)]``; ``parse_<frame>(...)`` check and decode one payload; the serializers
(``data_frame``, ``headers_frame``, ``settings_frame``, ``settings_ack``, ``ping``,
``rst_stream``, ``goaway``, ``window_update``) build what an endpoint sends. Violations raise
:class:`H2Error` (``stream_id`` 0: connection error; otherwise a stream error).
"""

from __future__ import annotations

from proxy import _accel
from proxy.http2.errors import ErrorCode, H2Error

impl = _accel.load("proxy.http2", "frames")

FrameParser = impl.FrameParser
parse_data = impl.parse_data
parse_headers = impl.parse_headers
parse_priority = impl.parse_priority
parse_rst_stream = impl.parse_rst_stream
parse_settings = impl.parse_settings
parse_push_promise = impl.parse_push_promise
parse_ping = impl.parse_ping
parse_goaway = impl.parse_goaway
parse_window_update = impl.parse_window_update
parse_continuation = impl.parse_continuation
frame = impl.frame
data_frame = impl.data_frame
headers_frame = impl.headers_frame
settings_frame = impl.settings_frame
settings_ack = impl.settings_ack
ping = impl.ping
rst_stream = impl.rst_stream
goaway = impl.goaway
window_update = impl.window_update

DATA = impl.DATA
HEADERS = impl.HEADERS
PRIORITY = impl.PRIORITY
RST_STREAM = impl.RST_STREAM
SETTINGS = impl.SETTINGS
PUSH_PROMISE = impl.PUSH_PROMISE
PING = impl.PING
GOAWAY = impl.GOAWAY
WINDOW_UPDATE = impl.WINDOW_UPDATE
CONTINUATION = impl.CONTINUATION
FLAG_END_STREAM = impl.FLAG_END_STREAM
FLAG_ACK = impl.FLAG_ACK
FLAG_END_HEADERS = impl.FLAG_END_HEADERS
FLAG_PADDED = impl.FLAG_PADDED
FLAG_PRIORITY = impl.FLAG_PRIORITY
SETTINGS_HEADER_TABLE_SIZE = impl.SETTINGS_HEADER_TABLE_SIZE
SETTINGS_ENABLE_PUSH = impl.SETTINGS_ENABLE_PUSH
SETTINGS_MAX_CONCURRENT_STREAMS = impl.SETTINGS_MAX_CONCURRENT_STREAMS
SETTINGS_INITIAL_WINDOW_SIZE = impl.SETTINGS_INITIAL_WINDOW_SIZE
SETTINGS_MAX_FRAME_SIZE = impl.SETTINGS_MAX_FRAME_SIZE
SETTINGS_MAX_HEADER_LIST_SIZE = impl.SETTINGS_MAX_HEADER_LIST_SIZE
SETTINGS_ENABLE_CONNECT_PROTOCOL = impl.SETTINGS_ENABLE_CONNECT_PROTOCOL
PREFACE = impl.PREFACE
DEFAULT_MAX_FRAME_SIZE = impl.DEFAULT_MAX_FRAME_SIZE
MAX_WINDOW = impl.MAX_WINDOW

__all__ = ["ErrorCode", "H2Error", "FrameParser"]
