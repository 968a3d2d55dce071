"""The connectionPool bookkeeping of the endpoint pools, against a real loopback server:
open connections, requests waiting for one, requests in flight, hand-over of a returned
connection to the first waiting request, and the per-cluster gate of concurrent retries."""

from __future__ import annotations

import asyncio

import pytest

from proxy.routes.table import UNLIMITED, PoolSettings
from proxy.server.h2.client import H2UpstreamPool
from proxy.server.pool_limits import PendingTimeout, PoolOverflow, RetryGate
from proxy.server.upstream import EndpointPool
from tests.unit.twins import load_linked_build


@pytest.fixture(autouse=True, scope="module", params=["twin", "compiled"])
def build(request: pytest.FixtureRequest):
    """Every test runs against both builds of the HTTP/1.1 pool: this module's ``EndpointPool``
    is the twin's, then the compiled module's."""
    global EndpointPool
    saved = EndpointPool
    EndpointPool = load_linked_build("proxy.server", "upstream", twin=request.param == "twin").EndpointPool
    yield request.param
    EndpointPool = saved

GET = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"


@pytest.fixture
async def server():
    """Answers every request at once, on keep-alive connections; counts connections."""
    state = {"accepted": 0}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state["accepted"] += 1
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    state["port"] = srv.sockets[0].getsockname()[1]
    yield state
    srv.close()
    await srv.wait_closed()


def _pool(port: int, conns: int = UNLIMITED, pending: int = UNLIMITED, active: int = UNLIMITED):
    p = EndpointPool("127.0.0.1", port)
    p.apply(PoolSettings(55.0, 0, conns, pending, active))
    return p


async def _queued(pool: EndpointPool, n: int) -> None:
    """Until ``n`` requests wait in the pool (they queue at their first step)."""
    for _ in range(100):
        if len(pool.waiters) >= n:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{len(pool.waiters)} waiting, expected {n}")


async def _serve(pool: EndpointPool, conn) -> None:
    """One request on ``conn``, read to the end (so it can go back to the pool)."""
    await conn.start(GET, "GET")
    while await conn.body.read():
        pass


async def test_defaults_are_unlimited():
    p = EndpointPool("127.0.0.1", 9)
    assert (p.max_connections, p.max_pending, p.max_active) == (UNLIMITED,) * 3
    h2 = H2UpstreamPool("127.0.0.1", 9)
    assert (h2.max_pending, h2.max_active, h2.max_connections) == (UNLIMITED, UNLIMITED, 4)


async def test_a_waiting_request_gets_the_returned_connection(server):
    pool = _pool(server["port"], conns=1, pending=1)
    first, reused = await pool.acquire(1.0)
    assert not reused and pool.open == 1
    waiter = asyncio.ensure_future(pool.acquire(1.0))
    await _queued(pool, 1)
    assert not waiter.done()
    with pytest.raises(PoolOverflow) as err:
        await pool.acquire(1.0)
    assert err.value.kind == "pending" and pool.overflows["pending"] == 1
    await _serve(pool, first)
    pool.release(first)
    second, reused = await waiter
    assert second is first and reused  # handed over, never idle, no new connection
    assert pool.open == 1 and pool.active == 1 and server["accepted"] == 1
    assert pool.status()["overflows"] == {"connections": 1, "pending": 1, "requests": 0}
    pool.release(second)
    pool.close()


async def test_a_closed_connection_lets_a_waiting_request_connect(server):
    pool = _pool(server["port"], conns=1)
    first, _ = await pool.acquire(1.0)
    waiter = asyncio.ensure_future(pool.acquire(1.0))
    await _queued(pool, 1)
    first.abort()  # as a failed try does; its slot comes back
    pool.release(first)
    second, reused = await asyncio.wait_for(waiter, 2.0)
    assert second is not first and not reused and pool.open == 1
    pool.release(second)
    pool.close()


async def test_a_request_that_gives_up_passes_its_connection_on(server):
    pool = _pool(server["port"], conns=1)
    first, _ = await pool.acquire(1.0)
    w1 = asyncio.ensure_future(pool.acquire(1.0))
    w2 = asyncio.ensure_future(pool.acquire(1.0))
    await _queued(pool, 2)
    await _serve(pool, first)
    pool.release(first)  # handed to w1 ...
    w1.cancel()  # ... which is cancelled before it runs: w2 gets the connection
    conn, reused = await asyncio.wait_for(w2, 2.0)
    assert conn is first and reused and pool.open == 1
    pool.release(conn)
    pool.close()


async def test_waiting_is_bounded_by_the_time_left(server):
    pool = _pool(server["port"], conns=1)
    first, _ = await pool.acquire(1.0)
    with pytest.raises(PendingTimeout):
        await pool.acquire(1.0, 0.05)
    assert not pool.waiters
    pool.release(first)
    pool.close()


async def test_requests_in_flight_are_bounded(server):
    pool = _pool(server["port"], active=1)
    first, _ = await pool.acquire(1.0)
    with pytest.raises(PoolOverflow) as err:
        await pool.acquire(1.0)
    assert err.value.kind == "requests"
    await _serve(pool, first)
    pool.release(first)
    # an idle connection is not taken past the limit either
    conn = pool.take_idle()
    assert conn is first
    assert pool.take_idle() is None
    pool.release(conn)
    pool.close()


async def test_a_raised_limit_wakes_waiting_requests(server):
    pool = _pool(server["port"], conns=1)
    first, _ = await pool.acquire(1.0)
    waiter = asyncio.ensure_future(pool.acquire(1.0))
    await _queued(pool, 1)
    pool.apply(PoolSettings(max_connections=2))
    second, reused = await asyncio.wait_for(waiter, 2.0)
    assert second is not first and not reused and pool.open == 2
    for c in (first, second):
        pool.release(c)
    pool.close()


async def test_overflows_are_reported():
    seen: list[str] = []
    pool = _pool(9, active=0)
    pool.on_overflow = seen.append
    with pytest.raises(PoolOverflow):
        await pool.acquire(1.0)
    assert seen == ["requests"]


async def test_h2_requests_in_flight_are_bounded():
    seen: list[str] = []
    pool = H2UpstreamPool("127.0.0.1", 9)
    pool.apply(PoolSettings(55.0, 0, 2, 1, 0, 7))
    pool.on_overflow = seen.append
    assert pool.max_connections == 2 and pool.max_streams == 7
    with pytest.raises(PoolOverflow):
        await pool.acquire(1.0)
    assert seen == ["requests"] and pool.status()["overflows"]["requests"] == 1
    pool.apply(PoolSettings())  # unset again: the defaults
    assert (pool.max_connections, pool.max_streams) == (4, 100)


def test_retry_gate():
    g = RetryGate("svc", 2)
    assert g.take() and g.take() and not g.take()
    assert (g.active, g.overflows) == (2, 1)
    g.release()
    assert g.take()
    assert g.status() == {"max_retries": 2, "retries_active": 2, "retry_overflows": 1}


async def test_tcp_keepalive_is_set_on_new_connections(server):
    import socket

    pool = EndpointPool("127.0.0.1", server["port"])
    pool.apply(PoolSettings(keepalive=(7, 3, 4)))
    conn, _ = await pool.acquire(1.0)
    sock = conn.transport.get_extra_info("socket")
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 7
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 3
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 4
    pool.release(conn)
    pool.close()
    plain = EndpointPool("127.0.0.1", server["port"])
    conn, _ = await plain.acquire(1.0)
    assert (
        conn.transport.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        == 0
    )
    plain.release(conn)
    plain.close()


async def test_a_connection_past_max_duration_is_not_reused(server):
    pool = EndpointPool("127.0.0.1", server["port"])
    pool.apply(PoolSettings(max_connection_duration=0.2))
    first, _ = await pool.acquire(1.0)
    await _serve(pool, first)
    pool.release(first)
    again = pool.take_idle()
    assert again is first  # young enough
    await _serve(pool, again)
    first.created -= 0.2  # (as if 200 ms had passed)
    pool.release(again)
    assert first.closed and not pool.idle  # too old to go back to the pool
    conn, reused = await pool.acquire(1.0)
    assert conn is not first and not reused
    await _serve(pool, conn)
    pool.release(conn)
    conn.created -= 0.2  # idle past its duration: not taken
    assert pool.take_idle() is None and conn.closed
    pool.close()
