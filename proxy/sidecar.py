"""One sidecar: its listeners, its config source, its admin port, and its lifecycle.

Standalone mode reads a YAML file of Istio resources and reloads it on SIGHUP; an invalid file
is refused whole and the running table stays. SIGTERM (or POST /drain) drains: readiness goes
503, the listeners stop accepting, idle keep-alive connections close, in-flight requests finish
(up to the drain timeout), then the process exits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

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
    drain_timeout: float = 20.0
    access_log: bool = True
    header_timeout: float = 10.0
    idle_timeout: float = 300.0


class Sidecar:
    def __init__(self, opts: SidecarOptions) -> None:
        self.opts = opts
        labels = dict(opts.labels)
        labels.setdefault("app", opts.service)
        if opts.version:
            labels.setdefault("version", opts.version)
        self.runtime = Runtime(opts.service, opts.namespace, opts.version, labels, opts.app_port,
                               opts.app_host)
        self.forwarder = Forwarder(self.runtime)
        self.listeners: dict[str, Listener] = {}
        self.admin_runner: web.AppRunner | None = None
        self.admin_port = 0
        self.ready = False
        self.last_error = ""
        self.resources: list[Any] = []
        self.registry: list[dict[str, Any]] = []
        self.telemetry: Any = None
        self.identity: Any = None
        self._stopped: asyncio.Event | None = None
        self._draining_task: asyncio.Task[Any] | None = None

    # -- config ------------------------------------------------------------------------------
    def apply_resources(self, resources: list[Any], registry: list[dict[str, Any]], version: str) -> None:
        """Compile and swap atomically; raises (and keeps the running table) when invalid."""
        table = compile_table(resources, registry, self.opts.namespace, self.runtime.labels, version)
        for w in table.warnings:
            log.warning("config %s: %s", version, w)
        self.runtime.swap(table)
        self.resources = list(resources)
        self.registry = list(registry)
        if self.telemetry is not None:
            self.telemetry.on_config(version, True)

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

    def reload(self) -> bool:
        try:
            self.load_file()
        except Exception as exc:
            self.last_error = str(exc)
            log.error("config reload refused, keeping version %s:\n%s", self.runtime.config_version, exc)
            if self.telemetry is not None:
                self.telemetry.on_config(self.runtime.config_version, False)
            return False
        self.last_error = ""
        log.info("config reloaded: version %s", self.runtime.config_version)
        return True

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        self._stopped = asyncio.Event()
        o = self.opts
        if o.config_file:
            self.load_file()  # at start an invalid file is fatal: there is nothing to keep
        self._setup_telemetry()
        out = Listener("outbound", self.forwarder.outbound, o.outbound_bind, o.outbound_port,
                       header_timeout=o.header_timeout, idle_timeout=o.idle_timeout)
        inbound_ssl, peer_identity = self._inbound_tls()
        inb = Listener("inbound", self.forwarder.inbound, o.inbound_bind, o.inbound_port,
                       ssl_context=inbound_ssl, peer_identity=peer_identity,
                       header_timeout=o.header_timeout, idle_timeout=o.idle_timeout)
        for lst in (out, inb):
            lst.local_reply_hook = self.runtime.count_local_reply
            await lst.start()
            self.listeners[lst.name] = lst
        self.admin_runner = web.AppRunner(build_app(self), access_log=None)
        await self.admin_runner.setup()
        site = web.TCPSite(self.admin_runner, o.admin_bind, o.admin_port, reuse_address=True)
        await site.start()
        self.admin_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self.reload)
            loop.add_signal_handler(signal.SIGTERM, self.request_drain)
            loop.add_signal_handler(signal.SIGINT, self.request_drain)
        except (NotImplementedError, RuntimeError):
            pass
        self.ready = bool(self.runtime.config_version) or not (o.config_file or o.control_plane)
        log.info(
            "meshlet sidecar %s for %s.%s: outbound %d, inbound %d, admin %d, fastpath %s",
            __version__, o.service, o.namespace, out.port, inb.port, self.admin_port, _accel.fastpath(),
        )
        print(
            f"meshlet sidecar ready service={o.service} outbound={out.port} inbound={inb.port} "
            f"admin={self.admin_port} fastpath={_accel.fastpath()}",
            file=sys.stderr, flush=True,
        )

    def _setup_telemetry(self) -> None:
        try:
            from proxy.observability import Telemetry
        except ImportError:
            return
        self.telemetry = Telemetry(self)

    def _inbound_tls(self) -> tuple[Any, Any]:
        o = self.opts
        if not (o.cert_file and o.key_file and o.ca_file):
            return None, None
        from certs import tls

        with open(o.cert_file, "rb") as f:
            chain = f.read()
        with open(o.key_file, "rb") as f:
            key = f.read()
        with open(o.ca_file, "rb") as f:
            bundle = f.read()
        server = tls.server_context(chain, key, bundle, require_client_cert=True)
        client = tls.client_context(chain, key, bundle)
        self.runtime.client_ssl = lambda: client

        def identity(sslobj: Any) -> str | None:
            sid = tls.peer_spiffe_id(sslobj)
            return str(sid) if sid is not None else None

        return server, identity

    def not_ready_reason(self) -> str:
        if not self.runtime.config_version:
            return "no config yet"
        return "starting"

    def request_drain(self) -> None:
        if self._draining_task is None:
            self._draining_task = asyncio.get_running_loop().create_task(self.drain())

    async def drain(self) -> None:
        rt = self.runtime
        rt.draining = True
        log.info("draining: %d requests in flight", sum(lst.busy for lst in self.listeners.values()))
        for lst in self.listeners.values():
            lst.stop_accepting()
        deadline = asyncio.get_running_loop().time() + self.opts.drain_timeout
        while any(lst.busy for lst in self.listeners.values()):
            if asyncio.get_running_loop().time() > deadline:
                log.warning("drain timeout: closing %d busy connections",
                            sum(lst.busy for lst in self.listeners.values()))
                break
            await asyncio.sleep(0.05)
        await self.stop()

    async def stop(self) -> None:
        for lst in self.listeners.values():
            lst.stop_accepting()
            lst.close_all()
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
                            "match": [b.name for b in r.matches],
                            "destinations": [
                                {"cluster": d.default_cluster, "weight": d.weight} for d in r.destinations
                            ],
                            "timeout": r.timeout,
                        }
                        for r in vh.routes
                    ],
                }
                for vh in {id(v): v for v in t.hosts.values()}.values()
            ],
            "warnings": list(t.warnings),
        }

    def clusters_view(self) -> dict[str, Any]:
        rt = self.runtime
        out = []
        for c in rt.table.clusters.values():
            out.append({
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
            })
        return {"version": rt.config_version, "clusters": out}

    def certs_view(self) -> dict[str, Any]:
        if self.identity is not None:
            return dict(self.identity.status())
        return {"spiffe_id": self.runtime.spiffe_id, "mode": "plaintext" if not self.opts.cert_file else "files"}

    def explain(self, query: dict[str, str]) -> dict[str, Any]:
        from proxy.explain import explain

        return explain(self, query)


async def run_sidecar(opts: SidecarOptions) -> int:
    sidecar = Sidecar(opts)
    await sidecar.start()
    await sidecar.wait_stopped()
    return 0
