"""Opaque TCP for one sidecar: the HBONE server (port 15008), the client pool of HBONE
connections to peer sidecars, the Sidecar kind's egress listeners, and captured TCP.

Outbound: a connection for a service's opaque port (an egress listener's, or a captured one
whose original destination is such a port) picks its cluster by the L4 routes, an endpoint by
the cluster's load balancer and outlier detection, then either opens a CONNECT stream on a
pooled mTLS HTTP/2 connection to the endpoint's sidecar (the endpoint has an HBONE port), or
splices plain TCP to it (an endpoint outside the mesh). A new TCP connection costs a stream,
not a handshake. Nothing waits for the client's first byte unless a ``tls`` route needs its SNI.

Inbound: the HBONE listener takes mTLS only (PeerAuthentication cannot make it plaintext),
verifies the peer's identity, checks the CONNECT target port is one this workload serves,
applies AuthorizationPolicy's L4 rules (compiled with ``protocol="tcp"``), and only then
connects to the app: a denied connection never reaches it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

from proxy.server.tls_session import SessionCache, resumed_peer_valid
from proxy.server.tls_session import open_connection as open_tls
from proxy.server.upstream import set_keepalive
from proxy.tcp import sni as sni_mod
from proxy.tcp.conn import TcpRecord
from proxy.tcp.legs import HboneConnection, RawLeg, StreamLeg, _tunnel_module
from proxy.tcp.table import TcpService, select
from proxy.telemetry.metrics import INBOUND_TLS_HANDSHAKES

log = logging.getLogger("meshlet.proxy.tcp")

#: endpoints one TCP connection tries when the HBONE connection to one fails (refused, TLS or
#: identity failure, timeout): nothing was sent yet, so another endpoint is as good (Envoy's
#: tcp_proxy ``max_connect_attempts``); each failure counts for outlier detection
CONNECT_ATTEMPTS = 3


def captured_service(table: Any, dst: tuple[str, int]) -> TcpService | None:
    """The opaque service port a captured connection was going to (``SO_ORIGINAL_DST``), or
    None: then HTTP detection goes on as before."""
    l4 = table.l4
    if not l4.services:
        return None
    host, port = dst
    fq = table.by_address.get(f"{host}:{port}") or table.by_address.get(host)
    if fq is None:
        return None
    return l4.lookup(fq, port)


class _Accepting:
    """A listening socket accepting on its own (as :class:`proxy.server.listener.Listener`)."""

    def __init__(self, host: str, port: int, on_sock: Any) -> None:
        self.loop = asyncio.get_running_loop()
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(fam, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(1024)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.port = sock.getsockname()[1]
        self.on_sock = on_sock
        self.loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(64):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.on_sock(conn)

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()


class _Dialed(HboneConnection):
    """An outbound HBONE connection. Its TLS session is kept for the next connection to the same
    peer sidecar once the first bytes have been read: a TLS 1.3 ticket arrives after the
    handshake, ahead of the server's SETTINGS, i.e. in the first read. Only that read pays for
    the check."""

    def __init__(self, sessions: SessionCache | None, on_lost: Any) -> None:
        super().__init__(True, on_lost=on_lost)
        self.sessions = sessions
        self.resumed = False
        self._ticket_seen = False

    def buffer_updated(self, nbytes: int) -> None:
        # uvloop's TLS transport decrypts into get_buffer()'s memory and calls this (the
        # connection is a BufferedProtocol); it keeps the bound method it found when the
        # protocol was set, so a flag, not a re-bound attribute, marks the first read
        if not self._ticket_seen:
            self._remember_session()
        HboneConnection.buffer_updated(self, nbytes)

    def data_received(self, data: bytes) -> None:
        # a transport that does not use the buffer protocol reads through here instead
        if not self._ticket_seen:
            self._remember_session()
        HboneConnection.data_received(self, data)

    def _remember_session(self) -> None:
        self._ticket_seen = True
        if self.sessions is not None and self.transport is not None:
            self.sessions.remember(self.transport.get_extra_info("ssl_object"))


class TcpProxy:
    def __init__(self, runtime: Any, app_host: str, app_port: int) -> None:
        self.rt = runtime
        self.app_host = app_host
        self.app_port = app_port
        self.metrics: Any = None  # TcpMetrics, when telemetry is on
        self.access_log: Any = None
        self.workload = runtime.service + ("-" + runtime.version if runtime.version else "")
        self._series: dict[tuple[str, str, str], list[int]] = {}
        # pooled HBONE connections per (address, HBONE port, identity the peer must have): as
        # ztunnel's pool, keyed by the expected identity, so that a config changing who the peer
        # must be never reuses a connection verified under the old expectation
        self.pools: dict[tuple[str, int, Any], list[HboneConnection]] = {}
        self._dialing: dict[tuple[str, int, Any], asyncio.Future[HboneConnection]] = {}
        self.inbound_conns: set[HboneConnection] = set()
        self.open_legs: dict[Any, list[Any]] = {}  # leg -> [bytes seen, since, idle timeout]
        self.cluster_active: dict[str, int] = {}
        self.egress: dict[tuple[str, int], tuple[_Accepting, list[str]]] = {}
        self.hbone_port = 0
        self.overflows = 0
        self.refused = 0
        self._sweeper: asyncio.TimerHandle | None = None
        self._want_egress: dict[tuple[str, int], str] = {}
        self._egress_failed: set[tuple[str, int]] = set()  # busy ports, retried by the sweep
        self.tasks: set[asyncio.Task[Any]] = set()
        # TLS session resumption towards peer sidecars: one cache per (address, HBONE port)
        self.sessions: dict[tuple[str, int], SessionCache] = {}
        # HBONE handshakes of this sidecar: outbound/inbound x full/resumed
        self.handshakes = {"outbound": [0, 0], "inbound": [0, 0]}
        # an outbound HBONE connection with no stream for this long is closed (ztunnel's pool
        # releases unused connections the same way); swept once a second
        self.pool_idle_timeout = 300.0
        self.hbone_listener: _Accepting | None = None
        self._accept_context: Callable[[], ssl.SSLContext] | None = None
        self.draining = False
        # SETTINGS_MAX_CONCURRENT_STREAMS our HBONE listener advertises (--hbone-max-streams);
        # 0: tunnel.LIMITS' 4096. Peers open another connection past it, as we do past theirs
        self.hbone_max_streams = 0
        self._inbound_limits: Any = None
        # GOAWAYs: sent on inbound HBONE connections (drain), received on outbound ones
        self.goaways = {"inbound": 0, "outbound": 0}

    # -- lifecycle -------------------------------------------------------------------------------
    async def start_hbone(
        self, host: str, port: int, accept_context: Callable[[], ssl.SSLContext]
    ) -> int:
        """Listen for peers' HBONE connections. Each accepted connection is created from
        ``accept_context()`` (the current identity's ticket-issuing context, see
        ``proxy/server/tls_session.py``): tickets die with the certificate or bundle they were
        issued under, so a resumption never skips a verification the current trust needs."""
        self._accept_context = accept_context
        self.hbone_listener = _Accepting(host, port, self._hbone_accepted)
        self.hbone_port = self.hbone_listener.port
        self._arm_sweeper()
        return self.hbone_port

    def _hbone_accepted(self, sock: socket.socket) -> None:
        assert self._accept_context is not None
        try:
            ctx = self._accept_context()
        except Exception:
            log.exception("no TLS context for an inbound HBONE connection")
            sock.close()
            return
        self._spawn(self._hbone_adopt(sock, ctx))

    async def _hbone_adopt(self, sock: socket.socket, ctx: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        # made here, not taken from the call's result: with ssl= uvloop returns its SSLProtocol
        limits = self._inbound_limits
        if limits is None and self.hbone_max_streams:
            limits = self._inbound_limits = dataclasses.replace(
                _tunnel_module().LIMITS, max_concurrent_streams=self.hbone_max_streams
            )
        conn = HboneConnection(False, self._inbound_open, self.inbound_conns.discard, limits)
        try:
            async with asyncio.timeout(10.0):
                transport, _ = await loop.connect_accepted_socket(lambda: conn, sock, ssl=ctx)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            log.debug("inbound HBONE handshake refused: %r", exc)
            sock.close()
            return
        sslobj = transport.get_extra_info("ssl_object")
        resumed = sslobj is not None and sslobj.session_reused
        INBOUND_TLS_HANDSHAKES.count(resumed)
        self.handshakes["inbound"][resumed] += 1
        conn.resumed = resumed  # type: ignore[attr-defined]
        # a resumed session skipped chain verification: its certificate must still be valid
        # (checked before the first read: no stream is opened on a refused session)
        if sslobj is None or (resumed and not resumed_peer_valid(sslobj)):
            self.refused += 1
            transport.abort()
            return
        if self.rt.peer_identity is not None:
            conn.peer = self.rt.peer_identity(sslobj) or ""
        if not conn.lost:  # (lost already: on_lost has run, nothing would remove it)
            self.inbound_conns.add(conn)
            if self.draining and conn.goaway():  # accepted just before the listener closed
                self.goaways["inbound"] += 1

    def on_table(self, table: Any) -> None:
        """A new config: open, retarget or close the egress listeners it asks for."""
        if self.draining:
            return  # drain closed them: a config pushed meanwhile must not reopen any
        # sessions of peer sidecars no longer in the config are dropped (config time, not per
        # connection): the cache holds at most one session per known HBONE endpoint
        if self.sessions:
            known = {(ep.address, ep.hbone) for c in table.clusters.values()
                     for ep in c.endpoints if getattr(ep, "hbone", 0)}  # fmt: skip
            for key in [k for k in self.sessions if k not in known]:
                del self.sessions[key]
        self._want_egress = {(e.bind, e.port): e.service for e in table.l4.egress}
        self._sync_egress(self._want_egress)
        self._arm_sweeper()

    def _sync_egress(self, want: dict[tuple[str, int], str]) -> None:
        self._egress_failed &= set(want)
        for key in list(self.egress):
            if key not in want:
                acc, _ = self.egress.pop(key)
                acc.close()
        for key, service in want.items():
            cur = self.egress.get(key)
            if cur is not None:
                cur[1][0] = service
                continue
            target = [service]

            def on_sock(s: socket.socket, t: list[str] = target, p: int = key[1]) -> None:
                self._egress(s, t, p)

            try:
                acc = _Accepting(key[0], key[1], on_sock)
            except OSError as exc:
                if key not in self._egress_failed:
                    log.warning("Sidecar egress listener %s:%d not opened (retried every "
                                "second): %s", key[0], key[1], exc)  # fmt: skip
                self._egress_failed.add(key)
                continue
            self._egress_failed.discard(key)
            self.egress[key] = (acc, target)
            log.info("egress listener %s:%d -> %s", key[0], acc.port, service or "(nothing)")

    def egress_ports(self) -> dict[str, int]:
        return {f"{h}:{p}": acc.port for (h, p), (acc, _) in self.egress.items()}

    def close(self) -> None:
        for acc, _ in self.egress.values():
            acc.close()
        self.egress.clear()
        if self.hbone_listener is not None:
            self.hbone_listener.close()
        for conns in self.pools.values():
            for c in conns:
                c.close()
        for c in list(self.inbound_conns):
            c.close()
        if self._sweeper is not None:
            self._sweeper.cancel()

    # -- drain -----------------------------------------------------------------------------------
    def stop_accepting(self) -> None:
        """Drain, first step: no new TCP connection (egress listeners and the HBONE listener
        close: a new connection is refused; a new CONNECT on an open HBONE connection gets a
        503), while the open ones go on."""
        self.draining = True
        for acc, _ in self.egress.values():
            acc.close()
        self.egress.clear()
        self._want_egress = {}
        self._egress_failed.clear()
        if self.hbone_listener is not None:
            self.hbone_listener.close()
        # GOAWAY on every inbound HBONE connection (Envoy's and ztunnel's drain): peers open
        # new streams elsewhere at once, instead of learning it from refusals, while the
        # streams already running here go on until they end or the drain timeout
        for c in list(self.inbound_conns):
            if c.goaway():
                self.goaways["inbound"] += 1

    def busy(self) -> int:
        """Open TCP connections (and ones being set up): what drain waits for."""
        return sum(1 for leg in self.open_legs if not leg.rec.done) + len(self.tasks)

    def close_open(self, reason: str) -> int:
        """Drain, last step: close every connection still open, with ``reason`` as the access
        log's termination details. Returns how many were closed."""
        n = 0
        for leg in list(self.open_legs):
            if not leg.rec.done:
                leg.abort(reason, "")
                n += 1
        for t in list(self.tasks):
            t.cancel()
        return n

    def _spawn(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self._done)

    def _done(self, t: asyncio.Task[Any]) -> None:
        self.tasks.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.error("tcp connection task failed", exc_info=t.exception())

    # -- outbound --------------------------------------------------------------------------------
    def _egress(self, sock: socket.socket, target: list[str], port: int) -> None:
        svc = self.rt.table.l4.lookup(target[0], port) if target[0] else None
        if svc is None:
            sock.close()
            return
        self.outbound(sock, svc)

    def outbound(self, sock: socket.socket, svc: TcpService) -> None:
        """Proxy one accepted client socket to ``svc`` (egress listener or capture)."""
        if svc.needs_sni:
            self._spawn(self._with_sni(sock, svc))
        else:
            self._spawn(self._outbound(sock, svc, ""))

    async def _with_sni(self, sock: socket.socket, svc: TcpService) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10.0
        while True:
            try:
                head = sock.recv(sni_mod.MAX_HELLO, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                head = None
            except OSError:
                sock.close()
                return
            if head == b"":
                sock.close()
                return
            name = sni_mod.server_name(head) if head is not None else None
            if name is not None:
                break
            if loop.time() > deadline:
                sock.close()
                return
            fut = loop.create_future()
            loop.add_reader(sock.fileno(), fut.set_result, None)
            try:
                await asyncio.wait_for(fut, max(0.01, deadline - loop.time()))
            except TimeoutError:
                pass
            finally:
                loop.remove_reader(sock.fileno())
        await self._outbound(sock, svc, name)

    async def _outbound(self, sock: socket.socket, svc: TcpService, sni: str) -> None:
        rt = self.rt
        table = rt.table
        loop = asyncio.get_running_loop()
        name = select(svc, sni, rt.random.random())
        cluster = table.cluster(name) if name else None
        if cluster is None:
            self._refuse(sock, "source", svc.service, "NR")
            return
        active = self.cluster_active.get(cluster.name, 0)
        if active >= cluster.max_connections:
            self.overflows += 1
            self._refuse(sock, "source", cluster.name, "UO")
            return
        outlier = rt.policies.outlier(cluster)
        ep = rt.pick_endpoint(cluster, set(), outlier)
        if ep is None:
            self._refuse(sock, "source", cluster.name, "UH")
            return
        hbone = bool(ep.tls and ep.hbone)
        # an HBONE connection's series is bound once the endpoint is settled (the first one
        # may fail and another be tried): its labels name the endpoint really used
        rec = TcpRecord("source", None if hbone else self._outbound_series(cluster, ep),
                        self._closed)  # fmt: skip
        rec.cluster = cluster.name
        rec.service = cluster.service
        rec.upstream = ep.key
        try:
            peer = sock.getpeername()
            rec.downstream = f"{peer[0]}:{peer[1]}"
        except OSError:
            pass
        self.cluster_active[cluster.name] = active + 1  # one decrement in _closed
        if hbone:
            got = await self._hbone_any(cluster, outlier, ep)
            if got is None:
                rec.bind(self._outbound_series(cluster, ep))
                sock.close()
                rec.close("upstream connect failure", "UF")
                return
            conn, ep = got
            rec.bind(self._outbound_series(cluster, ep))
            rec.peer = conn.peer
            rec.security = "mutual_tls"
            rec.upstream = f"{ep.address}:{svc.port}"
            leg = StreamLeg(rec, True)
            leg.reopen = lambda lg, c=cluster, o=outlier, p=svc.port: self._spawn(
                self._reopen(lg, c, o, p)
            )
            leg.attach(conn, conn.open_stream(f"{ep.address}:{svc.port}", leg))
            await loop.connect_accepted_socket(lambda: leg, sock)
            self.open_legs[leg] = [0, time.monotonic(), cluster.tcp_idle_timeout]
            return
        if ep.tls:
            # a mesh endpoint whose sidecar has no HBONE port: it only speaks HTTP
            sock.close()
            rec.close("peer sidecar has no HBONE port", "UF")
            return
        up = RawLeg(rec, False)
        try:
            async with asyncio.timeout(cluster.connect_timeout):
                await loop.create_connection(lambda: up, ep.address, ep.port)
        except (OSError, TimeoutError) as exc:
            log.debug("TCP connect to %s failed: %r", ep.key, exc)
            rt.endpoint_outcome(outlier, ep, None, True)
            sock.close()
            rec.close("upstream connect failure", "UF")
            return
        if outlier is not None:
            rt.endpoint_outcome(outlier, ep, 200, False)  # a success resets the streak
        if cluster.tcp_keepalive:
            set_keepalive(up.transport, cluster.tcp_keepalive)
        down = RawLeg(rec, True)
        down.peer, up.peer = up, down
        await loop.connect_accepted_socket(lambda: down, sock)
        down.start()
        self.open_legs[down] = [0, time.monotonic(), cluster.tcp_idle_timeout]

    async def _hbone_any(
        self, cluster: Any, outlier: Any, ep: Any
    ) -> tuple[HboneConnection, Any] | None:
        """A usable HBONE connection to ``ep``, or, when that fails, to another endpoint the
        load balancer picks (up to :data:`CONNECT_ATTEMPTS`); None when none could be had."""
        rt = self.rt
        tried: set[str] = set()
        for _ in range(CONNECT_ATTEMPTS):
            if ep is None or ep.key in tried or not (ep.tls and ep.hbone):
                return None
            try:
                async with asyncio.timeout(cluster.connect_timeout):
                    conn = await self._hbone(ep, cluster)
            except (OSError, TimeoutError, ConnectionError) as exc:
                log.debug("HBONE connect to %s:%d failed: %r", ep.address, ep.hbone, exc)
                rt.endpoint_outcome(outlier, ep, None, True)
                tried.add(ep.key)
                ep = rt.pick_endpoint(cluster, tried, outlier)
                continue
            if outlier is not None:
                rt.endpoint_outcome(outlier, ep, 200, False)  # a success resets the streak
            return conn, ep
        return None

    async def _reopen(self, leg: StreamLeg, cluster: Any, outlier: Any, port: int) -> None:
        """A stream the peer refused unprocessed (its GOAWAY, its stream limit): open it again
        where the load balancer says, on a connection that takes new streams."""
        ep = self.rt.pick_endpoint(cluster, set(), outlier)
        got = await self._hbone_any(cluster, outlier, ep) if ep is not None else None
        if leg.closed:
            return
        if got is None:
            leg.reopen = None
            leg.tunnel_reset(-1)
            return
        conn, ep = got
        leg.rec.upstream = f"{ep.address}:{port}"
        leg.rec.peer = conn.peer
        leg.reattach(conn, conn.open_stream(f"{ep.address}:{port}", leg))

    async def _hbone(self, ep: Any, cluster: Any) -> HboneConnection:
        o = cluster.origination
        sans = o.subject_alt_names if o is not None and o.mode == "ISTIO_MUTUAL" else ()
        key = (ep.address, ep.hbone, tuple(sans) or ep.spiffe_id)
        while True:
            for c in self.pools.get(key, ()):
                if c.usable():
                    return c
            fut = self._dialing.get(key)
            if fut is None:
                break
            await asyncio.shield(fut)
        loop = asyncio.get_running_loop()
        fut = self._dialing[key] = loop.create_future()
        try:
            ctx = self.rt.client_ssl_h2()
            # sessions are the peer sidecar's, whatever identity it must have: a session for it
            # is offered, and the identity checked on the resumed connection as on any other
            sessions = self.sessions.get(key[:2])
            if sessions is None:
                sessions = self.sessions[key[:2]] = SessionCache()
            conn: _Dialed
            if ctx is None:
                _, conn = await loop.create_connection(
                    lambda: _Dialed(None, self._pool_lost), ep.address, ep.hbone
                )
            else:
                # offers the peer's last session (a reconnect resumes instead of a full
                # handshake); counted in meshlet_upstream_tls_handshakes_total
                _, conn = await open_tls(
                    loop, lambda: _Dialed(sessions, self._pool_lost), ep.address, ep.hbone,
                    ctx, sessions, server_hostname="",
                )  # fmt: skip
            sslobj = conn.transport.get_extra_info("ssl_object")
            conn.resumed = bool(sslobj is not None and sslobj.session_reused)
            self.handshakes["outbound"][conn.resumed] += 1
            # resumed or not, the session records the peer's certificate: verified every time
            # ISTIO_MUTUAL with subjectAltNames narrows who the peer may be; any other
            # DestinationRule TLS mode says nothing about HBONE, always mesh mTLS
            verify = self.rt._verifier(ep, cluster if sans else None)
            if sslobj is None or (verify is not None and not verify(sslobj)):
                sessions.forget()
                conn.sessions = None
                conn.transport.abort()
                raise ConnectionError(f"{ep.address}:{ep.hbone} is not {ep.spiffe_id}")
            if self.rt.peer_identity is not None:
                conn.peer = self.rt.peer_identity(sslobj) or ""
            if cluster.tcp_keepalive:
                set_keepalive(conn.transport, cluster.tcp_keepalive)
            conn.on_goaway = self._goaway_received
            if not conn.tunnel.settings_received:
                # the peer's stream limit comes with its SETTINGS (in the first read, with the
                # TLS ticket): known before a stream is opened, so a burst of new TCP
                # connections opens a second HBONE connection rather than refused streams
                conn.settings_waiter = loop.create_future()
                try:
                    await conn.settings_waiter
                except BaseException:
                    conn.transport.abort()
                    raise
            conn.pool_key = key  # type: ignore[attr-defined]
            self.pools.setdefault(key, []).append(conn)
            fut.set_result(conn)
            return conn
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: waiters re-dial
            raise
        finally:
            self._dialing.pop(key, None)

    def _goaway_received(self, conn: HboneConnection) -> None:
        self.goaways["outbound"] += 1

    def _pool_lost(self, conn: HboneConnection) -> None:
        conns = self.pools.get(getattr(conn, "pool_key", ("", 0, "")))
        if conns and conn in conns:
            conns.remove(conn)

    def _refuse(self, sock: socket.socket, reporter: str, what: str, flag: str) -> None:
        self.refused += 1
        log.debug("tcp connection for %s refused: %s", what, flag)
        sock.close()
        if self.access_log is not None:
            self.access_log.log(protocol="TCP", response_flags=flag, upstream_cluster=what,
                                reporter=reporter, duration_ms=0)  # fmt: skip

    # -- inbound ---------------------------------------------------------------------------------
    def _inbound_open(self, conn: HboneConnection, sid: int, authority: str) -> None:
        rt = self.rt
        if not conn.peer and rt.peer_identity is not None:
            sslobj = conn.transport.get_extra_info("ssl_object")
            conn.peer = (rt.peer_identity(sslobj) if sslobj is not None else None) or ""
            self.inbound_conns.add(conn)
        host, _, p = authority.rpartition(":")
        port = int(p) if p.isdigit() else 0
        l4 = rt.table.l4
        target = l4.ingress.get(port)
        if target is None and (
            port == self.app_port
            or port in l4.local_ports
            or port in rt.table.services.get(rt.local_service_fqdn, ())
        ):
            target = ("", 0)
        rec = TcpRecord("destination", self._inbound_series(conn.peer), self._closed)
        rec.peer = conn.peer
        rec.security = "mutual_tls"
        rec.downstream = conn.peer_address
        rec.service = rt.local_service_fqdn
        rec.cluster = f"inbound|{port}||{rt.local_service_fqdn}"
        if target is None:
            conn.tunnel.refuse(sid, 404)
            rec.close("no such port", "NR")
            return
        if self.draining:
            conn.tunnel.refuse(sid, 503)
            rec.close("draining", "UF")
            return
        authz = rt.authz_tcp
        if authz is not None and not authz.empty:
            from proxy.authz.engine import RequestAttrs, peer_identity

            principal, namespace = peer_identity(conn.peer) if conn.peer else (None, None)
            src = conn.peer_address.rpartition(":")[0]
            decision = authz.check(
                RequestAttrs(source_principal=principal, source_namespace=namespace,
                             source_ip=src, port=port, mtls=bool(principal))  # fmt: skip
            )
            if not decision.allowed:
                conn.tunnel.refuse(sid, 403)
                rec.close("denied by " + (decision.policy or "AuthorizationPolicy"), "RBAC")
                return
        thost, tport = target
        if not tport:
            thost, tport = self.app_host, self.app_port
        rec.upstream = f"{thost}:{tport}"
        leg = StreamLeg(rec, False)
        leg.attach(conn, sid)
        self._spawn(self._connect_app(conn, sid, leg, thost, tport))

    async def _connect_app(
        self, conn: HboneConnection, sid: int, leg: StreamLeg, host: str, port: int
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(10.0):
                await loop.create_connection(lambda: leg, host, port)
        except (OSError, TimeoutError) as exc:
            log.debug("app connect %s:%d failed: %r", host, port, exc)
            conn.forget(sid)
            if sid in conn.tunnel.streams:
                conn.tunnel.refuse(sid, 503)
                conn.flush()
            leg.closed = True
            leg.rec.close("app connect failure", "UF")
            return
        if leg.closed:
            leg.transport.close()
            return
        self.open_legs[leg] = [0, time.monotonic(), 3600.0]

    # -- bookkeeping -----------------------------------------------------------------------------
    def _closed(self, rec: TcpRecord) -> None:
        if rec.reporter == "source":
            self.cluster_active[rec.cluster] -= 1
        if self.access_log is not None:
            self.access_log.log(
                protocol="TCP",
                response_flags=rec.flags or "-",
                duration_ms=int((time.monotonic() - rec.start) * 1000),
                bytes_received=rec.received,
                bytes_sent=rec.sent,
                upstream_host=rec.upstream,
                upstream_cluster=rec.cluster,
                downstream_remote_address=rec.downstream,
                downstream_peer_principal=rec.peer or None,
                reporter=rec.reporter,
                connection_termination_details=rec.reason,
                authority=rec.service,
            )

    def _arm_sweeper(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(1.0, self._sweep)

    def _sweep(self) -> None:
        """Idle timeout (DestinationRule ``connectionPool.tcp.idleTimeout``, default 1 h): a
        connection with no byte either way for that long is closed. One pass a second over
        open connections, comparing byte totals: nothing is timed per chunk."""
        if self._egress_failed:
            self._sync_egress(self._want_egress)
        now = time.monotonic()
        for leg, st in list(self.open_legs.items()):
            rec = leg.rec
            if rec.done:
                del self.open_legs[leg]
                continue
            total = rec.received + rec.sent
            if total != st[0]:
                st[0], st[1] = total, now
            elif now - st[1] >= st[2]:
                leg.abort("idle timeout", "IDLE")
        for conns in list(self.pools.values()):
            for c in list(conns):
                since = getattr(c, "idle_since", 0.0)
                if c.legs:
                    c.idle_since = 0.0
                elif not since:
                    c.idle_since = now
                elif now - since >= self.pool_idle_timeout:
                    c.close()  # GOAWAY; the next connection to that peer resumes its session
        self._sweeper = asyncio.get_running_loop().call_later(1.0, self._sweep)

    def _outbound_series(self, cluster: Any, ep: Any) -> list[int] | None:
        if self.metrics is None:
            return None
        key = ("source", cluster.name, ep.key)
        s = self._series.get(key)
        if s is None:
            rt = self.rt
            svc = cluster.service
            parts = svc.split(".")
            app = parts[0]
            ns = parts[1] if len(parts) > 2 else "unknown"
            ver = ep.labels.get("version", "unknown")
            s = self._series[key] = self.metrics.series(
                reporter="source", source_workload=self.workload,
                source_workload_namespace=rt.namespace, source_principal=rt.spiffe_id,
                source_app=rt.service, source_version=rt.version or "unknown",
                source_canonical_service=rt.service,
                source_canonical_revision=rt.version or "latest",
                destination_workload=app + ("-" + ver if ver != "unknown" else ""),
                destination_workload_namespace=ns,
                destination_principal=ep.spiffe_id if ep.tls else "unknown",
                destination_app=app, destination_version=ver, destination_service=svc,
                destination_service_name=app, destination_service_namespace=ns,
                destination_canonical_service=app,
                destination_canonical_revision=ver if ver != "unknown" else "latest",
                request_protocol="tcp", response_flags="-",
                connection_security_policy="unknown",
            )  # fmt: skip
        return s

    def _inbound_series(self, peer: str) -> list[int] | None:
        if self.metrics is None:
            return None
        key = ("destination", "", peer)
        s = self._series.get(key)
        if s is None:
            rt = self.rt
            src_ns = peer.split("/ns/", 1)[1].split("/", 1)[0] if "/ns/" in peer else "unknown"
            src_sa = peer.rsplit("/sa/", 1)[1] if "/sa/" in peer else "unknown"
            s = self._series[key] = self.metrics.series(
                reporter="destination", source_workload=src_sa,
                source_workload_namespace=src_ns, source_principal=peer or "unknown",
                source_app=src_sa, source_canonical_service=src_sa,
                destination_workload=self.workload, destination_workload_namespace=rt.namespace,
                destination_principal=rt.spiffe_id, destination_app=rt.service,
                destination_version=rt.version or "unknown",
                destination_service=rt.local_service_fqdn, destination_service_name=rt.service,
                destination_service_namespace=rt.namespace,
                destination_canonical_service=rt.service,
                destination_canonical_revision=rt.version or "latest",
                request_protocol="tcp", response_flags="-",
                connection_security_policy="mutual_tls",
            )  # fmt: skip
        return s

    # -- admin -----------------------------------------------------------------------------------
    def tunnels_view(self) -> list[dict[str, Any]]:
        out = []
        for (addr, port, _), conns in self.pools.items():
            for c in conns:
                out.append({"direction": "outbound", "address": f"{addr}:{port}",
                            "peer": c.peer, "streams_open": len(c.legs),
                            "streams_total": c.streams_total,
                            "tls_resumed": getattr(c, "resumed", False),
                            "goaway": c.going_away,
                            "max_streams": c.tunnel.h2.remote_max_concurrent_streams,
                            "flow": c.flow_view()})  # fmt: skip
        for c in self.inbound_conns:
            out.append({"direction": "inbound", "address": c.peer_address, "peer": c.peer,
                        "streams_open": len(c.legs),
                        "tls_resumed": getattr(c, "resumed", False),
                        "goaway": c.going_away,
                        "flow": c.flow_view()})  # fmt: skip
        return out

    def goaways_view(self) -> dict[str, int]:
        """GOAWAYs so far: sent on inbound HBONE connections (our drains), received on
        outbound ones (peers' drains)."""
        return dict(self.goaways)

    def handshakes_view(self) -> dict[str, dict[str, int]]:
        """HBONE TLS handshakes so far, full and resumed, each way."""
        return {d: {"full": n[0], "resumed": n[1]} for d, n in self.handshakes.items()}

    # -- capture ---------------------------------------------------------------------------------
    def capture(self, sock: socket.socket) -> bool:
        """The outbound listener under iptables capture: a connection whose original destination
        is a declared opaque port is proxied here at once (server-first protocols work)."""
        table = self.rt.table
        if not table.l4.services:
            return False
        from proxy.capture.original_dst import original_dst

        try:
            dst = original_dst(sock)
        except OSError:
            return False
        svc = captured_service(table, dst) if dst is not None else None
        if svc is None:
            return False
        self.outbound(sock, svc)
        return True
