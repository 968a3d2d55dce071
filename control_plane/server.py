"""The control plane process: HTTPS operator API, config stream and CA service on one port.

:class:`ControlPlane` owns the data dir (``store.db``, ``admin.token``, the CA, ``listen.addr``),
wires the store, the registry and the push hub together and serves them with aiohttp. The
operator API is authenticated by the admin token (``Authorization: Bearer``); the config stream
by the sidecar's client certificate; the CA endpoints by join tokens or certificates (their own
checks, in :mod:`control_plane.ca`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import secrets
import signal
import sqlite3
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from control_plane.push import PushHub, PushSettings, StreamError
from control_plane.registry import DEFAULT_GRACE_S, Registry
from control_plane.store import KINDS, Store, canonical_kind

log = logging.getLogger(__name__)

DEFAULT_LISTEN = "127.0.0.1:15012"
ADMIN_TOKEN_FILE = "admin.token"
LISTEN_ADDR_FILE = "listen.addr"
OPENAPI = Path(__file__).with_name("openapi.yaml")
ADMIN_PATHS = {"routes": "/config_dump", "clusters": "/clusters", "endpoints": "/clusters",
               "certs": "/certs", "explain": "/explain"}


def default_data_dir() -> str:
    return os.environ.get("MESHLET_DATA_DIR") or os.path.expanduser("~/.meshlet")


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


class ControlPlane:
    def __init__(
        self,
        data_dir: str,
        listen: str = DEFAULT_LISTEN,
        *,
        grace_s: float = DEFAULT_GRACE_S,
        plain_http: bool = False,
        push: PushSettings | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.listen = listen
        self.plain_http = plain_http  # tests of this package only; never exposed as a flag
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.admin_token = self._admin_token()
        self.store = Store(str(self.data_dir / "store.db"))
        self.registry = Registry(grace_s=grace_s)
        self.tls: Security | None = None
        if not plain_http:
            td, lifetime = self._mesh_identity()
            self.tls = Security(self.data_dir, td, [split_listen(listen)[0]], lifetime)
        self.hub = PushHub(self.store, self.registry,
                           self.tls.trust_domain if self.tls is not None else None, push)
        if self.tls is not None:
            self.hub.extra_mesh = self.tls.bundle_state
        self.started = time.time()
        self.address: tuple[str, int] | None = None
        self._runner: web.AppRunner | None = None
        self._expiry_task: asyncio.Task | None = None

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
        r.add_get("/v1/ca", self.ca_status)
        r.add_post("/v1/ca/{action}", self.ca_action)
        if self.tls is not None:
            self.tls.setup_routes(app)
        return app

    async def start(self) -> tuple[str, int]:
        host, port = split_listen(self.listen)
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        ctx = None if self.tls is None else self.tls.server_context
        site = web.TCPSite(self._runner, host, port, ssl_context=ctx)
        await site.start()
        sock = site._server.sockets[0]  # type: ignore[union-attr]
        self.address = sock.getsockname()[:2]
        h = self.address[0]
        addr = f"[{h}]:{self.address[1]}" if ":" in h else f"{h}:{self.address[1]}"
        tmp = self.data_dir / (LISTEN_ADDR_FILE + ".tmp")
        tmp.write_text(addr + "\n")
        os.replace(tmp, self.data_dir / LISTEN_ADDR_FILE)
        self.hub.rebuild()
        self._expiry_task = asyncio.get_running_loop().create_task(self._expire_loop())
        scheme = "http" if self.tls is None else "https"
        log.info("control plane listening on %s://%s (data dir %s)", scheme, addr, self.data_dir)
        return self.address

    async def stop(self) -> None:
        if self._expiry_task is not None:
            self._expiry_task.cancel()
        await self.hub.close()
        if self._runner is not None:
            await self._runner.cleanup()
        try:
            (self.data_dir / LISTEN_ADDR_FILE).unlink()
        except FileNotFoundError:
            pass
        self.store.close()
        if self.tls is not None:
            self.tls.tokens.close()

    async def _expire_loop(self) -> None:
        interval = max(0.05, min(1.0, self.registry.grace_s / 4))
        while True:
            await asyncio.sleep(interval)
            self.registry.expire()

    # -- auth ------------------------------------------------------------------------------
    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self.admin_token.encode()
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
        return web.json_response({"status": "ok", "revision": self.store.revision})

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text, unauthenticated as istiod's monitoring port is: scrapers hold no
        admin token, and the metrics are counts and durations, without node ids, names,
        tokens or keys."""
        return web.Response(body=self.hub.metrics.render(),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=OPENAPI.read_bytes(), content_type="application/yaml")

    async def status(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        body: dict = {
            "revision": self.store.revision,
            "snapshot_version": (self.hub.current or {}).get("version", ""),
            "store_writable": self.store.writable(),
            "started": self.started,
            "proxies": len(self.registry.all()),
        }
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
        revision, changes = self.store.apply(resources)
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
        revision, changes = self.store.delete([(kind, m["namespace"], m["name"])])
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
        revision, changes = self.store.delete(keys)
        return web.json_response({"revision": revision, "results": [c.to_dict() for c in changes]})

    async def create_token(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
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
            token, expires = self.tls.create_token(service, namespace, ttl)
        except ValueError as e:
            return _error(400, str(e))
        return web.json_response({"token": token, "service": service, "namespace": namespace,
                                  "expires": expires})

    async def proxies(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        current = (self.hub.current or {}).get("version", "")
        return web.json_response({
            "snapshot_version": current,
            "proxies": [{**r.to_dict(), "expected_version": self.hub.expected_version(r)}
                        for r in self.registry.all()],
        })

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
        try:
            if action == "rotate":
                self.tls.ca.rotate_root(activate=False)
            elif action == "activate":
                self.tls.ca.activate_root()
                self.tls.renew_issued_before = time.time()
            elif action == "retire":
                fp = str(body.get("fingerprint") or "")
                if not fp:
                    return _error(400, "retire needs a fingerprint")
                self.tls.check_retirable(fp, self.registry.all())
                self.tls.ca.retire_root(fp)
            else:
                return _error(404, f"unknown CA action {action!r}: rotate, activate or retire")
        except (ValueError, RuntimeError) as exc:
            return _error(409, str(exc))
        except Exception as exc:  # CAError and friends: a refused step, not a crash
            return _error(409, f"{type(exc).__name__}: {exc}")
        log.info("CA %s: roots now %s", action, self.tls.ca.root_fingerprints())
        self.hub.mark_dirty()
        return web.json_response(self.tls.rotation_status())

    async def proxy_config(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        what = request.match_info["what"]
        if what not in ADMIN_PATHS:
            return _error(404, f"unknown config type {what!r}; one of {', '.join(ADMIN_PATHS)}")
        found = self.registry.find(request.match_info["id"])
        if not found:
            return _error(404, f"no sidecar {request.match_info['id']!r} is registered")
        if len(found) > 1:
            return _error(409, f"{len(found)} sidecars match {request.match_info['id']!r}; "
                          "name one by node id", nodes=[r.node_id for r in found])
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
            await self.hub.serve(ws, authorize, peer_host, expiry)
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
        plain_http: bool = False, push: PushSettings | None = None) -> None:
    cp = ControlPlane(data_dir, listen, grace_s=grace_s, plain_http=plain_http, push=push)
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
                 lifetime_s: int = 86400) -> None:
        from certs.authority import CertificateAuthority
        from control_plane.ca import service
        from control_plane.ca.tokens import TokenStore

        self.ca = CertificateAuthority.load_or_create(data_dir, trust_domain)
        self.trust_domain = self.ca.trust_domain
        self.lifetime_s = lifetime_s
        self.server_context = service.serving_context(self.ca, hosts)
        self.tokens = TokenStore(data_dir, self.ca.root_pin)

    def setup_routes(self, app: web.Application) -> None:
        from control_plane.ca import service

        service.setup_routes(app, self.ca, self.tokens, self.trust_domain, self.lifetime_s)

    renew_issued_before = 0.0

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

    def create_token(self, service: str, namespace: str, ttl: object) -> tuple[str, float]:
        from control_plane.api.resources import parse_duration

        ttl_s = parse_duration(ttl) if isinstance(ttl, str) else float(ttl)  # type: ignore[arg-type]
        if ttl_s <= 0:
            raise ValueError("ttl must be positive")
        token = self.tokens.create(service, namespace, ttl_s)
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
