"""The sans-I/O connection against the h2 library as its peer, and the flood budgets of
research/security-ops.md 6.6."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.http2 import frames as fr
from proxy.http2.connection import (
    ConnectionTerminated,
    Event,
    H2Connection,
    Limits,
    PingReceived,
    RequestReceived,
    SettingsAcknowledged,
    StreamReset,
    WindowUpdated,
)
from proxy.http2.errors import ErrorCode, LocalProtocolError

REQ = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/pkg.Svc/M"),
    (b":authority", b"svc:50051"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def h2_peer(client_side: bool = True) -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(
        config=h2.config.H2Configuration(
            client_side=client_side,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            validate_inbound_headers=False,
        )
    )
    conn.initiate_connection()
    return conn


def server(limits: Limits | None = None, clock: Clock | None = None):
    ours = H2Connection(client_side=False, limits=limits, clock=clock or Clock())
    ours.initiate_connection()
    peer = h2_peer()
    events = ours.receive_data(peer.data_to_send())
    peer.receive_data(ours.data_to_send())
    events += ours.receive_data(peer.data_to_send())
    return ours, peer, events


def kinds(events):
    return [type(e).__name__ for e in events]


def test_request_response_round_trip():
    ours, peer, events = server()
    assert any(isinstance(e, SettingsAcknowledged) for e in events)
    peer.send_headers(1, REQ)
    peer.send_data(1, b"\0\0\0\0\x03abc", end_stream=True)
    events = ours.receive_data(peer.data_to_send())
    assert kinds(events) == ["RequestReceived", "DataReceived", "StreamEnded"]
    req = events[0]
    assert req.fields.path == b"/pkg.Svc/M" and req.headers == REQ and not req.end_stream
    assert events[1].data == b"\0\0\0\0\x03abc"
    ours.acknowledge_received_data(1, events[1].flow_controlled_length)
    ours.send_headers(1, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    ours.send_data(1, b"\0\0\0\0\x01z")
    ours.send_headers(1, [(b"grpc-status", b"0")], end_stream=True)
    got = peer.receive_data(ours.data_to_send())
    assert [type(e) for e in got] == [
        h2.events.ResponseReceived,
        h2.events.DataReceived,
        h2.events.TrailersReceived,
        h2.events.StreamEnded,
    ]
    assert got[0].headers == [(b":status", b"200"), (b"content-type", b"application/grpc")]
    assert got[2].headers == [(b"grpc-status", b"0")]
    assert ours._streams == {}  # both sides closed: forgotten


def test_client_against_h2_server():
    ours = H2Connection(client_side=True, clock=Clock())
    ours.initiate_connection()
    peer = h2_peer(client_side=False)
    peer.receive_data(ours.data_to_send())
    ours.receive_data(peer.data_to_send())
    sid = ours.get_next_available_stream_id()
    ours.send_headers(sid, REQ, end_stream=True)
    got = peer.receive_data(ours.data_to_send())
    req = next(e for e in got if isinstance(e, h2.events.RequestReceived))
    assert req.headers == REQ
    peer.send_headers(sid, [(b":status", b"200"), (b"content-length", b"2")])
    peer.send_data(sid, b"ok", end_stream=True)
    events = ours.receive_data(peer.data_to_send())
    resp = [e for e in events if not isinstance(e, (SettingsAcknowledged, WindowUpdated))]
    assert kinds(resp) == ["ResponseReceived", "DataReceived", "StreamEnded"]
    assert resp[0].fields.status == 200 and resp[1].data == b"ok"


def test_malformed_request_is_a_stream_error_and_the_connection_lives():
    ours, peer, _ = server()
    peer.send_headers(1, REQ + [(b"Transfer-Encoding", b"chunked")], end_stream=True)
    events = ours.receive_data(peer.data_to_send())
    assert kinds(events) == ["StreamReset"]
    assert events[0].error_code == ErrorCode.PROTOCOL_ERROR and not events[0].remote
    got = peer.receive_data(ours.data_to_send())
    assert (
        isinstance(got[0], h2.events.StreamReset) and got[0].error_code == ErrorCode.PROTOCOL_ERROR
    )
    peer.send_headers(3, REQ, end_stream=True)
    assert kinds(ours.receive_data(peer.data_to_send())) == ["RequestReceived", "StreamEnded"]


def test_content_length_mismatch_resets_the_stream():
    ours, peer, _ = server()
    peer.send_headers(1, REQ + [(b"content-length", b"3")])
    peer.send_data(1, b"abcd", end_stream=True)  # H2.CL: more than announced
    events = ours.receive_data(peer.data_to_send())
    assert kinds(events) == ["RequestReceived", "StreamReset"]
    assert events[1].error_code == ErrorCode.PROTOCOL_ERROR


def test_hpack_bomb_resets_only_the_stream():
    ours, peer, _ = server()
    peer.send_headers(1, REQ + [(b"x-big", b"a" * 4000)], end_stream=True)
    assert kinds(ours.receive_data(peer.data_to_send()))[0] == "RequestReceived"
    peer.send_headers(3, REQ + [(b"x-big", b"a" * 4000)] * 40, end_stream=True)  # 160 KB decoded
    events = ours.receive_data(peer.data_to_send())
    assert kinds(events) == ["StreamReset"] and events[0].stream_id == 3
    peer.send_headers(5, REQ, end_stream=True)  # the HPACK context is still in step
    assert kinds(ours.receive_data(peer.data_to_send())) == ["RequestReceived", "StreamEnded"]


def test_rapid_reset_ends_the_connection():
    ours, peer, _ = server()
    events = []
    for i in range(1000):
        sid = 1 + 2 * i
        peer.send_headers(sid, REQ)
        peer.reset_stream(sid)
        events += ours.receive_data(peer.data_to_send())
        if ours.closed:
            break
    assert isinstance(events[-1], ConnectionTerminated)
    assert events[-1].error_code == ErrorCode.ENHANCE_YOUR_CALM and not events[-1].remote
    assert sum(isinstance(e, RequestReceived) for e in events) <= 252


def test_slow_resets_are_not_premature():
    clock = Clock()
    ours, peer, _ = server(clock=clock)
    for i in range(400):
        sid = 1 + 2 * i
        peer.send_headers(sid, REQ)
        ours.receive_data(peer.data_to_send())
        clock.now += 2
        peer.reset_stream(sid)
        ours.receive_data(peer.data_to_send())
    assert not ours.closed


@pytest.mark.parametrize("flood", ["ping", "settings", "empty-data", "priority"])
def test_floods(flood):
    ours, peer, _ = server()
    raw = b""
    if flood == "ping":
        raw = fr.ping(False, b"12345678") * 11
    elif flood == "settings":
        raw = fr.settings_frame({1: 4096}) * 11
    elif flood == "priority":
        raw = fr.frame(fr.PRIORITY, 0, 5, b"\0\0\0\3\x10") * 101
    else:
        peer.send_headers(1, REQ)
        raw = peer.data_to_send() + fr.data_frame(1, b"") * 3
    events = ours.receive_data(raw)
    assert isinstance(events[-1], ConnectionTerminated)
    assert events[-1].error_code == ErrorCode.ENHANCE_YOUR_CALM


def test_pings_within_budget_are_answered():
    ours, peer, _ = server()
    events = ours.receive_data(fr.ping(False, b"abcdefgh") * 3)
    assert kinds(events) == ["PingReceived"] * 3 and isinstance(events[0], PingReceived)
    got = peer.receive_data(ours.data_to_send())
    assert [type(e) for e in got] == [h2.events.PingAckReceived] * 3


def test_continuation_flood():
    ours, peer, _ = server()
    raw = fr.frame(fr.HEADERS, 0, 1, b"\x82") + fr.frame(fr.CONTINUATION, 0, 1, b"") * 100
    events = ours.receive_data(raw)
    assert isinstance(events[-1], ConnectionTerminated)
    assert events[-1].error_code == ErrorCode.ENHANCE_YOUR_CALM


def test_interrupted_header_block_is_a_connection_error():
    ours, _, _ = server()
    events = ours.receive_data(fr.frame(fr.HEADERS, 0, 1, b"\x82") + fr.ping(False, b"x" * 8))
    assert events[-1].error_code == ErrorCode.PROTOCOL_ERROR


def test_flow_control():
    ours, peer, _ = server(Limits(stream_window=100))
    peer.send_headers(1, REQ)
    ours.receive_data(peer.data_to_send())
    raw = fr.data_frame(1, b"x" * 101)  # the peer ignores our 100-octet stream window
    events = ours.receive_data(raw)
    assert kinds(events) == ["StreamReset"] and events[0].error_code == ErrorCode.FLOW_CONTROL_ERROR
    peer.send_headers(3, REQ)
    ours.receive_data(peer.data_to_send())
    window = ours.local_flow_control_window(3)
    with pytest.raises(LocalProtocolError):
        ours.send_data(3, b"x" * (window + 1))
    peer.increment_flow_control_window(1000, 3)
    peer.increment_flow_control_window(1000)
    events = ours.receive_data(peer.data_to_send())
    assert [(e.stream_id, e.delta) for e in events] == [(3, 1000), (0, 1000)]
    assert ours.local_flow_control_window(3) == window + 1000


def test_connection_and_stream_windows_reopen_separately():
    """A proxy reopens the connection window as soon as DATA is buffered and a stream's window
    only when its reader consumes: the peer sees exactly those WINDOW_UPDATEs."""
    ours, peer, _ = server(Limits(stream_window=1000, connection_window=2000))
    peer.send_headers(1, REQ)
    peer.send_data(1, b"x" * 1000)
    ours.receive_data(peer.data_to_send())
    ours.acknowledge_connection_data(1000)
    got = peer.receive_data(ours.data_to_send())
    assert [(e.stream_id, e.delta) for e in got] == [(0, 1000)]
    assert peer.local_flow_control_window(1) == 0  # the stream stays closed...
    ours.acknowledge_stream_data(1, 1000)
    got = peer.receive_data(ours.data_to_send())
    assert [(e.stream_id, e.delta) for e in got] == [(1, 1000)]  # ...until its reader catches up
    assert peer.local_flow_control_window(1) == 1000


def test_bad_preface():
    ours = H2Connection(clock=Clock())
    events = ours.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert isinstance(events[-1], ConnectionTerminated)
    assert events[-1].error_code == ErrorCode.PROTOCOL_ERROR
    assert ours.data_to_send().endswith(b"invalid connection preface")


def test_push_promise_refused():
    ours = H2Connection(client_side=True, clock=Clock())
    ours.initiate_connection()
    ours.send_headers(1, REQ, end_stream=True)
    events = ours.receive_data(fr.frame(fr.PUSH_PROMISE, 4, 1, b"\0\0\0\2\x82"))
    assert events[-1].error_code == ErrorCode.PROTOCOL_ERROR


def test_goaway_and_remote_reset_events():
    ours, peer, _ = server()
    peer.send_headers(1, REQ)
    peer.reset_stream(1, error_code=8)
    peer.close_connection(error_code=0, last_stream_id=0)
    events = ours.receive_data(peer.data_to_send())
    assert kinds(events) == ["RequestReceived", "StreamReset", "ConnectionTerminated"]
    assert isinstance(events[1], StreamReset) and events[1].remote and events[1].error_code == 8


def test_streams_below_a_graceful_goaway_finish():
    """A server's GOAWAY(last_stream_id=1): stream 1 is still answered in full, stream 3 (never
    processed) is forgotten, and no new stream may be opened."""
    ours = H2Connection(client_side=True, clock=Clock())
    ours.initiate_connection()
    peer = h2_peer(client_side=False)
    peer.receive_data(ours.data_to_send())
    ours.receive_data(peer.data_to_send())
    for sid in (1, 3):
        ours.send_headers(sid, REQ, end_stream=True)
    peer.receive_data(ours.data_to_send())
    peer.data_to_send()
    peer.send_headers(1, [(b":status", b"200")])
    peer.send_data(1, b"done", end_stream=True)
    # GOAWAY first (by hand: h2 sends nothing after its own GOAWAY), then stream 1's answer
    events = ours.receive_data(fr.goaway(1, 0, b"") + peer.data_to_send())
    assert kinds(events) == ["ConnectionTerminated", "ResponseReceived", "DataReceived",
                             "StreamEnded"]  # fmt: skip
    assert events[0].last_stream_id == 1 and events[2].data == b"done"
    assert 3 not in ours._streams
    with pytest.raises(LocalProtocolError):
        ours.send_headers(5, REQ, end_stream=True)


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=200), cuts=st.lists(st.integers(0, 300), max_size=4))
def test_garbage_never_raises(data, cuts):
    ours = H2Connection(clock=Clock())
    ours.initiate_connection()
    wire = fr.PREFACE + fr.settings_frame({}) + fr.headers_frame(1, b"\x82\x86\x84\x41\x01a") + data
    prev = 0
    for at in sorted(c % (len(wire) + 1) for c in cuts) + [len(wire)]:
        for e in ours.receive_data(wire[prev:at]):  # events only, never an exception
            assert isinstance(e, Event)
        prev = at
        ours.data_to_send()


def test_never_indexed_fields_are_forwarded_never_indexed():
    import hpack

    ours, peer, _ = server()
    peer.send_headers(1, REQ + [hpack.NeverIndexedHeaderTuple(b"x-api-key", b"k")], end_stream=True)
    req = ours.receive_data(peer.data_to_send())[0]
    assert req.never_indexed == [len(REQ)]
    upstream = H2Connection(client_side=True, clock=Clock())
    upstream.send_headers(1, req.headers, True, req.never_indexed)
    block = upstream.data_to_send()[9:]
    decoded = hpack.Decoder().decode(block, raw=True)
    assert [h.indexable for h in decoded][-1] is False


_octets = st.sampled_from(b"aZ:- \t\r\n\x00/*@5")
_names = st.one_of(
    st.sampled_from(
        [
            b":method",
            b":path",
            b":scheme",
            b":authority",
            b":status",
            b":protocol",
            b"host",
            b"te",
            b"content-length",
            b"connection",
            b"upgrade",
            b"x-a",
            b"X-A",
            b"a b",
            b"",
        ]
    ),
    st.lists(_octets, min_size=1, max_size=3).map(bytes),
)
_values = st.one_of(
    st.sampled_from(
        [
            b"GET",
            b"POST",
            b"CONNECT",
            b"/",
            b"/a",
            b"",
            b"http",
            b"https",
            b"trailers",
            b"gzip",
            b"0",
            b"5",
            b"svc:80",
            b" x",
            b"x ",
        ]
    ),
    st.lists(_octets, max_size=4).map(bytes),
)


@settings(max_examples=200, deadline=None)
@given(
    extra=st.lists(
        st.one_of(
            st.tuples(
                st.sampled_from([b"x-a", b"accept", b"host"]), st.sampled_from([b"svc:80", b"1"])
            ),
            st.tuples(_names, _values),
        ),
        max_size=4,
    ),
    base=st.sampled_from([0, 1, 2, 3, 4]),
    end_stream=st.booleans(),
)
def test_at_least_as_strict_as_h2(extra, base, end_stream):
    """Whatever request h2 (the reference) refuses, meshlet refuses too."""
    import h2.exceptions

    headers = REQ[:base] + extra + REQ[base:] if base < 4 else REQ + extra
    wire = fr.PREFACE + fr.settings_frame({})
    wire += fr.headers_frame(1, H2Connection(client_side=True)._encoder.encode(headers), end_stream)
    ref = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=False, header_encoding=None)
    )
    ref.initiate_connection()
    try:
        h2_accepts = any(isinstance(e, h2.events.RequestReceived) for e in ref.receive_data(wire))
    except h2.exceptions.ProtocolError:
        h2_accepts = False
    ours = H2Connection(clock=Clock())
    ours.initiate_connection()
    we_accept = any(isinstance(e, RequestReceived) for e in ours.receive_data(wire))
    if we_accept:
        assert h2_accepts, headers


def test_self_dependent_headers_reset_the_stream_but_keep_hpack_in_step():
    ours, peer, _ = server()
    enc = H2Connection(client_side=True)._encoder
    block = enc.encode(REQ + [(b"x-new", b"indexed")])  # inserts into the dynamic table
    raw = fr.frame(fr.HEADERS, 0x25, 1, b"\0\0\0\1\x10" + block)
    events = ours.receive_data(raw)
    assert kinds(events) == ["StreamReset"] and events[0].error_code == ErrorCode.PROTOCOL_ERROR
    events = ours.receive_data(
        fr.headers_frame(3, enc.encode(REQ + [(b"x-new", b"indexed")]), True)
    )
    assert kinds(events) == ["RequestReceived", "StreamEnded"]
    assert events[0].headers[-1] == (b"x-new", b"indexed")


def test_peer_settings_are_applied():
    ours, peer, _ = server()
    peer.send_headers(1, REQ)
    ours.receive_data(peer.data_to_send())
    before = ours.local_flow_control_window(1)
    peer.update_settings({4: 1000, 5: 20000, 1: 0})
    events = ours.receive_data(peer.data_to_send())
    assert kinds(events) == ["RemoteSettingsChanged"]
    assert ours.local_flow_control_window(1) == min(before - 65535 + 1000, 65535)
    ours.send_headers(1, [(b":status", b"200")])
    out = ours.data_to_send()
    assert out.startswith(fr.settings_ack())
    got = peer.receive_data(out)
    assert any(isinstance(e, h2.events.SettingsAcknowledged) for e in got)
    assert any(isinstance(e, h2.events.ResponseReceived) for e in got)


def test_concurrency_limit_refuses_streams():
    ours, peer, _ = server(Limits(max_concurrent_streams=2))
    for sid in (1, 3):
        peer.send_headers(sid, REQ)
    raw = peer.data_to_send()
    raw += fr.headers_frame(5, H2Connection(client_side=True)._encoder.encode(REQ))
    events = ours.receive_data(raw)
    assert kinds(events)[:2] == ["RequestReceived", "RequestReceived"]
    assert isinstance(events[-1], StreamReset) and events[-1].error_code == ErrorCode.REFUSED_STREAM
    assert not ours.closed


def test_frames_on_streams_we_reset_are_ignored():
    ours, peer, _ = server()
    peer.send_headers(1, REQ)
    ours.receive_data(peer.data_to_send())
    ours.reset_stream(1)
    peer.send_data(1, b"late", end_stream=True)
    assert ours.receive_data(peer.data_to_send()) == []
    assert fr.rst_stream(1, ErrorCode.CANCEL) in ours.data_to_send()


def test_client_gets_informational_then_final_response_and_trailers():
    ours = H2Connection(client_side=True, clock=Clock())
    ours.initiate_connection()
    peer = h2_peer(client_side=False)
    peer.receive_data(ours.data_to_send())
    ours.receive_data(peer.data_to_send())
    ours.send_headers(1, REQ, end_stream=True)
    peer.receive_data(ours.data_to_send())
    peer.send_headers(1, [(b":status", b"103"), (b"link", b"</a>")])
    peer.send_headers(1, [(b":status", b"200")])
    peer.send_data(1, b"x")
    peer.send_headers(1, [(b"grpc-status", b"0")], end_stream=True)
    events = [e for e in ours.receive_data(peer.data_to_send()) if not isinstance(e, WindowUpdated)]
    names = [k for k in kinds(events) if k not in ("SettingsAcknowledged", "RemoteSettingsChanged")]
    assert names == [
        "InformationalResponseReceived",
        "ResponseReceived",
        "DataReceived",
        "TrailersReceived",
        "StreamEnded",
    ]


def test_headers_on_an_even_stream_from_a_client_is_a_connection_error():
    ours, _, _ = server()
    block = H2Connection(client_side=True)._encoder.encode(REQ)
    events = ours.receive_data(fr.headers_frame(2, block, True))
    assert isinstance(events[-1], ConnectionTerminated)
    assert events[-1].error_code == ErrorCode.PROTOCOL_ERROR


def test_large_data_goes_out_as_a_view_in_full_tls_records():
    """A large DATA payload is queued as the frame header with the first 16 KiB of it, then a
    view of the caller's bytes (no copy); small frames around it are joined. The h2 library
    reads the same frames, and the bytes are those data_to_send() gives."""
    peer = h2_peer(client_side=False)
    big = Limits(stream_window=1 << 20, connection_window=1 << 21, max_frame_size=1 << 20)
    ours = H2Connection(client_side=True, limits=big, clock=Clock())
    ours.initiate_connection()
    peer.receive_data(ours.data_to_send())
    codes = h2.settings.SettingCodes
    peer.update_settings({codes.MAX_FRAME_SIZE: 1 << 20, codes.INITIAL_WINDOW_SIZE: 1 << 20})
    peer.increment_flow_control_window(1 << 20)
    ours.receive_data(peer.data_to_send())
    peer.receive_data(ours.data_to_send())  # our SETTINGS ACK: the peer takes larger frames
    sid = ours.get_next_available_stream_id()
    ours.send_headers(sid, REQ)
    payload = bytes(range(256)) * 1024  # 256 KiB
    ours.send_data(sid, payload)
    ours.send_data(sid, b"tail", end_stream=True)
    chunks = ours.data_to_send_chunks()
    assert [type(c) for c in chunks] == [bytes, bytes, memoryview, bytes]
    assert len(chunks[1]) == 16384 and len(chunks[2]) == len(payload) - 16384 + 9
    assert chunks[2].obj is payload  # a view of the caller's bytes
    wire = b"".join(chunks)
    assert ours.data_to_send() == b""
    got = [e for e in peer.receive_data(wire) if isinstance(e, h2.events.DataReceived)]
    assert b"".join(e.data for e in got) == payload + b"tail"
    assert [e.flow_controlled_length for e in got] == [len(payload), 4]


def test_buffered_receive_is_receive_data():
    """get_buffer/buffer_updated (a BufferedProtocol's reads) give the events receive_data
    gives for the same bytes."""
    peer = h2_peer()
    peer.send_headers(1, REQ)
    for last in (False, False, True):
        peer.send_data(1, b"y" * 16_000, end_stream=last)
    wire = peer.data_to_send()
    fed = H2Connection(client_side=False, clock=Clock())
    fed.initiate_connection()
    want = kinds(fed.receive_data(wire))
    ours = H2Connection(client_side=False, clock=Clock())
    ours.initiate_connection()
    got = []
    for at in range(0, len(wire), 7000):
        piece = wire[at : at + 7000]
        view = ours.get_buffer(len(piece))
        view[: len(piece)] = piece
        got += ours.buffer_updated(len(piece))
    assert kinds(got) == want and "DataReceived" in want
    assert b"".join(e.data for e in got if type(e).__name__ == "DataReceived") == b"y" * 48_000
