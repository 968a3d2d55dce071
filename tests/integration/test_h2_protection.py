"""The HTTP/2 server protocol against raw frames (hyperframe + hpack): every malformed-message
rule of research/security-ops.md 6.4 is a stream error that never reaches the handler, and every
flood of 6.6 ends in GOAWAY, bounded in count and time, while the listener keeps serving new
connections."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest
from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
)

from proxy.server.h2.server import PREFACE, H2ServerProtocol

ENHANCE_YOUR_CALM = 0xB
PROTOCOL_ERROR = 0x1


class _Listener:
    """What the server protocol reads from its listener, with an echoing handler."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.calls: list[Any] = []
        self.connections: set[Any] = set()
        self.protections: list[str] = []
        self.h2_protection_hook = self.protections.append

    async def handler(self, sink: Any, head: Any) -> None:
        self.calls.append(head)
        data = b""
        if sink.body is not None:
            while True:
                piece = await sink.body.read()
                if not piece:
                    break
                data += piece
        sink.send_response(200, "OK", [("content-type", "text/plain"), ("connection", "x")], (),
                           ["x-seen: " + head.path], -1, True, data or b"ok")


@pytest.fixture
async def server():
    lst = _Listener()
    srv = await lst.loop.create_server(lambda: H2ServerProtocol(lst), "127.0.0.1", 0)
    lst.port = srv.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    yield lst
    srv.close()
    for c in list(lst.connections):
        c.abort()


class Raw:
    """A hand-driven HTTP/2 client on a blocking socket (run in a thread)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.enc = Encoder()
        self.buf = b""
        self.sock.sendall(PREFACE + SettingsFrame(0).serialize())

    def send(self, *frames: Frame | bytes) -> None:
        data = b"".join(f if isinstance(f, bytes) else f.serialize() for f in frames)
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def headers(self, sid: int, headers: list[tuple[str, str]], end: bool = True,
                end_headers: bool = True) -> HeadersFrame:
        f = HeadersFrame(sid)
        f.data = self.enc.encode(headers)
        if end:
            f.flags.add("END_STREAM")
        if end_headers:
            f.flags.add("END_HEADERS")
        return f

    def frames(self, until: Any, timeout: float = 5.0) -> list[Frame]:
        """Frames received until ``until(frame)`` is true, the peer closes, or ``timeout``."""
        out: list[Frame] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            while len(self.buf) >= 9:
                f, n = Frame.parse_frame_header(memoryview(self.buf[:9]))
                if len(self.buf) < 9 + n:
                    break
                f.parse_body(memoryview(self.buf[9:9 + n]))
                self.buf = self.buf[9 + n:]
                if isinstance(f, SettingsFrame) and "ACK" not in f.flags:
                    ack = SettingsFrame(0)
                    ack.flags.add("ACK")
                    self.send(ack)
                out.append(f)
                if until(f):
                    return out
            try:
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            except (ConnectionResetError, OSError):
                data = b""
            if not data:
                out.append(None)  # type: ignore[arg-type]
                return out
            self.buf += data
        return out

    def close(self) -> None:
        self.sock.close()


GOOD = [(":method", "GET"), (":scheme", "http"), (":authority", "svc"), (":path", "/ok")]


def _goaway(frames: list[Any]) -> GoAwayFrame | None:
    return next((f for f in frames if isinstance(f, GoAwayFrame)), None)


def _response_ok(port: int) -> bool:
    c = Raw(port)
    try:
        c.send(c.headers(1, GOOD))
        fs = c.frames(lambda f: isinstance(f, DataFrame) and "END_STREAM" in f.flags)
        return any(isinstance(f, HeadersFrame) and f.stream_id == 1 for f in fs)
    finally:
        c.close()


async def _in_thread(fn: Any, *a: Any) -> Any:
    return await asyncio.to_thread(fn, *a)


async def test_valid_request_and_connection_specific_response_fields_dropped(server):
    def run() -> list[Any]:
        c = Raw(server.port)
        c.send(c.headers(1, GOOD))
        fs = c.frames(lambda f: isinstance(f, DataFrame) and "END_STREAM" in f.flags)
        c.close()
        return fs

    fs = await _in_thread(run)
    hdr = next(f for f in fs if isinstance(f, HeadersFrame))
    from hpack import Decoder

    fields = dict(Decoder().decode(hdr.data))
    assert fields[":status"] == "200" and fields["x-seen"] == "/ok"
    assert "connection" not in fields
    assert server.calls[0].host == "svc" and server.calls[0].version == 20


MALFORMED = {
    "uppercase name": GOOD + [("X-Upper", "1")],
    "connection": GOOD + [("connection", "keep-alive")],
    "proxy-connection": GOOD + [("proxy-connection", "x")],
    "keep-alive": GOOD + [("keep-alive", "5")],
    "transfer-encoding": GOOD + [("transfer-encoding", "chunked")],
    "upgrade": GOOD + [("upgrade", "websocket")],
    "te not trailers": GOOD + [("te", "gzip")],
    "space in name": GOOD + [("x y", "1")],
    "colon in name": GOOD + [("x:y", "1")],
    "CRLF in value": GOOD + [("x-a", "a\r\nx-injected: 1")],
    "NUL in value": GOOD + [("x-a", "a\x00b")],
    "leading space in value": GOOD + [("x-a", " a")],
    "trailing tab in value": GOOD + [("x-a", "a\t")],
    "pseudo after regular": [GOOD[0], GOOD[1], ("x-a", "1"), GOOD[2], GOOD[3]],
    "duplicate :path": GOOD + [(":path", "/two")],
    "unknown pseudo": [(":foo", "bar")] + GOOD,
    "missing :method": GOOD[1:],
    "missing :scheme": [GOOD[0], GOOD[2], GOOD[3]],
    "missing :path": GOOD[:3],
    "empty :path": GOOD[:3] + [(":path", "")],
    "CRLF in :path": GOOD[:3] + [(":path", "/a\r\nHost: evil")],
    "space in :path": GOOD[:3] + [(":path", "/a b")],
    "host differs": GOOD + [("host", "other")],
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_malformed_request_is_a_stream_error_never_forwarded(server, case):
    def run() -> tuple[list[Any], bool]:
        c = Raw(server.port)
        c.send(c.headers(1, MALFORMED[case]))
        fs = c.frames(lambda f: isinstance(f, (RstStreamFrame, GoAwayFrame)))
        # the connection survives a stream error: the next stream is served
        c.send(c.headers(3, GOOD))
        more = c.frames(lambda f: isinstance(f, DataFrame) and f.stream_id == 3
                        and "END_STREAM" in f.flags)
        c.close()
        return fs, any(isinstance(f, HeadersFrame) and f.stream_id == 3 for f in more)

    fs, served = await _in_thread(run)
    rst = next(f for f in fs if isinstance(f, RstStreamFrame))
    assert rst.stream_id == 1 and rst.error_code == PROTOCOL_ERROR
    assert served
    assert [h.path for h in server.calls] == ["/ok"]


async def test_content_length_mismatch_never_completes_a_body(server):
    def run() -> list[Any]:
        c = Raw(server.port)
        h = c.headers(1, [(":method", "POST"), *GOOD[1:], ("content-length", "3")], end=False)
        d = DataFrame(1, b"0123456789")
        d.flags.add("END_STREAM")
        c.send(h, d)
        fs = c.frames(lambda f: isinstance(f, (RstStreamFrame, GoAwayFrame)))
        c.close()
        return fs

    fs = await _in_thread(run)
    assert _goaway(fs) is not None or any(isinstance(f, RstStreamFrame) for f in fs)
    assert server.calls == []


async def test_rapid_reset_goaway(server):
    def run() -> tuple[list[Any], float]:
        c = Raw(server.port)
        t0 = time.monotonic()
        sid = 1
        batch = []
        for _ in range(1000):
            batch.append(c.headers(sid, GOOD, end=False))
            batch.append(RstStreamFrame(sid, error_code=8))
            sid += 2
        c.send(*batch)
        fs = c.frames(lambda f: isinstance(f, GoAwayFrame))
        c.close()
        return fs, time.monotonic() - t0

    fs, took = await _in_thread(run)
    ga = _goaway(fs)
    assert ga is not None and ga.error_code == ENHANCE_YOUR_CALM
    assert took < 5
    assert len(server.calls) < 300  # streams reset in the same read never start a handler
    assert await _in_thread(_response_ok, server.port)


async def test_made_you_reset_counts_server_resets(server):
    """Invalid requests the server must reset (MadeYouReset) share the Rapid Reset budget."""
    def run() -> list[Any]:
        c = Raw(server.port)
        fs: list[Any] = []
        for batch in range(12):  # under the concurrency limit per read: each batch is reset
            sids = [1 + 2 * (batch * 50 + i) for i in range(50)]
            c.send(*[c.headers(sid, MALFORMED["uppercase name"]) for sid in sids])
            fs += c.frames(lambda f, last=sids[-1]: isinstance(f, GoAwayFrame) or (
                isinstance(f, RstStreamFrame) and f.stream_id == last))
            if _goaway(fs) is not None or (fs and fs[-1] is None):
                break
        c.close()
        return fs

    ga = _goaway(await _in_thread(run))
    assert ga is not None and ga.error_code == ENHANCE_YOUR_CALM


async def test_continuation_flood(server):
    def run() -> list[Any]:
        c = Raw(server.port)
        frames: list[Frame] = [c.headers(1, GOOD, end=True, end_headers=False)]
        for _ in range(200):
            cf = ContinuationFrame(1)
            cf.data = b"\x00" * 100  # never END_HEADERS
            frames.append(cf)
        c.send(*frames)
        fs = c.frames(lambda f: isinstance(f, GoAwayFrame))
        c.close()
        return fs

    fs = await _in_thread(run)
    assert _goaway(fs) is not None or fs[-1] is None
    assert server.calls == []
    assert await _in_thread(_response_ok, server.port)


async def test_hpack_bomb(server):
    def run() -> list[Any]:
        c = Raw(server.port)
        # one 4 KB dynamic-table entry referenced again and again: ~100 KB decoded
        c.send(c.headers(1, GOOD + [("x-bomb", "a" * 4000)] * 25))
        # the stream is reset (the block decoded whole, HPACK stays in step), then GOAWAY
        fs = c.frames(lambda f: isinstance(f, GoAwayFrame))
        c.close()
        return fs

    fs = await _in_thread(run)
    assert _goaway(fs) is not None
    assert server.calls == []


async def test_too_many_headers_is_431(server):
    def run() -> list[Any]:
        c = Raw(server.port)
        c.send(c.headers(1, GOOD + [(f"x-h{i}", "v") for i in range(150)]))
        fs = c.frames(lambda f: isinstance(f, (HeadersFrame, GoAwayFrame)))
        c.close()
        return fs

    fs = await _in_thread(run)
    from hpack import Decoder

    hdr = next(f for f in fs if isinstance(f, HeadersFrame))
    assert dict(Decoder().decode(hdr.data))[":status"] == "431"
    assert server.calls == []


@pytest.mark.parametrize("kind", ["ping", "settings", "priority", "empty-data"])
async def test_control_floods_goaway(server, kind):
    def run() -> tuple[list[Any], float]:
        c = Raw(server.port)
        t0 = time.monotonic()
        if kind == "ping":
            frames: list[Any] = [PingFrame(0, opaque_data=b"%08d" % i) for i in range(2000)]
        elif kind == "settings":
            frames = [SettingsFrame(0, settings={0x4: 65535 + i}) for i in range(2000)]
        elif kind == "priority":
            frames = [PriorityFrame(1 + 2 * i, depends_on=0, stream_weight=16) for i in range(2000)]
        else:
            frames = [c.headers(1, [(":method", "POST"), *GOOD[1:]], end=False)]
            frames += [DataFrame(1, b"") for _ in range(100)]
        c.send(*frames)
        fs = c.frames(lambda f: isinstance(f, GoAwayFrame))
        c.close()
        return fs, time.monotonic() - t0

    fs, took = await _in_thread(run)
    ga = _goaway(fs)
    assert ga is not None and ga.error_code == ENHANCE_YOUR_CALM, fs[-3:]
    assert took < 5
    assert await _in_thread(_response_ok, server.port)


async def test_request_body_flow_control_follows_the_reader(server):
    """A handler that does not read: the client's window closes instead of memory growing, and
    the whole body arrives once the handler reads."""
    import h2.config
    import h2.connection
    import h2.events

    gate = asyncio.Event()

    async def slow(sink: Any, head: Any) -> None:
        await gate.wait()
        total = 0
        while True:
            piece = await sink.body.read()
            if not piece:
                break
            total += len(piece)
        sink.send_response(200, "OK", [], (), [], -1, True, str(total).encode())

    server.handler = slow
    body = 4 * 1024 * 1024
    loop = asyncio.get_running_loop()

    def client(stop_at: float) -> tuple[int, Any]:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        conn.initiate_connection()
        conn.send_headers(1, [(":method", "POST"), *GOOD[1:]])
        sent = 0
        result = None
        sock.settimeout(0.05)
        while time.monotonic() < stop_at or result is None:
            while sent < body:
                n = min(conn.local_flow_control_window(1), conn.max_outbound_frame_size, body - sent)
                if n <= 0:
                    break
                conn.send_data(1, b"x" * n, end_stream=sent + n == body)
                sent += n
            sock.sendall(conn.data_to_send())
            if time.monotonic() >= stop_at and not gate.is_set():
                loop.call_soon_threadsafe(gate.set)
                stalled.append(sent)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                break
            for e in conn.receive_data(data):
                if isinstance(e, h2.events.DataReceived):
                    result = e.data
                    conn.acknowledge_received_data(e.flow_controlled_length, 1)
        sock.close()
        return sent, result

    stalled: list[int] = []
    sent, result = await _in_thread(client, time.monotonic() + 1.0)
    # while the handler did not read, the client could send at most a stream window plus what
    # the body channel holds before acknowledgements stop
    assert stalled and stalled[0] <= 262144 + 2 * 65536 + 16384, stalled
    assert sent == body and result == str(body).encode()


async def test_drain_sends_goaway_and_finishes_in_flight_streams(server):
    """Listener drain (the sweep sees ``draining``): GOAWAY(NO_ERROR, last stream id) at once,
    the stream in flight still gets its whole response, then the connection closes."""
    gate = asyncio.Event()

    async def slow(sink: Any, head: Any) -> None:
        await gate.wait()
        sink.send_response(200, "OK", [], (), [], -1, True, b"finished")

    server.handler = slow
    server.draining = False
    loop = asyncio.get_running_loop()

    def run() -> list[Any]:
        c = Raw(server.port)
        c.send(c.headers(1, GOOD))
        fs = c.frames(lambda f: False, timeout=0.3)  # the request is in flight
        loop.call_soon_threadsafe(_drain)
        fs += c.frames(lambda f: isinstance(f, GoAwayFrame))
        loop.call_soon_threadsafe(gate.set)
        fs += c.frames(lambda f: f is None or (isinstance(f, DataFrame)
                                               and "END_STREAM" in f.flags))
        fs += c.frames(lambda f: f is None, timeout=3)
        c.close()
        return fs

    def _drain() -> None:
        server.draining = True
        for conn in list(server.connections):
            conn.sweep(loop.time())

    fs = await _in_thread(run)
    ga = _goaway(fs)
    assert ga is not None and ga.error_code == 0 and ga.last_stream_id == 1
    data = b"".join(f.data for f in fs if isinstance(f, DataFrame))
    assert data == b"finished"
    assert fs[-1] is None  # closed once the stream was done


async def test_stream_idle_timeout_ends_a_silent_stream(server):
    """A stream with no DATA either way for stream_idle_timeout is ended and its handler
    cancelled, while the connection and its other streams go on: 408 ``stream timeout`` (flag
    SI) then RST_STREAM NO_ERROR when no response had started (Envoy), RST_STREAM CANCEL when
    one had."""
    from hpack import Decoder

    cancelled: list[str] = []

    async def silent(sink: Any, head: Any) -> None:
        if head.path == "/ok":
            sink.send_response(200, "OK", [], (), [], -1, True, b"ok")
            return
        if head.path == "/half":
            sink.send_response(200, "OK", [], (), [], -1, False, b"")
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(head.path)
            raise

    server.handler = silent
    server.stream_idle_timeout = 0.2
    loop = asyncio.get_running_loop()

    def sweep() -> None:
        for conn in list(server.connections):
            conn.sweep(loop.time())

    def run() -> tuple[list[Any], bool]:
        c = Raw(server.port)
        c.send(c.headers(1, GOOD[:3] + [(":path", "/silent")], end=False))
        c.send(c.headers(3, GOOD[:3] + [(":path", "/half")], end=False))
        early = c.frames(lambda f: False, timeout=0.4)  # /half's response head
        loop.call_soon_threadsafe(sweep)
        seen: set[int] = set()

        def both_reset(f: Any) -> bool:
            if isinstance(f, RstStreamFrame):
                seen.add(f.stream_id)
            return seen == {1, 3}

        fs = early + c.frames(both_reset)
        ok = _response_ok(server.port)
        c.close()
        return fs, ok

    fs, ok = await _in_thread(run)
    rst = {f.stream_id: f.error_code for f in fs if isinstance(f, RstStreamFrame)}
    assert rst == {1: 0x0, 3: 0x8}
    dec = Decoder()
    heads = {f.stream_id: dict(dec.decode(f.data)) for f in fs if isinstance(f, HeadersFrame)}
    assert heads[1][":status"] == "408" and heads[1]["x-meshlet-response-flags"] == "SI"
    assert heads[3][":status"] == "200"
    assert sorted(cancelled) == ["/half", "/silent"] and ok


async def test_a_stalled_stream_does_not_stall_the_connection(server):
    """Streams whose handlers do not read hold back only their own windows: the connection
    window reopens as DATA is buffered, so a later stream's body still flows (the stalled ones
    could otherwise fill the 1 MiB connection window between them)."""
    import h2.config
    import h2.connection
    import h2.events

    gate = asyncio.Event()

    async def handler(sink: Any, head: Any) -> None:
        if head.path == "/stall":
            await gate.wait()
        total = 0
        while True:
            piece = await sink.body.read()
            if not piece:
                break
            total += len(piece)
        sink.send_response(200, "OK", [], (), [], -1, True, str(total).encode())

    server.handler = handler
    stalled_ids = list(range(1, 40, 2))  # 20 streams x 64 KiB windows > the 1 MiB connection window
    body = 1 << 20

    def client() -> tuple[int, Any]:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        conn.initiate_connection()
        post = [(":method", "POST"), (":scheme", "http"), (":authority", "svc")]
        for sid in stalled_ids:
            conn.send_headers(sid, [*post, (":path", "/stall")])
        conn.send_headers(41, [*post, (":path", "/ok")])
        sent = dict.fromkeys([*stalled_ids, 41], 0)
        result = None
        sock.settimeout(0.05)
        deadline = time.monotonic() + 10
        while result is None and time.monotonic() < deadline:
            for sid in sent:
                while sent[sid] < body:
                    n = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size,
                            body - sent[sid])
                    if n <= 0:
                        break
                    conn.send_data(sid, b"x" * n, end_stream=sent[sid] + n == body)
                    sent[sid] += n
            sock.sendall(conn.data_to_send())
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                break
            for e in conn.receive_data(data):
                if isinstance(e, h2.events.DataReceived) and e.stream_id == 41:
                    result = e.data
        sock.close()
        return sum(sent[s] for s in stalled_ids), result

    try:
        stalled_sent, result = await _in_thread(client)
    finally:
        gate.set()
    assert result == str(body).encode()
    # each stalled stream took no more than its window plus what its body channel holds
    assert stalled_sent <= len(stalled_ids) * (262144 + 2 * 65536 + 16384), stalled_sent
