"""Strict HTTP/1.1 head parser and chunked codec: the facade over the compiled build or its twin.

API (both builds; ``proxy/http1/_parser_py.py`` is the readable source):

* ``parse_request_head(buf, max_head=61440, max_headers=100, max_uri=8192)`` ->
  ``(RequestHead, consumed)`` or None while incomplete; raises :class:`ProtocolError` with status
  400 (malformed), 414 (target longer than ``max_uri``), 431 (head over ``max_head`` bytes or more
  than ``max_headers`` fields), 501 (Transfer-Encoding other than exactly ``chunked``), 505.
* ``parse_response_head(buf, max_head=61440, max_headers=100)`` -> ``(ResponseHead, consumed)`` or
  None; every problem with a response, limits included, is ``ProtocolError(502)``.
* ``response_body_mode(head, request_method)`` -> ``(MODE_*, length)``.
* ``ChunkedDecoder(max_trailer_size=16384).feed(data)`` -> body pieces; ``done``, ``trailers``,
  ``unused``. ``encode_chunk(data)``, ``encode_last_chunk(trailers=None)``.

``RequestHead``: method, target, path, query, version (10/11), headers (lowercase name, value),
host, content_length (-1 if absent), chunked, keep_alive, upgrade, expect_continue, connection;
``get(name, default=None)``. ``ResponseHead``: status, reason, version, headers, content_length,
chunked, keep_alive, connection; ``get``. Both have keyword constructors (defaults: a GET / 200)
for heads built by hand; the parser does not call them.

Choices beyond RFC minimums (security-ops §6.2): empty lines before the request line, a fragment
(``#``) in the target, userinfo or a non-http(s) scheme in absolute-form, and non-token Connection
elements are 400. ``headers`` carries one Content-Length field with the canonical decimal (identical
duplicates and ``5, 5`` collapse). ``response_body_mode`` also treats a 2xx answer to CONNECT as
bodiless. ``ChunkedDecoder`` rejects whitespace after the chunk size and lines over 4 KiB; data fed
after ``done`` is appended to ``unused``. Trailers are returned as parsed: the caller must not let
framing fields (content-length, transfer-encoding, host) in them change anything.
"""

from __future__ import annotations

from proxy import _accel
from proxy.http1.errors import ProtocolError

_impl = _accel.load("proxy.http1", "parser")

RequestHead = _impl.RequestHead
ResponseHead = _impl.ResponseHead
ChunkedDecoder = _impl.ChunkedDecoder
parse_request_head = _impl.parse_request_head
parse_response_head = _impl.parse_response_head
response_body_mode = _impl.response_body_mode
encode_chunk = _impl.encode_chunk
encode_last_chunk = _impl.encode_last_chunk
MODE_NONE = _impl.MODE_NONE
MODE_LENGTH = _impl.MODE_LENGTH
MODE_CHUNKED = _impl.MODE_CHUNKED
MODE_CLOSE = _impl.MODE_CLOSE

IMPLEMENTATION = _accel.IMPLEMENTATION["proxy.http1.parser"]

__all__ = [
    "MODE_CHUNKED",
    "MODE_CLOSE",
    "MODE_LENGTH",
    "MODE_NONE",
    "ChunkedDecoder",
    "ProtocolError",
    "RequestHead",
    "ResponseHead",
    "encode_chunk",
    "encode_last_chunk",
    "parse_request_head",
    "parse_response_head",
    "response_body_mode",
]
