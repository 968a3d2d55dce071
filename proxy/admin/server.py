"""The sidecar's admin port (aiohttp): readiness, metrics, config and cluster views, drain.

aiohttp serves it because it is not on the request path; every answer reads live state at
request time, so what an operator sees is what the data path uses now.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web


def build_app(sidecar: Any) -> web.Application:
    app = web.Application()
    rt = sidecar.runtime

    async def ready(request: web.Request) -> web.Response:
        if sidecar.ready and not rt.draining:
            return web.Response(text="LIVE\n")
        reason = "draining" if rt.draining else sidecar.not_ready_reason()
        return web.Response(status=503, text=f"NOT READY: {reason}\n")

    async def metrics(request: web.Request) -> web.Response:
        body, ctype = sidecar.render_metrics()
        return web.Response(body=body, headers={"Content-Type": ctype})

    async def config_dump(request: web.Request) -> web.Response:
        return web.json_response(sidecar.config_dump())

    async def clusters(request: web.Request) -> web.Response:
        return web.json_response(sidecar.clusters_view())

    async def certs(request: web.Request) -> web.Response:
        return web.json_response(sidecar.certs_view())

    async def drain(request: web.Request) -> web.Response:
        sidecar.request_drain()
        return web.json_response({"draining": True, "at": time.time()})

    async def explain(request: web.Request) -> web.Response:
        return web.json_response(sidecar.explain(dict(request.query)))

    app.router.add_get("/healthz/ready", ready)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/stats/prometheus", metrics)
    app.router.add_get("/config_dump", config_dump)
    app.router.add_get("/clusters", clusters)
    app.router.add_get("/certs", certs)
    app.router.add_post("/drain", drain)
    app.router.add_post("/quitquitquit", drain)
    app.router.add_get("/explain", explain)
    return app
