"""HBONE's CONNECT streams without sockets: two TunnelConnections wired back to back."""

from __future__ import annotations

from proxy.http2 import connection as h2
from proxy.tcp import tunnel as tn


def _pair(limits: h2.Limits | None = None) -> tuple[tn.TunnelConnection, tn.TunnelConnection]:
    c = tn.TunnelConnection(True, limits)
    s = tn.TunnelConnection(False, limits)
    _pump(c, s)
    return c, s


def _pump(c: tn.TunnelConnection, s: tn.TunnelConnection) -> tuple[list, list]:
    """Move bytes both ways until quiet: (client events, server events)."""
    cev: list = []
    sev: list = []
    for _ in range(1000):
        a = c.data_to_send()
        b = s.data_to_send()
        if not a and not b:
            break
        if a:
            sev.extend(s.receive(a))
        if b:
            cev.extend(c.receive(b))
    return cev, sev


def test_connect_carries_authority_and_no_scheme_or_path():
    c, s = _pair()
    sid = c.open("10.0.0.7:6379")
    _, sev = _pump(c, s)
    assert sev == [(tn.OPENED, sid, "10.0.0.7:6379")]
    s.accept(sid)
    cev, _ = _pump(c, s)
    assert cev == [(tn.ESTABLISHED, sid, 200)]


def test_bytes_both_ways_and_half_close_each_direction():
    c, s = _pair()
    sid = c.open("a:1")
    _pump(c, s)
    s.accept(sid)
    c.send(sid, b"PING\r\n")
    c.end(sid)  # the client's FIN: END_STREAM one way only
    cev, sev = _pump(c, s)
    assert (tn.DATA, sid, b"PING\r\n") in sev and (tn.ENDED, sid, None) in sev
    s.send(sid, b"+PONG\r\n")  # the other direction still flows
    cev, _ = _pump(c, s)
    assert (tn.DATA, sid, b"+PONG\r\n") in cev
    s.end(sid)
    cev, _ = _pump(c, s)
    assert (tn.ENDED, sid, None) in cev
    assert sid not in c.streams and sid not in s.streams


def test_server_first_bytes_flow_before_the_client_sends_any():
    c, s = _pair()
    sid = c.open("db:5432")
    _pump(c, s)
    s.accept(sid)
    s.send(sid, b"220 banner\r\n")
    cev, _ = _pump(c, s)
    assert cev == [(tn.ESTABLISHED, sid, 200), (tn.DATA, sid, b"220 banner\r\n")]


def test_flow_control_holds_bytes_until_the_reader_consumes_them():
    lim = h2.Limits(stream_window=65536, connection_window=1 << 20, max_concurrent_streams=10)
    c, s = _pair(lim)
    sid = c.open("a:1")
    _pump(c, s)
    s.accept(sid)
    _pump(c, s)
    stop = False
    sent = 0
    while not stop and sent < 4 << 20:
        stop = c.send(sid, b"x" * 16384)
        sent += 16384
    assert stop, "the sender must be told to stop reading its socket"
    _, sev = _pump(c, s)
    got = sum(len(v) for k, _, v in sev if k == tn.DATA)
    assert got <= 65536  # the stream window, nothing more, while the reader consumes nothing
    s.consumed(sid, got)  # the reader caught up: the window reopens
    cev, sev = _pump(c, s)
    assert sum(len(v) for k, _, v in sev if k == tn.DATA) > 0
    # the sender's buffer drains as the reader keeps consuming; WRITABLE says "read again"
    writable = False
    for _ in range(200):
        n = sum(len(v) for k, _, v in sev if k == tn.DATA)
        s.consumed(sid, n)
        cev, sev = _pump(c, s)
        writable = writable or (tn.WRITABLE, sid, None) in cev
        if writable:
            break
    assert writable


def test_reset_and_refusal():
    c, s = _pair()
    a = c.open("a:1")
    b = c.open("a:2")
    _pump(c, s)
    s.refuse(a, 403)
    s.accept(b)
    cev, _ = _pump(c, s)
    assert (tn.ESTABLISHED, a, 403) in cev and (tn.RESET, a, tn.ErrorCode.CANCEL) in cev
    c.reset(b)  # the client's TCP peer reset
    _, sev = _pump(c, s)
    assert (tn.RESET, b, tn.CONNECT_ERROR) in sev


def test_a_request_other_than_connect_is_refused():
    c = h2.H2Connection(client_side=True)
    c.initiate_connection()
    s = tn.TunnelConnection(False)
    sev = s.receive(c.data_to_send())
    c.receive_data(s.data_to_send())
    sid = c.get_next_available_stream_id()
    c.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"),
                         (b":authority", b"a")], end_stream=True)  # fmt: skip
    sev = s.receive(c.data_to_send())
    assert not [e for e in sev if e[0] == tn.OPENED]
    evs = c.receive_data(s.data_to_send())
    assert any(isinstance(e, h2.ResponseReceived) and e.fields.status == 405 for e in evs)


def test_a_thousand_streams_share_one_connection():
    c, s = _pair()
    sids = [c.open(f"a:{i}") for i in range(1000)]
    _, sev = _pump(c, s)
    assert len([e for e in sev if e[0] == tn.OPENED]) == 1000
    for sid in sids:
        s.accept(sid)
    cev, _ = _pump(c, s)
    assert len([e for e in cev if e[0] == tn.ESTABLISHED]) == 1000


def _pump_buffered(c: tn.TunnelConnection, s: tn.TunnelConnection, read: int) -> tuple[list, list]:
    """As ``_pump``, the way the HBONE protocol moves bytes: output as ``writelines`` chunks
    (views of large payloads), input read into ``get_buffer`` views at most ``read`` octets at a
    time (a TLS transport's reads)."""
    cev: list = []
    sev: list = []
    for _ in range(100_000):
        a = b"".join(c.data_to_send_chunks())
        b = b"".join(s.data_to_send_chunks())
        if not a and not b:
            break
        for wire, dst, evs in ((a, s, sev), (b, c, cev)):
            at = 0
            while at < len(wire):
                view = dst.get_buffer(read)
                n = min(len(view), read, len(wire) - at)
                view[:n] = wire[at : at + n]
                evs.extend(dst.buffer_updated(n))
                at += n
    return cev, sev


def test_bulk_bytes_arrive_intact_through_buffered_reads_and_zero_copy_writes():
    """Megabytes each way in socket-sized pieces (large DATA frames queued as views), read back
    in TLS-read-sized pieces that split frames anywhere: every byte arrives, in order, with
    flow control holding the sender to what the reader consumed."""
    c, s = _pair()
    sid = c.open("a:1")
    _pump_buffered(c, s, 70_001)
    s.accept(sid)
    _pump_buffered(c, s, 70_001)
    up = bytes(range(251)) * 4_000  # ~1 MiB, not a multiple of any chunk size
    down = bytes(range(241)) * 3_000
    got_up, got_down = bytearray(), bytearray()
    sent_up = sent_down = 0
    for _ in range(10_000):
        if sent_up < len(up):
            c.send(sid, up[sent_up : sent_up + 262_144])
            sent_up += 262_144
        if sent_down < len(down):
            s.send(sid, down[sent_down : sent_down + 100_000])
            sent_down += 100_000
        cev, sev = _pump_buffered(c, s, 70_001)
        for k, _, v in sev:
            if k == tn.DATA:
                got_up += v
                s.consumed(sid, len(v))
        for k, _, v in cev:
            if k == tn.DATA:
                got_down += v
                c.consumed(sid, len(v))
        if len(got_up) == len(up) and len(got_down) == len(down):
            break
    assert got_up == up and got_down == down


# -- GOAWAY (drain) and the peer's stream limit ----------------------------------------------
def test_goaway_lets_processed_streams_run_and_refuses_the_ones_that_crossed_it():
    c, s = _pair()
    old = c.open("a:1")
    _pump(c, s)
    s.accept(old)
    _pump(c, s)
    assert s.goaway() is True and s.goaway() is False  # once
    late = c.open("a:1")  # sent before the client has read the GOAWAY: they cross
    c.send(late, b"never processed")
    to_server, to_client = c.data_to_send(), s.data_to_send()
    sev = s.receive(to_server)
    assert not [e for e in sev if e[1] == late]  # not OPENED: nothing reaches the app
    cev = c.receive(to_client)
    assert (tn.RESET, late, tn.REFUSED_STREAM) in cev  # safe to open again elsewhere
    assert (tn.GOAWAY, old, 0) in cev
    assert c.closed and not c.can_open() and s.closed
    # the stream the server had processed goes on both ways, to its end
    c.send(old, b"ping")
    s.send(old, b"pong")
    cev, sev = _pump(c, s)
    assert (tn.DATA, old, b"ping") in sev and (tn.DATA, old, b"pong") in cev
    assert not [e for e in cev if e[0] == tn.RESET and e[1] == late]  # forgotten, no echo
    c.end(old)
    s.end(old)
    cev, sev = _pump(c, s)
    assert (tn.ENDED, old, None) in cev and (tn.ENDED, old, None) in sev
    assert not c.streams and not s.streams


def test_the_client_learns_the_peers_stream_limit_from_its_settings():
    limits = h2.Limits(**{**tn.LIMITS.__dict__, "max_concurrent_streams": 2})
    c = tn.TunnelConnection(True)
    s = tn.TunnelConnection(False, limits)
    assert not c.settings_received and c.can_open()  # unknown until SETTINGS arrive
    cev, _ = _pump(c, s)
    assert cev.count((tn.SETTINGS, 0, None)) == 1 and c.settings_received
    a, b = c.open("a:1"), c.open("a:1")
    assert not c.can_open()  # the peer's limit: a third TCP connection needs a new connection
    _pump(c, s)
    c.reset(a)
    _pump(c, s)
    assert c.can_open() and b in c.streams


def test_a_stream_over_the_servers_limit_is_refused_unprocessed():
    limits = h2.Limits(**{**tn.LIMITS.__dict__, "max_concurrent_streams": 1})
    c = tn.TunnelConnection(True)
    s = tn.TunnelConnection(False, limits)
    c.open("a:1")
    over = c.open("a:1")  # before the server's SETTINGS: the client could not know
    cev, sev = _pump(c, s)
    assert (tn.RESET, over, tn.REFUSED_STREAM) in cev
    assert [e for e in sev if e[0] == tn.OPENED] == [(tn.OPENED, 1, "a:1")]


def test_a_stream_with_a_spent_window_does_not_starve_the_streams_behind_it():
    """Found looking for the bulk stall: when the connection window reopened, the first waiting
    stream whose own window was spent (a slow reader) ended the pass, and a stream behind it,
    held back only by the connection window, waited for a stream update that its peer had no
    reason to send: its socket stayed paused with nothing in flight."""
    limits = h2.Limits(**{**tn.LIMITS.__dict__, "stream_window": 40000, "connection_window": 65535})
    c = tn.TunnelConnection(True, limits)
    s = tn.TunnelConnection(False, limits)
    _pump(c, s)
    slow, bulk = c.open("a:1"), c.open("a:1")
    _pump(c, s)
    s.accept(slow)
    s.accept(bulk)
    _pump(c, s)
    c.send(slow, b"x" * 40010)  # its stream window spent: 10 bytes wait, first in line
    c.send(bulk, b"y" * 60000)  # the connection window spent: the rest waits
    assert c.h2.connection_send_window == 0 and c.streams[bulk].pending_len == 60000 - 25535
    # the server takes it all and reopens the connection window (not the slow stream's)
    _, sev = _pump(c, s)
    got = sum(len(v) for kind, sid, v in sev if kind == tn.DATA and sid == bulk)
    assert got == 40000  # the bulk stream's whole window, as soon as the connection allowed
    assert c.streams[bulk].pending_len == 20000 and c.streams[slow].pending_len == 10
