"""Request/response/trailer validation: every must-reject rule of research/security-ops.md 6.4
(and the downgrade-smuggling rules of 6.5), and the twins agreeing on random lists."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.http2.errors import ErrorCode, H2Error, MalformedMessage
from tests.unit.http2.conftest import load

GOOD = [
    (b":method", b"POST"),
    (b":scheme", b"https"),
    (b":path", b"/pkg.Svc/Call"),
    (b":authority", b"svc.ns:8080"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
    (b"content-length", b"5"),
    (b"x-id", b"a b"),
]


def without(name: bytes) -> list:
    return [f for f in GOOD if f[0] != name]


def replace(name: bytes, value: bytes) -> list:
    return [(n, value if n == name else v) for n, v in GOOD]


def test_good_request(va):
    r = va.validate_request_headers(GOOD, 3)
    assert (r.method, r.scheme, r.authority, r.path, r.protocol, r.content_length) == (
        b"POST",
        b"https",
        b"svc.ns:8080",
        b"/pkg.Svc/Call",
        None,
        5,
    )
    assert r.headers == GOOD[4:]


def test_host_stands_in_for_authority(va):
    r = va.validate_request_headers(without(b":authority") + [(b"host", b"h:1")], 1)
    assert r.authority == b"h:1"
    assert (
        va.validate_request_headers(GOOD + [(b"host", b"svc.ns:8080")], 1).authority
        == b"svc.ns:8080"
    )


def test_connect_and_options(va):
    r = va.validate_request_headers([(b":method", b"CONNECT"), (b":authority", b"db:5432")], 1)
    assert (r.scheme, r.path, r.authority) == (None, None, b"db:5432")
    opts = [(b":method", b"OPTIONS"), (b":scheme", b"https"), (b":path", b"*")]
    assert va.validate_request_headers(opts, 1).path == b"*"
    ext = [
        (b":method", b"CONNECT"),
        (b":protocol", b"websocket"),
        (b":scheme", b"https"),
        (b":path", b"/chat"),
        (b":authority", b"a"),
    ]
    assert va.validate_request_headers(ext, 1, extended_connect=True).protocol == b"websocket"
    with pytest.raises(MalformedMessage):
        va.validate_request_headers(ext, 1)


BAD_REQUESTS = {
    "uppercase name": GOOD + [(b"X-Id", b"1")],
    "connection": GOOD + [(b"connection", b"close")],
    "proxy-connection": GOOD + [(b"proxy-connection", b"keep-alive")],
    "keep-alive": GOOD + [(b"keep-alive", b"timeout=5")],
    "transfer-encoding (H2.TE)": GOOD + [(b"transfer-encoding", b"chunked")],
    "upgrade": GOOD + [(b"upgrade", b"h2c")],
    "te not trailers": replace(b"te", b"gzip"),
    "te list": replace(b"te", b"trailers, gzip"),
    "name with space": GOOD + [(b"x y", b"1")],
    "name with NUL": GOOD + [(b"x\0", b"1")],
    "name with DEL": GOOD + [(b"x\x7f", b"1")],
    "name with obs-text": GOOD + [(b"x\xe9", b"1")],
    "name with colon": GOOD + [(b"x:y", b"1")],
    "empty name": GOOD + [(b"", b"1")],
    "value with NUL": GOOD + [(b"x", b"a\0b")],
    "value with CR": GOOD + [(b"x", b"a\rb")],
    "value with LF (H2.CRLF)": GOOD + [(b"x", b"a\nx-injected: 1")],
    "path with CRLF": replace(b":path", b"/a\r\nHost: evil"),
    "method with LF": replace(b":method", b"GET\n"),
    "authority with CR": replace(b":authority", b"a\rb"),
    "leading space": GOOD + [(b"x", b" a")],
    "trailing space": GOOD + [(b"x", b"a ")],
    "leading tab": GOOD + [(b"x", b"\ta")],
    "trailing tab": GOOD + [(b"x", b"a\t")],
    "pseudo after regular": GOOD + [(b":authority", b"svc.ns:8080")],
    "pseudo after regular 2": GOOD[:3] + [(b"x", b"1")] + GOOD[3:],
    "duplicate :method": GOOD[:1] + GOOD,
    "duplicate :path": [(b":path", b"/")] + GOOD,
    "duplicate :scheme": [(b":scheme", b"http")] + GOOD,
    "duplicate :authority": [(b":authority", b"a")] + GOOD,
    "unknown pseudo": [(b":foo", b"bar")] + GOOD,
    "response pseudo in request": [(b":status", b"200")] + GOOD,
    ":protocol without the setting": [(b":protocol", b"websocket")] + GOOD,
    "missing :method": without(b":method"),
    "missing :scheme": without(b":scheme"),
    "missing :path": without(b":path"),
    "empty :path": replace(b":path", b""),
    "relative :path": replace(b":path", b"a/b"),
    "absolute-form :path": replace(b":path", b"http://x/"),
    "* for POST": replace(b":path", b"*"),
    "space in :path": replace(b":path", b"/a b"),
    "space in :method": replace(b":method", b"GET X"),
    "empty :method": replace(b":method", b""),
    "userinfo in :authority": replace(b":authority", b"user@svc"),
    "content-length not digits": replace(b"content-length", b"5a"),
    "content-length negative": replace(b"content-length", b"-1"),
    "content-length empty": replace(b"content-length", b""),
    "content-length list": replace(b"content-length", b"5, 5"),
    "content-length twice, different": GOOD + [(b"content-length", b"6")],
    "host differs from :authority": GOOD + [(b"host", b"other")],
    "two different hosts": without(b":authority") + [(b"host", b"a"), (b"host", b"b")],
    "CONNECT with :path": [(b":method", b"CONNECT"), (b":authority", b"a:1"), (b":path", b"/")],
    "CONNECT without :authority": [(b":method", b"CONNECT")],
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_malformed_requests(va, case):
    with pytest.raises(MalformedMessage) as info:
        va.validate_request_headers(BAD_REQUESTS[case], 7)
    assert info.value.code == ErrorCode.PROTOCOL_ERROR and info.value.stream_id == 7


def test_content_length_against_data(va):
    va.check_content_length(5, 3, False, 1)
    va.check_content_length(5, 5, True, 1)
    va.check_content_length(None, 99, True, 1)
    for received, end in ((6, False), (4, True)):  # H2.CL: too much, or too little
        with pytest.raises(MalformedMessage):
            va.check_content_length(5, received, end, 1)
    assert va.validate_request_headers(GOOD + [(b"content-length", b"5")], 1).content_length == 5


def test_responses(va):
    r = va.validate_response_headers([(b":status", b"204"), (b"server", b"x")], 1)
    assert (r.status, r.content_length, r.headers) == (204, None, [(b"server", b"x")])
    assert (
        va.validate_response_headers(
            [(b":status", b"200"), (b"content-length", b"0")]
        ).content_length
        == 0
    )
    for bad in (
        [],
        [(b"server", b"x")],
        [(b":status", b"20")],
        [(b":status", b"2000")],
        [(b":status", b"2x0")],
        [(b":status", b"099")],
        [(b":status", b"200"), (b":status", b"200")],
        [(b":status", b"200"), (b":path", b"/")],
        [(b"server", b"x"), (b":status", b"200")],
        [(b":status", b"200"), (b"Server", b"x")],
        [(b":status", b"200"), (b"transfer-encoding", b"chunked")],
        [(b":status", b"200"), (b"x", b"a\r\nb")],
        [(b":status", b"200"), (b"x", b" a")],
        [(b":status", b"200"), (b"content-length", b"x")],
    ):
        with pytest.raises(MalformedMessage):
            va.validate_response_headers(bad, 1)


def test_trailers(va):
    t = [(b"grpc-status", b"0"), (b"grpc-message", b"")]
    assert va.validate_trailers(t, 1) == t
    for bad in (
        [(b":status", b"200")],
        [(b"grpc-status", b"0"), (b":path", b"/")],
        [(b"Grpc-Status", b"0")],
        [(b"connection", b"close")],
        [(b"x", b"a\n")],
        [(b"x", b"a ")],
        [(b"te", b"gzip")],
    ):
        with pytest.raises(MalformedMessage):
            va.validate_trailers(bad, 1)


def outcome(m, fn: str, headers: list):
    try:
        r = getattr(m, fn)(headers, 1)
    except MalformedMessage as e:
        return ("malformed", str(e))
    if isinstance(r, list):
        return r
    return repr(r)


octet_st = st.sampled_from(b"aZ:- \t\r\n\x00\x7f\xe9/*@0123456789")
field_st = st.tuples(
    st.one_of(
        st.sampled_from(
            [
                b":method",
                b":path",
                b":scheme",
                b":authority",
                b":status",
                b"host",
                b"te",
                b"content-length",
                b"connection",
                b"x",
            ]
        ),
        st.lists(octet_st, max_size=4).map(bytes),
    ),
    st.one_of(
        st.sampled_from([b"GET", b"CONNECT", b"/", b"http", b"trailers", b"200", b"5", b"a"]),
        st.lists(octet_st, max_size=5).map(bytes),
    ),
)


@settings(max_examples=150, deadline=None)
@given(headers=st.lists(field_st, max_size=8), base=st.booleans())
def test_twins_agree(headers, base):
    if base:
        headers = GOOD[:4] + headers
    py, c = load("validate", "python"), load("validate", "cython")
    for fn in ("validate_request_headers", "validate_response_headers", "validate_trailers"):
        assert outcome(py, fn, headers) == outcome(c, fn, headers)


def test_malformed_is_an_h2_stream_error():
    assert issubclass(MalformedMessage, H2Error)
    e = MalformedMessage("x", 5)
    assert (e.code, e.stream_id) == (ErrorCode.PROTOCOL_ERROR, 5)
