"""The request path: route, pick an endpoint, forward, stream the answer back, account for it.

One coroutine per request. It reads the route table once at the start and keeps it (Envoy's
rule), so a config swap never changes a request in flight. Every failure becomes a local reply
with a response flag at this boundary; nothing raises past it. Resilience decisions (timeouts,
retries, breakers, ...) come from the route's compiled policy; this module only drives them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

from control_plane.api.hosts import split_host_port
from proxy.http1 import parser as h1
from proxy.routes import match
from proxy.server import local_reply
from proxy.server.channel import ChannelClosed
from proxy.server.headers import SPOOFABLE_INBOUND, apply_ops, request_head, response_head
from proxy.server.upstream import UpstreamReset

log = logging.getLogger("meshlet.proxy")

_rand = random.random
_monotonic = time.monotonic
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class Timeout(Exception):
    pass


class Exchange:
    """What one request did, for metrics and the access log (filled as it goes)."""

    __slots__ = ("start", "status", "flags", "upstream", "cluster", "service", "route",
                 "req_bytes", "resp_bytes", "upstream_ms", "attempts", "request_id", "grpc",
                 "peer", "mtls", "endpoint", "trace")

    def __init__(self, start: float) -> None:
        self.start = start
        self.status = 0
        self.flags = "-"
        self.upstream = ""
        self.cluster = ""
        self.service = ""
        self.route = ""
        self.req_bytes = 0
        self.resp_bytes = 0
        self.upstream_ms = -1.0
        self.attempts = 0
        self.request_id = ""
        self.grpc = ""
        self.peer = ""  # the other side's SPIFFE ID (source on inbound, destination on outbound)
        self.mtls = False
        self.endpoint: Any = None
        self.trace: Any = None


class Forwarder:
    """Both directions of one sidecar: ``outbound`` (app -> mesh) and ``inbound`` (peer -> app)."""

    def __init__(self, runtime: Any) -> None:
        self.rt = runtime

    # -- entry points ------------------------------------------------------------------------------
    async def outbound(self, down: Any, head: Any) -> None:
        rt = self.rt
        ex = Exchange(_monotonic())
        table = rt.table
        host, port = split_host_port(head.host)
        res = match.find(table, host, head.path, head.query, head.method, head.host, "http", head.headers)
        if res is None or res[1] is None:
            ex.service = res[0].service if res is not None else host
            return self._local(down, head, ex, 404, "NR", "outbound")
        vh, route, block = res
        ex.service = vh.service
        ex.route = route.name
        if route.direct_response is not None:
            status, body = route.direct_response
            return self._local(down, head, ex, status, "-", "outbound", body)
        dest = match.pick_destination(route, _rand())
        cname = dest.clusters.get(port, dest.default_cluster) if dest.clusters else dest.default_cluster
        cluster = table.clusters.get(cname)
        if cluster is None:
            return self._local(down, head, ex, 503, "NC", "outbound")
        ex.cluster = cname
        policy = rt.policy_for(route, cluster)
        extra = self._outbound_headers(head, route, dest, policy, ex)
        target = head.target
        if route.rewrite_uri is not None or route.rewrite_uri_regex is not None:
            new_path = match.rewrite_path(route, block, head.path)
            target = new_path + ("?" + head.query if head.query else "")
        req_headers = head.headers
        if route.request_headers or dest.request_headers:
            req_headers = apply_ops(apply_ops(req_headers, route.request_headers), dest.request_headers)
        if route.rewrite_authority:
            req_headers = [(n, route.rewrite_authority if n == "host" else v) for n, v in req_headers]
        if route.mirror is not None:
            rt.mirror(route.mirror, head, target, req_headers, down.body)
        resp_ops = (route.response_headers, dest.response_headers)
        await self._forward(down, head, target, req_headers, extra, cluster, policy, ex, "outbound", resp_ops)

    async def inbound(self, down: Any, head: Any) -> None:
        rt = self.rt
        ex = Exchange(_monotonic())
        ex.service = rt.local_service_fqdn
        ex.peer = down.peer_principal
        ex.mtls = down.tls and bool(down.peer_principal)
        cluster = rt.inbound_cluster
        ex.cluster = cluster.name
        denied = rt.authorize(down, head)
        if denied is not None:
            return self._local(down, head, ex, 403, "RBAC", "inbound", denied)
        extra = self._inbound_headers(down, head, ex)
        headers = head.headers
        if any(n in SPOOFABLE_INBOUND for n, _ in headers):
            headers = [(n, v) for n, v in headers if n not in SPOOFABLE_INBOUND]
        await self._forward(down, head, head.target, headers, extra, cluster, rt.inbound_policy, ex,
                            "inbound", None)

    # -- headers -----------------------------------------------------------------------------------
    def _outbound_headers(self, head: Any, route: Any, dest: Any, policy: Any, ex: Exchange) -> list[str]:
        extra = []
        rid = head.get("x-request-id")
        if not rid:
            rid = self.rt.new_request_id()
            extra.append("x-request-id: " + rid)
        ex.request_id = rid
        if head.get("x-forwarded-proto") is None:
            extra.append("x-forwarded-proto: http")
        if policy.timeout:
            extra.append("x-envoy-expected-rq-timeout-ms: %d" % int(policy.timeout * 1000))
        return extra

    def _inbound_headers(self, down: Any, head: Any, ex: Exchange) -> list[str]:
        extra = []
        rid = head.get("x-request-id")
        if not rid:
            rid = self.rt.new_request_id()
            extra.append("x-request-id: " + rid)
        ex.request_id = rid
        xff = head.get("x-forwarded-for")
        extra.append("x-forwarded-for: " + (xff + ", " + down.peer[0] if xff else down.peer[0]))
        if head.get("x-forwarded-proto") is None:
            extra.append("x-forwarded-proto: " + ("https" if down.tls else "http"))
        if down.peer_principal:
            extra.append(f"x-forwarded-client-cert: By={self.rt.spiffe_id};URI={down.peer_principal}")
        return extra

    # -- the exchange ------------------------------------------------------------------------------
    async def _forward(
        self, down: Any, head: Any, target: str, headers: list[tuple[str, str]], extra: list[str],
        cluster: Any, policy: Any, ex: Exchange, reporter: str, resp_ops: Any,
    ) -> None:
        rt = self.rt
        method = head.method
        body = down.body
        framing: list[str] = []
        if head.chunked:
            framing.append("transfer-encoding: chunked")
        elif head.content_length >= 0 and (head.content_length > 0 or method in ("POST", "PUT", "PATCH")):
            framing.append("content-length: %d" % head.content_length)
        if head.upgrade == "websocket":
            framing.append("connection: upgrade")
            framing.append("upgrade: websocket")
        up_bytes = request_head(method, target, headers, head.connection, extra + framing)
        idempotent = method in IDEMPOTENT or head.get("idempotency-key") is not None
        deadline = ex.start + policy.timeout if policy.timeout else 0.0
        tried: set[str] = set()
        attempt = 0
        while True:
            attempt += 1
            ex.attempts = attempt
            ep = rt.pick_endpoint(cluster, tried)
            if ep is None:
                flag = "UH" if not tried else ("URX" if attempt > 2 else "UF")
                return self._local(down, head, ex, 503, flag, reporter)
            tried.add(ep.key)
            ex.upstream = ep.key
            ex.endpoint = ep
            if reporter == "outbound":
                ex.peer = ep.spiffe_id
                ex.mtls = ep.tls
            pool = rt.pool(ep, cluster)
            remaining = deadline - _monotonic() if deadline else 0.0
            if deadline and remaining <= 0:
                return self._local(down, head, ex, 504, "UT", reporter)
            try:
                conn, reused = await pool.acquire(
                    min(cluster.connect_timeout, remaining) if deadline else cluster.connect_timeout
                )
            except (OSError, TimeoutError, ConnectionError) as exc:
                rt.endpoint_failed(cluster, ep, gateway=True)
                log.debug("connect to %s failed: %r", ep.key, exc)
                if attempt <= policy.connect_retries and body_untouched(body):
                    continue
                return self._local(down, head, ex, 503, "URX" if attempt > 1 else "UF", reporter)
            rt.endpoint_started(ep)
            try:
                result = await self._attempt(down, head, conn, up_bytes, body, deadline, ex, reporter,
                                             resp_ops, cluster, ep)
            finally:
                rt.endpoint_finished(ep)
            if result is None:
                if conn.tunnel is not None:
                    pool.active -= 1  # the connection now belongs to the tunnel, not the pool
                else:
                    pool.release(conn)
                return
            # the attempt failed before any response byte reached the client
            conn.abort()
            pool.release(conn)
            kind, detail = result
            if kind == "timeout":
                rt.endpoint_failed(cluster, ep, gateway=True)
                return self._local(down, head, ex, 504, "UT", reporter)
            if kind == "downstream":
                ex.status = 0
                ex.flags = "DC"
                self._account(ex, head, reporter)
                return
            rt.endpoint_failed(cluster, ep, gateway=True)
            # A reused keep-alive connection the upstream closed just before our write is the
            # classic stale-pool race: the request provably got no answer; retry it once when
            # that is safe (idempotent, body not consumed).
            if kind == "reset" and reused and idempotent and body_untouched(body) and attempt < 3:
                tried.discard(ep.key)
                continue
            if attempt <= policy.connect_retries and kind == "reset" and not detail and body_untouched(body) and idempotent:
                continue
            return self._local(down, head, ex, 503 if kind == "reset" else 502, "UC" if kind == "reset" else "UF", reporter)

    async def _attempt(
        self, down: Any, head: Any, conn: Any, up_bytes: bytes, body: Any, deadline: float,
        ex: Exchange, reporter: str, resp_ops: Any, cluster: Any, ep: Any,
    ) -> tuple[str, Any] | None:
        """One try. None when the response was (at least partly) sent; else (kind, detail)."""
        t_sent = _monotonic()
        fut = conn.start(up_bytes, head.method)
        pump = None
        if body is not None:
            if head.expect_continue:
                down.write(_CONTINUE)
            pump = asyncio.get_running_loop().create_task(_pump(body, conn, head.chunked))
        try:
            if deadline:
                remaining = deadline - _monotonic()
                if remaining <= 0:
                    raise TimeoutError
                async with asyncio.timeout(remaining):
                    resp = await fut
            else:
                resp = await fut
        except TimeoutError:
            _cancel(pump)
            return ("timeout", None)
        except UpstreamReset as exc:
            _cancel(pump)
            return ("reset", conn.got_bytes or str(exc).startswith("malformed"))
        except asyncio.CancelledError:
            _cancel(pump)
            conn.abort()
            ex.status = 0
            ex.flags = "DC"
            self._account(ex, head, reporter)
            raise
        ex.upstream_ms = (_monotonic() - t_sent) * 1000.0
        status = resp.status
        ex.status = status
        self.rt.endpoint_result(cluster, ep, status)
        # -- response head
        extra = []
        if reporter == "outbound":
            extra.append("x-envoy-upstream-service-time: %d" % int(ex.upstream_ms))
        keep = down.keep_alive and not self.rt.draining
        rbody = conn.body
        mode = conn.mode
        resp_headers = resp.headers
        if resp_ops is not None and (resp_ops[0] or resp_ops[1]):
            resp_headers = apply_ops(apply_ops(resp_headers, resp_ops[0]), resp_ops[1])
        chunk_out = False
        if status == 101:
            extra.append("connection: upgrade")
            extra.append("upgrade: " + (resp.get("upgrade") or "websocket"))
        elif mode == h1.MODE_LENGTH:
            extra.append("content-length: %d" % resp.content_length)
        elif mode == h1.MODE_CHUNKED or mode == h1.MODE_CLOSE:
            if head.version == 11:
                extra.append("transfer-encoding: chunked")
                chunk_out = True
            else:
                keep = False
        elif mode == h1.MODE_NONE and head.method == "HEAD" and resp.content_length >= 0:
            extra.append("content-length: %d" % resp.content_length)
        if not keep and status != 101:
            extra.append("connection: close")
            down.keep_alive = False
        out_head = response_head(status, resp.reason, resp_headers, resp.connection, extra,
                                 version=head.version)
        if status == 101:
            down.write(out_head)
            _tunnel(down, conn)
            ex.flags = "-"
            self._account(ex, head, reporter)
            return None
        # -- response body, with a fast path for a body that is already complete
        try:
            data = rbody.read_nowait()
            if data is not None and rbody.at_eof and not chunk_out:
                down.write(out_head + data if data else out_head)
                ex.resp_bytes = len(data)
            else:
                down.write(out_head)
                total = 0
                while True:
                    if data is None:
                        data = await rbody.read()
                    if not data:
                        break
                    total += len(data)
                    down.write(h1.encode_chunk(data) if chunk_out else data)
                    data = None
                    if down._paused_writing:
                        await down.drain()
                if chunk_out:
                    down.write(h1.encode_last_chunk(rbody.trailers))
                ex.resp_bytes = total
        except ChannelClosed:
            # the upstream reset mid-body: the client must see a broken response, not a short one
            _cancel(pump)
            down.keep_alive = False
            down.close()
            ex.flags = "UPE"
            self._account(ex, head, reporter)
            return None
        if pump is not None:
            if not pump.done():
                # the upstream answered before reading the whole request body
                _cancel(pump)
                down.keep_alive = False
                conn.keep_alive = False
            ex.req_bytes = body.total
        self._account(ex, head, reporter)
        return None

    # -- local replies and accounting --------------------------------------------------------------
    def _local(self, down: Any, head: Any, ex: Exchange, status: int, flag: str, reporter: str,
               body: str | None = None) -> None:
        ex.status = status
        ex.flags = flag
        close = not down.keep_alive or (down.body is not None and not down.body.at_eof) or self.rt.draining
        if close:
            down.keep_alive = False
        down.write(local_reply.render(status, flag, body, close=close, head_only=head.method == "HEAD",
                                      version=head.version))
        self.rt.count_local_reply(status, flag)
        self._account(ex, head, reporter)

    def _account(self, ex: Exchange, head: Any, reporter: str) -> None:
        self.rt.record(ex, head, reporter)


def body_untouched(body: Any) -> bool:
    return body is None or body.total == 0


def _cancel(task: Any) -> None:
    if task is not None and not task.done():
        task.cancel()


async def _pump(body: Any, conn: Any, chunked: bool) -> None:
    """Request body -> upstream, re-chunked when chunked (never raw client chunk bytes)."""
    try:
        while True:
            data = await body.read()
            if not data:
                break
            conn.write(h1.encode_chunk(data) if chunked else data)
            if conn._paused_writing:
                await conn.drain()
        if chunked:
            conn.write(h1.encode_last_chunk(body.trailers))
    except ChannelClosed:
        conn.abort()


def _tunnel(down: Any, conn: Any) -> None:
    def to_down(data: bytes) -> None:
        if data:
            down.write(data)
        else:
            down.close()

    conn.tunnel = to_down
    if conn.buf:
        down.write(conn.buf)
        conn.buf = b""
    down.start_tunnel(conn)
