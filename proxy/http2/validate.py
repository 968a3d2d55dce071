"""HTTP/2 request, response and trailer validation (RFC 9113 8.1-8.3) for the fast path: the
compiled module, or its pure-Python twin.

``validate_request_headers(headers, stream_id=0, extended_connect=False) -> RequestFields``,
``validate_response_headers(headers, stream_id=0) -> ResponseFields``,
``validate_trailers(headers, stream_id=0) -> list`` and
``check_content_length(content_length, received, end_stream, stream_id=0)`` raise
:class:`MalformedMessage` (a stream error PROTOCOL_ERROR).
"""

from __future__ import annotations

from proxy import _accel
from proxy.http2.errors import MalformedMessage

impl = _accel.load("proxy.http2", "validate")

RequestFields = impl.RequestFields
ResponseFields = impl.ResponseFields
validate_request_headers = impl.validate_request_headers
validate_response_headers = impl.validate_response_headers
validate_trailers = impl.validate_trailers
check_content_length = impl.check_content_length

__all__ = [
    "MalformedMessage",
    "RequestFields",
    "ResponseFields",
    "check_content_length",
    "validate_request_headers",
    "validate_response_headers",
    "validate_trailers",
]
