"""TLS session resumption with real TLS on loopback: the outbound pool's per-endpoint session
cache (on asyncio's and uvloop's loops), identity checks on resumed connections, the inbound
ticket policy (new ticket keys per identity, expiry re-check) and the handshake counter."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from certs import keys, tls
from certs.authority import CertificateAuthority
from certs.csr import build_csr
from certs.spiffe import SpiffeId
from proxy.server.listener import Listener
from proxy.server.tls_session import (
    SessionCache,
    TicketingServerContexts,
    resumed_peer_valid,
)
from proxy.server.upstream import EndpointPool
from proxy.telemetry.metrics import UPSTREAM_TLS_HANDSHAKES

TD = "cluster.local"
LOOPS: dict[str, Callable[[Coroutine[Any, Any, Any]], Any]] = {
    "asyncio": asyncio.run,
    "uvloop": uvloop.run,
}


class Mesh:
    """A CA and SVIDs for two workloads, and contexts built like the sidecar builds them."""

    def __init__(self, tmp: Path) -> None:
        self.ca = CertificateAuthority.create_self_signed(tmp / "cp", TD)
        self.bundle = self.ca.bundle_pem()

    def svid(self, sa: str, ttl: int = 600) -> tuple[bytes, bytes]:
        key = keys.generate_private_key()
        sid = SpiffeId.for_workload(TD, "default", sa)
        return self.ca.sign(build_csr(key, sid), sid, ttl), keys.private_key_to_pem(key)

    def server(self, sa: str = "inventory", ttl: int = 600) -> ssl.SSLContext:
        chain, key = self.svid(sa, ttl)
        return tls.server_context(chain, key, self.bundle, True, session_tickets=True)

    def client(self, sa: str = "orders", ttl: int = 600) -> ssl.SSLContext:
        chain, key = self.svid(sa, ttl)
        ctx = tls.client_context(chain, key, self.bundle)
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx


@pytest.fixture
def mesh(tmp_path: Path) -> Mesh:
    return Mesh(tmp_path)


class TlsApp:
    """An HTTP/1.1 server over TLS answering every request with 200 and closing the connection
    (so each request needs a new one); records whether each connection resumed."""

    def __init__(self, ctx: Callable[[], ssl.SSLContext]) -> None:
        self.ctx = ctx
        self.resumed: list[bool] = []
        self.peers: list[str | None] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        so = writer.get_extra_info("ssl_object")
        self.resumed.append(so.session_reused)
        sid = tls.peer_spiffe_id(so)
        self.peers.append(str(sid) if sid else None)
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass

    async def start(self) -> int:
        loop = asyncio.get_running_loop()

        def factory() -> asyncio.StreamReaderProtocol:
            reader = asyncio.StreamReader()
            return asyncio.StreamReaderProtocol(reader, self._handle)

        # a fresh context per connection, as the sidecar's listener does (tls_context())
        self.server = await loop.create_server(factory, "127.0.0.1", 0, ssl=self.ctx())
        return self.server.sockets[0].getsockname()[1]


async def _request(pool: EndpointPool) -> tuple[bool, str | None]:
    """One request on a new pooled connection; (resumed, peer SPIFFE ID) of that connection."""
    conn, reused = await pool.acquire(5)
    assert not reused
    so = conn.transport.get_extra_info("ssl_object")  # type: ignore[union-attr]
    head = await asyncio.wait_for(conn.start(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", "GET"), 5)
    assert head.status == 200
    pool.release(conn)
    sid = tls.peer_spiffe_id(so)
    return so.session_reused, str(sid) if sid else None


INV = "spiffe://cluster.local/ns/default/sa/inventory"
ORD = "spiffe://cluster.local/ns/default/sa/orders"


@pytest.mark.parametrize("loop", list(LOOPS))
def test_pool_resumes_later_connections_and_verifies_identity_each_time(mesh, loop):
    server_ctx = mesh.server()
    client_ctx = mesh.client()
    checked: list[bool] = []

    async def main() -> None:
        app = TlsApp(lambda: server_ctx)
        port = await app.start()
        before = (UPSTREAM_TLS_HANDSHAKES.full, UPSTREAM_TLS_HANDSHAKES.resumed)

        def verify(so: Any) -> bool:
            checked.append(so.session_reused)
            return str(tls.peer_spiffe_id(so)) == INV

        pool = EndpointPool("127.0.0.1", port, lambda: client_ctx, verify_peer=verify)
        results = [await _request(pool) for _ in range(4)]
        assert results == [(False, INV)] + [(True, INV)] * 3
        # the server saw the same: one full handshake, then resumptions, the client's identity
        # known on every one of them (getpeercert works on resumed sessions)
        assert app.resumed == [False, True, True, True]
        assert app.peers == [ORD] * 4
        assert checked == [False, True, True, True]  # verify_peer ran on every connection
        assert UPSTREAM_TLS_HANDSHAKES.full - before[0] == 1
        assert UPSTREAM_TLS_HANDSHAKES.resumed - before[1] == 3
        pool.close()
        app.server.close()

    LOOPS[loop](main())


async def test_resumed_connection_to_the_wrong_identity_is_refused(mesh):
    server_ctx = mesh.server("payment")  # not who the pool expects once config changes
    client_ctx = mesh.client()
    app = TlsApp(lambda: server_ctx)
    port = await app.start()
    expected = ["spiffe://cluster.local/ns/default/sa/payment"]
    seen: list[bool] = []

    def verify(so: Any) -> bool:
        seen.append(so.session_reused)
        return str(tls.peer_spiffe_id(so)) == expected[0]

    pool = EndpointPool("127.0.0.1", port, lambda: client_ctx, verify_peer=verify)
    await _request(pool)
    assert pool.sessions.session is not None
    expected[0] = INV  # the endpoint should now be inventory: the resumed peer is not
    with pytest.raises(ConnectionError, match="unexpected identity"):
        await pool.acquire(5)
    assert seen == [False, True]  # refused although (because) the session resumed
    assert pool.sessions.session is None  # and the session is not offered again
    assert pool.active == 0
    pool.close()
    app.server.close()


async def test_session_dropped_when_the_client_context_changes(mesh):
    server_ctx = mesh.server()
    current = [mesh.client()]
    app = TlsApp(lambda: server_ctx)
    port = await app.start()
    pool = EndpointPool("127.0.0.1", port, lambda: current[0])
    assert (await _request(pool))[0] is False
    assert (await _request(pool))[0] is True
    current[0] = mesh.client()  # certificate renewed: a new context
    assert (await _request(pool))[0] is False
    assert (await _request(pool))[0] is True
    pool.close()
    app.server.close()


def test_session_cache_ignores_sessions_of_another_context():
    cache = SessionCache()
    a, b = object(), object()

    class FakeSession:
        has_ticket = True

    class FakeSslObject:
        def __init__(self, ctx: object) -> None:
            self.context = ctx
            self.session = FakeSession()

    assert cache.offer(a) is None  # type: ignore[arg-type]
    assert cache.remember(FakeSslObject(b)) is False  # made before the context changed
    assert cache.remember(FakeSslObject(a)) is True
    assert cache.offer(a) is not None  # type: ignore[arg-type]
    assert cache.offer(b) is None  # type: ignore[arg-type]
    assert cache.remember(None) is False


def test_ticketing_contexts_rebuild_on_identity_change_and_age():
    now = [0.0]
    ident = [object()]
    built: list[object] = []

    def build(i: object) -> Any:
        built.append(i)
        return object()

    ctxs = TicketingServerContexts(lambda: ident[0], build, rotate_after=100, clock=lambda: now[0])
    c1 = ctxs()
    assert ctxs() is c1
    now[0] = 99
    assert ctxs() is c1
    now[0] = 101  # ticket keys too old: rotate
    c2 = ctxs()
    assert c2 is not c1
    ident[0] = object()  # renewal or bundle change: rotate at once
    c3 = ctxs()
    assert c3 is not c2 and ctxs() is c3
    assert len(built) == 3


async def test_tickets_do_not_survive_a_server_identity_change(mesh):
    """A new server context (new certificate or bundle) has new ticket keys: an earlier ticket
    does not resume, the client gets a full handshake verified against the current bundle."""
    ident = [object()]
    ctxs = TicketingServerContexts(lambda: ident[0], lambda _: mesh.server())

    class PerConnection(TlsApp):
        async def start(self) -> int:  # the listener's way: a context per accepted socket
            loop = asyncio.get_running_loop()
            sock = __import__("socket").socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen(16)
            sock.setblocking(False)
            self.sock = sock

            async def accept_loop() -> None:
                while True:
                    conn, _ = await loop.sock_accept(sock)
                    reader = asyncio.StreamReader()
                    proto = asyncio.StreamReaderProtocol(reader, self._handle)
                    await loop.connect_accepted_socket(lambda p=proto: p, conn, ssl=self.ctx())

            self.task = loop.create_task(accept_loop())
            return sock.getsockname()[1]

    app = PerConnection(ctxs)
    port = await app.start()
    client_ctx = mesh.client()
    pool = EndpointPool("127.0.0.1", port, lambda: client_ctx)
    assert [(await _request(pool))[0] for _ in range(2)] == [False, True]
    ident[0] = object()
    assert [(await _request(pool))[0] for _ in range(2)] == [False, True]
    pool.close()
    app.task.cancel()
    app.sock.close()


def _listener(ctx: Callable[[], ssl.SSLContext], resumed_ok: Callable[[Any], bool]) -> Listener:
    async def handler(down: Any, head: Any) -> None:
        down.send_local(200, "", down.peer_principal or "-", (), False)

    lst = Listener("inbound", handler, "127.0.0.1", 0, ssl_context=ctx())
    lst.mtls_mode = lambda: "STRICT"
    lst.peer_identity = lambda so: str(tls.peer_spiffe_id(so))
    lst.accept_context = ctx
    lst.resumed_ok = resumed_ok
    return lst


async def _get(port: int, ctx: ssl.SSLContext, session: Any) -> tuple[bytes, Any]:
    """GET / over a blocking ssl socket (the client side of the test), in a thread."""

    def run() -> tuple[bytes, Any]:
        import socket

        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            ctx.wrap_socket(raw, session=session) as s,
        ):
            s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            data = b""
            try:
                while chunk := s.recv(4096):
                    data += chunk
            except (ConnectionError, ssl.SSLError, OSError):
                pass
            return data, s.session if s.session and s.session.has_ticket else None

    return await asyncio.to_thread(run)


async def test_listener_resumes_and_refuses_a_resumed_session_that_fails_the_check(mesh):
    server_ctx = mesh.server()
    client_ctx = mesh.client()
    allow = [True]
    lst = _listener(lambda: server_ctx, lambda so: allow[0])
    port = await lst.start()
    body, session = await _get(port, client_ctx, None)
    assert body.startswith(b"HTTP/1.1 200") and body.endswith(ORD.encode())
    assert session is not None
    body, session2 = await _get(port, client_ctx, session)
    assert body.startswith(b"HTTP/1.1 200")
    allow[0] = False  # e.g. the client's certificate expired since the full handshake
    refused = lst.refused
    body, _ = await _get(port, client_ctx, session2)
    assert body == b""  # closed before the request was answered
    assert lst.refused == refused + 1
    body, _ = await _get(port, client_ctx, None)  # a full handshake is not subject to it
    assert body.startswith(b"HTTP/1.1 200")
    lst.stop_accepting()
    lst.close_all()


async def test_resumed_peer_valid_checks_the_certificate_validity_period(mesh):
    server_ctx = mesh.server()
    client_ctx = mesh.client(ttl=600)
    app = TlsApp(lambda: server_ctx)
    port = await app.start()
    sslobjs: list[Any] = []

    def keep(so: Any) -> bool:
        sslobjs.append(so)
        return True

    pool = EndpointPool("127.0.0.1", port, lambda: client_ctx, verify_peer=keep)
    await _request(pool)
    await _request(pool)
    so = sslobjs[-1]
    assert so.session_reused
    assert resumed_peer_valid(so)
    not_after = ssl.cert_time_to_seconds(so.getpeercert()["notAfter"])
    assert resumed_peer_valid(so, now=not_after - 1)
    assert not resumed_peer_valid(so, now=not_after + 1)
    assert not resumed_peer_valid(so, now=time.time() - 86400 * 365)  # before notBefore
    pool.close()
    app.server.close()


async def test_resumption_off_offers_no_session(mesh, monkeypatch):
    """MESHLET_TLS_RESUMPTION=off (read at import into RESUMPTION): full handshakes only."""
    from proxy.server import tls_session

    monkeypatch.setattr(tls_session, "RESUMPTION", False)
    server_ctx = mesh.server()
    client_ctx = mesh.client()
    app = TlsApp(lambda: server_ctx)
    port = await app.start()
    pool = EndpointPool("127.0.0.1", port, lambda: client_ctx)
    assert [(await _request(pool))[0] for _ in range(3)] == [False, False, False]
    assert app.resumed == [False, False, False]
    pool.close()
    app.server.close()


def test_peer_spiffe_id_is_parsed_once_per_certificate(mesh, monkeypatch):
    chain, _ = mesh.svid("orders")
    der = ssl.PEM_cert_to_DER_cert(
        chain.decode().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    )
    parsed: list[bytes] = []
    real = tls.spiffe_id_from_der

    def counting(d: bytes) -> Any:
        parsed.append(d)
        return real(d)

    monkeypatch.setattr(tls, "spiffe_id_from_der", counting)
    monkeypatch.setattr(tls, "_PEER_IDS", {})

    class Peer:
        def getpeercert(self, binary_form: bool = False) -> bytes:
            return der

    assert str(tls.peer_spiffe_id(Peer())) == ORD  # type: ignore[arg-type]
    assert str(tls.peer_spiffe_id(Peer())) == ORD  # type: ignore[arg-type]
    assert len(parsed) == 1
    monkeypatch.setattr(tls, "_PEER_IDS_MAX", 1)

    class Other(Peer):
        def getpeercert(self, binary_form: bool = False) -> bytes:
            return b"not a certificate"

    assert tls.peer_spiffe_id(Other()) is None  # type: ignore[arg-type]
    assert len(tls._PEER_IDS) == 1  # bounded: cleared when full


class KeepAliveTlsApp:
    """Keeps connections open: ``GET /`` gets an empty 200, ``GET /hang`` no answer at all."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.resumed: list[bool] = []
        self.ended = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.resumed.append(writer.get_extra_info("ssl_object").session_reused)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if head.startswith(b"GET /hang"):
                    await reader.read()  # until the client goes away
                    return
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self.ended += 1

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.ctx)
        return self.server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("loop", list(LOOPS))
def test_an_aborted_connection_leaves_its_session_resumable(mesh, loop):
    """A cancelled request aborts its pooled connection; over TLS the abort still sends
    close_notify, so the server keeps the session (OpenSSL drops a truncated connection's
    session from its cache) and the pool's next connection resumes it."""
    server_ctx = mesh.server()
    client_ctx = mesh.client()

    async def main() -> None:
        app = KeepAliveTlsApp(server_ctx)
        port = await app.start()
        pool = EndpointPool("127.0.0.1", port, lambda: client_ctx)
        conn, _ = await pool.acquire(5)
        head = await asyncio.wait_for(conn.start(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", "GET"), 5)
        assert head.status == 200
        pool.release(conn)  # idle, and its session is the one the pool offers from now on
        conn, reused = await pool.acquire(5)
        assert reused
        pending = asyncio.ensure_future(conn.start(b"GET /hang HTTP/1.1\r\nhost: x\r\n\r\n", "GET"))
        await asyncio.sleep(0.1)
        pending.cancel()
        conn.abort()  # what the forwarder does when the request is cancelled
        pool.release(conn)
        for _ in range(250):  # until the server has let go of that connection
            if app.ended:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)  # its SSL object freed with its handler
        assert (await _request_keepalive(pool))[0] is True
        assert app.resumed == [False, True]
        pool.close()
        app.server.close()

    LOOPS[loop](main())


async def _request_keepalive(pool: EndpointPool) -> tuple[bool, bool]:
    conn, reused = await pool.acquire(5)
    so = conn.transport.get_extra_info("ssl_object")  # type: ignore[union-attr]
    head = await asyncio.wait_for(conn.start(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n", "GET"), 5)
    assert head.status == 200
    pool.release(conn)
    return so.session_reused, reused
