"""Request heads: valid forms, every row of security-ops §6.2 with its status, limits."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.http1.helpers import incremental, outcome, status_of


def req(head: bytes, *lines: bytes, version: bytes = b"HTTP/1.1") -> bytes:
    """A request head: ``head`` is ``METHOD target``; lines are full field lines."""
    return head + b" " + version + b"\r\n" + b"".join(x + b"\r\n" for x in lines) + b"\r\n"


HOST = b"Host: svc.ns.svc.cluster.local:8080"


def parse(p, data, **kw):
    r = p.parse_request_head(data, **kw)
    assert r is not None
    return r


# -- valid requests ---------------------------------------------------------------------------


def test_simple_get(p):
    data = req(b"GET /api/v1/items?id=7&x=y", HOST, b"User-Agent: curl/8", b"Accept: */*")
    head, n = parse(p, data)
    assert n == len(data)
    assert head.method == "GET"
    assert head.target == "/api/v1/items?id=7&x=y"
    assert head.path == "/api/v1/items"
    assert head.query == "id=7&x=y"
    assert head.version == 11
    assert head.headers == [
        ("host", "svc.ns.svc.cluster.local:8080"),
        ("user-agent", "curl/8"),
        ("accept", "*/*"),
    ]
    assert head.host == "svc.ns.svc.cluster.local:8080"
    assert head.content_length == -1
    assert head.chunked is False
    assert head.keep_alive is True
    assert head.upgrade == ""
    assert head.expect_continue is False
    assert head.connection == ()
    assert head.get("accept") == "*/*"
    assert head.get("missing") is None
    assert head.get("missing", "d") == "d"


@pytest.mark.parametrize(
    "method",
    ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "PURGE", "M-SEARCH"],
)
def test_methods(p, method):
    head, _ = parse(p, req(method.encode() + b" /", HOST))
    assert head.method == method


def test_empty_query_and_repeated_question_marks(p):
    head, _ = parse(p, req(b"GET /a?", HOST))
    assert (head.path, head.query) == ("/a", "")
    head, _ = parse(p, req(b"GET /a?b?c=/d", HOST))
    assert (head.path, head.query) == ("/a", "b?c=/d")


def test_absolute_form_authority_wins_over_host(p):
    head, _ = parse(p, req(b"GET http://Reviews.default:9080/r/1?x=2", b"Host: evil.example"))
    assert head.host == "Reviews.default:9080"
    assert (head.path, head.query) == ("/r/1", "x=2")
    assert head.get("host") == "evil.example"  # the field is kept; the proxy decides
    head, _ = parse(p, req(b"GET HTTPS://h", HOST))
    assert (head.host, head.path, head.query) == ("h", "/", "")
    head, _ = parse(p, req(b"GET http://[::1]:80?q", HOST))
    assert (head.host, head.path, head.query) == ("[::1]:80", "/", "q")


def test_asterisk_form_and_connect(p):
    head, _ = parse(p, req(b"OPTIONS *", HOST))
    assert (head.path, head.query) == ("*", "")
    head, _ = parse(p, req(b"CONNECT db.internal:5432", b"Host: db.internal:5432"))
    assert head.path == "db.internal:5432"
    assert head.host == "db.internal:5432"


def test_http10(p):
    head, _ = parse(p, req(b"GET /", version=b"HTTP/1.0"))
    assert head.version == 10
    assert head.host == ""
    assert head.keep_alive is False
    head, _ = parse(p, req(b"GET /", b"Connection: Keep-Alive", version=b"HTTP/1.0"))
    assert head.keep_alive is True
    assert head.connection == ("keep-alive",)


def test_connection_tokens_and_keep_alive(p):
    head, _ = parse(p, req(b"GET /", HOST, b"Connection: Close, X-Auth", b"connection: ,te,"))
    assert head.connection == ("close", "x-auth", "te")
    assert head.keep_alive is False
    assert head.get("connection") == "Close, X-Auth"


def test_upgrade_and_expect(p):
    head, _ = parse(p, req(b"GET /ws", HOST, b"Connection: Upgrade", b"Upgrade: WebSocket"))
    assert head.upgrade == "websocket"
    head, _ = parse(p, req(b"GET /ws", HOST, b"Upgrade: websocket"))
    assert head.upgrade == ""  # not a hop-by-hop request to upgrade without the Connection token
    head, _ = parse(p, req(b"POST /", HOST, b"Expect: 100-Continue", b"Content-Length: 3"))
    assert head.expect_continue is True
    head, _ = parse(p, req(b"POST /", HOST, b"Expect: something"))
    assert head.expect_continue is False


def test_field_values_ows_case_and_latin1(p):
    head, _ = parse(
        p,
        req(b"GET /", HOST, b"X-Spaced: \t a  b \t", b"X-Empty:", b"X-Obs: caf\xe9", b"X_Under: 1"),
    )
    assert head.headers[1:] == [
        ("x-spaced", "a  b"),
        ("x-empty", ""),
        ("x-obs", "caf\xe9"),
        (
            "x_under",
            "1",
        ),  # allowed by the parser; the proxy decides (Envoy's headers_with_underscores)
    ]


def test_content_length_and_chunked(p):
    head, _ = parse(p, req(b"POST /", HOST, b"Content-Length: 0042"))
    assert head.content_length == 42
    assert head.headers[1] == ("content-length", "42")
    head, _ = parse(p, req(b"POST /", HOST, b"Transfer-Encoding: Chunked"))
    assert head.chunked is True and head.content_length == -1
    head, _ = parse(p, req(b"POST /", HOST))
    assert head.content_length == -1 and head.chunked is False  # no body (§6.2 row 16)


def test_identical_content_lengths_collapse(p):
    head, _ = parse(p, req(b"POST /", HOST, b"Content-Length: 5", b"X: y", b"content-length: 5"))
    assert head.content_length == 5
    assert head.headers == [
        ("host", "svc.ns.svc.cluster.local:8080"),
        ("content-length", "5"),
        ("x", "y"),
    ]
    head, _ = parse(p, req(b"POST /", HOST, b"Content-Length: 5 ,5,\t5"))
    assert head.content_length == 5
    assert [v for k, v in head.headers if k == "content-length"] == ["5"]


def test_pipelining_and_bytearray(p):
    first = req(b"POST /a", HOST, b"Content-Length: 3")
    second = req(b"GET /b", HOST)
    buf = first + b"abc" + second + b"GET /c HT"
    head, n = parse(p, buf)
    assert (head.path, n) == ("/a", len(first))
    rest = buf[n + 3 :]
    head, n2 = parse(p, rest)
    assert (head.path, n2) == ("/b", len(second))
    assert p.parse_request_head(rest[n2:]) is None
    head, n3 = parse(p, bytearray(first))
    assert (head.path, n3) == ("/a", len(first))


def test_incomplete_prefixes_and_byte_at_a_time(p):
    data = req(b"GET /x?y", HOST, b"Connection: keep-alive", b"X: 1")
    for k in range(len(data)):
        assert p.parse_request_head(data[:k]) is None
    whole = outcome(p.parse_request_head, data, reason=False)
    assert whole[0] == "ok"
    assert incremental(p.parse_request_head, data) == whole


# -- security-ops §6.2, row by row ---------------------------------------------------------------

H = HOST
BAD_REQUESTS = [
    # 1: CL + TE
    ("1 cl+te", req(b"POST /", H, b"Content-Length: 4", b"Transfer-Encoding: chunked"), 400),
    ("1 te+cl", req(b"POST /", H, b"Transfer-Encoding: chunked", b"Content-Length: 4"), 400),
    # 2: TE.TE obfuscation
    ("2 xchunked", req(b"POST /", H, b"Transfer-Encoding: xchunked"), 501),
    ("2 chunked,identity", req(b"POST /", H, b"Transfer-Encoding: chunked, identity"), 501),
    ("2 identity,chunked", req(b"POST /", H, b"Transfer-Encoding: identity, chunked"), 501),
    ("2 gzip,chunked", req(b"POST /", H, b"Transfer-Encoding: gzip, chunked"), 501),
    ("2 chunked,chunked", req(b"POST /", H, b"Transfer-Encoding: chunked, chunked"), 501),
    ("2 empty te", req(b"POST /", H, b"Transfer-Encoding:"), 501),
    ("2 space colon", req(b"POST /", H, b"Transfer-Encoding : chunked"), 400),
    ("2 vt", req(b"POST /", H, b"Transfer-Encoding:\x0bchunked"), 400),
    (
        "2 dup te",
        req(b"POST /", H, b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"),
        501,
    ),
    ("2 fold te", req(b"POST /", H, b"Transfer-Encoding:", b" chunked"), 400),
    # 3: Content-Length
    ("3 5 and 6", req(b"POST /", H, b"Content-Length: 5", b"Content-Length: 6"), 400),
    ("3 +5", req(b"POST /", H, b"Content-Length: +5"), 400),
    ("3 0x5", req(b"POST /", H, b"Content-Length: 0x5"), 400),
    ("3 list 5,6", req(b"POST /", H, b"Content-Length: 5, 6"), 400),
    ("3 -1", req(b"POST /", H, b"Content-Length: -1"), 400),
    ("3 19 digits", req(b"POST /", H, b"Content-Length: 1234567890123456789"), 400),
    ("3 empty", req(b"POST /", H, b"Content-Length:"), 400),
    ("3 empty element", req(b"POST /", H, b"Content-Length: 5,,5"), 400),
    # identical means identical as written (as h11): 5 and 05 are different field values
    ("3 5 and 05", req(b"POST /", H, b"Content-Length: 5", b"Content-Length: 05"), 400),
    ("3 list 5,05", req(b"POST /", H, b"Content-Length: 5, 05"), 400),
    ("3 inner space", req(b"POST /", H, b"Content-Length: 5 5"), 400),
    ("3 unicode digit", req(b"POST /", H, b"Content-Length: \xb2"), 400),
    # 5: bare LF anywhere
    ("5 lf request line", b"GET / HTTP/1.1\n" + H + b"\r\n\r\n", 400),
    ("5 lf field", b"GET / HTTP/1.1\r\n" + H + b"\nX: y\r\n\r\n", 400),
    ("5 lf only", b"GET / HTTP/1.1\n" + H + b"\n\n", 400),
    ("5 lf end", b"GET / HTTP/1.1\r\n" + H + b"\r\n\n\r\n\r\n", 400),
    # 6: bare CR, NUL, CTLs
    ("6 bare cr", req(b"GET /", H, b"X: a\rb"), 400),
    ("6 nul", req(b"GET /", H, b"X: a\x00b"), 400),
    ("6 ctl", req(b"GET /", H, b"X: a\x01b"), 400),
    ("6 del", req(b"GET /", H, b"X: a\x7fb"), 400),
    ("6 cr in target", b"GET /a\rb HTTP/1.1\r\n" + H + b"\r\n\r\n", 400),
    # 7: whitespace before colon, bad names
    ("7 space name", req(b"GET /", H, b"X Y: 1"), 400),
    ("7 space colon", req(b"GET /", H, b"X-Auth : 1"), 400),
    ("7 tab colon", req(b"GET /", H, b"X-Auth\t: 1"), 400),
    ("7 empty name", req(b"GET /", H, b": 1"), 400),
    ("7 no colon", req(b"GET /", H, b"X-Auth"), 400),
    ("7 non-tchar", req(b"GET /", H, b"X(1): 1"), 400),
    ("7 obs-text name", req(b"GET /", H, b"X\xe9: 1"), 400),
    # 8: obs-fold
    ("8 fold sp", req(b"GET /", H, b"X: a", b" b"), 400),
    ("8 fold tab", req(b"GET /", H, b"X: a", b"\tb"), 400),
    # 9: whitespace before the first field
    ("9 leading sp", req(b"GET /", b" " + H), 400),
    ("9 leading tab", req(b"GET /", b"\t" + H), 400),
    # 10: Host
    ("10 missing", req(b"GET /", b"X: 1"), 400),
    ("10 duplicate", req(b"GET /", H, H), 400),
    ("10 duplicate http10", req(b"GET /", H, H, version=b"HTTP/1.0"), 400),
    ("10 space", req(b"GET /", b"Host: a b"), 400),
    ("10 slash", req(b"GET /", b"Host: a/b"), 400),
    ("10 userinfo", req(b"GET /", b"Host: u@a"), 400),
    ("10 bad port", req(b"GET /", b"Host: a:8x"), 400),
    ("10 http10 invalid", req(b"GET /", b"Host: a b", version=b"HTTP/1.0"), 400),
    # 11: HTTP/1.0 with TE
    ("11 http10 te", req(b"POST /", b"Transfer-Encoding: chunked", version=b"HTTP/1.0"), 400),
    # 12: lenient request line
    ("12 double sp", b"GET  / HTTP/1.1\r\n" + H + b"\r\n\r\n", 400),
    ("12 tab", b"GET\t/ HTTP/1.1\r\n" + H + b"\r\n\r\n", 400),
    ("12 lowercase", req(b"get /", H), 400),
    ("12 mixed case", req(b"Get /", H), 400),
    ("12 trailing sp", b"GET / HTTP/1.1 \r\n" + H + b"\r\n\r\n", 400),
    ("12 lower version", req(b"GET /", H, version=b"http/1.1"), 400),
    ("12 no version", b"GET /\r\n" + H + b"\r\n\r\n", 400),
    ("12 junk version", req(b"GET /", H, version=b"HTTP/1.1x"), 400),
    ("12 leading crlf", b"\r\nGET / HTTP/1.1\r\n" + H + b"\r\n\r\n", 400),
    ("12 empty", b"\r\n\r\n", 400),
    ("12 space in target", b"GET /a b HTTP/1.1\r\n" + H + b"\r\n\r\n", 400),
    ("12 obs-text target", req(b"GET /caf\xe9", H), 400),
    ("12 method non-tchar", req(b"G(T /", H), 400),
    # version
    ("505 2.0", req(b"GET /", H, version=b"HTTP/2.0"), 505),
    ("505 1.2", req(b"GET /", H, version=b"HTTP/1.2"), 505),
    ("505 0.9", req(b"GET /", H, version=b"HTTP/0.9"), 505),
    # targets
    ("fragment", req(b"GET /a#b", H), 400),
    ("abs userinfo", req(b"GET http://u:p@h/", H), 400),
    ("abs empty authority", req(b"GET http:///x", H), 400),
    ("abs bad scheme", req(b"GET ftp://h/", H), 400),
    ("abs relative", req(b"GET a/b", H), 400),
    ("asterisk non-options", req(b"GET *", H), 400),
    ("connect origin-form", req(b"CONNECT /x", H), 400),
    ("connect no port", req(b"CONNECT h", H), 400),
    ("bad connection token", req(b"GET /", H, b"Connection: a b"), 400),
]


@pytest.mark.parametrize(
    "data,status", [c[1:] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS]
)
def test_rejected(p, data, status):
    assert status_of(p.parse_request_head, data) == status
    # byte at a time gives the same status (bare CR/LF may be reported before the head ends)
    assert incremental(p.parse_request_head, data) == ("error", status)


# -- limits (§6.2 row 13) -----------------------------------------------------------------------


def test_head_size_limit(p):
    base = req(b"GET /", H, b"X: ")
    pad = 61440 - len(base)
    exact = req(b"GET /", H, b"X: " + b"a" * pad)
    assert len(exact) == 61440
    head, n = parse(p, exact)
    assert n == 61440
    over = req(b"GET /", H, b"X: " + b"a" * (pad + 1))
    assert status_of(p.parse_request_head, over) == 431
    # incomplete and already too large: 431 without waiting for the end
    assert status_of(p.parse_request_head, over[:61440]) == 431
    assert p.parse_request_head(over[:61439]) is None
    assert status_of(p.parse_request_head, b"GET / HTTP/1.1\r\nX: " + b"a" * 70000) == 431
    small = req(b"GET /", H, b"X: " + b"a" * 100)
    assert status_of(p.parse_request_head, small, max_head=100) == 431
    assert parse(p, small, max_head=len(small))[1] == len(small)


def test_header_count_limit(p):
    ok = req(b"GET /", H, *[b"X-%d: v" % i for i in range(99)])
    assert len(parse(p, ok)[0].headers) == 100
    too_many = req(b"GET /", H, *[b"X-%d: v" % i for i in range(100)])
    assert status_of(p.parse_request_head, too_many) == 431
    assert status_of(p.parse_request_head, ok, max_headers=10) == 431


def test_uri_limit(p):
    target = b"/" + b"a" * 8191
    assert parse(p, req(b"GET " + target, H))[0].target == target.decode()
    assert status_of(p.parse_request_head, req(b"GET " + target + b"a", H)) == 414
    assert status_of(p.parse_request_head, req(b"GET /abcdef", H), max_uri=5) == 414


def test_request_line_over_the_head_limit_is_414_not_431(p):
    """A request line longer than the whole head limit is still an over-long target: 414, whole,
    unended, or fed a byte at a time, and without waiting for max_head bytes."""
    line = b"GET /" + b"a" * 70000 + b" HTTP/1.1"
    assert status_of(p.parse_request_head, line + b"\r\nHost: a\r\n\r\n") == 414
    assert status_of(p.parse_request_head, line[:61440]) == 414
    assert status_of(p.parse_request_head, b"GET /" + b"a" * 8300) == 414
    assert p.parse_request_head(b"GET /" + b"a" * 8200) is None  # may still be a valid line
    small = b"GET /" + b"a" * 200
    assert status_of(p.parse_request_head, small, max_head=100) == 414
    # forbidden bytes in the line are a 400 first, as when the head is complete
    assert status_of(p.parse_request_head, b"GET /\x01" + b"a" * 9000) == 400
    assert status_of(p.parse_request_head, b"GET /\x01" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n") == 400
    # a long method with a target under the limit still fits the request line
    ok = req(b"GET /" + b"a" * 8100, H)
    assert parse(p, ok)[1] == len(ok)


# -- Host grammar: the fast path agrees with the uri-host [":" port] regex ------------------------

HOST_GRAMMAR = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~!$&'()*+,;=%]*)(?::[0-9]*)?")


@pytest.mark.parametrize(
    "host,ok",
    [
        ("a.b.svc.cluster.local", True),
        ("a:8080", True),
        ("a:", True),
        ("", True),
        ("[::1]:8080", True),
        ("[::1]", True),
        ("10.0.0.1:80", True),
        ("a%2Eb", True),
        ("a:b", False),
        ("a:80:80", False),
        ("[::1", False),
        ("a b", False),
        ("a@b", False),
        ("caf\xe9", False),
        ("a:\xb2", False),
    ],
)
def test_host_values(p, host, ok):
    data = req(b"GET /", b"Host: " + host.encode("latin-1"))
    r = outcome(p.parse_request_head, data, reason=False)
    assert (r[0] == "ok") is ok, r


@settings(max_examples=150, deadline=None)
@given(host=st.text(alphabet="aZ09-._~%!$&'()*+,;=:[]@/ \xe9", max_size=12))
def test_host_fast_path_matches_grammar(p, host):
    data = req(b"GET /", b"Host: " + host.encode("latin-1"))
    r = outcome(p.parse_request_head, data, reason=False)
    expected = HOST_GRAMMAR.fullmatch(host.strip(" \t")) is not None
    assert (r[0] == "ok") is expected, (host, r)
    data = req(b"GET http://" + host.encode("latin-1") + b"/x", H)
    r = outcome(p.parse_request_head, data, reason=False)
    if r[0] == "ok":
        assert HOST_GRAMMAR.fullmatch(r[1]["host"]) is not None and r[1]["host"]
