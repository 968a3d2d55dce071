"""Frame codec: differential against hyperframe (both directions), RFC 9113 frame rules, and
"parse it or raise H2Error, never anything else" for damaged input fed whole and in pieces."""

from __future__ import annotations

import pytest
from hyperframe import frame as hf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.http2.errors import ErrorCode, H2Error
from tests.unit.http2.conftest import load

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

sid = st.integers(1, 2**31 - 1)
payload = st.binary(max_size=300)
pad = st.one_of(st.none(), st.integers(0, 255))


def flags_of(*names):
    return [n for n in names if n]


@st.composite
def frames(draw):
    """A hyperframe frame and what our parse_* function must return for it."""
    kind = draw(st.sampled_from(range(10)))
    if kind == 0:
        data, p, end = draw(payload), draw(pad), draw(st.booleans())
        f = hf.DataFrame(
            draw(sid),
            data,
            flags=flags_of(end and "END_STREAM", p is not None and "PADDED"),
            pad_length=p or 0,
        )
        return f, data
    if kind == 1:
        data, p = draw(payload), draw(pad)
        stream = draw(sid)
        prio = draw(
            st.one_of(
                st.none(),
                st.tuples(sid.filter(lambda s: s != stream), st.integers(0, 255), st.booleans()),
            )
        )
        kw = {}
        if prio:
            kw = {"depends_on": prio[0], "stream_weight": prio[1], "exclusive": prio[2]}
        f = hf.HeadersFrame(
            stream,
            data,
            flags=flags_of("END_HEADERS", p is not None and "PADDED", prio and "PRIORITY"),
            pad_length=p or 0,
            **kw,
        )
        return f, (data, (prio[0], prio[1] + 1, prio[2]) if prio else None)
    if kind == 2:
        stream = draw(sid)
        dep, w, ex = (
            draw(sid.filter(lambda s: s != stream)),
            draw(st.integers(0, 255)),
            draw(st.booleans()),
        )
        return hf.PriorityFrame(stream, depends_on=dep, stream_weight=w, exclusive=ex), (
            dep,
            w + 1,
            ex,
        )
    if kind == 3:
        code = draw(st.integers(0, 2**32 - 1))
        return hf.RstStreamFrame(draw(sid), error_code=code), code
    if kind == 4:
        if draw(st.booleans()):
            return hf.SettingsFrame(0, flags=["ACK"]), []
        # hyperframe 6.1 serializes only the low octet of an identifier (`setting & 0xFF`)
        s = draw(
            st.dictionaries(
                st.sampled_from([1, 3, 6, 0x10, 0xFF]), st.integers(0, 2**32 - 1), max_size=5
            )
        )
        s.update(draw(st.dictionaries(st.sampled_from([2, 8]), st.integers(0, 1))))
        s.update(draw(st.dictionaries(st.just(4), st.integers(0, 2**31 - 1))))
        s.update(draw(st.dictionaries(st.just(5), st.integers(2**14, 2**24 - 1))))
        return hf.SettingsFrame(0, settings=s), list(s.items())
    if kind == 5:
        data, p, promised = draw(payload), draw(pad), draw(sid)
        f = hf.PushPromiseFrame(
            draw(sid),
            promised_stream_id=promised,
            data=data,
            flags=flags_of("END_HEADERS", p is not None and "PADDED"),
            pad_length=p or 0,
        )
        return f, (promised, data)
    if kind == 6:
        data = draw(st.binary(min_size=8, max_size=8))
        return hf.PingFrame(
            0, opaque_data=data, flags=flags_of(draw(st.booleans()) and "ACK")
        ), data
    if kind == 7:
        last, code, debug = (
            draw(st.integers(0, 2**31 - 1)),
            draw(st.integers(0, 2**32 - 1)),
            draw(payload),
        )
        return hf.GoAwayFrame(0, last_stream_id=last, error_code=code, additional_data=debug), (
            last,
            code,
            debug,
        )
    if kind == 8:
        inc = draw(st.integers(1, 2**31 - 1))
        return hf.WindowUpdateFrame(draw(st.integers(0, 2**31 - 1)), window_increment=inc), inc
    data = draw(payload)
    return hf.ContinuationFrame(
        draw(sid), data, flags=flags_of(draw(st.booleans()) and "END_HEADERS")
    ), data


def parse_any(m, t):
    ftype, flags, stream, body = t
    if ftype == 0:
        return m.parse_data(flags, stream, body)
    if ftype == 1:
        return m.parse_headers(flags, stream, body)
    if ftype == 2:
        return m.parse_priority(stream, body)
    if ftype == 3:
        return m.parse_rst_stream(stream, body)
    if ftype == 4:
        return m.parse_settings(flags, stream, body)
    if ftype == 5:
        return m.parse_push_promise(flags, stream, body, push_enabled=True)
    if ftype == 6:
        return m.parse_ping(flags, stream, body)
    if ftype == 7:
        return m.parse_goaway(stream, body)
    if ftype == 8:
        return m.parse_window_update(stream, body)
    if ftype == 9:
        return m.parse_continuation(flags, stream, body)
    return None


def feed_split(m, data: bytes, cuts: list[int], **kw):
    parser = m.FrameParser(**kw)
    out = []
    points = sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]
    prev = 0
    for at in points:
        out += parser.feed(data[prev:at])
        prev = at
    return out, parser.buffered


def flag_bits(f) -> int:
    return sum(flag.bit for flag in f.defined_flags if flag.name in f.flags)


@SETTINGS
@given(
    fs=st.lists(frames(), min_size=1, max_size=6), cuts=st.lists(st.integers(0, 10_000), max_size=8)
)
def test_hyperframe_frames_parse_identically(fs, cuts):
    wire = b"".join(f.serialize() for f, _ in fs)
    for kind in ("python", "cython"):
        m = load("frames", kind)
        for parsed, left in (
            (m.FrameParser(max_frame_size=2**24 - 1).feed(wire), 0),
            feed_split(m, wire, cuts, max_frame_size=2**24 - 1),
        ):
            assert left == 0
            assert len(parsed) == len(fs)
            for (f, expected), t in zip(fs, parsed, strict=True):
                assert t[0] == f.type and t[1] == flag_bits(f) and t[2] == f.stream_id
                assert parse_any(m, t) == expected


@SETTINGS
@given(
    stream=sid,
    data=st.binary(max_size=40_000),
    end=st.booleans(),
    size=st.sampled_from([16384, 100, 2**24 - 1]),
)
def test_serializers_match_hyperframe(stream, data, end, size):
    py, c = load("frames", "python"), load("frames", "cython")
    block = py.headers_frame(stream, data, end, size)
    assert block == c.headers_frame(stream, data, end, size)
    parsed = py.FrameParser(max_frame_size=size).feed(block)
    assert parsed[0][0] == 1 and all(t[0] == 9 for t in parsed[1:])
    assert b"".join(t[3] for t in parsed) == data
    assert [bool(t[1] & 4) for t in parsed] == [False] * (len(parsed) - 1) + [True]
    assert bool(parsed[0][1] & 1) == end
    if len(data) <= size:
        assert (
            block
            == hf.HeadersFrame(
                stream, data, flags=flags_of("END_HEADERS", end and "END_STREAM")
            ).serialize()
        )
    dataf = py.data_frame(stream, data, end, size)
    assert dataf == c.data_frame(stream, data, end, size)
    if len(data) <= size:
        assert dataf == hf.DataFrame(stream, data, flags=flags_of(end and "END_STREAM")).serialize()
    for m in (py, c):
        assert (
            m.window_update(stream, stream)
            == hf.WindowUpdateFrame(stream, window_increment=stream).serialize()
        )
        assert m.rst_stream(stream, 8) == hf.RstStreamFrame(stream, error_code=8).serialize()
        assert (
            m.goaway(stream, 2, data[:50])
            == hf.GoAwayFrame(
                0, last_stream_id=stream, error_code=2, additional_data=data[:50]
            ).serialize()
        )
        assert (
            m.ping(end, data[:8].ljust(8, b"\0"))
            == hf.PingFrame(
                0, opaque_data=data[:8].ljust(8, b"\0"), flags=flags_of(end and "ACK")
            ).serialize()
        )
        s = {1: 4096, 3: 100, 4: stream, 6: 65536}
        assert m.settings_frame(s) == hf.SettingsFrame(0, settings=s).serialize()
        assert m.settings_ack() == hf.SettingsFrame(0, flags=["ACK"]).serialize()


def err(fn, *args):
    with pytest.raises(H2Error) as info:
        fn(*args)
    return info.value.code, info.value.stream_id


PE, FSE = ErrorCode.PROTOCOL_ERROR, ErrorCode.FRAME_SIZE_ERROR


def test_frame_size_limit(fr):
    big = fr.frame(0, 0, 1, b"x" * 16385)
    assert err(fr.FrameParser().feed, big[:9]) == (ErrorCode.FRAME_SIZE_ERROR, 0)
    assert len(fr.FrameParser(max_frame_size=16385).feed(big)) == 1


def test_reserved_bit_is_ignored(fr):
    raw = bytearray(fr.frame(0, 0, 5, b"ab"))
    raw[5] |= 0x80
    assert fr.FrameParser().feed(bytes(raw)) == [(0, 0, 5, b"ab")]


def test_unknown_frame_types_pass_through(fr):
    assert fr.FrameParser().feed(fr.frame(0xEE, 0xFF, 0, b"zz")) == [(0xEE, 0xFF, 0, b"zz")]


def test_preface(fr):
    p = fr.FrameParser(expect_preface=True)
    assert p.feed(fr.PREFACE[:10]) == []
    assert p.feed(fr.PREFACE[10:] + fr.settings_ack()) == [(4, 1, 0, b"")]
    assert err(fr.FrameParser(expect_preface=True).feed, b"GET / HTTP/1.1\r\n") == (PE, 0)


def test_trickled_input_keeps_partial_frames(fr):
    wire = fr.data_frame(1, b"x" * 20000, True, 2**24 - 1)
    p = fr.FrameParser(max_frame_size=2**24 - 1)
    got = []
    for i in range(0, len(wire), 7):
        got += p.feed(wire[i : i + 7])
    assert got == [(0, 1, 1, b"x" * 20000)] and p.buffered == 0


def test_padding_rules(fr):
    assert fr.parse_data(8, 1, b"\x02ab\0\0") == b"ab"
    assert fr.parse_data(8, 1, b"\x00") == b""
    assert err(fr.parse_data, 8, 1, b"\x05abcd") == (PE, 0)
    assert err(fr.parse_data, 8, 1, b"") == (FSE, 0)
    assert err(fr.parse_headers, 8, 1, b"\x01") == (PE, 0)
    assert err(fr.parse_headers, 0x28, 1, b"\x00\0\0\0") == (FSE, 0)  # priority cut short
    assert err(fr.parse_headers, 0x28, 1, b"\x01\0\0\0\3\x10") == (PE, 0)  # 1 + 5 + 1 > 6


@pytest.mark.parametrize(
    "call, expected",
    [
        (lambda m: m.parse_data(0, 0, b""), (PE, 0)),
        (lambda m: m.parse_headers(0, 0, b""), (PE, 0)),
        (lambda m: m.parse_priority(3, b"\0\0\0\3\x10"), (PE, 3)),  # depends on itself
        (lambda m: m.parse_priority(0, b"\0" * 5), (PE, 0)),
        (lambda m: m.parse_priority(1, b"\0" * 4), (FSE, 1)),
        (lambda m: m.parse_rst_stream(0, b"\0" * 4), (PE, 0)),
        (lambda m: m.parse_rst_stream(1, b"\0" * 5), (FSE, 0)),
        (lambda m: m.parse_settings(0, 1, b""), (PE, 0)),
        (lambda m: m.parse_settings(1, 0, b"\0" * 6), (FSE, 0)),
        (lambda m: m.parse_settings(0, 0, b"\0" * 7), (FSE, 0)),
        (lambda m: m.parse_settings(0, 0, b"\0\x02\0\0\0\x02"), (PE, 0)),
        (lambda m: m.parse_settings(0, 0, b"\0\x08\0\0\0\x02"), (PE, 0)),
        (lambda m: m.parse_settings(0, 0, b"\0\x04\x80\0\0\0"), (ErrorCode.FLOW_CONTROL_ERROR, 0)),
        (lambda m: m.parse_settings(0, 0, b"\0\x05\0\0\x3f\xff"), (PE, 0)),
        (lambda m: m.parse_settings(0, 0, b"\0\x05\x01\0\0\0"), (PE, 0)),
        (lambda m: m.parse_push_promise(4, 1, b"\0\0\0\2"), (PE, 0)),  # a server never allows push
        (lambda m: m.parse_push_promise(4, 0, b"\0\0\0\2", True), (PE, 0)),
        (lambda m: m.parse_push_promise(4, 1, b"\0\0\2", True), (FSE, 0)),
        (lambda m: m.parse_ping(0, 1, b"\0" * 8), (PE, 0)),
        (lambda m: m.parse_ping(0, 0, b"\0" * 9), (FSE, 0)),
        (lambda m: m.parse_goaway(1, b"\0" * 8), (PE, 0)),
        (lambda m: m.parse_goaway(0, b"\0" * 7), (FSE, 0)),
        (lambda m: m.parse_window_update(0, b"\0" * 4), (PE, 0)),
        (lambda m: m.parse_window_update(7, b"\x80\0\0\0"), (PE, 7)),  # zero: a stream error
        (lambda m: m.parse_window_update(7, b"\0" * 3), (FSE, 0)),
        (lambda m: m.parse_continuation(4, 0, b""), (PE, 0)),
    ],
)
def test_frame_rules(fr, call, expected):
    assert err(call, fr) == expected


def test_settings_keep_order_and_unknown_ids(fr):
    raw = fr.settings_frame({1: 0, 0xFF99: 7})[9:] + fr.settings_frame({1: 4096})[9:]
    assert fr.parse_settings(0, 0, raw) == [(1, 0), (0xFF99, 7), (1, 4096)]


def test_serializer_arguments_are_checked(fr):
    for call in (
        lambda: fr.window_update(1, 0),
        lambda: fr.window_update(1, 2**31),
        lambda: fr.data_frame(0, b""),
        lambda: fr.ping(False, b"short"),
        lambda: fr.rst_stream(0, 0),
        lambda: fr.settings_frame({1: -1}),
    ):
        with pytest.raises(ValueError):
            call()


def outcome(m, data: bytes, cuts: list[int]):
    try:
        frames_, _ = feed_split(m, data, cuts, max_frame_size=64)
        return [(t, parse_any(m, t)) for t in frames_]
    except H2Error as e:
        return ("error", e.code, e.stream_id)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=120), cuts=st.lists(st.integers(0, 200), max_size=5))
def test_garbage_raises_only_h2error_and_twins_agree(data, cuts):
    py, c = load("frames", "python"), load("frames", "cython")
    whole = outcome(py, data, [])
    assert outcome(py, data, cuts) == whole
    assert outcome(c, data, cuts) == whole


def test_headers_self_dependency_is_left_to_the_caller(fr):
    # the block must still be decoded (HPACK), so parse_headers reports rather than raises
    assert fr.parse_headers(0x20, 3, b"\x80\0\0\3\x10\x82") == (b"\x82", (3, 17, True))


def parse_buffered(m, data: bytes, cuts: list[int], hint: int = 0, **kw):
    """Like ``feed_split`` through the buffered mode: each piece is written into the view
    ``get_buffer`` returns (a transport reading into it), as much as fits."""
    parser = m.FrameParser(**kw)
    out = []
    points = sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]
    prev = 0
    for at in points:
        while prev < at:
            view = parser.get_buffer(hint or (at - prev))
            n = min(len(view), at - prev)
            assert n > 0
            view[:n] = data[prev : prev + n]
            out += parser.parse(n)
            prev += n
    return out, parser.buffered


@SETTINGS
@given(
    fs=st.lists(frames(), min_size=1, max_size=6),
    cuts=st.lists(st.integers(0, 10_000), max_size=8),
    hint=st.sampled_from([0, 1, 70_000]),
)
def test_buffered_mode_parses_what_feed_parses(fs, cuts, hint):
    wire = b"".join(f.serialize() for f, _ in fs)
    for kind in ("python", "cython"):
        m = load("frames", kind)
        fed = m.FrameParser(max_frame_size=2**24 - 1).feed(wire)
        assert parse_buffered(m, wire, cuts, hint, max_frame_size=2**24 - 1) == (fed, 0)


def test_buffered_mode_moves_or_regrows_for_frames_larger_than_the_buffer(fr):
    """Frames bigger than the first buffer, arriving in pieces that straddle frames: the
    parser compacts (held octets moved to the front) or takes a bigger buffer, and every
    payload comes out whole and as bytes."""
    sizes = [3 << 20, 5, 700_000, 1 << 20, 17, 2 << 20]
    wire = b"".join(
        fr.data_frame(1, bytes([i + 1]) * n, False, 2**24 - 1) for i, n in enumerate(sizes)
    )
    for step in (65_536, 300_001, 1 << 20):
        got, left = parse_buffered(
            fr, wire, list(range(step, len(wire), step)), max_frame_size=2**24 - 1
        )
        assert left == 0
        assert [(t[0], len(t[3])) for t in got] == [(0, n) for n in sizes]
        assert all(type(t[3]) is bytes and t[3] == bytes([i + 1]) * len(t[3])
                   for i, t in enumerate(got))  # fmt: skip


def test_buffered_mode_view_holds_the_hint_and_the_rest_of_a_frame(fr):
    p = fr.FrameParser(max_frame_size=2**24 - 1)
    wire = fr.data_frame(3, b"z" * (4 << 20), True, 2**24 - 1)
    view = p.get_buffer(100)
    assert len(view) >= 64 * 1024  # a transport's hint is not taken below one read's worth
    view[:9] = wire[:9]
    assert p.parse(9) == [] and p.buffered == 9
    view = p.get_buffer(100)
    assert len(view) >= (4 << 20)  # room for the whole announced frame
    view[: len(wire) - 9] = wire[9:]
    assert p.parse(len(wire) - 9) == [(0, 1, 3, b"z" * (4 << 20))] and p.buffered == 0


def test_buffered_mode_checks_the_preface_and_frame_size(fr):
    p = fr.FrameParser(expect_preface=True)
    wire = fr.PREFACE + fr.settings_ack()
    for i in range(len(wire)):
        view = p.get_buffer(1)
        view[0] = wire[i]
        got = p.parse(1)
    assert got == [(4, 1, 0, b"")]

    def fill(parser, data):
        view = parser.get_buffer(len(data))
        view[: len(data)] = data
        return parser.parse(len(data))

    assert err(fill, fr.FrameParser(expect_preface=True), b"GET / HTTP/1.1\r\n") == (PE, 0)
    big = fr.frame(0, 0, 1, b"x" * 16385)
    assert err(fill, fr.FrameParser(), big[:9]) == (ErrorCode.FRAME_SIZE_ERROR, 0)
    p = fr.FrameParser()
    assert fill(p, fr.frame(0, 0, 1, b"x" * 100)[:20]) == [] and p.buffered == 20
    p.clear()
    assert p.buffered == 0
