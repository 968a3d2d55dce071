"""The built-in dashboard at ``/ui/``, its login, and read-only access to the operator API.

Two tokens open the dashboard: the admin token, and a read-only token kept in the data dir
(``readonly.token``, created at first start; ``meshlet token create --read-only`` prints it). A
login (``POST /ui/login``) exchanges either for a session cookie (``HttpOnly; Secure;
SameSite=Strict``, 12 h). A session, like the read-only token as a Bearer token, grants only the
read endpoints the dashboard uses (stats, tap, proxies, analyze): nothing a cookie carries can
change the mesh, so a forged cross-site request has nothing to write.

The page itself is plain HTML, CSS and JavaScript in ``control_plane/ui/`` with cytoscape.js
vendored (``control_plane/ui/vendor/``); no build step.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

READONLY_TOKEN_FILE = "readonly.token"
SESSION_COOKIE = "meshlet_session"
SESSION_TTL_S = 12 * 3600
MAX_SESSIONS = 1000
UI_DIR = Path(__file__).with_name("ui")
_TYPES = {".html": "text/html", ".js": "application/javascript", ".css": "text/css",
          ".txt": "text/plain", ".md": "text/plain", ".svg": "image/svg+xml"}
# The page loads only its own scripts and styles and talks only to this origin.
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'self'")


def load_or_create_readonly_token(data_dir: Path) -> str:
    from control_plane.server import write_secret

    path = data_dir / READONLY_TOKEN_FILE
    if not path.exists():
        write_secret(path, secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


class Dashboard:
    def __init__(self, data_dir: Path, admin_token_hash: Callable[[], str],
                 clock: Callable[[], float] = time.monotonic) -> None:
        # the admin token is checked by its sha256, as the API checks it: replicas on etcd
        # know only the hash, and learn it after start
        self.admin_token_hash = admin_token_hash
        self.readonly_token = load_or_create_readonly_token(data_dir)
        self.clock = clock
        self.sessions: dict[str, float] = {}  # session id -> expiry (monotonic)

    # -- access ----------------------------------------------------------------------------
    def _token_ok(self, token: str) -> bool:
        t = token.strip().encode()
        # both compared, so the time taken does not tell which one was close
        admin = self.admin_token_hash()
        a = bool(admin) and hmac.compare_digest(hashlib.sha256(t).hexdigest().encode(),
                                                admin.encode())
        r = hmac.compare_digest(t, self.readonly_token.encode())
        return a or r

    def has_session(self, request: web.Request) -> bool:
        sid = request.cookies.get(SESSION_COOKIE, "")
        exp = self.sessions.get(sid) if sid else None
        if exp is None:
            return False
        if exp < self.clock():
            self.sessions.pop(sid, None)
            return False
        return True

    def can_read(self, request: web.Request) -> bool:
        """Admin or read-only Bearer token, or a dashboard session."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token:
            return self._token_ok(token)
        return self.has_session(request)

    # -- routes ----------------------------------------------------------------------------
    def setup_routes(self, app: web.Application, cp: Any) -> None:
        self.cp = cp
        r = app.router
        r.add_get("/ui", self.redirect)
        r.add_get("/ui/", self.index)
        r.add_post("/ui/login", self.login)
        r.add_post("/ui/logout", self.logout)
        r.add_get("/ui/{name:[a-z0-9._-]+}", self.static)
        r.add_get("/ui/vendor/{name:[a-z0-9._-]+}", self.static_vendor)
        r.add_get("/v1/analyze", self.analyze)

    async def redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/ui/")

    async def index(self, request: web.Request) -> web.Response:
        page = "index.html" if self.has_session(request) else "login.html"
        return self._file(UI_DIR / page)

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name in ("index.html", "login.html"):
            raise web.HTTPFound("/ui/")
        return self._file(UI_DIR / name)

    async def static_vendor(self, request: web.Request) -> web.Response:
        return self._file(UI_DIR / "vendor" / request.match_info["name"])

    @staticmethod
    def _file(path: Path) -> web.Response:
        if path.suffix not in _TYPES or not path.is_file():
            raise web.HTTPNotFound()
        return web.Response(
            body=path.read_bytes(), content_type=_TYPES[path.suffix],
            charset="utf-8" if path.suffix != ".svg" else None,
            headers={"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff",
                     "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"})

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        token = str(form.get("token") or "")
        if not token or not self._token_ok(token):
            raise web.HTTPFound("/ui/?error=1")
        now = self.clock()
        for sid in [s for s, exp in self.sessions.items() if exp < now]:
            del self.sessions[sid]
        while len(self.sessions) >= MAX_SESSIONS:  # oldest first
            del self.sessions[next(iter(self.sessions))]
        sid = secrets.token_urlsafe(32)
        self.sessions[sid] = now + SESSION_TTL_S
        resp = web.HTTPFound("/ui/")
        resp.set_cookie(SESSION_COOKIE, sid, max_age=SESSION_TTL_S, path="/", secure=True,
                        httponly=True, samesite="Strict")
        raise resp

    async def logout(self, request: web.Request) -> web.Response:
        self.sessions.pop(request.cookies.get(SESSION_COOKIE, ""), None)
        resp = web.HTTPFound("/ui/")
        resp.del_cookie(SESSION_COOKIE, path="/")
        raise resp

    async def analyze(self, request: web.Request) -> web.Response:
        """``analyze`` over the stored resources and what the registry knows (live sidecars)."""
        if not self.can_read(request):
            return web.json_response({"error": "missing or invalid token"}, status=401)
        from control_plane.api.analyze import analyze
        from control_plane.api.hosts import fqdn

        regs = self.cp.registry.all()
        findings = analyze(
            [sr.resource for sr in self.cp.store.get()],
            services=[fqdn(r.service, r.namespace) for r in regs],
            workloads=[(r.namespace, r.labels) for r in regs],
        )
        return web.json_response({"findings": [f.to_dict() for f in findings],
                                  "text": [str(f) for f in findings]})
