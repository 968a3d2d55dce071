"""One sidecar: its listeners, its config source, its admin port, and its lifecycle.

Standalone mode reads a YAML file of Istio resources and reloads it on SIGHUP; an invalid file
is refused whole and the running table stays. SIGTERM (or POST /drain) drains: readiness goes
503, the listeners stop accepting, idle keep-alive connections close, in-flight requests finish
(up to the drain timeout), then the process exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from control_plane.api import expiry
from proxy import __version__, _accel
from proxy.admin.server import build_app
from proxy.routes.compile import compile_table
from proxy.server.forward import Forwarder
from proxy.server.listener import Listener
from proxy.server.runtime import Runtime

log = logging.getLogger("meshlet.sidecar")


@dataclass
class SidecarOptions:
    service: str
    app_port: int
    namespace: str = "default"
    version: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    app_host: str = "127.0.0.1"
    outbound_port: int = 15001
    inbound_port: int = 15006
    hbone_port: int | None = None  # None: 15008 with the default inbound port, else free
    admin_port: int = 15000
    outbound_bind: str = "127.0.0.1"
    inbound_bind: str = "0.0.0.0"
    admin_bind: str = "127.0.0.1"
    config_file: str | None = None
    control_plane: str | None = None
    token_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None
    state_dir: str | None = None
    advertise_address: str = "127.0.0.1"
    drain_timeout: float = 20.0
    hbone_idle_timeout: float = 300.0  # an outbound HBONE connection with no stream is closed
    hbone_max_streams: int = 0  # SETTINGS_MAX_CONCURRENT_STREAMS on 15008 (0: 4096)
    access_log: bool = True
    header_timeout: float = 10.0
    idle_timeout: float = 300.0
    stream_idle_timeout: float = 300.0


class Sidecar:
    def __init__(self, opts: SidecarOptions) -> None:
        self.opts = opts
        labels = dict(opts.labels)
        labels.setdefault("app", opts.service)
        if opts.version:
            labels.setdefault("version", opts.version)
        self.runtime = Runtime(
            opts.service, opts.namespace, opts.version, labels, opts.app_port, opts.app_host
        )
        self.forwarder = Forwarder(self.runtime)
        self.listeners: dict[str, Listener] = {}
        self.tcp: Any = None  # proxy.tcp.proxy.TcpProxy: HBONE, egress listeners, captured TCP
        self.admin_runner: web.AppRunner | None = None
        self.admin_port = 0
        self.ready = False
        self.last_error = ""
        self.resources: list[Any] = []
        self.registry: list[dict[str, Any]] = []
        self.telemetry: Any = None
        self.identity: Any = None
        self.discovery: Any = None
        self.uplink: Any = None
        self.state_dir = opts.state_dir or ""
        self._stopped: asyncio.Event | None = None
        self._draining_task: asyncio.Task[Any] | None = None
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._warned_version = ""  # the config version whose unenforced fields were logged

    # -- config ------------------------------------------------------------------------------
    def apply_resources(
        self, resources: list[Any], registry: list[dict[str, Any]], version: str
    ) -> None:
        """Compile and swap atomically; raises (and keeps the running table) when invalid.

        Expired resources (``meshlet.dev/expires-at``, control_plane/api/expiry.py) are left
        out, and a timer compiles again when the next one expires: a fault injected by a chaos
        experiment ends on time even if the experiment and the control plane are gone."""
        all_resources = resources
        resources, next_expiry = expiry.live(all_resources, time.time())
        table = compile_table(
            resources, registry, self.opts.namespace, self.runtime.labels, version
        )
        for w in table.warnings:
            log.warning("config %s: %s", version, w)
        self._warn_unenforced(resources, version)
        from proxy.authz.engine import compile_policies

        authz = compile_policies(resources, self.opts.namespace, self.runtime.labels)
        for w in authz.warnings:
            log.warning("config %s: %s", version, w)
        from proxy.resilience.inbound_ratelimit import compile_limits

        limits = compile_limits(
            resources, self.opts.namespace, self.runtime.labels, self.runtime.inbound_limits
        )
        mtls_mode = self._mtls_mode(resources)
        self.runtime.swap(table)  # raises (nothing changed) when a DestinationRule's TLS files fail
        self.runtime.mtls_mode = mtls_mode
        self.runtime.authz = authz
        # the L4 rules for opaque TCP over HBONE (HTTP-only fields fail closed, as Istio)
        self.runtime.authz_tcp = compile_policies(
            resources, self.opts.namespace, self.runtime.labels, protocol="tcp"
        )
        self.runtime.inbound_limits = limits
        if self.tcp is not None:
            self.tcp.on_table(table)
        self.resources = list(all_resources)
        self.registry = list(registry)
        self._schedule_expiry(next_expiry, version)
        if self.telemetry is not None:
            self.telemetry.on_config(version, True)

    def _schedule_expiry(self, when: float | None, version: str) -> None:
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        if when is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not serving yet: start() applies the config again under the loop
        # a little late rather than early: the resource must be expired when we look again
        self._expiry_timer = loop.call_later(
            max(0.0, when - time.time()) + 0.005, self._expire, version
        )

    def _expire(self, version: str) -> None:
        self._expiry_timer = None
        try:
            self.apply_resources(self.resources, self.registry, version)
            log.info("config %s: expired resources removed", version)
        except Exception:  # the same resources compiled before; keep serving what we have
            log.exception("config %s: recompiling after an expiry failed", version)

    def _warn_unenforced(self, resources: list[Any], version: str) -> None:
        """One WARNING per accepted-but-not-enforced field, once per config version (a file
        reloaded unchanged, or a snapshot pushed again, keeps its version and stays quiet)."""
        if version == self._warned_version:
            return
        self._warned_version = version
        from control_plane.api.resources import unenforced_fields

        for r in resources:
            for path, text in unenforced_fields(r):
                log.warning("config %s: %s %s: %s: %s", version, r.source or "-", r.ref, path, text)

    def apply_snapshot(self, snap: dict[str, Any]) -> None:
        """A pushed snapshot: validated with the same code the control plane used, compiled,
        swapped; raising makes the discovery client NACK it and keep the last good table."""
        from control_plane.api.resources import InvalidConfig, from_dict

        resources, errors = [], []
        for i, doc in enumerate(snap.get("resources") or (), 1):
            try:
                # fields accepted but not enforced are logged by _warn_unenforced, once
                resources.append(from_dict(doc, f"snapshot {snap.get('version')}", i))
            except InvalidConfig as exc:
                errors.extend(exc.errors)
        if errors:
            raise InvalidConfig(errors)
        self.apply_resources(resources, list(snap.get("registry") or ()), str(snap.get("version")))
        self.ready = self.identity is None or self.identity.ready
        self._follow_trust_bundle((snap.get("mesh") or {}).get("trustBundle"))

    def _follow_trust_bundle(self, state: dict[str, Any] | None) -> None:
        """Root rotation: fetch the new bundle as soon as the control plane has one, and renew
        a certificate issued before a new root was activated. Both run in the background; the
        current certificate keeps serving meanwhile."""
        ident = self.identity
        if not state or ident is None or ident.obtained_at is None:
            return
        loop = asyncio.get_running_loop()
        if set(state.get("fingerprints") or ()) != set(ident.bundle_fingerprints):
            self.runtime.spawn(ident.refresh_bundle())
        if float(state.get("renewIssuedBefore") or 0) > ident.obtained_at:
            self.runtime.spawn(ident.renew_now())
        del loop

    def load_file(self) -> None:
        from control_plane.api.resources import load_path

        path = self.opts.config_file
        assert path is not None
        resources = load_path(path)
        import hashlib
        import json

        digest = hashlib.sha256(
            json.dumps([r.to_dict() for r in resources], sort_keys=True).encode()
        ).hexdigest()[:12]
        self.apply_resources(resources, [], f"file-{digest}")

    def _mtls_mode(self, resources: list[Any]) -> str:
        from proxy.authz.peer_auth import resolve_mtls_mode

        # portLevelMtls keys are the application's ports (Istio), not the sidecar's
        return resolve_mtls_mode(
            resources, self.opts.namespace, self.runtime.labels, self.opts.app_port
        )

    def reload(self) -> bool:
        try:
            self.load_file()
        except Exception as exc:
            self.last_error = str(exc)
            log.error(
                "config reload refused, keeping version %s:\n%s", self.runtime.config_version, exc
            )
            if self.telemetry is not None:
                self.telemetry.on_config(self.runtime.config_version, False)
            return False
        self.last_error = ""
        log.info("config reloaded: version %s", self.runtime.config_version)
        return True

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Bring the sidecar up, in order: config, identity, the TCP proxy (and HBONE),
        telemetry, the listeners, the admin port, signals; then announce it ready."""
        self._stopped = asyncio.Event()
        o = self.opts
        if o.config_file:
            self.load_file()  # at start an invalid file is fatal: there is nothing to keep
        await self._setup_identity()
        await self._start_tcp()
        self._setup_telemetry()
        self._wire_tcp_telemetry()
        out, inb = await self._start_listeners()
        await self._start_admin()
        self._handle_signals()
        _freeze_startup_objects()
        if o.control_plane:
            self._start_discovery(inb.port)
        self.ready = bool(self.runtime.config_version) or not (o.config_file or o.control_plane)
        self._announce_ready(out.port, inb.port)

    async def _start_tcp(self) -> None:
        """The TCP proxy (declared TCP ports, captured non-HTTP bytes) and, with an identity,
        its HBONE listener."""
        o = self.opts
        from proxy.tcp.proxy import TcpProxy

        self.tcp = TcpProxy(self.runtime, o.app_host, o.app_port)
        self.tcp.pool_idle_timeout = o.hbone_idle_timeout
        self.tcp.hbone_max_streams = o.hbone_max_streams
        if self.identity is not None:
            hbone = o.hbone_port
            if hbone is None:
                hbone = 15008 if o.inbound_port == 15006 else 0
            await self.tcp.start_hbone(o.inbound_bind, hbone, self._ticketing_contexts())
        self.tcp.on_table(self.runtime.table)

    def _wire_tcp_telemetry(self) -> None:
        """The TCP proxy's metrics and access log, once telemetry exists."""
        if self.telemetry is not None:
            from proxy.tcp.metrics import TcpMetrics

            self.tcp.metrics = TcpMetrics(self.telemetry.registry)
            self.tcp.metrics.handshakes = self.tcp.handshakes
            self.tcp.metrics.goaways = self.tcp.goaways
            self.tcp.access_log = self.telemetry.access_log

    async def _start_listeners(self) -> tuple[Listener, Listener]:
        """The outbound (app -> mesh) and inbound (mesh -> app) listeners, listening."""
        o = self.opts
        out = Listener(
            "outbound",
            self.forwarder.outbound,
            o.outbound_bind,
            o.outbound_port,
            header_timeout=o.header_timeout,
            idle_timeout=o.idle_timeout,
            stream_idle_timeout=o.stream_idle_timeout,
        )
        out.transparent = True  # SO_ORIGINAL_DST when iptables captured the connection
        out.tcp_capture = self.tcp.capture  # a declared TCP port skips HTTP detection
        inbound_ssl, peer_identity = self._inbound_tls()
        inb = Listener(
            "inbound",
            self.forwarder.inbound,
            o.inbound_bind,
            o.inbound_port,
            ssl_context=inbound_ssl,
            peer_identity=peer_identity,
            header_timeout=o.header_timeout,
            idle_timeout=o.idle_timeout,
            stream_idle_timeout=o.stream_idle_timeout,
        )
        if inbound_ssl is not None:
            inb.mtls_mode = lambda: self.runtime.mtls_mode
            self._inbound_resumption(inb)

        for lst in (out, inb):
            lst.local_reply_hook = self.runtime.count_local_reply
            lst.h2_factory = _h2_factory
            await _listening(lst.start(), lst.name, lst.host, lst.port)
            self.listeners[lst.name] = lst
        return out, inb

    async def _start_admin(self) -> None:
        o = self.opts
        self.admin_runner = web.AppRunner(build_app(self), access_log=None)
        await self.admin_runner.setup()
        site = web.TCPSite(self.admin_runner, o.admin_bind, o.admin_port, reuse_address=True)
        await _listening(site.start(), "admin", o.admin_bind, o.admin_port)
        self.admin_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def _handle_signals(self) -> None:
        """SIGHUP reloads the config file; SIGTERM and SIGINT drain."""
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self.reload)
            loop.add_signal_handler(signal.SIGTERM, self.request_drain)
            loop.add_signal_handler(signal.SIGINT, self.request_drain)
        except (NotImplementedError, RuntimeError):
            pass

    def _announce_ready(self, outbound: int, inbound: int) -> None:
        """The log line, and the ready line on stderr that tests and scripts wait for."""
        o = self.opts
        log.info(
            "meshlet sidecar %s for %s.%s: outbound %d, inbound %d, admin %d, fastpath %s",
            __version__,
            o.service,
            o.namespace,
            outbound,
            inbound,
            self.admin_port,
            _accel.fastpath(),
        )
        print(
            f"meshlet sidecar ready service={o.service} outbound={outbound} inbound={inbound} "
            f"admin={self.admin_port} fastpath={_accel.fastpath()} hbone={self.tcp.hbone_port}",
            file=sys.stderr,
            flush=True,
        )

    def _setup_telemetry(self) -> None:
        try:
            from proxy.observability import Telemetry
        except ImportError:
            return
        self.telemetry = Telemetry(self)

    async def _setup_identity(self) -> None:
        """Certificates from the control plane (renewed on their own) or from files."""
        o = self.opts
        if not (o.control_plane or (o.cert_file and o.key_file and o.ca_file)):
            return  # plaintext: no TLS stack loaded at all (cryptography costs ~7 MB of RSS)
        from certs import tls
        from proxy.identity.manager import IdentityManager

        if o.control_plane:
            assert o.token_file is not None
            with open(o.token_file, encoding="utf-8") as f:
                token = f.read().strip()
            state = o.state_dir or os.path.join(
                os.path.expanduser("~/.meshlet/sidecars"),
                f"{o.service}.{o.namespace}-{o.inbound_port}",
            )
            os.makedirs(state, mode=0o700, exist_ok=True)
            self.state_dir = state
            self.identity = IdentityManager(o.control_plane, token, o.service, o.namespace, state)
            await self.identity.start()
        elif o.cert_file and o.key_file and o.ca_file:
            self.identity = IdentityManager.from_files(o.cert_file, o.key_file, o.ca_file)
        if self.identity is None:
            return
        ident = self.identity
        seen: dict[int, Any] = {}

        def h1_client_context() -> Any:
            # HTTP/1.1 pools must not be answered in h2: offer only http/1.1 by ALPN on the
            # contexts they use (the context object changes with each certificate renewal)
            ctx = ident.client_context()
            if id(ctx) not in seen:
                seen.clear()
                ctx.set_alpn_protocols(["http/1.1"])
                seen[id(ctx)] = ctx
            return ctx

        self.runtime.client_ssl = h1_client_context
        h2_ctx: list[Any] = [None, None]  # (identity, context) of the current certificate

        def h2_client_context() -> Any:
            # HTTP/2 pools offer only h2: a peer that cannot speak it is refused, not misread
            cur = ident._cur()
            if h2_ctx[0] is not cur:
                h2_ctx[:] = [
                    cur,
                    tls.client_context(cur.chain_pem, cur.key_pem, cur.bundle_pem, alpn=("h2",)),
                ]
            return h2_ctx[1]

        self.runtime.client_ssl_h2 = h2_client_context
        sid = ident.spiffe_id
        if sid is not None:
            self.runtime.spiffe_id = str(sid)

        def peer(sslobj: Any) -> str | None:
            sid = tls.peer_spiffe_id(sslobj)
            return str(sid) if sid is not None else None

        self.runtime.peer_identity = peer

    def _inbound_tls(self) -> tuple[Any, Any]:
        if self.identity is None:
            return None, None
        return self.identity.listener_context(), self.runtime.peer_identity

    def _inbound_resumption(self, inb: Listener) -> None:
        """Inbound TLS session resumption for peers, under the policy of
        ``proxy/server/tls_session.py``: every accepted connection is created from the current
        identity's ticket-issuing context (rebuilt on renewal, bundle change and hourly, so
        tickets never outlive the trust they were issued under), and a resumed session whose
        peer certificate has expired since is closed."""
        from proxy.server.tls_session import resumed_peer_valid

        inb.accept_context = self._ticketing_contexts()
        inb.resumed_ok = resumed_peer_valid

    def _ticketing_contexts(self) -> Any:
        """The current identity's ticket-issuing server context, for the inbound listener and
        the HBONE listener (each has its own, hence its own tickets)."""
        from certs import tls
        from proxy.server.tls_session import RESUMPTION, TicketingServerContexts

        ident = self.identity
        assert ident is not None

        def build(cur: Any) -> Any:
            return tls.server_context(
                cur.chain_pem, cur.key_pem, cur.bundle_pem, True, session_tickets=RESUMPTION
            )

        return TicketingServerContexts(ident._cur, build)

    def _start_discovery(self, inbound_port: int) -> None:
        from proxy.discovery import DiscoveryClient

        o = self.opts
        registration = {
            "service": o.service,
            "namespace": o.namespace,
            "version": o.version,
            "labels": self.runtime.labels,
            "address": f"{o.advertise_address}:{inbound_port}",
            # where peers tunnel opaque TCP (HBONE); 0: this sidecar takes no TCP
            "hbone_port": self.tcp.hbone_port if self.tcp is not None else 0,
            "admin_address": f"{o.admin_bind}:{self.admin_port}",
            "node": f"{o.service}{'-' + o.version if o.version else ''}.{o.namespace}"
            f"@{o.advertise_address}:{inbound_port}",
        }
        if self.identity is not None and self.identity.not_after:
            registration["cert_expiry"] = self.identity.not_after
        assert o.control_plane is not None and self.identity is not None
        self.discovery = DiscoveryClient(
            o.control_plane,
            self.identity.client_context,
            registration,
            self.apply_snapshot,
            os.path.join(self.state_dir, "config-cache.json"),
        )
        disc = self.discovery

        def cert_changed(ident: Any) -> None:
            # the control plane shows certificate expiry in proxy-status and `meshlet check`
            if ident.not_after:
                asyncio.get_running_loop().create_task(
                    disc.update_status(cert_expiry=ident.not_after)
                )

        self.identity.on_change.append(cert_changed)
        cached = self.discovery.load_cache()
        if cached is not None:
            try:
                self.apply_snapshot(cached)
                log.info("started from the cached config %s", cached.get("version"))
            except Exception as exc:
                log.warning("cached config unusable: %s", exc)
        self.discovery.start()
        if self.telemetry is not None:
            from proxy.telemetry.uplink import Uplink

            # stats reports and live taps ride on the config stream
            self.uplink = Uplink(self.telemetry, self.discovery)
            if self.tcp is not None:
                self.uplink.report.tcp = self.tcp.metrics  # TCP bytes and connections per edge

    def not_ready_reason(self) -> str:
        if not self.runtime.config_version:
            return "no config yet"
        return "starting"

    def request_drain(self) -> None:
        if self._draining_task is None:
            self._draining_task = asyncio.get_running_loop().create_task(self.drain())

    async def drain(self) -> None:
        """Stop taking connections (HTTP and TCP), wait up to the drain timeout for the open
        ones (requests in flight, TCP connections) to finish, close the rest, stop."""
        rt = self.runtime
        rt.draining = True
        tcp = self.tcp
        log.info(
            "draining: %d requests in flight, %d TCP connections open",
            sum(lst.busy for lst in self.listeners.values()),
            tcp.busy() if tcp is not None else 0,
        )
        for lst in self.listeners.values():
            lst.stop_accepting()
        if tcp is not None:
            tcp.stop_accepting()
        if self.discovery is not None:
            # Leave the mesh now, not at exit: as Kubernetes takes a terminating pod out of its
            # endpoints at once, peers get a config without this sidecar's endpoint and stop
            # picking it while it finishes what is in flight (the uplink's counts still flow).
            await self.discovery.stop()

        def busy() -> bool:
            return any(lst.busy for lst in self.listeners.values()) or bool(
                tcp is not None and tcp.busy()
            )

        deadline = asyncio.get_running_loop().time() + self.opts.drain_timeout
        while busy():
            if asyncio.get_running_loop().time() > deadline:
                log.warning(
                    "drain timeout: closing %d busy connections and %d TCP connections",
                    sum(lst.busy for lst in self.listeners.values()),
                    tcp.close_open("drain timeout") if tcp is not None else 0,
                )
                break
            await asyncio.sleep(0.05)
        await self.stop()

    async def stop(self) -> None:
        if self.uplink is not None:
            with contextlib.suppress(Exception):  # the last counts before deregistering
                await asyncio.wait_for(self.uplink.flush(), 1.0)
            await self.uplink.close()
        if self.discovery is not None:
            await self.discovery.stop()  # deregisters first: peers stop sending here at once
        if self.identity is not None:
            await self.identity.close()
        for lst in self.listeners.values():
            lst.stop_accepting()
            lst.close_all()
        if self.tcp is not None:
            self.tcp.close()
        self.runtime.close()
        if self.telemetry is not None:
            self.telemetry.close()
        if self.admin_runner is not None:
            await self.admin_runner.cleanup()
        if self._stopped is not None:
            self._stopped.set()

    async def wait_stopped(self) -> None:
        assert self._stopped is not None
        await self._stopped.wait()

    # -- admin views ---------------------------------------------------------------------------
    def render_metrics(self) -> tuple[bytes, str]:
        if self.telemetry is None:
            return b"", "text/plain; version=0.0.4"
        return self.telemetry.render()

    def config_dump(self) -> dict[str, Any]:
        from proxy.routes.describe import describe_block

        t = self.runtime.table
        return {
            "version": t.version,
            "service": self.opts.service,
            "namespace": self.opts.namespace,
            "fastpath": _accel.fastpath(),
            "implementation": dict(_accel.IMPLEMENTATION),
            "last_error": self.last_error,
            "resources": [r.to_dict() for r in self.resources],
            "registry": self.registry,
            "routes": [
                {
                    "host": vh.service,
                    "virtual_service": vh.name,
                    "routes": [
                        {
                            "name": r.name,
                            "match": [describe_block(b) for b in r.matches],
                            "destinations": [
                                {"cluster": d.default_cluster, "weight": d.weight}
                                for d in r.destinations
                            ],
                            "timeout": r.timeout,
                        }
                        for r in vh.routes
                    ],
                }
                for vh in {id(v): v for v in t.hosts.values()}.values()
            ],
            "warnings": list(t.warnings),
            "authorization_policies": list(self.runtime.authz.policies)
            if self.runtime.authz
            else [],
            "mtls_mode": self.runtime.mtls_mode,
            "tcp": {
                "services": [
                    {"service": s.service, "port": s.port, "protocol": s.protocol,
                     "default_cluster": s.default_cluster,
                     "routes": [{"name": r.name, "sni": list(r.sni),
                                 "clusters": list(r.clusters)} for r in s.routes]}
                    for s in t.l4.services.values()
                ],
                "egress": [{"bind": e.bind, "port": e.port, "service": e.service}
                           for e in t.l4.egress],
                "egress_listening": self.tcp.egress_ports() if self.tcp is not None else {},
                "hbone_port": self.tcp.hbone_port if self.tcp is not None else 0,
                "hbone_tls_handshakes": self.tcp.handshakes_view() if self.tcp is not None
                else {},
                "hbone_goaways": self.tcp.goaways_view() if self.tcp is not None else {},
                "hbone_max_streams": (self.tcp.hbone_max_streams or 4096) if self.tcp else 0,
            },
        }

    def clusters_view(self) -> dict[str, Any]:
        rt = self.runtime
        out = []
        for c in rt.table.clusters.values():
            out.append(
                {
                    "name": c.name,
                    "service": c.service,
                    "subset": c.subset,
                    "port": c.port,
                    "lb": c.lb,
                    "endpoints": [
                        {
                            "address": ep.key,
                            "labels": ep.labels,
                            "tls": ep.tls,
                            "active_requests": rt.active.get(ep.key, 0),
                            **rt.endpoint_health(c, ep),
                        }
                        for ep in c.endpoints
                    ],
                    **rt.cluster_health(c),
                    "connection_pool": rt.pool_status(c),
                    "tls_mode": c.tls_mode or "auto",
                }
            )
        tunnels = self.tcp.tunnels_view() if self.tcp is not None else []
        return {"version": rt.config_version, "clusters": out, "tcp_tunnels": tunnels}

    def certs_view(self) -> dict[str, Any]:
        if self.identity is not None:
            return {**self.identity.status(), "mtls_mode": self.runtime.mtls_mode}
        return {"spiffe_id": None, "mode": "plaintext (no certificate configured)"}

    def explain(self, query: dict[str, str]) -> dict[str, Any]:
        from proxy.explain import explain

        return explain(self, query)


class ListenError(OSError):
    """A port the sidecar cannot listen on; the message names the port and its flag."""

    def __str__(self) -> str:
        return str(self.strerror)


async def _listening(start: Awaitable[Any], port_name: str, host: str, port: int) -> Any:
    """Await a listener's start; a bind failure names the port and the flag that sets it
    (``--outbound`` ...), since ``[Errno 98] Address already in use`` alone says neither."""
    try:
        return await start
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            reason = "address already in use (another sidecar or program holds it)"
        raise ListenError(
            exc.errno,
            f"cannot listen on the {port_name} port {host}:{port}: {reason}; "
            f"pick a free one with --{port_name} PORT",
        ) from None


def _freeze_startup_objects() -> None:
    """Everything allocated so far lives as long as the process: keep it out of the cyclic
    GC's scans, and collect the young generation less often (request objects are freed by
    reference counting; the cyclic GC only pays for the rare cycle)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20000, 50, 100)


def _h2_factory(*args: Any) -> Any:
    """Loads the HTTP/2 stack on the first HTTP/2 connection (the h2 library costs RSS that an
    HTTP/1.1-only sidecar never needs)."""
    from proxy.server.h2.server import h2_factory

    return h2_factory(*args)


def _loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The loop's error report, minus one known uvloop race: a TLS connection we close after a
    complete exchange can still have the peer's last records (its close_notify, a session
    ticket) in the read being processed, and uvloop's SSLProtocol then writes its answer to the
    TCP transport its own shutdown already closed. Nothing is lost (the exchange was complete),
    so it is logged at debug instead of as a "Fatal error on SSL protocol" traceback."""
    exc = context.get("exception")
    if (
        isinstance(exc, RuntimeError)
        and "handler is closed" in str(exc)
        and type(context.get("protocol")).__name__ == "SSLProtocol"
    ):
        log.debug("TLS transport already closed while finishing its last read: %s", exc)
        return
    loop.default_exception_handler(context)


def _raise_nofile() -> None:
    """Opaque TCP holds two sockets per proxied connection (a thousand idle database
    connections are two thousand descriptors): lift the soft limit to the hard one, as Envoy's
    deployments do."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


async def run_sidecar(opts: SidecarOptions) -> int:
    _raise_nofile()
    asyncio.get_running_loop().set_exception_handler(_loop_exception)
    sidecar = Sidecar(opts)
    await sidecar.start()
    await sidecar.wait_stopped()
    return 0
