"""Response heads and how their bodies are delimited; every malformed response is a 502."""

from __future__ import annotations

import pytest

from tests.unit.http1.helpers import incremental, outcome, status_of


def resp(status_line: bytes, *lines: bytes) -> bytes:
    return status_line + b"\r\n" + b"".join(x + b"\r\n" for x in lines) + b"\r\n"


def parse(p, data, **kw):
    r = p.parse_response_head(data, **kw)
    assert r is not None
    return r


def test_ok_with_length(p):
    data = resp(b"HTTP/1.1 200 OK", b"Content-Type: text/plain", b"Content-Length: 12")
    head, n = parse(p, data + b"hello world!")
    assert n == len(data)
    assert (head.status, head.reason, head.version) == (200, "OK", 11)
    assert head.headers == [("content-type", "text/plain"), ("content-length", "12")]
    assert (head.content_length, head.chunked, head.keep_alive) == (12, False, True)
    assert head.connection == ()
    assert head.get("content-type") == "text/plain"
    assert p.response_body_mode(head, "GET") == (p.MODE_LENGTH, 12)


def test_reason_forms(p):
    assert parse(p, resp(b"HTTP/1.1 204 "))[0].reason == ""
    assert parse(p, resp(b"HTTP/1.1 204"))[0].reason == ""
    assert parse(p, resp(b"HTTP/1.1 404 Not  Found\t!"))[0].reason == "Not  Found\t!"
    assert parse(p, resp(b"HTTP/1.1 200 d\xe9j\xe0"))[0].reason == "d\xe9j\xe0"


def test_interim_heads_are_returned(p):
    buf = resp(b"HTTP/1.1 100 Continue") + resp(b"HTTP/1.1 200 OK", b"Content-Length: 0")
    head, n = parse(p, buf)
    assert head.status == 100
    assert p.response_body_mode(head, "POST") == (p.MODE_NONE, 0)
    head, _ = parse(p, buf[n:])
    assert head.status == 200
    head, _ = parse(
        p, resp(b"HTTP/1.1 101 Switching Protocols", b"Connection: Upgrade", b"Upgrade: websocket")
    )
    assert head.status == 101 and head.connection == ("upgrade",)


def test_keep_alive(p):
    assert parse(p, resp(b"HTTP/1.0 200 OK"))[0].keep_alive is False
    assert parse(p, resp(b"HTTP/1.0 200 OK", b"Connection: keep-alive"))[0].keep_alive is True
    assert parse(p, resp(b"HTTP/1.1 200 OK", b"Connection: close"))[0].keep_alive is False


def test_content_length_collapse(p):
    head, _ = parse(p, resp(b"HTTP/1.1 200 OK", b"Content-Length: 3", b"Content-Length: 3, 3"))
    assert head.content_length == 3
    assert head.headers == [("content-length", "3")]


@pytest.mark.parametrize(
    "lines,method,expected",
    [
        ((b"HTTP/1.1 200 OK", b"Content-Length: 5"), "HEAD", ("NONE", 0)),
        ((b"HTTP/1.1 103 Early Hints",), "GET", ("NONE", 0)),
        ((b"HTTP/1.1 204 No Content", b"Content-Length: 5"), "GET", ("NONE", 0)),
        ((b"HTTP/1.1 304 Not Modified", b"Transfer-Encoding: chunked"), "GET", ("NONE", 0)),
        ((b"HTTP/1.1 200 Connection Established",), "CONNECT", ("NONE", 0)),
        ((b"HTTP/1.1 407 Auth", b"Content-Length: 2"), "CONNECT", ("LENGTH", 2)),
        ((b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked"), "GET", ("CHUNKED", -1)),
        ((b"HTTP/1.1 200 OK", b"Content-Length: 0"), "GET", ("LENGTH", 0)),
        ((b"HTTP/1.1 200 OK",), "GET", ("CLOSE", -1)),
        ((b"HTTP/1.0 500 Oops",), "POST", ("CLOSE", -1)),
    ],
)
def test_body_modes(p, lines, method, expected):
    head, _ = parse(p, resp(*lines))
    mode, length = p.response_body_mode(head, method)
    assert (mode, length) == (getattr(p, "MODE_" + expected[0]), expected[1])


def test_mode_constants_are_distinct(p):
    assert len({p.MODE_NONE, p.MODE_LENGTH, p.MODE_CHUNKED, p.MODE_CLOSE}) == 4


BAD_RESPONSES = [
    ("http2", resp(b"HTTP/2 200 OK")),
    ("version 2.0", resp(b"HTTP/2.0 200 OK")),
    ("lower", resp(b"http/1.1 200 OK")),
    ("two digits", resp(b"HTTP/1.1 20 OK")),
    ("four digits", resp(b"HTTP/1.1 2000 OK")),
    ("no sp", resp(b"HTTP/1.1 200OK")),
    ("letters", resp(b"HTTP/1.1 2x0 OK")),
    ("status 099", resp(b"HTTP/1.1 099 Odd")),
    ("cl+te", resp(b"HTTP/1.1 200 OK", b"Content-Length: 3", b"Transfer-Encoding: chunked")),
    ("te gzip", resp(b"HTTP/1.1 200 OK", b"Transfer-Encoding: gzip")),
    (
        "te dup",
        resp(b"HTTP/1.1 200 OK", b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"),
    ),
    ("te http10", resp(b"HTTP/1.0 200 OK", b"Transfer-Encoding: chunked")),
    ("cl conflict", resp(b"HTTP/1.1 200 OK", b"Content-Length: 3", b"Content-Length: 4")),
    ("cl bad", resp(b"HTTP/1.1 200 OK", b"Content-Length: 3x")),
    ("bare lf", b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n"),
    ("bare lf only", b"HTTP/1.1 200 OK\n\n"),
    ("bare cr", resp(b"HTTP/1.1 200 OK", b"X: a\rb")),
    ("nul", resp(b"HTTP/1.1 200 OK", b"X: \x00")),
    ("obs-fold", resp(b"HTTP/1.1 200 OK", b"X: a", b" b")),
    ("space colon", resp(b"HTTP/1.1 200 OK", b"X : a")),
    ("too many", resp(b"HTTP/1.1 200 OK", *[b"X: %d" % i for i in range(101)])),
    ("too large", resp(b"HTTP/1.1 200 OK", b"X: " + b"a" * 1024)),
]


@pytest.mark.parametrize("data", [c[1] for c in BAD_RESPONSES], ids=[c[0] for c in BAD_RESPONSES])
def test_malformed_is_502(p, data):
    # a small max_head keeps the byte-at-a-time replay cheap; the default is tested apart
    assert status_of(p.parse_response_head, data, max_head=1024) == 502
    assert incremental(p.parse_response_head, data, max_head=1024) == ("error", 502)


def test_default_limits(p):
    assert status_of(p.parse_response_head, resp(b"HTTP/1.1 200 OK", b"X: " + b"a" * 61440)) == 502
    assert status_of(p.parse_response_head, b"HTTP/1.1 200 OK\r\nX: " + b"a" * 61440) == 502
    assert p.parse_response_head(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 61000) is None
    many = resp(b"HTTP/1.1 200 OK", *[b"X: %d" % i for i in range(100)])
    assert len(parse(p, many)[0].headers) == 100


def test_incomplete_and_incremental(p):
    data = resp(b"HTTP/1.1 200 OK", b"Content-Length: 1", b"Server: x")
    for k in range(len(data)):
        assert p.parse_response_head(data[:k]) is None
    whole = outcome(p.parse_response_head, data, reason=False)
    assert whole[0] == "ok"
    assert incremental(p.parse_response_head, data) == whole
    assert (
        status_of(p.parse_response_head, b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 20, max_head=64)
        == 502
    )
