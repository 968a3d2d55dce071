"""Hypothesis strategies: realistic HTTP/1.1 heads from a small grammar, plus byte mutations."""

from __future__ import annotations

from hypothesis import strategies as st

METHODS = [
    b"GET",
    b"POST",
    b"PUT",
    b"HEAD",
    b"OPTIONS",
    b"CONNECT",
    b"DELETE",
    b"PATCH",
    b"M-SEARCH",
]
TARGETS = [
    b"/",
    b"/api/v1/items?id=7&x=y",
    b"/a?",
    b"/%2e%2e/admin",
    b"/a//b;c",
    b"*",
    b"http://h.example/x?y=1",
    b"HTTP://Reviews:9080",
    b"https://[::1]:8443/p",
    b"http://u@h/",
    b"ftp://h/",
    b"h.example:443",
    b"/a#frag",
    b"/{json}|^",
]
VERSIONS = [b"HTTP/1.1"] * 6 + [b"HTTP/1.0", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.2"]
NAMES = [
    b"Host",
    b"host",
    b"HOST",
    b"Content-Length",
    b"content-length",
    b"Transfer-Encoding",
    b"Connection",
    b"Upgrade",
    b"Expect",
    b"User-Agent",
    b"Accept",
    b"X-Request-Id",
    b"X_Auth_User",
    b"x-b3-traceid",
    b"Cookie",
    b"!#$%&'*+-.^_`|~",
]
VALUES = [
    b"svc.ns.svc.cluster.local:8080",
    b"h.example",
    b"[::1]:80",
    b"",
    b"5",
    b"05",
    b"5, 5",
    b"5, 6",
    b"chunked",
    b"Chunked",
    b"gzip, chunked",
    b"close",
    b"keep-alive",
    b"Upgrade, HTTP2-Settings",
    b"websocket",
    b"100-continue",
    b"  padded\t",
    b"a\tb c",
    b"caf\xe9",
    b"*/*",
]
STATUS_LINES = [
    b"HTTP/1.1 200 OK",
    b"HTTP/1.1 204 No Content",
    b"HTTP/1.1 100 Continue",
    b"HTTP/1.0 404 Not Found",
    b"HTTP/1.1 500",
    b"HTTP/1.1 302 ",
    b"HTTP/2 200",
]
INTERESTING = [
    b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b",", b";", b"\x00", b"\x0b", b"\x7f", b"\xe9",
    b"a", b"A", b"0", b"-", b"_", b"/", b"?", b"#", b"@", b'"', b"\r\n ", b"\r\n\r\n",
]  # fmt: skip


# Mostly-sensible (name, value) pairs, so that a good share of generated heads is valid.
PAIRS = [
    (b"User-Agent", b"curl/8.5.0"),
    (b"Accept", b"*/*"),
    (b"accept-encoding", b"gzip, br"),
    (b"X-Request-Id", b"7f3c2a90-1b2d"),
    (b"traceparent", b"00-0af7651916cd43dd-b7ad6b7169203331-01"),
    (b"Cookie", b"a=b; c=d"),
    (b"Content-Length", b"5"),
    (b"Content-Length", b"0"),
    (b"Connection", b"close"),
    (b"Connection", b"keep-alive"),
    (b"Connection", b"Upgrade"),
    (b"Upgrade", b"websocket"),
    (b"Expect", b"100-continue"),
    (b"Transfer-Encoding", b"chunked"),
    (b"X-Empty", b""),
    (b"X-Latin", b"caf\xe9"),
    (b"X_Auth_User", b"alice"),
    (b"Server", b"envoy"),
]
SEPARATORS = [b": ", b": ", b":", b":  ", b":\t", b": \t"]


@st.composite
def field_lines(draw, min_size=0):
    pair = st.sampled_from(PAIRS) | st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES))
    lines = draw(
        st.lists(st.tuples(pair, st.sampled_from(SEPARATORS)), min_size=min_size, max_size=6)
    )
    return b"".join(n + sep + v + b"\r\n" for (n, v), sep in lines)


@st.composite
def mutate(draw, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3]))):
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        pos = draw(st.integers(min_value=0, max_value=len(buf)))
        piece = draw(st.sampled_from(INTERESTING) | st.binary(min_size=1, max_size=2))
        if op == "insert" or pos == len(buf):
            buf[pos:pos] = piece
        elif op == "delete":
            del buf[pos : pos + draw(st.integers(min_value=1, max_value=3))]
        else:
            buf[pos : pos + len(piece)] = piece
    return bytes(buf)


@st.composite
def request_heads(draw, mutations=True) -> bytes:
    method = draw(st.sampled_from(METHODS))
    if draw(st.sampled_from([False] * 12 + [True])):
        method = method.lower()
    target = draw(st.sampled_from(TARGETS[:3]) | st.sampled_from(TARGETS))
    head = method + b" " + target + b" " + draw(st.sampled_from(VERSIONS)) + b"\r\n"
    if draw(st.sampled_from([True] * 6 + [False])):
        head += b"Host: " + draw(st.sampled_from(VALUES[:3])) + b"\r\n"
    head += draw(field_lines()) + b"\r\n"
    head += draw(st.sampled_from([b"", b"abc", b"GET / HTTP/1.1\r\n"]))
    return draw(mutate(head)) if mutations else head


@st.composite
def response_heads(draw) -> bytes:
    head = draw(st.sampled_from(STATUS_LINES)) + b"\r\n" + draw(field_lines()) + b"\r\n"
    return draw(mutate(head))


@st.composite
def chunked_bodies(draw) -> bytes:
    parts = []
    for chunk in draw(st.lists(st.binary(min_size=1, max_size=12), max_size=4)):
        ext = draw(st.sampled_from([b"", b";a", b";a=b", b' ; a="q\\"x"', b";"]))
        parts.append(b"%x" % len(chunk) + ext + b"\r\n" + chunk + b"\r\n")
    parts.append(b"0\r\n" + draw(field_lines()) + b"\r\n" + draw(st.sampled_from([b"", b"NEXT"])))
    return draw(mutate(b"".join(parts)))
