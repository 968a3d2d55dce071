"""The control plane process: HTTPS operator API, config stream and CA service on one port.

:class:`ControlPlane` owns the data dir (``store.db``, ``admin.token``, the CA, ``listen.addr``),
wires the store, the registry and the push hub together and serves them with aiohttp. The
operator API is authenticated by the admin token (``Authorization: Bearer``); the config stream
by the sidecar's client certificate; the CA endpoints by join tokens or certificates (their own
checks, in :mod:`control_plane.ca`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import json
import logging
import os
import secrets
import signal
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from control_plane import registry_state
from control_plane.api import expiry
from control_plane.push import PushHub, PushSettings, StreamError
from control_plane.registry import DEFAULT_GRACE_S, Registry, short_name
from control_plane.store import KINDS, Store, StoreLimit, StoreUnavailable, canonical_kind
from control_plane.store.lock import DataDirLock
from control_plane.tls_buffers import bound_reads

if TYPE_CHECKING:
    from control_plane.etcd.handover import Handover

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:15012"
ADMIN_TOKEN_FILE = "admin.token"
LISTEN_ADDR_FILE = "listen.addr"
RESOURCE_SWEEP_S = 2.0  # how often expired resources are deleted from the store
OPENAPI = Path(__file__).with_name("openapi.yaml")
ADMIN_PATHS = {"routes": "/config_dump", "clusters": "/clusters", "endpoints": "/clusters",
               "certs": "/certs", "explain": "/explain"}


def default_data_dir() -> str:
    return os.environ.get("MESHLET_DATA_DIR") or os.path.expanduser("~/.meshlet")


def advertise_host(listen_host: str) -> str:
    """The listen host, unless it is a wildcard: then this host's address by name (a pod's
    IP in Kubernetes)."""
    if listen_host not in ("0.0.0.0", "::", ""):
        return listen_host
    import socket

    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen {listen!r}: expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def write_secret(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` created with mode 0600 (never readable by others, not even
    briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _error(status: int, message: str, **extra: object) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


@web.middleware
async def _store_errors(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """A store that cannot be written (disk full, permissions) is a clear 503, not a 500."""
    try:
        return await handler(request)
    except sqlite3.Error as e:
        log.error("store error on %s %s: %s", request.method, request.path, e)
        return _error(503, f"the store is unavailable: {e}")
    except StoreUnavailable as e:
        log.error("store error on %s %s: %s", request.method, request.path, e)
        return _error(503, f"the store is unavailable, nothing was changed: {e}")
    except StoreLimit as e:
        return _error(413, f"nothing was changed: {e}")


@dataclass
class EtcdOptions:
    """``--store etcd://...`` and its client TLS / auth flags."""

    endpoints: list[str]
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password: str | None = None
    prefix: str = "/meshlet/"
    lease_ttl: int = 10
    timeout: float = 3.0

    def client(self):  # type: ignore[no-untyped-def]
        import ssl

        from control_plane.etcd.client import EtcdClient

        ctx = None
        if self.cacert or self.cert:
            ctx = ssl.create_default_context(cafile=self.cacert)
            if self.cert:
                ctx.load_cert_chain(self.cert, self.key)
        return EtcdClient(self.endpoints, ssl_context=ctx, user=self.user,
                          password=self.password, timeout=self.timeout)


class ControlPlane:
    """One control-plane process. With ``etcd`` set it is one replica among equals: resources,
    CA, admin token hash, join tokens and the registry live in etcd, and the data dir only
    caches the CA files and holds ``listen.addr`` (see docs/control-plane-replicas.md)."""

    def __init__(
        self,
        data_dir: str,
        listen: str = DEFAULT_LISTEN,
        *,
        grace_s: float = DEFAULT_GRACE_S,
        plain_http: bool = False,
        etcd: EtcdOptions | None = None,
        admin_token_file: str | None = None,
        advertise_address: str | None = None,
        push: PushSettings | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        # Where other replicas (and proxy-status readers) reach this one; in its serving
        # certificate too, so a forwarded CA step verifies it by name.
        self.advertise = advertise_address or advertise_host(split_listen(listen)[0])
        self.listen = listen
        self.plain_http = plain_http  # tests of this package only; never exposed as a flag
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # One process per data dir: SQLite is single-writer, and a replica's CA cache and
        # listen.addr are its own. Raises DataDirBusy naming the holder.
        self._lock = DataDirLock(self.data_dir, replica=etcd is not None)
        self._lock.acquire()
        self.etcd = etcd
        self.admin_token_file = admin_token_file
        self.admin_token_hash = ""
        self.started = time.time()
        self.address: tuple[str, int] | None = None
        self._runner: web.AppRunner | None = None
        self._expiry_task: asyncio.Task | None = None
        self.tls: Security | None = None
        self.election = None
        self.handover: Handover | None = None
        self.ca_state = None
        if etcd is not None:
            from control_plane.etcd.lease import LeaseKeeper
            from control_plane.registry_etcd import SharedRegistry
            from control_plane.store.etcd import EtcdStore

            self.etcd_client = etcd.client()
            self.store = EtcdStore(self.etcd_client, etcd.prefix)  # type: ignore[assignment]
            self.lease = LeaseKeeper(self.etcd_client, etcd.lease_ttl)
            self.replica_id = f"{listen}#{os.getpid()}"
            self.registry: Registry = SharedRegistry(
                self.etcd_client, self.lease, self.replica_id, listen, etcd.prefix,
                grace_s=grace_s)
            # The CA and the trust domain come from etcd: set up in start().
            self.hub = PushHub(self.store, self.registry, None, push)  # type: ignore[arg-type]
            self._setup_telemetry()
            self.canaries = self._canary_controller()
            return
        self.replica_id = ""
        self.admin_token = self._admin_token()
        self.admin_token_hash = _sha256(self.admin_token)
        self.store = Store(str(self.data_dir / "store.db"))
        self.registry = Registry(grace_s=grace_s)
        registry_state.load(self.registry, self.data_dir)
        self._registry_dirty = False
        self.registry.add_listener(self._registry_changed)
        if not plain_http:
            td, lifetime = self._mesh_identity()
            self.tls = Security(self.data_dir, td, [split_listen(listen)[0]], lifetime)
        self.hub = PushHub(self.store, self.registry,
                           self.tls.trust_domain if self.tls is not None else None, push)
        if self.tls is not None:
            self.hub.extra_mesh = self.tls.bundle_state
        self._setup_telemetry()
        self.canaries = self._canary_controller()

    def _setup_telemetry(self) -> None:
        """Golden-metric windows, tap and the dashboard (telemetry.py, dashboard.py)."""
        from control_plane.dashboard import Dashboard
        from control_plane.telemetry import TelemetryHub

        self.dashboard = Dashboard(self.data_dir, lambda: self.admin_token_hash)
        self.telemetry = TelemetryHub(self.hub, self.store, self.dashboard.can_read)
        self.hub.on_message = self.telemetry.on_message
        # peers' windows are fetched with the mesh's admin token, which every replica has
        self.telemetry.peer_token = getattr(self, "admin_token", "")
        if self.tls is not None:
            self.telemetry.peer_ca = str(self.data_dir / "ca" / "trust-bundle.pem")

    def _canary_controller(self):  # type: ignore[no-untyped-def]
        """The canary controller: it reads the mesh telemetry in process (merged with the other
        replicas' windows), keeps its status next to the resources (SQLite or etcd), and
        decides only on the elected leader."""
        from control_plane.canary import status_store
        from control_plane.canary.controller import CanaryController
        from control_plane.canary.metrics import StatsStoreSource

        statuses: status_store.StatusStore
        if self.etcd is not None:
            statuses = status_store.EtcdStatusStore(self.etcd_client, self.etcd.prefix)
        else:
            statuses = status_store.SqliteStatusStore(self.store.path)
        tick = float(os.environ.get("MESHLET_CANARY_TICK", "0.2") or 0.2)
        return CanaryController(
            self.store, statuses, StatsStoreSource(lambda: self.telemetry.merged("mesh")),
            tick_s=min(max(tick, 0.02), 5.0),
            is_leader=lambda: self.election is None or bool(self.election.is_leader))

    def _mesh_identity(self) -> tuple[str, int]:
        """Trust domain and workload certificate lifetime from the stored MeshConfig (read at
        start: the CA's trust domain is fixed for its lifetime)."""
        from control_plane.api.resources import parse_duration

        for sr in self.store.get("MeshConfig"):
            spec = sr.resource.spec
            lifetime = spec.get("certificateLifetime")
            return (str(spec.get("trustDomain") or "cluster.local"),
                    int(parse_duration(lifetime)) if lifetime else 86400)
        return "cluster.local", 86400

    def _admin_token(self) -> str:
        if self.admin_token_file:
            return Path(self.admin_token_file).read_text().strip()
        path = self.data_dir / ADMIN_TOKEN_FILE
        if not path.exists():
            write_secret(path, secrets.token_urlsafe(32) + "\n")
            log.info("first start in %s: created the admin token %s", self.data_dir, path)
        return path.read_text().strip()

    # -- lifecycle -------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024, middlewares=[_store_errors])
        r = app.router
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_get("/metrics", self.metrics)
        r.add_get("/v1/openapi.yaml", self.openapi)
        r.add_get("/v1/stream", self.stream)
        r.add_get("/v1/status", self.status)
        r.add_post("/v1/resources", self.apply)
        r.add_get("/v1/resources", self.get_resources)
        r.add_get("/v1/resources/{kind}", self.get_resources)
        r.add_delete("/v1/resources/{kind}/{namespace}/{name}", self.delete_resource)
        r.add_post("/v1/resources:delete", self.delete_many)
        r.add_post("/v1/tokens", self.create_token)
        r.add_get("/v1/proxies", self.proxies)
        r.add_get("/v1/proxies/{id}/{what}", self.proxy_config)
        r.add_get("/v1/canaries", self.canary_list)
        r.add_get("/v1/canaries/{namespace}/{name}", self.canary_get)
        r.add_post("/v1/canaries/{namespace}/{name}/{action}", self.canary_action)
        r.add_get("/v1/ca", self.ca_status)
        r.add_post("/v1/ca/{action}", self.ca_action)
        self.telemetry.setup_routes(app)
        self.dashboard.setup_routes(app, self)
        if self.tls is not None:
            self.tls.setup_routes(app)
        return app

    async def _start_etcd(self) -> None:
        """Load what replicas share from etcd (before serving anything)."""
        from control_plane.ca.state_etcd import EtcdCAState
        from control_plane.ca.tokens_etcd import EtcdTokenStore
        from control_plane.etcd.client import cmp_absent, op_put, op_range

        assert self.etcd is not None
        await self.store.start()
        # The admin token: the first replica's (or --admin-token-file) becomes the mesh's; only
        # its sha256 is in etcd, so replicas without the file check tokens against the hash.
        key = self.etcd.prefix.encode() + b"admin/token-sha256"
        local = self.data_dir / ADMIN_TOKEN_FILE
        mine = None
        if self.admin_token_file or local.exists():
            mine = self._admin_token()
        candidate = mine or secrets.token_urlsafe(32)
        ok, _, responses = await self.etcd_client.txn(
            [cmp_absent(key)], [op_put(key, _sha256(candidate).encode())], [op_range(key)])
        if ok:
            self.admin_token_hash = _sha256(candidate)
            if mine is None:
                write_secret(local, candidate + "\n")
                log.info("created the mesh's admin token %s (its hash is in etcd)", local)
        else:
            kvs = (responses[0].get("response_range") or {}).get("kvs") or []
            from control_plane.etcd.client import KV

            self.admin_token_hash = KV.from_json(kvs[0]).value.decode()
            if mine is not None and _sha256(mine) != self.admin_token_hash:
                log.warning("the admin token in %s is not the mesh's (etcd holds another's "
                            "hash); pass --admin-token-file with the mesh's token",
                            self.admin_token_file or local)
            elif mine is not None and self.admin_token_file:
                write_secret(local, mine + "\n")  # for `meshlet --data-dir` on this host
        self.admin_token = ""
        if local.exists():
            self.telemetry.peer_token = local.read_text().strip()
        td, lifetime = self._mesh_identity()
        self.ca_state = EtcdCAState(self.etcd_client, self.data_dir, td, self.etcd.prefix)
        ca = await self.ca_state.load_or_create()
        tokens = EtcdTokenStore(self.etcd_client, ca.root_pin, self.etcd.prefix)
        self.tls = Security(self.data_dir, ca.trust_domain,
                            [split_listen(self.listen)[0], self.advertise],
                            lifetime, ca=ca, tokens=tokens)  # type: ignore[arg-type]
        self.tls.state = self.ca_state
        self.telemetry.peer_ca = str(self.data_dir / "ca" / "trust-bundle.pem")
        self.hub.trust_domain = ca.trust_domain
        self.hub.extra_mesh = self.tls.bundle_state
        self.ca_state.on_change.append(self.hub.mark_dirty)
        self.ca_state.start()

    async def _start_replica(self) -> None:
        """Join the other replicas: lease, registry, leader election and its jobs."""
        from control_plane.etcd.election import Election
        from control_plane.etcd.handover import Handover

        assert self.etcd is not None
        registry = self.registry
        await self.lease.start()
        assert self.address is not None
        host = self.advertise
        addr = f"[{host}]:{self.address[1]}" if ":" in host else f"{host}:{self.address[1]}"
        self.replica_id = f"{addr}#{os.getpid()}"
        registry.replica_id = self.replica_id  # type: ignore[attr-defined]
        registry.replica_address = addr  # type: ignore[attr-defined]
        await registry.start()  # type: ignore[attr-defined]
        # The stats views merge every live replica's windows (MESHLET_STATS_PEERS overrides).
        scheme = "http" if self.tls is None else "https"

        def stats_peers() -> list[str]:  # the watched list: no etcd request
            addrs = registry.replica_addresses()  # type: ignore[attr-defined]
            return [f"{scheme}://{a}" for a in addrs]

        self.telemetry.peer_source = stats_peers
        self.election = Election(self.etcd_client, self.etcd.prefix.encode() + b"leader",
                                 self.replica_id, self.lease)
        self.election.on_leader(self._leader_housekeeping)
        self.election.start()
        self.handover = Handover(self.lease, self.telemetry.peer_urls, self._peer_reaches_etcd,
                                 self.hub.hand_over, self.hub.resume)
        self.handover.start()

    async def _peer_reaches_etcd(self, url: str) -> tuple[float, float | None] | None:
        """Seconds since the replica at ``url`` last reached etcd and since it last failed to,
        if it answers and serves config streams (its ``/healthz``; its certificate checked
        against the mesh's trust bundle)."""
        import ssl

        ctx: ssl.SSLContext | bool = False
        if self.tls is not None:
            ctx = ssl.create_default_context(cafile=str(self.data_dir / "ca" / "trust-bundle.pem"))
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s, \
                    s.get(url + "/healthz", ssl=ctx) as r:
                body = await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as e:
            log.debug("peer %s: %s", url, e)
            return None
        if r.status != 200 or not isinstance(body, dict) or body.get("serving") is not True:
            return None
        ok, failed = body.get("etcd_ok_age_s"), body.get("etcd_failed_age_s")
        if not isinstance(ok, int | float):
            return None
        return float(ok), float(failed) if isinstance(failed, int | float) else None

    async def _leader_housekeeping(self) -> None:
        """Singleton jobs, run by the leader only: registry garbage collection and pruning
        expired join tokens. ``self.election.on_leader`` is where later ones go."""
        while True:
            try:
                n = await self.registry.collect_garbage()  # type: ignore[attr-defined]
                if self.tls is not None:
                    n += await self.tls.tokens.prune()  # type: ignore[misc]
                if n:
                    log.info("leader housekeeping: removed %d stale entries", n)
            except StoreUnavailable as e:
                log.debug("leader housekeeping: %s", e)
            await asyncio.sleep(max(1.0, self.lease.ttl))

    async def start(self) -> tuple[str, int]:
        host, port = split_listen(self.listen)
        if self.etcd is not None:
            await self._start_etcd()
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        ctx = None if self.tls is None else self.tls.server_context
        site = web.TCPSite(self._runner, host, port, ssl_context=ctx)
        await site.start()
        bound_reads(site._server.sockets)  # type: ignore[union-attr]  # see tls_buffers
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        self.address = sock.getsockname()[:2]
        h = self.address[0]
        addr = f"[{h}]:{self.address[1]}" if ":" in h else f"{h}:{self.address[1]}"
        tmp = self.data_dir / (LISTEN_ADDR_FILE + ".tmp")
        tmp.write_text(addr + "\n")
        os.replace(tmp, self.data_dir / LISTEN_ADDR_FILE)
        if self.etcd is not None:
            await self._start_replica()
        self.hub.rebuild()
        self._expiry_task = asyncio.get_running_loop().create_task(self._expire_loop())
        self.canaries.start()
        scheme = "http" if self.tls is None else "https"
        log.info("control plane listening on %s://%s (data dir %s)", scheme, addr, self.data_dir)
        return self.address

    async def stop(self) -> None:
        if self._expiry_task is not None:
            self._expiry_task.cancel()
        await self.canaries.stop()
        await self.hub.close()
        if self._runner is not None:
            await self._runner.cleanup()
        try:
            (self.data_dir / LISTEN_ADDR_FILE).unlink()
        except FileNotFoundError:
            pass
        self.canaries.statuses.close()
        self.store.close()
        if self.tls is not None:
            self.tls.tokens.close()
        if self.etcd is not None:
            if self.handover is not None:
                self.handover.stop()
            if self.election is not None:
                await self.election.stop()
            if self.ca_state is not None:
                self.ca_state.stop()
            await self.registry.stop()  # type: ignore[attr-defined]
            await self.lease.stop()
            await self.etcd_client.close()
        self._lock.release()

    async def _expire_loop(self) -> None:
        interval = max(0.05, min(1.0, self.registry.grace_s / 4))
        next_sweep = 0.0
        while True:
            await asyncio.sleep(interval)
            self.registry.expire()
            if self.etcd is None and self._registry_dirty:  # etcd holds replicas' registry
                self._registry_dirty = False
                registry_state.save(self.registry, self.data_dir)
            now = time.time()
            if now >= next_sweep and (self.election is None or self.election.is_leader):
                next_sweep = now + RESOURCE_SWEEP_S
                try:
                    await self.sweep_expired_resources(now)
                except Exception as e:  # noqa: BLE001 - a store down now is retried next sweep
                    log.warning("sweeping expired resources failed: %s", e)

    def _registry_changed(self) -> None:
        self._registry_dirty = True  # written by the timer: one write per burst of changes

    async def sweep_expired_resources(self, now: float) -> int:
        """Delete resources whose ``meshlet.dev/expires-at`` has passed (faults a chaos
        experiment left behind). Sidecars already ignore them on time; this keeps the store
        and ``meshlet get`` truthful. With replicas on etcd only the leader sweeps."""
        keys = []
        for sr in self.store.get():
            t = expiry.expires_at(sr.resource)
            if t is not None and t <= now:
                keys.append((sr.resource.kind, sr.resource.namespace, sr.resource.name))
        if not keys:
            return 0
        if not await self.store.writable_async():
            return 0
        await self.store.delete_async(keys)
        log.info("deleted %d expired resource(s): %s", len(keys), ", ".join(
            f"{k}/{ns}/{n}" for k, ns, n in keys))
        return len(keys)

    # -- auth ------------------------------------------------------------------------------
    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        # Compared as hashes: with etcd only the hash is known to every replica.
        return scheme.lower() == "bearer" and bool(self.admin_token_hash) and hmac.compare_digest(
            _sha256(token.strip()).encode(), self.admin_token_hash.encode()
        )

    @staticmethod
    def _unauthorized() -> web.Response:
        return web.json_response(
            {"error": "missing or invalid admin token"},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="meshlet"'},
        )

    # -- handlers --------------------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        """Liveness: the process answers. A replica also says whether it reaches etcd now and
        whether it serves config streams (peers probe this before handing sidecars over)."""
        body: dict = {"status": "ok", "revision": self.store.revision}
        if self.handover is not None:
            body["etcd_reachable"] = self.handover.reachable
            now = time.monotonic()
            body["etcd_ok_age_s"] = round(now - self.lease.last_ok, 3)
            failed = self.lease.last_failed
            body["etcd_failed_age_s"] = None if failed is None else round(now - failed, 3)
            body["serving"] = not self.handover.cut_off
            body["peers"] = self.telemetry.known_peers
        return web.json_response(body)

    async def readyz(self, request: web.Request) -> web.Response:
        """Readiness: 503 while this replica, cut off from etcd, has handed its sidecars over
        (a Service then sends neither sidecars nor the CLI here)."""
        if self.handover is not None and self.handover.cut_off:
            return web.json_response({"status": "not ready", "reason": self.hub.refusing},
                                     status=503)
        return web.json_response({"status": "ready"})

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text, unauthenticated as istiod's monitoring port is: scrapers hold no
        admin token, and the metrics are counts and durations, without node ids, names,
        tokens or keys."""
        body = self.hub.metrics.render() + self.canaries.metrics_text().encode()
        return web.Response(body=body,
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=OPENAPI.read_bytes(), content_type="application/yaml")

    async def status(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        body: dict = {
            "revision": self.store.revision,
            "snapshot_version": (self.hub.current or {}).get("version", ""),
            "store_writable": await self.store.writable_async(),
            "store": "etcd" if self.etcd is not None else "sqlite",
            "started": self.started,
            "proxies": len(self.registry.all()),
        }
        if self.etcd is not None:
            # False while this replica's watch on etcd is down: its view may be behind.
            body["store_watching"] = bool(getattr(self.store, "watch_connected", False))
            body["replica"] = self.replica_id
            body["leader"] = self.election.leader if self.election is not None else ""
            body["is_leader"] = bool(self.election and self.election.is_leader)
        if self.tls is not None:
            body["ca"] = self.tls.ca_info()
        return web.json_response(body)

    async def apply(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        from control_plane.api.resources import InvalidConfig, from_dict, load_text

        body = await self._apply_body(request)
        if isinstance(body, web.Response):
            return body
        resources: list = []
        errors: list[str] = []
        # Validate everything before touching the store: one bad document applies nothing.
        for item in body:
            try:
                if isinstance(item, str):
                    resources.extend(load_text(item, request.query.get("source", "request")))
                elif "text" in item:
                    resources.extend(load_text(str(item["text"]), str(item.get("source", ""))))
                else:
                    source = str(item.get("source") or "request")
                    resources.append(from_dict(item["document"], source,
                                               int(item.get("index") or 1)))
            except InvalidConfig as e:
                errors.extend(str(err) for err in e.errors)
            except (KeyError, TypeError, ValueError) as e:
                errors.append(f"malformed apply item: {e}")
        if errors:
            return _error(400, "invalid configuration; nothing was applied", errors=errors)
        if not resources:
            return _error(400, "no resources to apply")
        warnings = []
        if self.tls is not None:
            for r in resources:
                td = r.spec.get("trustDomain") if r.kind == "MeshConfig" else None
                if td and td != self.tls.trust_domain:
                    warnings.append(
                        f"{r.ref}: spec.trustDomain {td!r} takes effect when the control plane "
                        f"restarts; until then certificates carry {self.tls.trust_domain!r}"
                    )
        seen: dict[tuple[str, str, str], str] = {}
        for r in resources:
            if r.key in seen:
                errors.append(f"{r.source or 'request'}: {r.ref} is also defined in "
                              f"{seen[r.key] or 'request'}")
            seen[r.key] = r.source
        if errors:
            return _error(400, "invalid configuration; nothing was applied", errors=errors)
        revision, changes = await self.store.apply_async(resources)
        return web.json_response(
            {"revision": revision, "results": [c.to_dict() for c in changes],
             "warnings": warnings}
        )

    @staticmethod
    async def _apply_body(request: web.Request) -> list | web.Response:
        """An apply's body: JSON ``{"documents": [{"source", "index", "document"}]}``, JSON
        ``{"files": [{"source", "text"}]}``, or a raw YAML stream (``?source=`` names it)."""
        if request.content_type == "application/json":
            try:
                body = await request.json()
                items = list(body.get("documents") or []) + list(body.get("files") or [])
                if not all(isinstance(i, dict) for i in items):
                    raise TypeError
            except (ValueError, TypeError, AttributeError):
                return _error(400, 'expected JSON {"documents": [{"source": ..., "index": ..., '
                              '"document": {...}}]} or {"files": [{"source": ..., "text": ...}]}')
            return items
        return [await request.text()]

    async def get_resources(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        kind = None
        if "kind" in request.match_info:
            kind = canonical_kind(request.match_info["kind"])
            if kind is None:
                return _error(404, f"unknown kind {request.match_info['kind']!r}",
                              kinds=sorted(KINDS))
        ns = request.query.get("namespace") or None
        name = request.query.get("name") or None
        items = self.store.get(kind, ns, name)
        if name is not None and not items:
            where = f" in namespace {ns!r}" if ns else ""
            return _error(404, f"{kind} {name!r} not found{where}")
        return web.json_response({
            "revision": self.store.revision,
            "items": [
                {**sr.resource.to_dict(), "revision": sr.revision, "created": sr.created,
                 "updated": sr.updated}
                for sr in items
            ],
        })

    async def delete_resource(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        m = request.match_info
        kind = canonical_kind(m["kind"])
        if kind is None:
            return _error(404, f"unknown kind {m['kind']!r}", kinds=sorted(KINDS))
        revision, changes = await self.store.delete_async([(kind, m["namespace"], m["name"])])
        if changes[0].action == "not-found":
            return _error(404, f"{kind} {m['name']!r} not found in namespace {m['namespace']!r}")
        return web.json_response({"revision": revision, "results": [c.to_dict() for c in changes]})

    async def delete_many(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        try:
            body = await request.json()
            keys = []
            for k in body["keys"]:
                kind = canonical_kind(str(k["kind"]))
                if kind is None:
                    return _error(404, f"unknown kind {k['kind']!r}")
                keys.append((kind, str(k.get("namespace") or "default"), str(k["name"])))
        except (ValueError, KeyError, TypeError):
            return _error(400, 'expected JSON {"keys": [{"kind", "namespace", "name"}]}')
        revision, changes = await self.store.delete_async(keys)
        return web.json_response({"revision": revision, "results": [c.to_dict() for c in changes]})

    async def create_token(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        if request.can_read_body and request.content_type == "application/json":
            try:
                body = await request.json()
            except ValueError:
                body = None
            if isinstance(body, dict) and body.get("read_only") is True:
                return web.json_response({"token": self.dashboard.readonly_token,
                                          "read_only": True})
        if self.tls is None:
            return _error(503, "join tokens need the CA, which this control plane does not run")
        try:
            body = await request.json()
            service = str(body["service"])
            namespace = str(body.get("namespace") or "default")
            ttl = body.get("ttl", "1h")
        except (ValueError, KeyError, TypeError):
            return _error(400, 'expected JSON {"service": ..., "namespace": ..., "ttl": "1h"}')
        try:
            token, expires = await self.tls.create_token(service, namespace, ttl)
        except ValueError as e:
            return _error(400, str(e))
        return web.json_response({"token": token, "service": service, "namespace": namespace,
                                  "expires": expires})

    async def proxies(self, request: web.Request) -> web.Response:
        if not self.dashboard.can_read(request):  # the dashboard shows them read-only
            return self._unauthorized()
        current = (self.hub.current or {}).get("version", "")
        return web.json_response({
            "snapshot_version": current,
            "proxies": [{**r.to_dict(), "expected_version": self.hub.expected_version(r)}
                        for r in self.registry.all()],
        })

    async def canary_list(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        ns = request.query.get("namespace") or None
        if not self.canaries.is_leader():
            await self.canaries.statuses.load()  # the leader's latest decisions
        items = [self.canaries.view(sr.resource.namespace, sr.resource.name)
                 for sr in self.store.get("Canary", ns)]
        return web.json_response({"items": [i for i in items if i is not None]})

    async def canary_get(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        m = request.match_info
        if not self.canaries.is_leader():
            await self.canaries.statuses.load()  # the leader's latest decisions
        view = self.canaries.view(m["namespace"], m["name"])
        if view is None:
            return _error(404, f"Canary {m['name']!r} not found in namespace {m['namespace']!r}")
        return web.json_response(view)

    async def canary_action(self, request: web.Request) -> web.Response:
        """promote, abort, pause or resume: decided and applied before the answer."""
        if not self._authorized(request):
            return self._unauthorized()
        m = request.match_info
        if not self.canaries.is_leader():
            leader = self.election.leader if self.election is not None else ""
            return _error(503, "this replica is not the leader, which runs the canary "
                          f"controller; ask the leader ({leader.rpartition('#')[0] or 'none yet'})")
        try:
            view = await self.canaries.command(m["namespace"], m["name"], m["action"])
        except LookupError as e:
            return _error(404, str(e).strip("'\""))
        except ValueError as e:
            return _error(409, str(e))
        return web.json_response(view)

    async def ca_status(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        if self.tls is None:
            return _error(404, "no CA (plain HTTP test server)")
        return web.json_response(self.tls.rotation_status())

    async def ca_action(self, request: web.Request) -> web.Response:
        """Root rotation in three steps, each pushed to every sidecar: ``rotate`` adds a new
        root to the trust bundle, ``activate`` signs with it (and asks sidecars to renew),
        ``retire`` drops the old root once nothing chains to it."""
        if not self._authorized(request):
            return self._unauthorized()
        if self.tls is None:
            return _error(404, "no CA (plain HTTP test server)")
        action = request.match_info["action"]
        body = await request.json() if request.can_read_body else {}
        tls = self.tls
        if action not in ("rotate", "activate", "retire"):
            return _error(404, f"unknown CA action {action!r}: rotate, activate or retire")
        fp = str(body.get("fingerprint") or "")
        if action == "retire" and not fp:
            return _error(400, "retire needs a fingerprint")

        if (self.election is not None and not self.election.is_leader
                and "X-Meshlet-Forwarded" not in request.headers):
            # A singleton job: the leader performs every rotation step, so steps asked of
            # several replicas at once are serialized in one place.
            return await self._forward_to_leader(request, action, body)

        def step() -> None:
            if action == "rotate":
                tls.ca.rotate_root(activate=False)
            elif action == "activate":
                tls.ca.activate_root()
                tls.renew_issued_before = time.time()
            else:
                tls.check_retirable(fp, self.registry.all())
                tls.ca.retire_root(fp)

        try:
            if self.ca_state is not None:
                # Replicas: applied once across all of them (a guarded txn), then every
                # replica's CA follows through its watch.
                from control_plane.ca.state_etcd import CAConflict

                try:
                    await self.ca_state.change(step)
                except CAConflict as exc:
                    return _error(409, str(exc))
            else:
                step()
        except (ValueError, RuntimeError) as exc:
            return _error(409, str(exc))
        except StoreUnavailable:
            raise
        except Exception as exc:  # CAError and friends: a refused step, not a crash
            return _error(409, f"{type(exc).__name__}: {exc}")
        log.info("CA %s: roots now %s", action, self.tls.ca.root_fingerprints())
        self.hub.mark_dirty()
        answer = self.tls.rotation_status()
        if self.etcd is not None:
            answer["performedBy"] = self.replica_id
        return web.json_response(answer)

    async def _forward_to_leader(self, request: web.Request, action: str,
                                 body: dict) -> web.Response:
        import ssl

        assert self.election is not None and self.tls is not None
        leader = self.election.leader
        if not leader:
            return _error(503, "no leader elected yet to run the CA step; retry in a few seconds")
        addr = leader.rpartition("#")[0]
        ctx = ssl.create_default_context(cadata=self.tls.ca.bundle_pem().decode())
        headers = {"Authorization": request.headers.get("Authorization", ""),
                   "X-Meshlet-Forwarded": self.replica_id}
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s, \
                    s.post(f"https://{addr}/v1/ca/{action}", json=body, headers=headers,
                           ssl=ctx) as resp:
                return web.Response(body=await resp.read(), status=resp.status,
                                    content_type="application/json")
        except (TimeoutError, aiohttp.ClientError) as e:
            return _error(503, f"the leader {leader} that runs CA steps is unreachable "
                          f"({e or type(e).__name__}); retry once a new one is elected")

    async def proxy_config(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        what = request.match_info["what"]
        if what not in ADMIN_PATHS:
            return _error(404, f"unknown config type {what!r}; one of {', '.join(ADMIN_PATHS)}")
        name = request.match_info["id"]
        found = self.registry.find(name)
        if not found:
            everyone = self.registry.all()
            known = ", ".join(short_name(r, everyone) for r in everyone) or "none"
            return _error(404, f"no sidecar {name!r} is registered; registered sidecars: {known}",
                          nodes=[r.node_id for r in everyone])
        if len(found) > 1:
            names = ", ".join(short_name(r, found) for r in found)
            return _error(409, f"{len(found)} sidecars match {name!r} ({names}); name one of them",
                          nodes=[r.node_id for r in found])
        reg = found[0]
        if not reg.admin_address:
            return _error(502, f"sidecar {reg.node_id} registered no admin address the control "
                          "plane may call (it must be on the host the sidecar connects from)")
        url = f"http://{reg.admin_address}{ADMIN_PATHS[what]}"
        if what == "explain" and request.query_string:
            url += "?" + request.query_string
        try:
            timeout = aiohttp.ClientTimeout(total=5)
            async with aiohttp.ClientSession(timeout=timeout) as s, s.get(url) as resp:
                body = await resp.read()
                if resp.status != 200:
                    return _error(502, f"sidecar {reg.node_id} answered {resp.status} for {url}")
        except (TimeoutError, aiohttp.ClientError) as e:
            return _error(502, f"sidecar {reg.node_id} admin port {reg.admin_address} "
                          f"unreachable: {e or type(e).__name__}")
        try:
            data = json.loads(body)
        except ValueError:
            return _error(502, f"sidecar {reg.node_id} returned non-JSON for {url}")
        return web.json_response({"node": reg.node_id, "type": what, "data": data})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        if self.hub.refusing:  # cut off from etcd: the sidecar goes to its next replica
            return _error(503, self.hub.refusing)
        ws = web.WebSocketResponse(heartbeat=15.0)
        await ws.prepare(request)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        peer_host = peer[0] if peer else "127.0.0.1"
        identity = None
        if self.tls is not None:
            identity = self.tls.peer_identity(request)

        def authorize(reg: dict) -> str | None:
            if self.tls is None:
                return None  # plain HTTP exists only for this package's unit tests
            if identity is None:
                return "the config stream needs a client certificate issued by this CA"
            ns, sa = identity
            want = (str(reg.get("namespace") or "default"), str(reg.get("service") or ""))
            if (ns, sa) != want:
                return (f"certificate identity ns/{ns}/sa/{sa} does not match the registration "
                        f"ns/{want[0]}/sa/{want[1]}")
            return None

        try:
            expiry = self.tls.peer_not_after(request) if self.tls is not None else None
            await self.hub.serve(ws, authorize, peer_host, expiry, request.transport)
        except StreamError as e:
            await ws.send_json({"type": "error", "error": str(e)})
            await ws.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION)
        except (TimeoutError, TypeError, ValueError) as e:
            if not ws.closed:
                await ws.send_json({"type": "error", "error": f"bad registration: {e}"})
                await ws.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION)
        return ws


async def serve_forever(cp: ControlPlane) -> None:
    await cp.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await cp.stop()


def run(data_dir: str, listen: str, grace_s: float = DEFAULT_GRACE_S,
        plain_http: bool = False, etcd: EtcdOptions | None = None,
        admin_token_file: str | None = None, advertise_address: str | None = None,
        push: PushSettings | None = None) -> None:
    cp = ControlPlane(data_dir, listen, grace_s=grace_s, plain_http=plain_http, etcd=etcd,
                      admin_token_file=admin_token_file, advertise_address=advertise_address,
                      push=push)
    try:
        import uvloop

        uvloop.run(serve_forever(cp))
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(serve_forever(cp))



class Security:
    """The CA side of the control plane, built on :mod:`certs` and :mod:`control_plane.ca`:
    the HTTPS serving certificate, join tokens, the certify/trust-bundle routes and the identity
    of a connected sidecar."""

    def __init__(self, data_dir: Path, trust_domain: str, hosts: list[str],
                 lifetime_s: int = 86400, *, ca=None, tokens=None) -> None:  # type: ignore[no-untyped-def]
        from certs.authority import CertificateAuthority
        from control_plane.ca import service
        from control_plane.ca.tokens import TokenStore

        self.ca = ca or CertificateAuthority.load_or_create(data_dir, trust_domain)
        self.trust_domain = self.ca.trust_domain
        self.lifetime_s = lifetime_s
        self.server_context = service.serving_context(self.ca, hosts)
        self.tokens = tokens or TokenStore(data_dir, self.ca.root_pin)
        self.state = None  # the CA's shared state in etcd (replicas), if any

    def setup_routes(self, app: web.Application) -> None:
        from control_plane.ca import service

        service.setup_routes(app, self.ca, self.tokens, self.trust_domain, self.lifetime_s)

    _renew_issued_before = 0.0

    @property
    def renew_issued_before(self) -> float:
        """Certificates issued before this must be renewed (set by an activation); shared
        through etcd by replicas."""
        if self.state is not None:
            return float(self.state.renew_issued_before)
        return self._renew_issued_before

    @renew_issued_before.setter
    def renew_issued_before(self, value: float) -> None:
        if self.state is not None:
            self.state.renew_issued_before = value
        self._renew_issued_before = value

    def bundle_state(self) -> dict:
        """What every sidecar must follow: the roots it must trust, and certificates issued
        before an activation must be renewed (from the new root)."""
        from certs import keys

        return {"trustBundle": {
            "fingerprints": self.ca.root_fingerprints(),
            "signingRoot": keys.cert_fingerprint(self.ca.signing_root()),
            "renewIssuedBefore": self.renew_issued_before,
        }}

    def rotation_status(self) -> dict:
        from certs import keys

        pending = self.ca.pending_root()
        return {**self.bundle_state()["trustBundle"],
                "pendingRoot": keys.cert_fingerprint(pending) if pending is not None else None}

    def check_retirable(self, fingerprint: str, registrations: object) -> None:
        from certs import keys

        if fingerprint == keys.cert_fingerprint(self.ca.signing_root()):
            raise ValueError("that root still signs: activate the new root first")
        if fingerprint not in self.ca.root_fingerprints():
            raise ValueError(f"no root {fingerprint} in the trust bundle")

    def ca_info(self) -> dict:
        from certs import keys

        roots = self.ca.roots
        return {
            "trust_domain": self.trust_domain,
            "roots": [
                {"fingerprint": keys.cert_fingerprint(c),
                 "not_after": c.not_valid_after_utc.timestamp()}
                for c in roots
            ],
        }

    async def create_token(self, service: str, namespace: str,
                           ttl: object) -> tuple[str, float]:
        from control_plane.api.resources import parse_duration

        ttl_s = parse_duration(ttl) if isinstance(ttl, str) else float(ttl)  # type: ignore[arg-type]
        if ttl_s <= 0:
            raise ValueError("ttl must be positive")
        token = self.tokens.create(service, namespace, ttl_s)
        if inspect.isawaitable(token):  # the etcd token store
            token = await token
        return str(token), time.time() + ttl_s

    @staticmethod
    def peer_not_after(request: web.Request) -> float | None:
        """Expiry (unix time) of the verified client certificate, if one was sent."""
        from cryptography import x509

        transport = request.transport
        sslobj = transport.get_extra_info("ssl_object") if transport else None
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        if not der:
            return None
        return x509.load_der_x509_certificate(der).not_valid_after_utc.timestamp()

    def peer_identity(self, request: web.Request) -> tuple[str, str] | None:
        """(namespace, service account) of the verified client certificate, if any."""
        from certs import tls

        transport = request.transport
        sid = tls.peer_spiffe_id(transport.get_extra_info("ssl_object") if transport else None)
        if sid is None or sid.trust_domain != self.trust_domain:
            return None
        if sid.namespace is None or sid.service_account is None:
            return None
        return sid.namespace, sid.service_account
