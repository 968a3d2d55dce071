"""Strict sans-I/O HTTP/1.1 message-head parser and chunked codec (the pure-Python twin).

This file is compiled a second time by Cython as ``_parser_c`` (``_parser_c.py`` is a symlink to
it and ``_parser_c.pxd`` adds the C types), so it must stay plain Python that Cython can type:
no ``import cython``, no closures on the hot path, no per-call regex compilation.

What "strict" means here is security-ops §6.2, row by row: CRLF only, one SP between request-line
parts, uppercase token methods, tchar field names with no whitespace before the colon, no obs-fold,
no CTLs in values, exactly one valid Host on HTTP/1.1, no Content-Length together with
Transfer-Encoding, ``Transfer-Encoding: chunked`` and nothing else, canonical Content-Length.
Request errors carry the status a proxy should answer with; response errors are all 502.
"""

from __future__ import annotations

import re

from proxy.http1.errors import ProtocolError

MODE_NONE = 0
MODE_LENGTH = 1
MODE_CHUNKED = 2
MODE_CLOSE = 3

# RFC 9110 §5.6.2 tchar; methods are restricted to uppercase (Istio: lowercase method -> 400).
_TCHAR = r"!#$%&'*+\-.^_`|~0-9A-Za-z"
_METHOD_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Z]+")
# What a head line may contain besides its CRLF: HTAB, SP, VCHAR, obs-text.
_HEAD_BYTES = b"\t" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
_VERSION_RE = re.compile(r"HTTP/[0-9]\.[0-9]")
_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "PATCH"))
# Field names with meaning to the parser; 0 = none.
_F_HOST = 1
_F_CONTENT_LENGTH = 2
_F_TRANSFER_ENCODING = 3
_F_CONNECTION = 4
_F_UPGRADE = 5
_F_EXPECT = 6
_SPECIAL_FIELDS = {
    "host": _F_HOST,
    "content-length": _F_CONTENT_LENGTH,
    "transfer-encoding": _F_TRANSFER_ENCODING,
    "connection": _F_CONNECTION,
    "upgrade": _F_UPGRADE,
    "expect": _F_EXPECT,
}
_COMMON_FIELDS = [
    "accept", "accept-charset", "accept-encoding", "accept-language", "accept-ranges", "age",
    "allow", "authorization", "b3", "baggage", "cache-control", "connection", "content-encoding",
    "content-language", "content-length", "content-type", "cookie", "date", "etag", "expect",
    "expires", "grpc-timeout", "host", "if-match", "if-modified-since", "if-none-match",
    "keep-alive", "last-modified", "location", "origin", "pragma", "proxy-connection", "range",
    "referer", "server", "set-cookie", "te", "traceparent", "tracestate", "trailer",
    "transfer-encoding", "upgrade", "user-agent", "vary", "via", "x-b3-parentspanid",
    "x-b3-sampled", "x-b3-spanid", "x-b3-traceid", "x-envoy-attempt-count",
    "x-envoy-decorator-operation", "x-envoy-expected-rq-timeout-ms", "x-envoy-peer-metadata",
    "x-envoy-peer-metadata-id", "x-envoy-upstream-service-time", "x-forwarded-client-cert",
    "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-real-ip", "x-request-id",
]  # fmt: skip
# Spelling as sent -> (lowercase name, special code): the common names skip validation and
# lowercasing. Fixed at import time (never grows with traffic).
_KNOWN_FIELDS = {}
for _name in _COMMON_FIELDS:
    for _spelling in (_name, "-".join(w.capitalize() for w in _name.split("-")), _name.upper()):
        _KNOWN_FIELDS[_spelling] = (_name, _SPECIAL_FIELDS.get(_name, 0))
for _spelling in ("ETag", "TE", "WWW-Authenticate", "X-Request-ID", "Content-MD5"):
    _KNOWN_FIELDS[_spelling] = (_spelling.lower(), _SPECIAL_FIELDS.get(_spelling.lower(), 0))
del _name, _spelling
# Trailer lines (not on the hot path) are checked with a regex: one field line, anchored at a
# line start (re.M) so that findall over a malformed block is O(n). OWS is stripped afterwards
# (stripping inside the regex would backtrack quadratically on runs of spaces). Coverage of the
# block is checked by summing match lengths.
_FIELD_RE = re.compile(r"^([" + _TCHAR + r"]+):([\t\x20-\x7e\x80-\xff]*)\r\n", re.M)
_TOKEN_RE = re.compile(r"[" + _TCHAR + r"]+")
_VALUE_RE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
# reg-name characters (unreserved / pct-encoded / sub-delims) plus the port separator
_REG_NAME_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~%!$&'()*+,;=:"
# uri-host [ ":" port ]; IP-literal without IPvFuture. Empty is allowed (RFC 9110 §7.2).
_HOST_RE = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?")
_AUTHORITY_FORM_RE = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]+):[0-9]+")
_ABSOLUTE_FORM_RE = re.compile(r"([A-Za-z][A-Za-z0-9+\-.]*)://([^/?]*)([^?]*)(?:\?(.*))?", re.S)
# chunk = chunk-size *( BWS ";" BWS ext-name [ BWS "=" BWS ( token / quoted-string ) ] ) CRLF
_CHUNK_LINE_RE = re.compile(
    rb"([0-9A-Fa-f]{1,16})"
    rb"(?:[ \t]*;[ \t]*[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
    rb"(?:[ \t]*=[ \t]*(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
    rb'|"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"))?)*'
)
_HEX_BYTES = b"0123456789abcdefABCDEF"
_MAX_CHUNK_LINE = 4096
# A request line may exceed the target limit by this much (method, two SPs, "HTTP/1.1"): the
# longest registered methods are under 20 bytes.
_REQUEST_LINE_EXTRA = 64


class RequestHead:
    """A parsed request head. Fields are documented in the facade, ``proxy.http1.parser``."""

    __slots__ = (
        "method",
        "target",
        "path",
        "query",
        "version",
        "headers",
        "host",
        "content_length",
        "chunked",
        "keep_alive",
        "upgrade",
        "expect_continue",
        "connection",
    )

    def __init__(
        self,
        method="GET",
        target="/",
        path="/",
        query="",
        version=11,
        headers=None,
        host="",
        content_length=-1,
        chunked=False,
        keep_alive=True,
        upgrade="",
        expect_continue=False,
        connection=(),
    ):
        # Only for building heads by hand (tests, synthetic requests); the parser bypasses it.
        self.method = method
        self.target = target
        self.path = path
        self.query = query
        self.version = version
        self.headers = [] if headers is None else headers
        self.host = host
        self.content_length = content_length
        self.chunked = chunked
        self.keep_alive = keep_alive
        self.upgrade = upgrade
        self.expect_continue = expect_continue
        self.connection = connection

    def get(self, name, default=None):
        """The first value of the (lowercase) field ``name``."""
        for k, v in self.headers:
            if k == name:
                return v
        return default

    def __repr__(self):
        return (
            f"<RequestHead {self.method} {self.target} HTTP/{self.version}"
            f" host={self.host!r} cl={self.content_length} chunked={self.chunked}>"
        )


class ResponseHead:
    """A parsed response head (1xx heads included)."""

    __slots__ = (
        "status",
        "reason",
        "version",
        "headers",
        "content_length",
        "chunked",
        "keep_alive",
        "connection",
    )

    def __init__(
        self,
        status=200,
        reason="",
        version=11,
        headers=None,
        content_length=-1,
        chunked=False,
        keep_alive=True,
        connection=(),
    ):
        # Only for building heads by hand (tests, local replies); the parser bypasses it.
        self.status = status
        self.reason = reason
        self.version = version
        self.headers = [] if headers is None else headers
        self.content_length = content_length
        self.chunked = chunked
        self.keep_alive = keep_alive
        self.connection = connection

    def get(self, name, default=None):
        """The first value of the (lowercase) field ``name``."""
        for k, v in self.headers:
            if k == name:
                return v
        return default

    def __repr__(self):
        return (
            f"<ResponseHead HTTP/{self.version} {self.status}"
            f" cl={self.content_length} chunked={self.chunked}>"
        )


def _incomplete(buf, max_head, status, max_line):
    """Decide for a buffer without a complete head within ``max_head``: None or an error.

    Bare CR/LF is reported as soon as it is seen, so that feeding a head byte at a time fails with
    the same status as feeding it whole (the complete-head path also reports it as a syntax 400
    before any other status). A request line still unended past ``max_line`` bytes is 414 at
    once (RFC 9110 §15.5.15), not 431 later: it is the target, not the fields, that is too long.
    """
    n = len(buf)
    limit = n if n < max_head else max_head
    crlf = buf.count(b"\r\n", 0, limit)
    if buf.count(b"\n", 0, limit) != crlf:
        raise ProtocolError(status if status == 502 else 400, "bare LF in head")
    cr = buf.count(b"\r", 0, limit)
    if limit > 0 and buf[limit - 1] == 13:
        cr -= 1  # a trailing CR may be the first half of a CRLF still to come
    if cr != crlf:
        raise ProtocolError(status if status == 502 else 400, "bare CR in head")
    if max_line > 0 and crlf == 0 and (n > max_line or n >= max_head):
        # as the complete-head path: forbidden bytes first (400), then the length (414)
        if buf[:limit].translate(None, _HEAD_BYTES).translate(None, b"\r"):
            raise ProtocolError(400, "invalid character in head")
        raise ProtocolError(414, "request line too long")
    if n >= max_head:
        raise ProtocolError(status if status == 502 else 431, "head too large")
    return None


def _split_head(head, status):
    """Decode a complete head (ending in CRLFCRLF) and split it into lines.

    Bare CR, bare LF and CTLs anywhere are rejected first, before any other check, so that a head
    fed byte at a time fails with the same status as the head fed whole. ``rest`` keeps only the
    CR, LF and forbidden bytes. It holds at least one CR and one LF per CRLF found by the split,
    so it is exactly that long iff there is no other CR, LF or forbidden byte.
    """
    text = head.decode("latin-1")
    lines = text.split("\r\n")
    crlf = len(lines) - 1
    rest = head.translate(None, _HEAD_BYTES)
    if len(rest) != 2 * crlf:
        if rest.translate(None, b"\r\n"):
            raise ProtocolError(status, "invalid character in head")
        raise ProtocolError(status, "bare CR or LF in head")
    return lines


def _valid_host(host):
    """uri-host [ ":" port ] (RFC 9110 §7.2); the common reg-name case avoids the regex."""
    if host.isascii():
        raw = host.encode("ascii")
        if not raw.translate(None, _REG_NAME_BYTES):
            colon = host.find(":")
            if colon < 0:
                return True
            port = host[colon + 1 :]
            return not port or (port.isdigit() and ":" not in port)
    return _HOST_RE.fullmatch(host) is not None


def _content_length_digits(value, status):
    """The one 1*DIGIT (at most 18) element of a Content-Length value (RFC 9112 §6.3).

    A list is accepted only when its elements are identical as written (``5, 5``; not ``5, 05``).
    """
    if len(value) <= 18 and value.isascii() and value.isdigit():
        return value
    if "," not in value:
        raise ProtocolError(status, "invalid content-length")
    first = ""
    for part in value.split(","):
        part = part.strip(" \t")
        if not (len(part) <= 18 and part.isascii() and part.isdigit()):
            raise ProtocolError(status, "invalid content-length")
        if not first:
            first = part
        elif part != first:
            raise ProtocolError(status, "conflicting content-length")
    return first


def _connection_tokens(value, current, status):
    tokens = list(current)
    for part in value.split(","):
        part = part.strip(" \t")
        if not part:
            continue
        if _TOKEN_RE.fullmatch(part) is None:
            raise ProtocolError(status, "invalid connection header")
        tokens.append(part.lower())
    return tuple(tokens)


def _parse_fields(lines, max_headers, status):
    """Check and split the field lines ``lines[1:-2]`` (the head went through _split_head).

    One pass; returns ``(headers, host, host_count, content_length, te_count, te_value,
    connection, upgrade, expect_continue)``.
    """
    headers = []
    count = 0
    host = ""
    host_count = 0
    content_length = -1
    cl_digits = ""
    te_count = 0
    te_value = ""
    connection = ()
    upgrade = ""
    expect_continue = False
    for i in range(1, len(lines) - 2):
        line = lines[i]
        colon = line.find(":")
        if colon <= 0:
            raise ProtocolError(status, "invalid header line")
        name = line[:colon]
        count += 1
        if count > max_headers:
            raise ProtocolError(431 if status == 400 else status, "too many headers")
        known = _KNOWN_FIELDS.get(name)
        if known is None:
            # obs-fold, whitespace before the colon or before the first field land here
            if _TOKEN_RE.fullmatch(name) is None:
                raise ProtocolError(status, "invalid header name")
            name = name.lower()
            code = _SPECIAL_FIELDS.get(name, 0)
        else:
            name, code = known
        value = line[colon + 1 :].strip(" \t")
        if code != 0:
            if code == _F_CONTENT_LENGTH:
                digits = _content_length_digits(value, status)
                if content_length == -1:
                    content_length = int(digits)
                    cl_digits = digits
                    if len(digits) > 1 and digits[0] == "0" or len(digits) != len(value):
                        value = str(content_length)  # forward one canonical value
                elif digits != cl_digits:
                    raise ProtocolError(status, "conflicting content-length")
                else:
                    continue  # identical duplicate: forward one field
            elif code == _F_HOST:
                host_count += 1
                host = value
            elif code == _F_TRANSFER_ENCODING:
                te_count += 1
                te_value = value
            elif code == _F_CONNECTION:
                connection = _connection_tokens(value, connection, status)
            elif code == _F_UPGRADE:
                if not upgrade:
                    upgrade = value.lower()
            elif code == _F_EXPECT:
                if value.lower() == "100-continue":
                    expect_continue = True
        headers.append((name, value))
    return (
        headers,
        host,
        host_count,
        content_length,
        te_count,
        te_value,
        connection,
        upgrade,
        expect_continue,
    )


def _request_line(req, line, max_line):
    """``method SP request-target SP HTTP-version`` with single SPs (RFC 9112 §3), into ``req``.

    Returns the version: 11, 10, or 0 for a well-formed version this parser does not speak
    (answered 505 only once the fields are known to be sound). The parts go straight into
    ``req`` rather than a tuple: the compiled build then allocates nothing for them.
    """
    if len(line) > max_line:
        raise ProtocolError(414, "request line too long")
    parts = line.split(" ")
    if len(parts) != 3:
        raise ProtocolError(400, "invalid request line")
    method, target, http_version = parts
    if method not in _METHODS and _METHOD_RE.fullmatch(method) is None:
        raise ProtocolError(400, "invalid method")
    # CTLs are gone already; HTAB and obs-text are not VCHAR
    if not target or not target.isascii() or "\t" in target:
        raise ProtocolError(400, "invalid request target")
    if http_version == "HTTP/1.1":
        version = 11
    elif http_version == "HTTP/1.0":
        version = 10
    elif _VERSION_RE.fullmatch(http_version) is not None:
        version = 0
    else:
        raise ProtocolError(400, "invalid request line")
    req.method = method
    req.target = target
    req.version = version
    return version


def _target_form(req, method, target):
    """The request-target's form (RFC 9112 §3.2): sets ``req.path`` and ``req.query``.

    Returns the absolute-form's authority, None for the other forms.
    """
    query = ""
    url_host = None
    if "#" in target:
        raise ProtocolError(400, "fragment in request target")
    if target[0] == "/":
        q = target.find("?")
        if q < 0:
            path = target
        else:
            path = target[:q]
            query = target[q + 1 :]
        if method == "CONNECT":
            raise ProtocolError(400, "CONNECT needs authority-form")
    elif method == "CONNECT":
        if _AUTHORITY_FORM_RE.fullmatch(target) is None:
            raise ProtocolError(400, "invalid CONNECT target")
        path = target
    elif target == "*":
        if method != "OPTIONS":
            raise ProtocolError(400, "asterisk-form is only for OPTIONS")
        path = "*"
    else:
        a = _ABSOLUTE_FORM_RE.fullmatch(target)
        if a is None:
            raise ProtocolError(400, "invalid request target")
        scheme = a.group(1).lower()
        if scheme != "http" and scheme != "https":
            raise ProtocolError(400, "unsupported scheme in request target")
        url_host = a.group(2)
        if not url_host or not _valid_host(url_host):
            raise ProtocolError(400, "invalid authority in request target")
        path = a.group(3) or "/"
        if a.group(4) is not None:
            query = a.group(4)
    req.path = path
    req.query = query
    return url_host


def _request_host(host, host_count, url_host, version):
    """The request's host: exactly one valid Host on HTTP/1.1, and the absolute-form's
    authority over it (RFC 9112 §3.2.2)."""
    if host_count > 1:
        raise ProtocolError(400, "duplicate host")
    if host_count == 0:
        if version == 11:
            raise ProtocolError(400, "missing host")
    elif not _valid_host(host):
        raise ProtocolError(400, "invalid host")
    if url_host is not None:
        return url_host
    return host


def _request_chunked(te_count, te_value, content_length, version):
    """The body framing decision: chunked, or not. Only ``Transfer-Encoding: chunked``, once,
    on HTTP/1.1 and without Content-Length passes: anything else is how requests get smuggled."""
    if not te_count:
        return False
    if te_count > 1 or te_value.lower() != "chunked":
        raise ProtocolError(501, "unsupported transfer-encoding")
    if version == 10:
        raise ProtocolError(400, "transfer-encoding on HTTP/1.0")
    if content_length != -1:
        raise ProtocolError(400, "content-length with transfer-encoding")
    return True


def parse_request_head(buf, max_head=61440, max_headers=100, max_uri=8192):
    """Parse one request head from the start of ``buf``.

    Returns ``(head, consumed)`` or None while the head is incomplete; raises ProtocolError.
    The checks run in a fixed order (request line, fields, target, host, framing), so a head
    with several faults always gets the same answer.
    """
    end = buf.find(b"\r\n\r\n", 0, max_head)
    max_line = max_uri + _REQUEST_LINE_EXTRA
    if end < 0:
        return _incomplete(buf, max_head, 400, max_line)
    lines = _split_head(buf[: end + 4], 400)
    req = RequestHead.__new__(RequestHead)
    version = _request_line(req, lines[0], max_line)
    target = req.target

    (
        headers,
        host,
        host_count,
        content_length,
        te_count,
        te_value,
        connection,
        upgrade,
        expect_continue,
    ) = _parse_fields(lines, max_headers, 400)

    if len(target) > max_uri:
        raise ProtocolError(414, "uri too long")
    if version == 0:
        raise ProtocolError(505, "http version not supported")
    url_host = _target_form(req, req.method, target)
    req.host = _request_host(host, host_count, url_host, version)
    req.chunked = _request_chunked(te_count, te_value, content_length, version)

    if version == 11:
        keep_alive = "close" not in connection
    else:
        keep_alive = "keep-alive" in connection and "close" not in connection
    if upgrade and "upgrade" not in connection:
        upgrade = ""

    req.headers = headers
    req.content_length = content_length
    req.keep_alive = keep_alive
    req.upgrade = upgrade
    req.expect_continue = expect_continue
    req.connection = connection
    return req, end + 4


def parse_response_head(buf, max_head=61440, max_headers=100):
    """Parse one response head (1xx included); every problem is ProtocolError(502)."""
    end = buf.find(b"\r\n\r\n", 0, max_head)
    if end < 0:
        return _incomplete(buf, max_head, 502, 0)
    lines = _split_head(buf[: end + 4], 502)

    # status-line = HTTP-version SP 3DIGIT SP [ reason-phrase ]; the second SP is often missing
    line = lines[0]
    http_version = line[:8]
    if http_version == "HTTP/1.1":
        version = 11
    elif http_version == "HTTP/1.0":
        version = 10
    else:
        raise ProtocolError(502, "invalid status line")
    code = line[9:12]
    if len(line) < 12 or line[8] != " " or not (code.isascii() and code.isdigit()):
        raise ProtocolError(502, "invalid status line")
    if len(line) == 12:
        reason = ""
    elif line[12] == " ":
        reason = line[13:]
    else:
        raise ProtocolError(502, "invalid status line")
    status = int(code)
    if status < 100:
        raise ProtocolError(502, "invalid status code")

    (
        headers,
        _host,
        _host_count,
        content_length,
        te_count,
        te_value,
        connection,
        _upgrade,
        _expect,
    ) = _parse_fields(lines, max_headers, 502)

    chunked = False
    if te_count:
        if te_count > 1 or te_value.lower() != "chunked":
            raise ProtocolError(502, "unsupported transfer-encoding")
        if version == 10:
            raise ProtocolError(502, "transfer-encoding on HTTP/1.0")
        if content_length != -1:
            raise ProtocolError(502, "content-length with transfer-encoding")
        chunked = True
    if version == 11:
        keep_alive = "close" not in connection
    else:
        keep_alive = "keep-alive" in connection and "close" not in connection

    resp = ResponseHead.__new__(ResponseHead)
    resp.status = status
    resp.reason = reason
    resp.version = version
    resp.headers = headers
    resp.content_length = content_length
    resp.chunked = chunked
    resp.keep_alive = keep_alive
    resp.connection = connection
    return resp, end + 4


def response_body_mode(head, request_method):
    """How the body of a response to ``request_method`` is delimited: ``(MODE_*, length)``."""
    status = head.status
    if (
        request_method == "HEAD"
        or status < 200
        or status == 204
        or status == 304
        or (request_method == "CONNECT" and status < 300)
    ):
        return MODE_NONE, 0
    if head.chunked:
        return MODE_CHUNKED, -1
    if head.content_length >= 0:
        return MODE_LENGTH, head.content_length
    return MODE_CLOSE, -1


# ChunkedDecoder states
_SIZE = 0
_DATA = 1
_DATA_CRLF = 2
_TRAILER = 3
_DONE = 4


class ChunkedDecoder:
    """Incremental chunked-body decoder (RFC 9112 §7.1): bytes in, body pieces out."""

    __slots__ = ("done", "trailers", "unused", "_state", "_remaining", "_buf", "_max_trailer")

    def __init__(self, max_trailer_size=16384):
        self.done = False
        self.trailers = []
        self.unused = b""
        self._state = _SIZE
        self._remaining = 0
        self._buf = b""
        self._max_trailer = max_trailer_size

    def feed(self, data):
        """Decode ``data``; returns the body pieces it completes (possibly none)."""
        out = []
        if self._state == _DONE:
            if data:
                self.unused += bytes(data)
            return out
        if self._buf:
            buf = self._buf + bytes(data)
            self._buf = b""
        else:
            buf = bytes(data)
        pos = 0
        n = len(buf)
        while pos < n:
            state = self._state
            if state == _DATA:
                take = n - pos
                if self._remaining <= take:
                    take = self._remaining
                    self._state = _DATA_CRLF
                out.append(buf[pos : pos + take])
                self._remaining -= take
                pos += take
            elif state == _DATA_CRLF:
                if buf[pos] != 13:
                    raise ProtocolError(400, "chunk data not followed by CRLF")
                if pos + 1 == n:
                    self._buf = b"\r"
                    break
                if buf[pos + 1] != 10:
                    raise ProtocolError(400, "chunk data not followed by CRLF")
                pos += 2
                self._state = _SIZE
            elif state == _SIZE:
                i = buf.find(b"\r\n", pos)
                if i < 0:
                    self._stash_line(buf, pos, n, _MAX_CHUNK_LINE)
                    break
                if i - pos > _MAX_CHUNK_LINE:
                    raise ProtocolError(400, "chunk line too long")
                line = buf[pos:i]
                if 0 < len(line) <= 16 and not line.translate(None, _HEX_BYTES):
                    size = int(line, 16)  # the common case: no extensions
                else:
                    m = _CHUNK_LINE_RE.fullmatch(line)
                    if m is None:
                        raise ProtocolError(400, "invalid chunk line")
                    size = int(m.group(1), 16)
                pos = i + 2
                if size == 0:
                    self._state = _TRAILER
                else:
                    self._remaining = size
                    self._state = _DATA
            else:  # _TRAILER
                if buf[pos] == 13 and pos + 1 < n and buf[pos + 1] == 10:
                    self._finish(buf, pos + 2, [])
                    break
                i = buf.find(b"\r\n\r\n", pos)
                if i < 0:
                    self._stash_line(buf, pos, n, self._max_trailer)
                    break
                if i + 2 - pos > self._max_trailer:
                    raise ProtocolError(400, "trailer section too large")
                trailers = _parse_trailers(buf[pos : i + 2].decode("latin-1"))
                self._finish(buf, i + 4, trailers)
                break
        return out

    def _stash_line(self, buf, pos, n, limit):
        """Keep an incomplete line for the next feed, failing early on what can never parse."""
        rest = buf[pos:n]
        if len(rest) > limit + 1:  # the final line is at least len(rest) - 1 (CR may end rest)
            raise ProtocolError(400, "chunk line or trailer section too large")
        crlf = rest.count(b"\r\n")
        if rest.count(b"\n") != crlf:
            raise ProtocolError(400, "bare LF in chunked framing")
        cr = rest.count(b"\r")
        if rest[len(rest) - 1] == 13:
            cr -= 1
        if cr != crlf:
            raise ProtocolError(400, "bare CR in chunked framing")
        self._buf = rest

    def _finish(self, buf, pos, trailers):
        self.trailers = trailers
        self.unused = buf[pos:]
        self.done = True
        self._state = _DONE


def _parse_trailers(text):
    """A trailer section (each line ending CRLF) parsed with the header grammar."""
    pairs = _FIELD_RE.findall(text)
    trailers = []
    covered = 0
    for name, value in pairs:
        covered += len(name) + len(value) + 3
        trailers.append((name.lower(), value.strip(" \t")))
    if covered != len(text):
        raise ProtocolError(400, "invalid trailer line")
    return trailers


def encode_chunk(data):
    """One chunk of ``data``; empty data encodes to nothing (an empty chunk would end the body)."""
    if not data:
        return b""
    return b"%x\r\n" % len(data) + bytes(data) + b"\r\n"


def encode_last_chunk(trailers=None):
    """The last-chunk and trailer section."""
    if not trailers:
        return b"0\r\n\r\n"
    parts = [b"0\r\n"]
    for name, value in trailers:
        if _TOKEN_RE.fullmatch(name) is None or _VALUE_RE.fullmatch(value) is None:
            raise ValueError(f"invalid trailer field {name!r}")
        parts.append(f"{name}: {value}\r\n".encode("latin-1"))
    parts.append(b"\r\n")
    return b"".join(parts)
