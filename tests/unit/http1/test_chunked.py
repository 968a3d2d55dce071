"""The incremental chunked decoder and the chunk encoders (RFC 9112 §7.1, security-ops §6.2 4-5)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.http1.errors import ProtocolError


def decode(p, data: bytes, step: int | None = None, **kw):
    """Feed whole (step=None) or in pieces of ``step`` bytes; returns (body, decoder)."""
    d = p.ChunkedDecoder(**kw)
    pieces = []
    if step is None:
        pieces += d.feed(data)
    else:
        for i in range(0, len(data), step):
            pieces += d.feed(data[i : i + step])
    return b"".join(pieces), d


@pytest.mark.parametrize("step", [None, 1, 2, 3, 7])
def test_decode(p, step):
    data = b"5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\n\r\nGET / HTTP/1.1\r\n"
    body, d = decode(p, data, step)
    assert body == b"hello 0123456789"
    assert d.done is True
    assert d.trailers == []
    assert d.unused == b"GET / HTTP/1.1\r\n"


@pytest.mark.parametrize("step", [None, 1, 5])
def test_trailers(p, step):
    data = b"3\r\nabc\r\n0\r\nGrpc-Status: 0\r\nX-Sum:  abc \r\n\r\nnext"
    body, d = decode(p, data, step)
    assert body == b"abc"
    assert d.trailers == [("grpc-status", "0"), ("x-sum", "abc")]
    assert d.unused == b"next"


def test_not_done_until_trailer_section_ends(p):
    d = p.ChunkedDecoder()
    assert d.feed(b"2\r\nhi\r\n0\r\nX: 1\r\n") == [b"hi"]
    assert d.done is False
    assert d.feed(b"\r") == []
    assert d.done is False
    assert d.feed(b"\nrest") == []
    assert (d.done, d.trailers, d.unused) == (True, [("x", "1")], b"rest")
    assert d.feed(b"more") == []
    assert d.unused == b"restmore"


@pytest.mark.parametrize(
    "line",
    [
        b"5;name",
        b"5;name=value",
        b'5;name="quoted \\" value"',
        b"5 ; a = b ;c",
        b"5\t;a",
        b"00005",
        b"0000000000000005",
    ],
)
def test_extensions_and_sizes(p, line):
    body, d = decode(p, line + b"\r\nhello\r\n0\r\n\r\n")
    assert (body, d.done) == (b"hello", True)


def test_sixteen_hex_digits_are_accepted(p):
    d = p.ChunkedDecoder()
    assert d.feed(b"000000000000000A\r\n0123456789\r\n0\r\n\r\n") == [b"0123456789"]
    d = p.ChunkedDecoder()
    assert d.feed(b"ffffffffffffffff\r\nabc") == [b"abc"]
    assert d.done is False


BAD = [
    ("hex prefix", b"0x5\r\nhello\r\n0\r\n\r\n"),
    ("negative", b"-1\r\nx\r\n0\r\n\r\n"),
    ("17 digits", b"00000000000000005\r\nhello\r\n0\r\n\r\n"),
    ("overflow", b"ffffffffffffffffff1\r\nx\r\n0\r\n\r\n"),
    ("leading space", b" 5\r\nhello\r\n0\r\n\r\n"),
    ("trailing space", b"5 \r\nhello\r\n0\r\n\r\n"),
    ("empty size", b"\r\nhello\r\n0\r\n\r\n"),
    ("no crlf after data", b"5\r\nhelloX\r\n0\r\n\r\n"),
    ("lf after data", b"5\r\nhello\n0\r\n\r\n"),
    ("cr only after data", b"5\r\nhello\rx0\r\n\r\n"),
    ("bare lf size", b"5\nhello\r\n0\r\n\r\n"),
    ("bare lf ext", b"5;a\nxx\r\nhello\r\n0\r\n\r\n"),
    ("bare cr ext", b"5;a\rxx\r\nhello\r\n0\r\n\r\n"),
    ("ctl in ext", b"5;a=\x01\r\nhello\r\n0\r\n\r\n"),
    ("unterminated quote", b'5;a="x\r\nhello\r\n0\r\n\r\n'),
    ("empty ext name", b"5;\r\nhello\r\n0\r\n\r\n"),
    ("bare lf last chunk", b"0\n\r\n"),
    ("trailer fold", b"0\r\nX: a\r\n b\r\n\r\n"),
    ("trailer space colon", b"0\r\nX : a\r\n\r\n"),
    ("trailer bare lf", b"0\r\nX: a\n\r\n"),
    ("trailer nul", b"0\r\nX: \x00\r\n\r\n"),
    ("trailer too large", b"0\r\nX: " + b"a" * 16384 + b"\r\n\r\n"),
    ("size line too long", b"5;a=" + b"b" * 5000 + b"\r\nhello\r\n0\r\n\r\n"),
]


@pytest.mark.parametrize("step", [None, 1])
@pytest.mark.parametrize("data", [c[1] for c in BAD], ids=[c[0] for c in BAD])
def test_rejected(p, data, step):
    with pytest.raises(ProtocolError) as exc:
        decode(p, data, step)
    assert exc.value.status == 400


def test_trailer_limit_is_configurable(p):
    data = b"0\r\nX: " + b"a" * 40 + b"\r\n\r\n"
    _, d = decode(p, data, max_trailer_size=len(data) - 5)
    assert d.done
    for step in (None, 1):
        with pytest.raises(ProtocolError):
            decode(p, data, step, max_trailer_size=len(data) - 6)


def test_encoders(p):
    assert p.encode_chunk(b"hello") == b"5\r\nhello\r\n"
    assert p.encode_chunk(b"x" * 255) == b"ff\r\n" + b"x" * 255 + b"\r\n"
    assert p.encode_chunk(b"") == b""
    assert p.encode_last_chunk() == b"0\r\n\r\n"
    assert p.encode_last_chunk([]) == b"0\r\n\r\n"
    assert p.encode_last_chunk([("grpc-status", "0"), ("x", "a b")]) == (
        b"0\r\ngrpc-status: 0\r\nx: a b\r\n\r\n"
    )
    with pytest.raises(ValueError):
        p.encode_last_chunk([("x", "a\r\nInjected: 1")])
    with pytest.raises(ValueError):
        p.encode_last_chunk([("bad name", "1")])


@settings(max_examples=100, deadline=None)
@given(
    body=st.lists(st.binary(min_size=0, max_size=40), max_size=8),
    trailers=st.lists(
        st.tuples(st.sampled_from(["x-a", "grpc-status", "etag"]), st.text("abc 01", max_size=5)),
        max_size=3,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
)
def test_roundtrip(p, body, trailers, cuts):
    wire = b"".join(p.encode_chunk(b) for b in body) + p.encode_last_chunk(trailers) + b"NEXT"
    points = sorted({c for c in cuts if c <= len(wire)} | {0, len(wire)})
    d = p.ChunkedDecoder()
    out = []
    for a, b in zip(points, points[1:], strict=False):
        out += d.feed(wire[a:b])
    assert b"".join(out) == b"".join(body)
    assert d.done
    assert d.trailers == [(k, v.strip(" ")) for k, v in trailers]
    assert d.unused == b"NEXT"
