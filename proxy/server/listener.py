"""A listening socket and the settings its downstream connections share."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from proxy.inbound.admit import refuses_connection
from proxy.server.downstream import Downstream
from proxy.telemetry.metrics import INBOUND_TLS_HANDSHAKES


class Listener:
    def __init__(
        self,
        name: str,
        handler: Callable[[Downstream, Any], Any],
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        peer_identity: Callable[[Any], str | None] | None = None,
        max_head: int = 61440,
        max_headers: int = 100,
        max_uri: int = 8192,
        header_timeout: float = 10.0,
        idle_timeout: float = 300.0,
        stream_idle_timeout: float = 300.0,
    ) -> None:
        self.name = name
        self.handler = handler
        self.host = host
        self.port = port
        self.ssl = ssl_context
        self.peer_identity = peer_identity
        self.max_head = max_head
        self.max_headers = max_headers
        self.max_uri = max_uri
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        # a request with no byte either way for this long is ended (Envoy's
        # stream_idle_timeout; HTTP/1.1 here, HTTP/2 streams in proxy/server/h2); 0: never
        self.stream_idle_timeout = stream_idle_timeout
        self.loop = asyncio.get_event_loop()
        self.connections: set[Downstream] = set()
        self.server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self.draining = False
        self.log = logging.getLogger(f"meshlet.proxy.{name}")
        self.local_reply_hook: Callable[[int, str], None] | None = None
        # PeerAuthentication on this port: a callable giving the mode in force now
        # ("STRICT" | "PERMISSIVE" | "DISABLE"); None for a plain listener
        self.mtls_mode: Callable[[], str] | None = None
        # HTTP/2: factory(listener, transport, initial_bytes, h1_conn) -> asyncio.Protocol taking
        # over a connection that spoke the h2c preface or negotiated ALPN h2 (proxy/server/h2)
        self.h2_factory: Callable[..., Any] | None = None
        self.refused = 0
        # outbound under iptables capture: read SO_ORIGINAL_DST per connection
        self.transparent = False
        self.passthrough_hook: Callable[[Any, tuple[str, int]], None] | None = None
        # captured opaque TCP: takes an accepted socket whose original destination is a
        # declared TCP port (True: taken; it then never waits for the client's first byte)
        self.tcp_capture: Callable[[socket.socket], bool] | None = None
        self._sock: socket.socket | None = None
        self._pending: dict[socket.socket, float] = {}
        self._detect = False
        # TLS accepts (detecting path): the context each accepted connection is created from,
        # read per connection, and the check a resumed session must pass (None: none needed).
        # With session tickets the context holds the ticket keys, so handing each connection
        # the current identity's context (instead of switching by SNI callback from one fixed
        # context) makes a certificate or bundle change invalidate every earlier ticket; see
        # proxy/server/tls_session.py. It also spares the SNI callback on every handshake.
        self.accept_context: Callable[[], ssl.SSLContext] | None = None
        self.resumed_ok: Callable[[Any], bool] | None = None

    async def start(self) -> int:
        """Listen, accepting connections ourselves (not with ``loop.create_server``).

        Under load uvloop's server accepted about one connection per event-loop turn: with a
        thousand streams in flight a turn takes tens of milliseconds, and a burst of 100 new
        connections waited up to 3 s in the kernel's accept queue (h2load c100: p99 2.2 s where
        Envoy had 0.23 s). Our accept handler takes up to 64 connections per readiness.

        With ``mtls_mode`` (inbound), mTLS and plaintext share the port (Istio PERMISSIVE): the
        first byte tells them apart without consuming it (MSG_PEEK), so TLS still sees its
        ClientHello. This costs one peek per connection, nothing per request. The mode is read
        at each accept, so a pushed PeerAuthentication applies to new connections at once.
        """
        self.loop = asyncio.get_running_loop()
        self._detect = self.mtls_mode is not None and self.ssl is not None
        sock = socket.socket(
            socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM
        )
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(1024)
        sock.setblocking(False)
        self._sock = sock
        self.port = sock.getsockname()[1]
        self.loop.add_reader(sock.fileno(), self._on_accept)
        self._sweeper = self.loop.call_later(1.0, self._sweep)
        return self.port

    def _on_accept(self) -> None:
        assert self._sock is not None
        for _ in range(64):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self.log.warning("accept failed: %s", exc)
                return
            if self.draining:
                conn.close()
                continue
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tcp_capture is not None and self.tcp_capture(conn):
                continue
            if not self._detect:
                self.loop.create_task(self._adopt(conn, self.ssl))
                continue
            self._pending[conn] = self.loop.time()
            self.loop.add_reader(conn.fileno(), self._on_first_bytes, conn)

    def _on_first_bytes(self, conn: socket.socket) -> None:
        try:
            head = conn.recv(8, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            head = b""
        self.loop.remove_reader(conn.fileno())
        self._pending.pop(conn, None)
        if not head:
            conn.close()
            return
        is_tls = head[0] == 0x16 and head[1:2] == b"\x03"
        mode = self.mtls_mode() if self.mtls_mode is not None else "PERMISSIVE"
        if refuses_connection(mode, is_tls):
            # STRICT refuses plaintext (Istio answers with a reset, not an HTTP error)
            self.refused += 1
            conn.close()
            return
        ctx = None
        if is_tls:
            ctx = self.ssl
            if self.accept_context is not None:
                try:
                    ctx = self.accept_context()
                except Exception:
                    self.log.exception("no TLS context for an inbound connection")
                    self.refused += 1
                    conn.close()
                    return
        self.loop.create_task(self._adopt(conn, ctx))

    async def _adopt(self, conn: socket.socket, ctx: ssl.SSLContext | None) -> None:
        try:
            async with asyncio.timeout(self.header_timeout):
                transport, _ = await self.loop.connect_accepted_socket(
                    lambda: Downstream(self), conn, ssl=ctx
                )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            # a failed handshake: no certificate, an untrusted one, an old TLS version
            self.refused += 1
            self.log.debug("inbound handshake refused: %r", exc)
            conn.close()
            return
        if ctx is None:
            return
        sslobj = transport.get_extra_info("ssl_object")
        resumed = sslobj is not None and sslobj.session_reused
        INBOUND_TLS_HANDSHAKES.count(resumed)
        if resumed and self.resumed_ok is not None:
            # Runs before the connection's first bytes are read: both loops' SSLProtocol wake
            # the handshake's waiter before they schedule the first read (so user code can
            # look at the session first), hence a refused session never gets a request served.
            if not self.resumed_ok(sslobj):
                self.refused += 1
                self.log.debug("inbound resumed session refused: peer certificate not valid")
                transport.abort()

    def _sweep(self) -> None:
        now = self.loop.time()
        for conn in list(self.connections):
            conn.sweep(now)
        for sock, since in list(self._pending.items()):
            if now - since > self.header_timeout:
                self.loop.remove_reader(sock.fileno())
                self._pending.pop(sock, None)
                sock.close()
        self._sweeper = self.loop.call_later(min(1.0, self.header_timeout / 4), self._sweep)

    def on_local_reply(self, conn: Downstream, status: int, flag: str) -> None:
        if self.local_reply_hook is not None:
            self.local_reply_hook(status, flag)

    def on_passthrough(self, conn: Downstream, dst: tuple[str, int]) -> None:
        if self.passthrough_hook is not None:
            self.passthrough_hook(conn, dst)

    def on_downstream_lost(self, conn: Downstream) -> None:
        """The client went away mid-request: cancel its request (Envoy resets the upstream)."""
        if (
            conn.task is not None
            and conn.body is None
            or (conn.body is not None and conn.body.at_eof)
        ):
            if conn.task is not None:
                conn.task.cancel()

    def stop_accepting(self) -> None:
        self.draining = True
        if self.server is not None:
            self.server.close()
        if self._sock is not None:
            self.loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        for conn in list(self.connections):
            if conn.task is None:
                conn.close()  # idle keep-alive connections go now; busy ones after their response

    @property
    def busy(self) -> int:
        return sum(1 for c in self.connections if c.task is not None)

    def close_all(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self.connections):
            conn.close()
