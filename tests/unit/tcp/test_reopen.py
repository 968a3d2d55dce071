"""A client's TCP connection whose CONNECT stream the peer refused unprocessed (GOAWAY crossed
it, or the peer's stream limit) is opened again on another HBONE connection with the bytes it
had sent, and a connection that got GOAWAY keeps its processed streams and closes after them.

Real sockets (socket pairs on this host), the real :class:`HboneConnection` and
:class:`StreamLeg`; no TLS (the tunnel logic is the same with or without it)."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from typing import Any

import pytest

from proxy.tcp import tunnel as tn
from proxy.tcp.conn import TcpRecord
from proxy.tcp.legs import HboneConnection, StreamLeg

_OPEN: list[Any] = []  # protocols whose transports the test leaves open


@pytest.fixture(autouse=True)
async def _close_transports():
    yield
    for proto in _OPEN:
        if proto.transport is not None:
            proto.transport.close()
    _OPEN.clear()
    await asyncio.sleep(0.01)  # the transports' close callbacks run


class AppSide:
    """The server's end of each stream: answers 200, records the bytes, echoes them back
    upper-cased, and half-closes when the client did."""

    def __init__(self) -> None:
        self.got: dict[tuple[int, int], bytearray] = {}
        self.conns: list[HboneConnection] = []

    def on_open(self, conn: HboneConnection, sid: int, authority: str) -> None:
        key = (self.conns.index(conn), sid)
        self.got[key] = bytearray()
        app = self

        class Leg:
            def from_tunnel(self, data: bytes) -> None:
                app.got[key] += data
                conn.tunnel.consumed(sid, len(data))
                conn.tunnel.send(sid, bytes(data).upper())

            def tunnel_ended(self) -> None:
                conn.tunnel.end(sid)
                conn.legs.pop(sid, None)

            def tunnel_reset(self, code: Any) -> None:
                pass

            def resume_source(self) -> None:
                pass

        conn.legs[sid] = Leg()
        conn.tunnel.accept(sid)


async def _pair(
    app: AppSide, max_streams: int = 0, before: Any = None
) -> tuple[HboneConnection, HboneConnection]:
    """A client and a server HBONE connection; ``before(client)`` runs before the server's
    side starts (before its SETTINGS can be read)."""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    limits = (dataclasses.replace(tn.LIMITS, max_concurrent_streams=max_streams)
              if max_streams else None)  # fmt: skip
    server = HboneConnection(False, app.on_open, limits=limits)
    app.conns.append(server)
    client = HboneConnection(True)
    _OPEN.extend((server, client))
    await loop.connect_accepted_socket(lambda: client, b)
    if before is not None:
        before(client)
    await loop.connect_accepted_socket(lambda: server, a)
    return client, server


def _leg(conn: HboneConnection, reopen: Any) -> tuple[StreamLeg, socket.socket, socket.socket]:
    """A client TCP connection on a new stream (opened now, as TcpProxy does before it adopts
    the socket); a socket pair: the test holds the app's end, :func:`_adopt` the other."""
    app_end, sidecar_end = socket.socketpair()
    app_end.setblocking(False)
    leg = StreamLeg(TcpRecord("source", None, None), True)
    leg.reopen = reopen
    _OPEN.append(leg)
    leg.attach(conn, conn.open_stream("10.0.0.1:6379", leg))
    return leg, app_end, sidecar_end


async def _adopt(leg: StreamLeg, sidecar_end: socket.socket) -> None:
    await asyncio.get_running_loop().connect_accepted_socket(lambda: leg, sidecar_end)


async def _read(sock: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    out = b""
    async with asyncio.timeout(5):
        while len(out) < n:
            chunk = await loop.sock_recv(sock, n - len(out))
            if not chunk:
                break
            out += chunk
    return out


async def _until(cond: Any) -> None:
    async with asyncio.timeout(5):
        while not cond():
            await asyncio.sleep(0.005)


async def test_a_stream_refused_by_the_peers_limit_is_reopened_with_its_bytes():
    app = AppSide()
    second, _ = await _pair(app)
    reopened: list[StreamLeg] = []

    def reopen(leg: StreamLeg) -> None:  # as TcpProxy._reopen, on a connection taking streams
        reopened.append(leg)
        leg.reattach(second, second.open_stream("10.0.0.1:6379", leg))

    # both streams go before the server's SETTINGS are read: the second is over its limit
    legs: list = []
    first, _ = await _pair(app, 1, lambda c: legs.extend([_leg(c, reopen), _leg(c, reopen)]))
    (leg1, app1, s1), (leg2, app2, s2) = legs
    await _adopt(leg1, s1)
    await _adopt(leg2, s2)
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(app2, b"sent before the refusal")
    app2.shutdown(socket.SHUT_WR)  # and the half-close
    assert await _read(app2, 23) == b"SENT BEFORE THE REFUSAL"
    assert reopened == [leg2] and leg2.conn is second
    assert app.got[(0, 1)] == b"sent before the refusal"  # the second connection's stream 1
    assert (1, 3) not in app.got  # never processed where it was refused
    await loop.sock_sendall(app1, b"x")
    assert await _read(app1, 1) == b"X"
    assert leg1.replay is None and leg2.replay is None  # answered: nothing kept any more
    for s in (app1, app2):
        s.close()


async def test_goaway_reopens_crossing_streams_elsewhere_and_lets_processed_ones_finish():
    app = AppSide()
    draining, server = await _pair(app)
    other, _ = await _pair(app)
    reopened: list[StreamLeg] = []

    def reopen(leg: StreamLeg) -> None:
        reopened.append(leg)
        leg.reattach(other, other.open_stream("10.0.0.1:6379", leg))

    loop = asyncio.get_running_loop()
    old, app_old, s1 = _leg(draining, reopen)
    await _adopt(old, s1)
    await loop.sock_sendall(app_old, b"one")
    assert await _read(app_old, 3) == b"ONE"
    # the server's GOAWAY and the client's new stream cross on the wire
    assert server.goaway()
    late, app_late, s2 = _leg(draining, reopen)
    await _adopt(late, s2)
    await loop.sock_sendall(app_late, b"late")
    assert await _read(app_late, 4) == b"LATE"
    assert reopened == [late] and late.conn is other
    assert draining.going_away and not draining.usable()
    assert (0, 3) not in app.got  # the crossing stream never reached the draining side
    # the processed stream goes on both ways on the connection going away
    await loop.sock_sendall(app_old, b"two")
    assert await _read(app_old, 3) == b"TWO"
    assert not draining.lost
    # ... and when it ends, the client closes that connection
    app_old.shutdown(socket.SHUT_WR)
    assert await _read(app_old, 10) == b""
    await _until(lambda: draining.lost)
    assert not other.lost
    app_old.close()
    app_late.close()
