"""Mesh telemetry at the control plane: sidecar reports in, golden metrics and live taps out.

Sidecars send ``stats`` and ``tap_events`` messages on the config stream they already hold
(``control_plane/push.py`` hands them to :meth:`TelemetryHub.on_message`). Reports are checked
against the stream's registration (a sidecar speaks only for its own workload: the source of the
edges it reports as caller, the destination of those it reports as callee) and added to a
:class:`~control_plane.stats.StatsStore`.

The API (``/v1/stats/edges|services|routes?window=1m|10m``) serves this replica's windows merged
with its peers' (``/v1/stats/local`` of every URL in ``peers``, e.g. the other replicas listed in
the etcd store; with a single control plane the merged view is the local one). The route view
joins the route histograms with the VirtualService that defines each route, so it shows the
configured split (weights) next to the traffic.

A tap (``GET /v1/tap/{service}``, newline-delimited JSON) asks every sidecar of the service to
start tapping with a filter, a maximum rate and an expiry; their events are fanned out to the
client until it disconnects, ``max`` events were sent or the duration ends; then the sidecars are
told to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import ssl
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from control_plane.api.hosts import fqdn
from control_plane.stats import WINDOWS, StatsStore

log = logging.getLogger(__name__)

#: Most events a tap session queues for a slow client before dropping.
TAP_QUEUE = 1000
MAX_TAP_SECONDS = 3600.0
#: How long a computed stats view is served again (dashboards poll every 2 s).
VIEW_CACHE_S = 1.0
#: Most taps running at once (each holds a client connection and a queue).
MAX_TAPS = 64


class TapSession:
    def __init__(self, tap_id: str, service: str, namespace: str, spec: dict) -> None:
        self.id = tap_id
        self.service = service
        self.namespace = namespace
        self.spec = spec
        self.queue: asyncio.Queue[dict] = asyncio.Queue(maxsize=TAP_QUEUE)
        self.dropped = 0
        self.nodes: set[str] = set()
        self.deadline = time.monotonic() + float(spec.get("expires_in") or 60.0)

    def put(self, events: list, dropped: int) -> None:
        self.dropped += dropped
        for ev in events:
            if not isinstance(ev, dict):
                continue
            try:
                self.queue.put_nowait(ev)
            except asyncio.QueueFull:
                self.dropped += 1


class TelemetryHub:
    def __init__(
        self,
        push: Any,  # control_plane.push.PushHub
        store: Any,  # control_plane.store.Store (for the VirtualServices of the route view)
        authorized: Callable[[web.Request], bool],
        stats: StatsStore | None = None,
    ) -> None:
        self.push = push
        self.store = store
        self.authorized = authorized
        self.stats = stats or StatsStore()
        self.taps: dict[str, TapSession] = {}
        self._ids = itertools.count(1)
        self._pending: set[asyncio.Task] = set()
        self._cache: dict[tuple[str, str, str], tuple[float, dict]] = {}
        # Peer replicas' base URLs whose /v1/stats/local is merged into the views:
        # MESHLET_STATS_PEERS when set (an override), else, on etcd, the live replicas that
        # ``peer_source`` lists (control_plane/server.py sets it: the list an etcd watch keeps
        # current, so calling it costs no request).
        self.peers: list[str] = [
            u.strip().rstrip("/") for u in os.environ.get("MESHLET_STATS_PEERS", "").split(",")
            if u.strip()
        ]
        self.peer_source: Callable[[], list[str]] | None = None
        self.peer_token: str = ""
        self.peer_ca: str | None = None  # the CA bundle the peers' certificates chain to

    def setup_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/v1/stats/local", self.local)
        r.add_get("/v1/stats/{view}", self.view)
        r.add_get("/v1/tap/{service}", self.tap)

    # -- from sidecars ---------------------------------------------------------------------
    def on_message(self, reg: Any, data: dict) -> None:
        """One ``stats`` or ``tap_events`` message; a malformed one is logged and dropped, never
        allowed to end the sidecar's config stream."""
        try:
            self._on_message(reg, data)
        except (TypeError, ValueError, AttributeError) as e:
            log.warning("dropped a malformed %s message from %s: %s", data.get("type"),
                        reg.node_id, e)

    def _on_message(self, reg: Any, data: dict) -> None:
        kind = data.get("type")
        if kind == "stats":
            self.stats.ingest(self._own(reg, data))
            self._join_taps(reg)
        elif kind == "tap_events":
            session = self.taps.get(str(data.get("id") or ""))
            if session is not None and reg.service == session.service \
                    and reg.namespace == session.namespace:
                events = data.get("events")
                dropped = data.get("dropped")
                session.put(events if isinstance(events, list) else [],
                            dropped if isinstance(dropped, int) and dropped > 0 else 0)

    def _join_taps(self, reg: Any) -> None:
        """A sidecar that connected after a tap started joins it when it next reports (it
        reports only when it had traffic, which is when a tap has something to show)."""
        for session in list(self.taps.values()):
            if (reg.service, reg.namespace) != (session.service, session.namespace) \
                    or reg.node_id in session.nodes:
                continue
            stream = self.push.streams.get(reg.node_id)
            if stream is None:
                continue
            session.nodes.add(reg.node_id)
            left = session.deadline - time.monotonic()
            if left > 0:
                task = asyncio.get_running_loop().create_task(
                    self._send_all([stream], {**session.spec, "expires_in": left}))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)

    @staticmethod
    def _own(reg: Any, data: dict) -> dict:
        """The report with every edge tied to the workload the stream is authenticated as."""
        me = fqdn(reg.service, reg.namespace)
        edges = []
        reported = data.get("edges")
        for e in reported if isinstance(reported, list) else ():
            if not isinstance(e, dict):
                continue
            if e.get("reporter") == "destination":
                if e.get("destination") != me:
                    continue  # a sidecar reports only calls into its own service
                edges.append(e)
            else:
                edges.append({**e, "reporter": "source", "source": reg.service,
                              "source_namespace": reg.namespace,
                              "source_version": reg.version or "unknown"})
        return {"edges": edges, "routes": data.get("routes") or []}

    # -- API -------------------------------------------------------------------------------
    @property
    def known_peers(self) -> list[str]:
        """The configured peers, else the live replicas as the etcd watch last saw them (kept
        while etcd does not answer: what a replica cut off from etcd hands its sidecars to)."""
        if self.peers or self.peer_source is None:
            return list(self.peers)
        return list(self.peer_source())

    async def peer_urls(self) -> list[str]:
        """:attr:`known_peers`, as the hand-over (control_plane/etcd/handover.py) asks for it."""
        return self.known_peers

    async def merged(self, scope: str, window: str = "10m") -> StatsStore:
        peers = [] if scope == "local" else await self.peer_urls()
        if not peers:
            return self.stats
        view = self.stats.copy()
        timeout = aiohttp.ClientTimeout(total=3)
        headers = {"Authorization": f"Bearer {self.peer_token}"} if self.peer_token else {}
        peer_ssl: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=self.peer_ca) if self.peer_ca else False
        )
        async with aiohttp.ClientSession(timeout=timeout) as s:
            async def one(url: str) -> dict | None:
                try:
                    async with s.get(url + f"/v1/stats/local?window={window}",
                                     headers=headers, ssl=peer_ssl) as resp:
                        if resp.status == 200:
                            return await resp.json()
                        log.warning("stats peer %s answered %s", url, resp.status)
                except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                    log.warning("stats peer %s unreachable: %s", url, e)
                return None

            for exported in await asyncio.gather(*(one(u) for u in peers)):
                if exported:
                    try:
                        view.merge(exported)
                    except (ValueError, TypeError) as e:
                        log.warning("stats from a peer not merged: %s", e)
        return view

    async def local(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return _unauthorized()
        window = request.query.get("window") or None
        if window is not None and window not in WINDOWS:
            return _error(400, f"window {window!r}: one of {', '.join(WINDOWS)}")
        return web.json_response(self.stats.export(window))

    async def view(self, request: web.Request) -> web.Response:
        if not self.authorized(request):
            return _unauthorized()
        name = request.match_info["view"]
        window = request.query.get("window", "1m")
        if window not in WINDOWS:
            return _error(400, f"window {window!r}: one of {', '.join(WINDOWS)}")
        if name not in ("edges", "services", "routes"):
            return _error(404, f"unknown stats view {name!r}: edges, services, routes or local")
        scope = request.query.get("scope", "mesh")
        key = (name, window, scope)
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and now - hit[0] < VIEW_CACHE_S:
            return web.json_response(hit[1])
        stats = await self.merged(scope, window)
        if name == "edges":
            items = stats.edge_view(window)
        elif name == "services":
            items = stats.service_view(window)
        else:
            items = self.with_config(stats.route_view(window))
        body = {"window": window, "generated": time.time(), name: items}
        # Several dashboards polling every 2 s cost one computation a second, not one each.
        self._cache[key] = (now, body)
        return web.json_response(body)

    def with_config(self, routes: list[dict]) -> list[dict]:
        """Every configured VirtualService route, with its destinations and weights, joined with
        the traffic seen on it (routes with traffic but no VirtualService, such as a service's
        default route, are kept)."""
        seen = {(r["service"], r["route"]): r for r in routes}
        out = list(routes)
        for sr in self.store.get("VirtualService"):
            vs = sr.resource
            ns = vs.namespace
            for index, http in enumerate(vs.spec.get("http") or ()):
                name = str(http.get("name") or f"{vs.name}.{index}")
                dests = [
                    {"host": fqdn(str(d.get("destination", {}).get("host", "")), ns),
                     "subset": d.get("destination", {}).get("subset") or "",
                     "weight": d.get("weight", 100 if len(http.get("route") or ()) == 1 else 0)}
                    for d in http.get("route") or ()
                ]
                match = bool(http.get("match"))
                for host in vs.spec.get("hosts") or ():
                    svc = fqdn(str(host), ns)
                    row = seen.get((svc, name))
                    if row is None:
                        row = {"service": svc, "name": svc.split(".")[0], "route": name,
                               "requests": 0, "failures": 0, "rps": 0.0, "success_rate": None,
                               "p50_ms": None, "p90_ms": None, "p99_ms": None}
                        seen[(svc, name)] = row
                        out.append(row)
                    row["virtual_service"] = f"{ns}/{vs.name}"
                    row["destinations"] = dests
                    row["has_match"] = match
        return out

    async def tap(self, request: web.Request) -> web.StreamResponse:
        if not self.authorized(request):
            return _unauthorized()
        svc, _, ns = request.match_info["service"].partition(".")
        ns = request.query.get("namespace") or ns or "default"
        q = request.query
        try:
            max_events = int(q.get("max", "0") or 0)
            duration = float(q.get("duration", "60") or 60)
            max_rate = float(q.get("max_rate", "100") or 100)
            status = q.get("status", "")
            if status and not (status.isdigit() and (len(status) == 3 or len(status) == 1)):
                raise ValueError("status: a code (404) or a class (5)")
            if max_events < 0 or not 0 < duration <= MAX_TAP_SECONDS or max_rate <= 0:
                raise ValueError("max >= 0, 0 < duration <= 3600, max_rate > 0")
        except ValueError as e:
            return _error(400, f"bad tap parameters: {e}")
        if len(self.taps) >= MAX_TAPS:
            return _error(429, f"{MAX_TAPS} taps are running; try again when one ends")
        targets = [st for st in list(self.push.streams.values())
                   if st.reg.service == svc and st.reg.namespace == ns and not st.ws.closed]
        if not targets:
            return _error(404, f"no connected sidecar serves {svc}.{ns}")
        tap_id = f"tap-{os.getpid()}-{next(self._ids)}"
        spec = {"type": "tap", "id": tap_id, "path_prefix": q.get("path_prefix", ""),
                "method": q.get("method", "").upper(), "status": status,
                "max_rate": max_rate, "expires_in": duration}
        session = TapSession(tap_id, svc, ns, spec)
        self.taps[tap_id] = session
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson",
                                           "Cache-Control": "no-store"})
        await resp.prepare(request)
        sent = 0
        try:
            session.nodes = {t.reg.node_id for t in targets}
            await self._send_all(targets, spec)
            await resp.write(_line({"type": "started", "id": tap_id, "service": f"{svc}.{ns}",
                                    "sidecars": sorted(session.nodes)}))
            deadline = time.monotonic() + duration
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    ev = await asyncio.wait_for(session.queue.get(), min(left, 5.0))
                except TimeoutError:
                    if request.transport is None or request.transport.is_closing():
                        break
                    continue
                await resp.write(_line({"type": "event", **ev}))
                sent += 1
                if max_events and sent >= max_events:
                    break
            await resp.write(_line({"type": "end", "events": sent, "dropped": session.dropped}))
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        finally:
            self.taps.pop(tap_id, None)
            with contextlib.suppress(Exception):
                await self._send_all(
                    [st for st in list(self.push.streams.values())
                     if st.reg.node_id in session.nodes],
                    {"type": "untap", "id": tap_id})
        with contextlib.suppress(ConnectionResetError):
            await resp.write_eof()
        return resp

    @staticmethod
    async def _send_all(streams: list, msg: dict) -> None:
        text = json.dumps(msg, separators=(",", ":"))

        async def one(st: Any) -> None:
            try:
                await st.ws.send_str(text)
            except (ConnectionError, RuntimeError) as e:
                log.debug("tap message to %s failed: %s", st.reg.node_id, e)

        await asyncio.gather(*(one(s) for s in streams))


def _line(obj: dict) -> bytes:
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _unauthorized() -> web.Response:
    return web.json_response({"error": "missing or invalid token"}, status=401,
                             headers={"WWW-Authenticate": 'Bearer realm="meshlet"'})
