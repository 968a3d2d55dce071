"""Differential and fuzz tests: twin vs compiled, byte-at-a-time vs whole, and h11 as reference.

Reference comparison (h11 0.16, a strict parser, security-ops §6.3): whenever we accept a request
head, h11 must accept it too with the same method, target and fields (and likewise for response
heads: same status, reason and fields). We are stricter than h11 in
many places (bare LF, lowercase methods, CL+TE, TE on HTTP/1.0, CTLs other than NUL/VT/FF in
values, fragments, userinfo, non-http schemes, invalid Host chars, HTTP/1.x other than 1.0/1.1) -
those only make us reject more, which this test allows. Documented normalisation differences in
what both accept (compared after normalising, not failures):

* Content-Length: we forward the canonical decimal (``"05"`` -> ``"5"``); h11 keeps the digits as
  sent (``"05"``). Both collapse identical duplicates and ``"5, 5"`` to one field at the first
  position.
* Transfer-Encoding: h11 lowercases the value; we keep it as sent (``chunked`` is flagged apart).
"""

from __future__ import annotations

import h11
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.http1.errors import ProtocolError
from tests.unit.http1.helpers import incremental, outcome
from tests.unit.http1.strategies import chunked_bodies, request_heads, response_heads

SETTINGS = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
FEW = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def chunked_outcome(mod, data, step):
    d = mod.ChunkedDecoder(max_trailer_size=256)
    out = []
    try:
        if step:
            for i in range(len(data)):
                out += d.feed(data[i : i + 1])
        else:
            out += d.feed(data)
    except ProtocolError as exc:
        return ("error", exc.status)
    return (b"".join(out), d.done, d.trailers, d.unused)


# -- twin vs compiled --------------------------------------------------------------------------


@SETTINGS
@given(data=request_heads())
def test_twins_agree_on_requests(both, data):
    twin, compiled = both
    assert outcome(twin.parse_request_head, data) == outcome(compiled.parse_request_head, data)


@SETTINGS
@given(data=response_heads())
def test_twins_agree_on_responses(both, data):
    twin, compiled = both
    a = outcome(twin.parse_response_head, data)
    assert a == outcome(compiled.parse_response_head, data)
    if a is not None and a[0] == "ok":
        h1 = twin.parse_response_head(data)[0]
        h2 = compiled.parse_response_head(data)[0]
        for method in ("GET", "HEAD", "CONNECT"):
            assert twin.response_body_mode(h1, method) == compiled.response_body_mode(h2, method)


@FEW
@given(data=chunked_bodies())
def test_twins_agree_on_chunked(both, data):
    twin, compiled = both
    whole = chunked_outcome(twin, data, False)
    assert whole == chunked_outcome(compiled, data, False)
    # byte at a time decodes the same body, or fails with the same status
    if whole[0] == "error":
        assert chunked_outcome(twin, data, True)[0] == "error"
        assert chunked_outcome(compiled, data, True)[0] == "error"
    else:
        assert chunked_outcome(twin, data, True) == whole
        assert chunked_outcome(compiled, data, True) == whole


# -- byte at a time gives the same result as whole -----------------------------------------------


@FEW
@given(data=request_heads())
def test_incremental_requests(p, data):
    assert incremental(p.parse_request_head, data) == outcome(
        p.parse_request_head, data, reason=False
    )


@FEW
@given(data=response_heads())
def test_incremental_responses(p, data):
    assert incremental(p.parse_response_head, data) == outcome(
        p.parse_response_head, data, reason=False
    )


# -- h11 as the strict reference -----------------------------------------------------------------


def _normalise(headers):
    out = []
    for name, value in headers:
        if name == "content-length":
            value = str(int(value))
        elif name == "transfer-encoding":
            value = value.lower()
        out.append((name, value))
    return out


def check_against_h11(p, data):
    """If we accept ``data``, h11 accepts the same head with the same method, target, fields."""
    try:
        result = p.parse_request_head(data)
    except ProtocolError as exc:
        return exc
    if result is None:
        return None
    head, n = result
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
    conn.receive_data(data[:n])
    event = conn.next_event()  # raises RemoteProtocolError if h11 rejects: a test failure
    assert isinstance(event, h11.Request), event
    assert event.method.decode("latin-1") == head.method
    assert event.target.decode("latin-1") == head.target
    assert event.http_version.decode() == f"{head.version // 10}.{head.version % 10}"
    ref = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers]
    assert _normalise(ref) == _normalise(head.headers)
    return head


@SETTINGS
@given(data=request_heads())
def test_never_accept_what_h11_rejects(p, data):
    check_against_h11(p, data)


@SETTINGS
@given(data=request_heads(mutations=False))
def test_h11_agrees_on_unmutated_grammar(p, data):
    """Unmutated heads: same accepted heads, and whatever h11 rejects we reject too."""
    ours = check_against_h11(p, data)
    try:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
        conn.receive_data(data)
        conn.next_event()
    except h11.RemoteProtocolError as exc:
        assert isinstance(ours, ProtocolError), (data, exc)


def check_response_against_h11(p, data):
    """If we accept a response head, h11 (as a client after a GET) accepts the same head."""
    try:
        result = p.parse_response_head(data)
    except ProtocolError:
        return
    if result is None:
        return
    head, n = result
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=1 << 20)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "a")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data[:n])
    event = conn.next_event()
    assert isinstance(event, (h11.Response, h11.InformationalResponse)), event
    assert event.status_code == head.status
    assert event.reason.decode("latin-1") == head.reason
    ref = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers]
    assert _normalise(ref) == _normalise(head.headers)


@SETTINGS
@given(data=response_heads())
def test_never_accept_a_response_h11_rejects(p, data):
    check_response_against_h11(p, data)


# -- fuzz invariant: parse, None, or ProtocolError - never anything else -------------------------


def _only_protocol_errors(fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except ProtocolError as exc:
        assert exc.status in (400, 414, 431, 501, 502, 505)
        return exc


@SETTINGS
@given(data=st.binary(max_size=300) | request_heads() | response_heads())
def test_fuzz_heads_whole_and_byte_at_a_time(p, data):
    for parse in (p.parse_request_head, p.parse_response_head):
        r = _only_protocol_errors(parse, data)
        assert (
            r is None
            or isinstance(r, ProtocolError)
            or (isinstance(r, tuple) and 0 < r[1] <= len(data))
        )
        for k in range(len(data)):
            if _only_protocol_errors(parse, data[:k], max_head=128) is not None:
                break
    r = _only_protocol_errors(p.parse_request_head, data, max_head=64, max_headers=2, max_uri=8)
    assert r is None or isinstance(r, (tuple, ProtocolError))


@SETTINGS
@given(data=st.binary(max_size=200) | chunked_bodies())
def test_fuzz_chunked_whole_and_byte_at_a_time(p, data):
    d = p.ChunkedDecoder(max_trailer_size=64)
    _only_protocol_errors(d.feed, data)
    d = p.ChunkedDecoder(max_trailer_size=64)
    for i in range(len(data)):
        if isinstance(_only_protocol_errors(d.feed, data[i : i + 1]), ProtocolError):
            break
