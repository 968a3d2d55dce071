"""Trace-context propagation: W3C and B3 validity rules, sampling, inject/extract round trips."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.telemetry.tracing import (
    PROPAGATION_HEADERS,
    ParentBasedRatio,
    TraceContext,
    extract,
    inject,
    new_context,
    new_request_id,
)

TID = "12345678901234567890123456789012"
PID = "1234567890123456"
TIDX = "4bf92f3577b34da6a3ce929d0e0e4736"
VALID_TP = f"00-{TID}-{PID}-01"


def hdrs(**h: str):
    d = {k.replace("_", "-").lower(): v for k, v in h.items()}
    return d.get


def tp_only(value: str):
    return {"traceparent": value}.get


# --- W3C traceparent --------------------------------------------------------------------------

W3C_VALID = [
    (VALID_TP, TID, PID, True),
    (f"00-{TID}-{PID}-00", TID, PID, False),
    (f"00-{TID}-{PID}-03", TID, PID, True),  # sampled + random bit
    (f"00-{TID}-{PID}-02", TID, PID, False),  # flags are a bit field, not an enum
    (f"00-{TID}-{PID}-ff", TID, PID, True),  # reserved bits ignored on input
    (f" {VALID_TP}", TID, PID, True),  # OWS
    (f"\t{VALID_TP}", TID, PID, True),
    (f"{VALID_TP} ", TID, PID, True),
    (f"{VALID_TP}\t", TID, PID, True),
    (f"\t {VALID_TP} \t", TID, PID, True),
    # future versions: parse the 00 fields leniently
    (f"cc-{TID}-{PID}-01", TID, PID, True),
    (f"cc-{TID}-{PID}-01-what-the-future-will-be-like", TID, PID, True),
    (f"01-{TID}-{PID}-00-", TID, PID, False),
    (
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "00f067aa0ba902b7",
        True,
    ),
]


@pytest.mark.parametrize(("value", "trace_id", "span_id", "sampled"), W3C_VALID)
def test_w3c_valid(value, trace_id, span_id, sampled):
    ctx = extract(tp_only(value))
    assert ctx is not None
    assert (ctx.trace_id, ctx.span_id, ctx.parent_id, ctx.sampled, ctx.fmt) == (
        trace_id,
        span_id,
        "",
        sampled,
        "w3c",
    )


W3C_INVALID = [
    "",
    f"ff-{TID}-{PID}-01",  # version ff
    f".0-{TID}-{PID}-01",  # illegal version characters
    f"0.-{TID}-{PID}-01",
    f"000-{TID}-{PID}-01",  # version too long
    f"0000-{TID}-{PID}-01",
    f"0-{TID}-{PID}-01",  # version too short
    f"0A-{TID}-{PID}-01",  # uppercase version
    f"00-{'0' * 32}-{PID}-01",  # all-zero trace id
    f"00-.{TID[1:]}-{PID}-01",  # illegal trace id characters
    f"00-{TID[:-1]}.-{PID}-01",
    f"00-{TID}3-{PID}-01",  # trace id too long
    f"00-{TID[:-1]}-{PID}-01",  # too short
    f"00-{TID.upper().replace('1', 'A')}-{PID}-01",  # uppercase hex
    f"00-4BF92F3577B34DA6A3CE929D0E0E4736-{PID}-01",
    f"00-{TID}-{'0' * 16}-01",  # all-zero parent id
    f"00-{TID}-.{PID[1:]}-01",
    f"00-{TID}-{PID[:-1]}.-01",
    f"00-{TID}-{PID}7-01",  # parent too long
    f"00-{TID}-{PID[:-1]}-01",  # too short
    f"00-{TID}-00F067AA0BA902B7-01",  # uppercase parent
    f"00-{TID}-{PID}-.0",  # flags
    f"00-{TID}-{PID}-0.",
    f"00-{TID}-{PID}-001",
    f"00-{TID}-{PID}-1",
    f"00-{TID}-{PID}-0F",
    f"{VALID_TP}.",  # version 00 is exactly 55 characters
    f"{VALID_TP}-what-the-future-will-be-like",
    f"cc-{TID}-{PID}-01.what-the-future-will-be-like",  # future: needs "-" after flags
    f"cc-{TID}-{PID}-0",  # future: still >= 55 characters
    f"00_{TID}_{PID}_01",  # delimiters
    f"{VALID_TP},{VALID_TP}",  # duplicated header joined by a proxy
    f"00-{TID}-{PID}-01, 00-{TID}-{PID}-01",
]


@pytest.mark.parametrize("value", W3C_INVALID)
def test_w3c_invalid_restarts_the_trace(value):
    assert extract(tp_only(value)) is None


def test_w3c_invalid_traceparent_drops_tracestate():
    assert extract(hdrs(traceparent=f"ff-{TID}-{PID}-01", tracestate="foo=1")) is None


def test_tracestate_without_traceparent_is_discarded():
    assert extract(hdrs(tracestate="foo=1")) is None
    ctx = new_context(extract(hdrs(tracestate="foo=1,bar=2")), ParentBasedRatio(1.0))
    assert ctx.tracestate == ""
    assert [h for h, _ in inject(ctx)] == ["traceparent"]


def test_random_trace_id_flag_is_kept_and_set_on_new_roots():
    child = new_context(extract(tp_only(f"00-{TID}-{PID}-03")), ParentBasedRatio(1.0))
    assert dict(inject(child))["traceparent"].endswith("-03")
    child = new_context(extract(tp_only(f"00-{TID}-{PID}-01")), ParentBasedRatio(1.0))
    assert dict(inject(child))["traceparent"].endswith("-01")
    child = new_context(extract(tp_only(f"00-{TID}-{PID}-ff")), ParentBasedRatio(1.0))
    assert dict(inject(child))["traceparent"].endswith("-03")  # reserved bits zeroed
    root = new_context(None, ParentBasedRatio(0.0))
    assert dict(inject(root))["traceparent"].endswith("-02")


def test_future_version_is_reemitted_as_00():
    ctx = new_context(extract(tp_only(f"cc-{TID}-{PID}-01-future")), ParentBasedRatio(0.0))
    tp = dict(inject(ctx))["traceparent"]
    assert tp.startswith(f"00-{TID}-") and len(tp) == 55


# --- tracestate -------------------------------------------------------------------------------

KEY_ALL = "abcdefghijklmnopqrstuvwxyz0123456789_-*/"
VALUE_ALL = "".join(chr(c) for c in (*range(0x20, 0x2C), *range(0x2D, 0x3D), *range(0x3E, 0x7F)))
_BARS = ",".join(f"bar{i:02d}={i:02d}" for i in range(1, 33))
_LONG = "x" * 200

TRACESTATE = [
    ("foo=1,bar=2", "foo=1,bar=2"),
    ("foo=1 \t , \t bar=2, \t baz=3", "foo=1,bar=2,baz=3"),  # OWS
    (" foo=1", "foo=1"),
    ("\t foo=1 \t", "foo=1"),
    ("foo=1,,bar=2", "foo=1,bar=2"),  # empty members (joined empty header lines)
    (",foo=1", "foo=1"),
    ("foo=1,bar=2,rojo=1,congo=2,baz=3", "foo=1,bar=2,rojo=1,congo=2,baz=3"),  # order kept
    (f"{KEY_ALL}={VALUE_ALL}", f"{KEY_ALL}={VALUE_ALL}"),
    (f"{KEY_ALL}@a-z0-9_-*/={VALUE_ALL}", f"{KEY_ALL}@a-z0-9_-*/={VALUE_ALL}"),
    ("0tenant@vendor=1", "0tenant@vendor=1"),
    (_BARS, _BARS),  # 32 members
    ("foo=1," + "z" * 256 + "=1", "foo=1," + "z" * 256 + "=1"),  # key of 256
    ("foo=1," + "t" * 241 + "@" + "v" * 14 + "=1", "foo=1," + "t" * 241 + "@" + "v" * 14 + "=1"),
    # invalid: the whole header is discarded
    ("", ""),
    ("foo=1,foo=1", ""),  # duplicated keys
    ("foo=1,foo=2", ""),
    ("foo =1", ""),
    ("FOO=1", ""),
    ("foo.bar=1", ""),
    ("foo@=1,bar=2", ""),
    ("@foo=1,bar=2", ""),
    ("foo@@bar=1,bar=2", ""),
    ("foo@bar@baz=1,bar=2", ""),
    ("0foo=1", ""),  # simple keys start with a letter
    (_BARS + ",bar33=33", ""),  # 33 members
    ("foo=1," + "z" * 257 + "=1", ""),
    ("foo=1," + "t" * 242 + "@v=1", ""),
    ("foo=1,t@" + "v" * 15 + "=1", ""),
    ("foo=bar=baz", ""),
    ("foo=,bar=3", ""),
    ("foo=1 x\x7f", ""),
    ("foo=" + "v" * 257, ""),  # value longer than 256
    # over 512 characters: drop members longer than 128 first, then from the right
    (
        f"a={_LONG},b={_LONG},c={_LONG},d=1",
        "d=1",
    ),
    (
        ",".join(f"k{i:02d}=" + "v" * 96 for i in range(6)),
        ",".join(f"k{i:02d}=" + "v" * 96 for i in range(5)),
    ),
]


@pytest.mark.parametrize(("raw", "propagated"), TRACESTATE)
def test_tracestate(raw, propagated):
    ctx = extract(hdrs(traceparent=VALID_TP, tracestate=raw))
    assert ctx is not None and ctx.trace_id == TID  # tracestate never breaks traceparent
    assert ctx.tracestate == propagated
    child = new_context(ctx, ParentBasedRatio(1.0))
    out = dict(inject(child))
    if propagated:
        assert out["tracestate"] == propagated
        assert len(out["tracestate"]) <= 512 or raw == propagated
    else:
        assert "tracestate" not in out


def test_tracestate_cache_gives_same_answer():
    for _ in range(3):
        assert extract(hdrs(traceparent=VALID_TP, tracestate="foo=1,foo=1")).tracestate == ""
        assert extract(hdrs(traceparent=VALID_TP, tracestate="a=1")).tracestate == "a=1"


# --- B3 ---------------------------------------------------------------------------------------

T64 = "a3ce929d0e0e4736"
S = "00f067aa0ba902b7"
P = "e457b5a2e4d86bd1"

B3_SINGLE = [
    (f"{TID}-{S}-1-{P}", TID, S, P, True, False),
    (f"{TID}-{S}-0-{P}", TID, S, P, False, False),
    (f"{TID}-{S}-d-{P}", TID, S, P, True, True),
    (f"{TID}-{S}-1", TID, S, "", True, False),
    (f"{TID}-{S}", TID, S, "", None, False),  # deferred
    (f"{T64}-{S}-1", "0" * 16 + T64, S, "", True, False),  # 64-bit trace id
    (f" {TID}-{S}-1 ", TID, S, "", True, False),
    ("0", "", "", "", False, False),  # sampling only
    ("1", "", "", "", True, False),
    ("d", "", "", "", True, True),
]


@pytest.mark.parametrize(("value", "tid", "sid", "pid", "sampled", "debug"), B3_SINGLE)
def test_b3_single_valid(value, tid, sid, pid, sampled, debug):
    ctx = extract(hdrs(b3=value))
    assert ctx is not None
    assert (ctx.trace_id, ctx.span_id, ctx.parent_id, ctx.sampled, ctx.debug, ctx.fmt) == (
        tid,
        sid,
        pid,
        sampled,
        debug,
        "b3",
    )


B3_SINGLE_INVALID = [
    "",
    "2",
    "true",
    f"{TID}",
    f"{TID}-{S}-2",
    f"{TID}-{S}-true",
    f"{TID}-{S}-1-{P}-x",
    f"{TIDX.upper()}-{S}-1",
    f"{TID}-{S.upper()}-1",
    f"{'0' * 32}-{S}-1",
    f"{TID}-{'0' * 16}-1",
    f"{TID}-{S}-1-{'0' * 16}",
    f"{TID[:-1]}-{S}-1",
    f"{T64}0-{S}-1",
    f"{TID}-{S}0-1",
    f"{TID}-{S}-1-{P}0",
    f"{TID}--1",
]


@pytest.mark.parametrize("value", B3_SINGLE_INVALID)
def test_b3_single_invalid(value):
    assert extract(hdrs(b3=value)) is None


B3_MULTI = [
    (
        dict(x_b3_traceid=TID, x_b3_spanid=S, x_b3_parentspanid=P, x_b3_sampled="1"),
        TID,
        S,
        P,
        True,
        False,
    ),
    (dict(x_b3_traceid=TID, x_b3_spanid=S, x_b3_sampled="0"), TID, S, "", False, False),
    (dict(x_b3_traceid=TID, x_b3_spanid=S), TID, S, "", None, False),
    (dict(x_b3_traceid=TID, x_b3_spanid=S, x_b3_sampled="true"), TID, S, "", True, False),
    (dict(x_b3_traceid=TID, x_b3_spanid=S, x_b3_sampled="false"), TID, S, "", False, False),
    (dict(x_b3_traceid=TID, x_b3_spanid=S, x_b3_flags="1"), TID, S, "", True, True),
    (
        dict(x_b3_traceid=TID, x_b3_spanid=S, x_b3_flags="1", x_b3_sampled="0"),
        TID,
        S,
        "",
        True,
        True,
    ),  # debug implies sampled
    (dict(x_b3_traceid=T64, x_b3_spanid=S, x_b3_sampled="1"), "0" * 16 + T64, S, "", True, False),
    # the first value wins when a proxy joined repeated headers
    (
        dict(x_b3_traceid=f"{TID}, {'f' * 32}", x_b3_spanid=f"{S},{P}", x_b3_sampled="1, 0"),
        TID,
        S,
        "",
        True,
        False,
    ),
    (dict(x_b3_sampled="0"), "", "", "", False, False),  # sampling only
    (dict(x_b3_flags="1"), "", "", "", True, True),
]


@pytest.mark.parametrize(("h", "tid", "sid", "pid", "sampled", "debug"), B3_MULTI)
def test_b3_multi_valid(h, tid, sid, pid, sampled, debug):
    ctx = extract(hdrs(**h))
    assert ctx is not None
    assert (ctx.trace_id, ctx.span_id, ctx.parent_id, ctx.sampled, ctx.debug, ctx.fmt) == (
        tid,
        sid,
        pid,
        sampled,
        debug,
        "b3multi",
    )


B3_MULTI_INVALID = [
    dict(x_b3_traceid=TID),  # no span id
    dict(x_b3_spanid=S),  # no trace id and no decision
    dict(x_b3_traceid=TID, x_b3_spanid=S, x_b3_sampled="2"),
    dict(x_b3_traceid=TIDX.upper(), x_b3_spanid=S),
    dict(x_b3_traceid=TID, x_b3_spanid="0" * 16),
    dict(x_b3_traceid="0" * 32, x_b3_spanid=S),
    dict(x_b3_traceid=TID, x_b3_spanid=S, x_b3_parentspanid="xyz"),
    dict(x_b3_traceid=TID[:20], x_b3_spanid=S),
    dict(x_b3_sampled="maybe"),
]


@pytest.mark.parametrize("h", B3_MULTI_INVALID)
def test_b3_multi_invalid(h):
    assert extract(hdrs(**h)) is None


def test_priority_w3c_then_b3_single_then_multi():
    other = "f" * 32
    both = hdrs(traceparent=VALID_TP, b3=f"{other}-{S}-1", x_b3_traceid="e" * 32, x_b3_spanid=S)
    assert extract(both).fmt == "w3c"
    single_wins = hdrs(b3=f"{other}-{S}-1", x_b3_traceid="e" * 32, x_b3_spanid=S)
    assert extract(single_wins).trace_id == other
    # an invalid traceparent does not hide valid B3, and an invalid b3 does not hide multi
    assert extract(hdrs(traceparent="garbage", b3=f"{other}-{S}-1")).trace_id == other
    assert extract(hdrs(b3="garbage", x_b3_traceid="e" * 32, x_b3_spanid=S)).trace_id == "e" * 32
    assert extract(hdrs()) is None


def test_b3_discards_tracestate():
    ctx = extract(hdrs(b3=f"{TID}-{S}-1", tracestate="foo=1"))
    assert ctx.tracestate == ""


# --- new_context and sampling -----------------------------------------------------------------


def test_child_context_keeps_trace_and_links_parent():
    parent = extract(tp_only(VALID_TP))
    child = new_context(parent, ParentBasedRatio(0.0))
    assert child.trace_id == TID
    assert child.parent_id == PID
    assert child.span_id != PID and len(child.span_id) == 16 and child.span_id != "0" * 16
    assert child.sampled is True  # parent-based: the parent's decision wins over the ratio


def test_root_context():
    root = new_context(None, ParentBasedRatio(1.0))
    assert len(root.trace_id) == 32 and int(root.trace_id, 16) != 0
    assert root.trace_id == root.trace_id.lower()
    assert len(root.span_id) == 16 and root.parent_id == ""
    assert root.sampled is True and root.fmt == "w3c" and root.tracestate == ""
    assert new_context(None, ParentBasedRatio(0.0)).sampled is False
    ids = {new_context(None, ParentBasedRatio(1.0)).trace_id for _ in range(1000)}
    assert len(ids) == 1000


def test_parent_unsampled_is_respected():
    parent = extract(tp_only(f"00-{TID}-{PID}-00"))
    assert new_context(parent, ParentBasedRatio(1.0)).sampled is False
    # plain ratio samplers (OTEL_TRACES_SAMPLER=always_on) ignore the parent
    assert new_context(parent, ParentBasedRatio(1.0, respect_parent=False)).sampled is True


def test_deferred_b3_decision_is_consistent_per_trace_id():
    low = "0" * 16 + "0000000000000001"
    high = "0" * 16 + "ffffffffffffffff"
    s = ParentBasedRatio(0.5)
    for _ in range(10):
        assert new_context(extract(hdrs(b3=f"{low}-{S}")), s).sampled is True
        assert new_context(extract(hdrs(b3=f"{high}-{S}")), s).sampled is False


def test_debug_forces_sampling():
    ctx = new_context(extract(hdrs(b3=f"{TID}-{S}-d")), ParentBasedRatio(0.0))
    assert ctx.sampled is True and ctx.debug is True


def test_b3_sampling_only_starts_new_trace_with_the_decision():
    ctx = new_context(extract(hdrs(b3="0")), ParentBasedRatio(1.0))
    assert len(ctx.trace_id) == 32 and ctx.sampled is False and ctx.fmt == "b3"
    assert dict(inject(ctx))["b3"].split("-")[2] == "0"
    ctx = new_context(extract(hdrs(x_b3_flags="1")), ParentBasedRatio(0.0))
    assert ctx.sampled and ctx.debug and ctx.fmt == "b3multi"


def test_ratio_sampler_rate():
    s = ParentBasedRatio(0.25)
    hits = sum(s.decide(None) for _ in range(20000))
    assert 4000 < hits < 6000


def test_ratio_validation():
    with pytest.raises(ValueError):
        ParentBasedRatio(1.5)


# --- inject / round trips ---------------------------------------------------------------------

ROUND_TRIP = [
    ({"traceparent": VALID_TP, "tracestate": "foo=1,bar=2"}, "w3c"),
    ({"traceparent": f"00-{TID}-{PID}-00"}, "w3c"),
    ({"b3": f"{TID}-{S}-1-{P}"}, "b3"),
    ({"b3": f"{TID}-{S}-0"}, "b3"),
    ({"b3": f"{TID}-{S}-d"}, "b3"),
    ({"b3": f"{T64}-{S}-1"}, "b3"),
    (
        {"x-b3-traceid": TID, "x-b3-spanid": S, "x-b3-parentspanid": P, "x-b3-sampled": "1"},
        "b3multi",
    ),
    ({"x-b3-traceid": T64, "x-b3-spanid": S, "x-b3-sampled": "0"}, "b3multi"),
    ({"x-b3-traceid": TID, "x-b3-spanid": S, "x-b3-flags": "1"}, "b3multi"),
]


@pytest.mark.parametrize(("incoming", "fmt"), ROUND_TRIP)
def test_inject_extract_round_trip(incoming, fmt):
    ctx = extract(incoming.get)
    assert ctx is not None and ctx.fmt == fmt
    out = inject(ctx)
    again = extract(dict(out).get)
    assert again == ctx  # same format, ids, decision, tracestate
    assert all(name in PROPAGATION_HEADERS for name, _ in out)
    # and through the proxy: a child of ctx goes out in the same format, same trace
    child = new_context(ctx, ParentBasedRatio(0.0))
    received = extract(dict(inject(child)).get)
    assert received.fmt == fmt
    assert received.trace_id == ctx.trace_id
    assert received.span_id == child.span_id
    assert received.sampled == ctx.sampled
    assert received.debug == ctx.debug


def test_b3_64bit_trace_id_goes_out_at_64_bits():
    ctx = new_context(extract(hdrs(b3=f"{T64}-{S}-1")), ParentBasedRatio(1.0))
    assert dict(inject(ctx))["b3"] == f"{T64}-{ctx.span_id}-1-{S}"


def test_inject_b3_multi_headers():
    ctx = new_context(
        extract(hdrs(x_b3_traceid=TID, x_b3_spanid=S, x_b3_sampled="1")), ParentBasedRatio(0.0)
    )
    assert inject(ctx) == [
        ("x-b3-traceid", TID),
        ("x-b3-spanid", ctx.span_id),
        ("x-b3-parentspanid", S),
        ("x-b3-sampled", "1"),
    ]
    dbg = new_context(
        extract(hdrs(x_b3_traceid=TID, x_b3_spanid=S, x_b3_flags="1")), ParentBasedRatio(0.0)
    )
    names = [n for n, _ in inject(dbg)]
    assert "x-b3-flags" in names and "x-b3-sampled" not in names


def test_inject_w3c_headers():
    ctx = TraceContext(TID, PID, "", True, "foo=1")
    assert inject(ctx) == [("traceparent", VALID_TP), ("tracestate", "foo=1")]
    assert ctx.traceparent == VALID_TP


def test_request_id_is_uuid4():
    seen = set()
    for _ in range(500):
        rid = new_request_id()
        u = uuid.UUID(rid)
        assert u.version == 4 and u.variant == uuid.RFC_4122
        assert str(u) == rid
        seen.add(rid)
    assert len(seen) == 500


# --- fuzz: never raise, and whatever is accepted is well formed --------------------------------

_HEXISH = st.text(alphabet="0123456789abcdefABCDEF-., \t@=xyz", max_size=80)
_HEADER = st.one_of(st.none(), _HEXISH, st.text(max_size=80))


@settings(max_examples=400, deadline=None)
@given(
    st.fixed_dictionaries(
        {
            name: _HEADER
            for name in (
                "traceparent",
                "tracestate",
                "b3",
                "x-b3-traceid",
                "x-b3-spanid",
                "x-b3-parentspanid",
                "x-b3-sampled",
                "x-b3-flags",
            )
        }
    )
)
def test_fuzz_extract_never_raises(headers):
    ctx = extract(headers.get)
    child = new_context(ctx, ParentBasedRatio(0.5))
    assert len(child.trace_id) == 32 and child.trace_id != "0" * 32
    assert len(child.span_id) == 16 and child.span_id != "0" * 16
    assert set(child.trace_id + child.span_id) <= set("0123456789abcdef")
    assert isinstance(child.sampled, bool)
    out = inject(child)
    again = extract(dict(out).get)
    assert again is not None
    assert (again.trace_id, again.span_id, again.sampled, again.fmt) == (
        child.trace_id,
        child.span_id,
        child.sampled,
        child.fmt,
    )


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=600))
def test_fuzz_tracestate_output_is_valid(raw):
    ctx = extract({"traceparent": VALID_TP, "tracestate": raw}.get)
    assert ctx is not None and ctx.trace_id == TID
    ts = ctx.tracestate
    if ts:
        # what we propagate parses again to itself
        assert extract({"traceparent": VALID_TP, "tracestate": ts}.get).tracestate == ts
        assert len(ts.split(",")) <= 32


_CONTINUE_CASES = [
    {"traceparent": VALID_TP},
    {"traceparent": f"00-{TID}-{PID}-00", "tracestate": "foo=1, bar=2"},
    {"traceparent": f"00-{TID}-{PID}-03", "tracestate": "foo=1,foo=2"},
    {"traceparent": f" {VALID_TP}"},
    {"traceparent": f"00-{'0' * 32}-{PID}-01"},
    {"traceparent": f"00-{TID}-{'0' * 16}-01"},
    {"traceparent": f"00-{TID.replace('1', 'A')}-{PID}-01"},
    {"traceparent": f"ff-{TID}-{PID}-01"},
    {"traceparent": f"cc-{TID}-{PID}-01"},
    {"b3": f"{TID}-{S}-1-{P}"},
    {"x-b3-traceid": TID, "x-b3-spanid": S},
    {"b3": "0"},
    {},
]


@pytest.mark.parametrize("headers", _CONTINUE_CASES)
@pytest.mark.parametrize(
    "sampler",
    [ParentBasedRatio(1.0), ParentBasedRatio(0.0), ParentBasedRatio(0.0, respect_parent=False)],
)
def test_continue_trace_equals_extract_then_new_context(headers, sampler):
    from proxy.telemetry.tracing import continue_trace

    fused = continue_trace(headers.get, sampler)
    general = new_context(extract(headers.get), sampler)
    assert fused.span_id != general.span_id  # fresh ids each time
    if general.parent_id:  # continued a trace: everything but the new span id is determined
        general.span_id = fused.span_id
        assert fused == general
    else:  # new root
        assert fused.parent_id == "" and fused.tracestate == ""
        assert (fused.fmt, fused.sampled, fused.debug) == (
            general.fmt,
            general.sampled,
            general.debug,
        )
