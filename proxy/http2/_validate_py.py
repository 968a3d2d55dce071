# cython: annotation_typing=False
"""HTTP/2 message validation (RFC 9113 8.1-8.3): turn a decoded header list into the request
or response it describes, or refuse it as malformed.

A malformed message is a stream error PROTOCOL_ERROR (:class:`MalformedMessage`); an
intermediary must not forward it. The checks are those of research/security-ops.md 6.4 and 6.5:
they are what keeps HTTP/2 -> HTTP/1.1 downgrade smuggling (H2.CL, H2.TE, H2.CRLF) out.

This is the readable twin; ``_validate_c.pxd`` types the same source for ``_validate_c``.
"""

from __future__ import annotations

import re

from proxy.http2.errors import MalformedMessage

# The compiled module walks octets through a C pointer, which a Python loop cannot match, so
# the twin checks octets with bytes.translate / bytes.__contains__ (C loops) instead.
_COMPILED = not __file__.endswith(".py")

_CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)


def _table(allowed: bytes) -> bytes:
    """256 flags: 1 for every octet not in ``allowed``."""
    return bytes(0 if c in allowed else 1 for c in range(256))


def _outside(allowed: bytes):  # noqa: ANN202 - a bound re.Pattern.search
    """The twin's check: finds an octet not in ``allowed``."""
    return re.compile(b"[^" + b"".join(b"\\x%02x" % c for c in allowed) + b"]").search


# RFC 9113 8.2.1: a field name holds no 0x00-0x20, no uppercase, no 0x7f-0xff, and no ':'
_NAME_OK = bytes(c for c in range(0x21, 0x7F) if not 0x41 <= c <= 0x5A and c != 0x3A)
_NAME_BAD = _table(_NAME_OK)
_NAME_OUTSIDE = _outside(_NAME_OK)
# RFC 9110 5.6.2 token, for :method and :scheme
_TOKEN_OK = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_TOKEN_BAD = _table(_TOKEN_OK)
_TOKEN_OUTSIDE = _outside(_TOKEN_OK)
# :path and :authority become the HTTP/1.1 request line and Host: visible ASCII only
_TARGET_OK = bytes(range(0x21, 0x7F))
_TARGET_BAD = _table(_TARGET_OK)
_TARGET_OUTSIDE = _outside(_TARGET_OK)
_VALUE_BAD = bytes(1 if c in (0, 10, 13) else 0 for c in range(256))


class RequestFields:
    """A validated request head. ``authority`` is ``:authority``, or ``host`` when only that
    was sent; ``content_length`` is None when absent; ``headers`` are the regular fields."""

    def __init__(
        self,
        method: bytes,
        scheme: bytes | None,
        authority: bytes | None,
        path: bytes | None,
        protocol: bytes | None,
        content_length: int | None,
        headers: list,
    ) -> None:
        self.method = method
        self.scheme = scheme
        self.authority = authority
        self.path = path
        self.protocol = protocol
        self.content_length = content_length
        self.headers = headers

    def __repr__(self) -> str:
        return (
            f"RequestFields(method={self.method!r}, scheme={self.scheme!r}, "
            f"authority={self.authority!r}, path={self.path!r}, protocol={self.protocol!r}, "
            f"content_length={self.content_length!r}, headers={self.headers!r})"
        )


class ResponseFields:
    """A validated response head: the status, the content length (None when absent) and the
    regular fields."""

    def __init__(self, status: int, content_length: int | None, headers: list) -> None:
        self.status = status
        self.content_length = content_length
        self.headers = headers

    def __repr__(self) -> str:
        return (
            f"ResponseFields(status={self.status!r}, content_length={self.content_length!r}, "
            f"headers={self.headers!r})"
        )


def _has_any(data: bytes, table: bytes, outside) -> bool:  # noqa: ANN001
    """Whether ``data`` holds an octet flagged in ``table`` (found by ``outside``)."""
    if _COMPILED:
        p = data
        t = table
        for i in range(len(data)):  # noqa: SIM110 - a C loop once compiled
            if t[p[i]]:
                return True
        return False
    return outside(data) is not None


def _bad_value(value: bytes) -> bool:
    """RFC 9113 8.2.1: no NUL, CR or LF; no leading or trailing SP or HTAB."""
    n = len(value)
    if n == 0:
        return False
    p = value
    c = p[0]
    if c == 32 or c == 9:
        return True
    c = p[n - 1]
    if c == 32 or c == 9:
        return True
    if _COMPILED:
        t = _VALUE_BAD
        for i in range(n):  # noqa: SIM110 - a C loop once compiled
            if t[p[i]]:
                return True
        return False
    return b"\n" in value or b"\r" in value or b"\0" in value


def _content_length(value: bytes, previous: object, stream_id: int) -> int:
    if not value or len(value) > 18 or not value.isdigit():
        raise MalformedMessage(f"invalid content-length {value!r}", stream_id)
    n = int(value)
    if previous is not None and previous != n:
        raise MalformedMessage("conflicting content-length fields", stream_id)
    return n


def _regular(name: bytes, value: bytes, stream_id: int) -> None:
    """The checks every regular field gets, in requests, responses and trailers."""
    if not name or _has_any(name, _NAME_BAD, _NAME_OUTSIDE):
        raise MalformedMessage(f"invalid field name {name!r}", stream_id)
    if name in _CONNECTION_SPECIFIC:
        raise MalformedMessage(f"connection-specific field {name!r}", stream_id)


def _check_request_pseudo(
    method: bytes | None,
    scheme: bytes | None,
    authority: bytes | None,
    path: bytes | None,
    protocol: bytes | None,
    host: bytes | None,
    stream_id: int,
) -> bytes | None:
    """RFC 9113 8.3.1 / 8.5: the pseudo-headers together make one request an HTTP/1.1 hop can
    carry. Returns the authority: ``:authority``, else ``host``."""
    if method is None:
        raise MalformedMessage("missing :method", stream_id)
    if not method or _has_any(method, _TOKEN_BAD, _TOKEN_OUTSIDE):
        raise MalformedMessage("invalid :method", stream_id)
    if method == b"CONNECT" and protocol is None:
        # RFC 9113 8.5: only :authority, the host and port to tunnel to
        if scheme is not None or path is not None:
            raise MalformedMessage("CONNECT with :scheme or :path", stream_id)
        if not authority:
            raise MalformedMessage("CONNECT without :authority", stream_id)
    else:
        if protocol is not None and method != b"CONNECT":
            raise MalformedMessage(":protocol on a request other than CONNECT", stream_id)
        if scheme is None:
            raise MalformedMessage("missing :scheme", stream_id)
        if path is None:
            raise MalformedMessage("missing :path", stream_id)
        if not scheme or _has_any(scheme, _TOKEN_BAD, _TOKEN_OUTSIDE):
            raise MalformedMessage("invalid :scheme", stream_id)
        if not path:
            raise MalformedMessage("empty :path", stream_id)
        if _has_any(path, _TARGET_BAD, _TARGET_OUTSIDE):
            raise MalformedMessage("invalid octet in :path", stream_id)
        if scheme == b"http" or scheme == b"https":
            # origin-form, or asterisk-form for OPTIONS: what an HTTP/1.1 request line allows
            if path[0] != 0x2F and not (path == b"*" and method == b"OPTIONS"):
                raise MalformedMessage(":path is neither origin-form nor '*'", stream_id)
            if authority is not None and b"@" in authority:
                raise MalformedMessage(":authority with userinfo", stream_id)
    if authority is not None:
        if _has_any(authority, _TARGET_BAD, _TARGET_OUTSIDE):
            raise MalformedMessage("invalid octet in :authority", stream_id)
        if host is not None and host != authority:
            raise MalformedMessage("host differs from :authority", stream_id)
    elif host is not None:
        if not host or _has_any(host, _TARGET_BAD, _TARGET_OUTSIDE):
            raise MalformedMessage("invalid host", stream_id)
        authority = host
    return authority


def validate_request_headers(
    headers: list, stream_id: int = 0, extended_connect: bool = False
) -> RequestFields:
    """RFC 9113 8.3.1 / 8.5 / RFC 8441: check a request header list; raise MalformedMessage.

    ``extended_connect``: we sent SETTINGS_ENABLE_CONNECT_PROTOCOL=1, so ``:protocol`` is known.
    """
    method = None
    scheme = None
    authority = None
    path = None
    protocol = None
    host = None
    content_length = None
    regular: list = []
    seen_regular = False
    for field in headers:
        name = field[0]
        value = field[1]
        if _bad_value(value):
            raise MalformedMessage(f"invalid value for {name!r}", stream_id)
        if name and name[0] == 0x3A:  # ':'
            if seen_regular:
                raise MalformedMessage(f"pseudo-header {name!r} after a regular field", stream_id)
            if name == b":method":
                if method is not None:
                    raise MalformedMessage("duplicate :method", stream_id)
                method = value
            elif name == b":path":
                if path is not None:
                    raise MalformedMessage("duplicate :path", stream_id)
                path = value
            elif name == b":scheme":
                if scheme is not None:
                    raise MalformedMessage("duplicate :scheme", stream_id)
                scheme = value
            elif name == b":authority":
                if authority is not None:
                    raise MalformedMessage("duplicate :authority", stream_id)
                authority = value
            elif name == b":protocol" and extended_connect:
                if protocol is not None:
                    raise MalformedMessage("duplicate :protocol", stream_id)
                protocol = value
            else:
                raise MalformedMessage(f"unknown request pseudo-header {name!r}", stream_id)
            continue
        seen_regular = True
        _regular(name, value, stream_id)
        if name == b"te":
            if value.lower() != b"trailers":
                raise MalformedMessage("te other than trailers", stream_id)
        elif name == b"content-length":
            content_length = _content_length(value, content_length, stream_id)
        elif name == b"host":
            if host is not None and host != value:
                raise MalformedMessage("conflicting host fields", stream_id)
            host = value
        regular.append(field)

    authority = _check_request_pseudo(method, scheme, authority, path, protocol, host, stream_id)
    return RequestFields(method, scheme, authority, path, protocol, content_length, regular)


def validate_response_headers(headers: list, stream_id: int = 0) -> ResponseFields:
    """RFC 9113 8.3.2: exactly one three-digit ``:status`` first, then valid regular fields."""
    status = -1
    content_length = None
    regular: list = []
    seen_regular = False
    for field in headers:
        name = field[0]
        value = field[1]
        if _bad_value(value):
            raise MalformedMessage(f"invalid value for {name!r}", stream_id)
        if name and name[0] == 0x3A:
            if seen_regular:
                raise MalformedMessage(f"pseudo-header {name!r} after a regular field", stream_id)
            if name != b":status":
                raise MalformedMessage(f"unknown response pseudo-header {name!r}", stream_id)
            if status >= 0:
                raise MalformedMessage("duplicate :status", stream_id)
            if len(value) != 3 or not value.isdigit() or value[0] == 0x30:
                raise MalformedMessage(f"invalid :status {value!r}", stream_id)
            status = int(value)
            continue
        seen_regular = True
        _regular(name, value, stream_id)
        if name == b"te":
            if value.lower() != b"trailers":
                raise MalformedMessage("te other than trailers", stream_id)
        elif name == b"content-length":
            content_length = _content_length(value, content_length, stream_id)
        regular.append(field)
    if status < 0:
        raise MalformedMessage("missing :status", stream_id)
    return ResponseFields(status, content_length, regular)


def validate_trailers(headers: list, stream_id: int = 0) -> list:
    """RFC 9113 8.1: a trailer section has no pseudo-headers; the regular-field rules apply."""
    for field in headers:
        name = field[0]
        value = field[1]
        if _bad_value(value):
            raise MalformedMessage(f"invalid value for {name!r}", stream_id)
        if name and name[0] == 0x3A:
            raise MalformedMessage(f"pseudo-header {name!r} in trailers", stream_id)
        _regular(name, value, stream_id)
        if name == b"te" and value.lower() != b"trailers":
            raise MalformedMessage("te other than trailers", stream_id)
    return headers if isinstance(headers, list) else list(headers)


def check_content_length(
    content_length: int | None, received: int, end_stream: bool, stream_id: int = 0
) -> None:
    """RFC 9113 8.1.1: DATA must add up to content-length (the H2.CL smuggling defence).

    Call with the running total of DATA payload octets (padding excluded) after each frame.
    """
    if content_length is None:
        return
    if received > content_length or (end_stream and received != content_length):
        raise MalformedMessage(
            f"DATA length {received} disagrees with content-length {content_length}", stream_id
        )
