"""The sample services (orders, inventory, payment) the demo and the tests run behind sidecars.

A small aiohttp app that tells who answered (service, version, the headers it saw) and offers
the behaviours a mesh test needs: chosen status codes, delays, flaky failures, large streamed
bodies both ways, WebSocket echo, and calls to other services through its own sidecar.
Run: ``python -m control_plane.demo.apps --name inventory --version v1 --port 8080``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import sys

from aiohttp import ClientSession, ClientTimeout, WSMsgType, web


def build_app(name: str, version: str, outbound: str = "", *, fail_percent: float = 0.0,
              delay_ms: float = 0.0) -> web.Application:
    """``fail_percent`` of all requests answer 500 and every request waits ``delay_ms`` first:
    a faulty version, for canary rollouts that must be rolled back."""
    middlewares = []
    if fail_percent > 0 or delay_ms > 0:
        @web.middleware
        async def faulty(request: web.Request, handler):  # type: ignore[no-untyped-def]
            if delay_ms > 0:
                await asyncio.sleep(delay_ms / 1000.0)
            if fail_percent > 0 and random.random() * 100.0 < fail_percent:
                return web.Response(status=500, text=f"{name} {version}: injected failure\n")
            return await handler(request)

        middlewares.append(faulty)
    app = web.Application(client_max_size=1 << 30, middlewares=middlewares)
    state = {"requests": 0, "flaky": 0, "delaying": 0}  # delaying: /delay calls held now

    def who(request: web.Request, **extra: object) -> web.Response:
        state["requests"] += 1
        return web.json_response(
            {
                "service": name,
                "version": version,
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "peer": "%s:%s" % (request.transport.get_extra_info("peername") or ("", 0))[:2]
                if request.transport
                else "",
                **extra,
            }
        )

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return who(request, body_len=len(body), body_sha256=hashlib.sha256(body).hexdigest())

    async def status(request: web.Request) -> web.Response:
        state["requests"] += 1
        code = int(request.match_info["code"])
        headers = {"x-served-by": f"{name}-{version}"}
        if request.query.get("retry_after"):
            headers["retry-after"] = request.query["retry_after"]
        return web.Response(status=code, text=f"{name} {version} {code}\n", headers=headers)

    async def delay(request: web.Request) -> web.Response:
        state["delaying"] += 1
        try:
            await asyncio.sleep(float(request.query.get("ms", "100")) / 1000.0)
        finally:
            state["delaying"] -= 1
        return who(request)

    async def flaky(request: web.Request) -> web.Response:
        """Fails the first ``n`` calls with ``code`` (default 503), then succeeds."""
        n = int(request.query.get("n", "1"))
        code = int(request.query.get("code", "503"))
        state["flaky"] += 1
        if state["flaky"] <= n:
            return web.Response(status=code, text="flaky\n")
        return who(request, flaky_calls=state["flaky"])

    async def reset_flaky(request: web.Request) -> web.Response:
        state["flaky"] = 0
        return web.json_response({"ok": True})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"service": name, "version": version, **state})

    async def download(request: web.Request) -> web.StreamResponse:
        """Streams ``size`` bytes in 64 KiB pieces, chunked (no content-length), ``pause_ms``
        apart (a slow stream, for timeouts that must cut a body)."""
        size = int(request.query.get("size", str(1 << 20)))
        pause = float(request.query.get("pause_ms", "0")) / 1000.0
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        piece = b"x" * 65536
        sent = 0
        while sent < size:
            n = min(len(piece), size - sent)
            await resp.write(piece[:n])
            sent += n
            if pause:
                await asyncio.sleep(pause)
        await resp.write_eof()
        return resp

    async def upload(request: web.Request) -> web.Response:
        """Reads the request body as a stream and reports its size and hash."""
        h = hashlib.sha256()
        total = 0
        async for chunk in request.content.iter_any():
            h.update(chunk)
            total += len(chunk)
        return who(request, body_len=total, body_sha256=h.hexdigest())

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == WSMsgType.TEXT:
                await sock.send_str(f"{name}:{msg.data}")
            elif msg.type == WSMsgType.BINARY:
                await sock.send_bytes(msg.data)
        return sock

    async def call(request: web.Request) -> web.Response:
        """Calls another service through this app's sidecar: /call/inventory/items."""
        target = request.match_info["target"]
        rest = request.match_info.get("rest", "")
        if not outbound:
            return web.Response(status=500, text="no outbound sidecar configured\n")
        fwd = {k: v for k, v in request.headers.items() if k.lower() in _PROPAGATE}
        async with (
            ClientSession(timeout=ClientTimeout(total=30)) as s,
            s.get(f"http://{outbound}/{rest}", headers={**fwd, "Host": target}) as r,
        ):
            text = await r.text()
            return web.json_response(
                {
                    "service": name,
                    "version": version,
                    "upstream_status": r.status,
                    "upstream_flags": r.headers.get("x-meshlet-response-flags", ""),
                    "upstream": _maybe_json(text),
                },
                status=200 if r.status < 500 else 502,
            )

    app.router.add_route("*", "/status/{code}", status)
    app.router.add_get("/delay", delay)
    app.router.add_get("/flaky", flaky)
    app.router.add_post("/flaky/reset", reset_flaky)
    app.router.add_get("/stats", stats)
    app.router.add_get("/download", download)
    app.router.add_post("/upload", upload)
    app.router.add_put("/upload", upload)
    app.router.add_get("/ws", ws)
    app.router.add_get("/call/{target}/{rest:.*}", call)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


_PROPAGATE = {
    "x-request-id",
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-user",
    "end-user",
}


def _maybe_json(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text


async def serve(
    name: str, version: str, host: str, port: int, outbound: str, port_file: str | None,
    fail_percent: float = 0.0, delay_ms: float = 0.0,
) -> None:
    runner = web.AppRunner(build_app(name, version, outbound, fail_percent=fail_percent,
                                     delay_ms=delay_ms), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    if port_file:
        tmp = port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(bound))
        os.replace(tmp, port_file)
    print(f"{name} {version} listening on {host}:{bound}", file=sys.stderr, flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--name", required=True)
    p.add_argument("--version", default="v1")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--outbound", default="", help="host:port of this app's sidecar outbound")
    p.add_argument("--port-file")
    p.add_argument("--fail-percent", type=float, default=0.0,
                   help="answer this share of requests (0-100) with 500: a faulty version")
    p.add_argument("--delay-ms", type=float, default=0.0,
                   help="wait this long before every answer: a slow version")
    a = p.parse_args(argv)
    random.seed()
    try:
        import uvloop

        uvloop.run(serve(a.name, a.version, a.host, a.port, a.outbound, a.port_file,
                         a.fail_percent, a.delay_ms))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
