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
from proxy.authz.engine import RequestAttrs, merged_header_getter
from proxy.authz.normalize import normalize_path, normalize_target
from proxy.resilience.attempts import BACKOFF, GIVE_UP, RETRY_NOW, STREAM, TRY, Attempts, Env
from proxy.resilience.deadline import effective_timeout, incoming_deadline
from proxy.routes import match
from proxy.server import local_reply
from proxy.server.channel import ChannelClosed, MalformedBody
from proxy.server.h2 import grpc as h2grpc
from proxy.server.headers import SPOOFABLE_INBOUND, apply_ops
from proxy.server.pool_limits import PendingTimeout, PoolOverflow
from proxy.server.upstream import UpstreamProtocolError, UpstreamReset
from proxy.telemetry.tracing import PROPAGATION_HEADERS, continue_trace, inject, new_context

_PROPAGATION = frozenset(PROPAGATION_HEADERS)
# Every request header the forwarder reads, collected in one pass over the head (first value
# wins, as head.get) instead of one scan of the header list per name.
_WANTED = frozenset(
    {
        "x-request-id",
        "x-forwarded-proto",
        "x-forwarded-for",
        "x-envoy-retry-on",
        "x-envoy-retry-grpc-on",
        "x-envoy-max-retries",
        "x-envoy-expected-rq-timeout-ms",
        "idempotency-key",
        "content-type",
        "grpc-timeout",
        *PROPAGATION_HEADERS,
    }
)

log = logging.getLogger("meshlet.proxy")

_rand = random.random
_monotonic = time.monotonic
_wallclock = time.time


# Host header -> split_host_port(Host): a handful of distinct values per sidecar, so the split is
# remembered (bounded: cleared when full)
_HOST_PORT: dict[str, tuple[str, int]] = {}
_HOST_PORT_MAX = 1024


def _host_port(authority: str) -> tuple[str, int]:
    hp = _HOST_PORT.get(authority)
    if hp is None:
        hp = split_host_port(authority)
        if len(_HOST_PORT) >= _HOST_PORT_MAX:
            _HOST_PORT.clear()
        _HOST_PORT[authority] = hp
    return hp


# traceparent flags suffix by (sampled | random-trace-id << 1), as inject() formats them
_FLAGS = ("-00", "-01", "-02", "-03")


class Exchange:
    """What one request did, for metrics and the access log (filled as it goes)."""

    __slots__ = (
        "start",
        "status",
        "flags",
        "upstream",
        "cluster",
        "service",
        "route",
        "req_bytes",
        "resp_bytes",
        "upstream_ms",
        "attempts",
        "request_id",
        "grpc",
        "peer",
        "mtls",
        "endpoint",
        "trace",
        "hdrs",
        "downstream",
        "fallback",
    )

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
        self.hdrs: dict[str, str] = {}
        self.downstream: tuple[str, int] = ("", 0)  # the caller's address, for the access log
        self.fallback: Any = None  # the destination's FallbackPolicy, set once policy is known


def _scan(headers: list[tuple[str, str]], ex: Exchange) -> bool:
    """One pass: the headers the forwarder reads into ``ex.hdrs`` (the first value of each);
    True when a sidecar-only (spoofable) header is present."""
    found: dict[str, str] = {}
    spoofed = False
    for name, value in headers:
        if name in _WANTED:
            if name not in found:
                found[name] = value
        elif name in SPOOFABLE_INBOUND:
            spoofed = True
    ex.hdrs = found
    return spoofed


class Forwarder:
    """Both directions of one sidecar: ``outbound`` (app -> mesh) and ``inbound`` (peer -> app)."""

    def __init__(self, runtime: Any) -> None:
        self.rt = runtime
        self.env = _RuntimeEnv(runtime)

    # -- entry points ------------------------------------------------------------------------------
    async def outbound(self, down: Any, head: Any) -> None:
        rt = self.rt
        ex = Exchange(_monotonic())
        ex.downstream = down.peer
        _scan(head.headers, ex)
        if head.method == "CONNECT":
            # No route ever matches a CONNECT here (tunnels are HBONE's, on their own port):
            # Envoy's answer without a connect_matcher route is 404 NR. Nothing is forwarded,
            # and the connection closes, since the client may already be sending tunnel bytes.
            ex.service = head.host
            down.keep_alive = False
            return self._local(down, head, ex, 404, "NR", "outbound")
        table = rt.table
        host, port = _host_port(head.host)
        res = match.find(
            table, host, head.path, head.query, head.method, head.host, "http", head.headers
        )
        if res is None and down.original_dst is not None:
            # captured: the Host may be an address; else where the app dialled decides
            dst = down.original_dst
            svc = table.by_address.get(f"{dst[0]}:{dst[1]}") or table.by_address.get(host)
            if svc is not None:
                res = match.find(
                    table, svc, head.path, head.query, head.method, head.host, "http", head.headers
                )
            else:
                return await self._passthrough(down, head, ex, dst)
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
        cname = (
            dest.clusters.get(port, dest.default_cluster) if dest.clusters else dest.default_cluster
        )
        cluster = table.clusters.get(cname)
        if cluster is None:
            return self._local(down, head, ex, 503, "NC", "outbound")
        ex.cluster = cname
        policy = rt.policies.for_route(route, cluster)
        if policy.fault is not None:
            delay, abort, grpc_abort = policy.fault.decide(rt.random)
            if delay > 0:
                await asyncio.sleep(delay)
                ex.flags = "DI"
            if abort is not None:
                return self._local(down, head, ex, abort, "FI", "outbound", grpc=grpc_abort)
        extra = self._outbound_headers(head, route, dest, policy, ex)
        target = head.target
        if route.rewrite_uri is not None or route.rewrite_uri_regex is not None:
            new_path = match.rewrite_path(route, block, head.path)
            target = new_path + ("?" + head.query if head.query else "")
        req_headers = head.headers
        if route.request_ops or dest.request_ops:
            req_headers = apply_ops(
                apply_ops(req_headers, route.request_headers), dest.request_headers
            )
        if route.rewrite_authority:
            req_headers = [
                (n, route.rewrite_authority if n == "host" else v) for n, v in req_headers
            ]
        if route.mirror is not None:
            rt.mirror(route.mirror, head, target, req_headers, down.body)
        # None when neither level has response header operations (decided at config time)
        resp_ops = (
            (route.response_headers, dest.response_headers)
            if route.response_ops or dest.response_ops
            else None
        )
        await self._forward(
            down, head, target, req_headers, extra, cluster, policy, ex, "outbound", resp_ops
        )

    async def _passthrough(self, down: Any, head: Any, ex: Exchange, dst: tuple[str, int]) -> None:
        """A captured request for an address outside the mesh goes where the app sent it,
        unchanged but for hop-by-hop headers (Istio's PassthroughCluster, ALLOW_ANY)."""
        cluster = self.rt.passthrough_cluster(dst)
        ex.service = cluster.service
        ex.cluster = cluster.name
        await self._forward(
            down,
            head,
            head.target,
            head.headers,
            [],
            cluster,
            self.rt.policies.inbound(cluster),
            ex,
            "outbound",
            None,
        )

    async def inbound(self, down: Any, head: Any) -> None:
        rt = self.rt
        ex = Exchange(_monotonic())
        ex.downstream = down.peer
        spoofed = _scan(head.headers, ex)
        ex.service = rt.local_service_fqdn
        ex.peer = down.peer_principal
        ex.mtls = down.tls and bool(down.peer_principal)
        cluster = rt.inbound_cluster
        ex.cluster = cluster.name
        # what is authorized is what is forwarded: normalize first, refuse what cannot be
        target = head.target
        absolute = False
        if target[:1] == "/":
            norm = normalize_target(target)
        elif target == "*":
            norm = ("*", "")
        else:  # absolute-form: normalized the same way, forwarded in origin-form
            p = normalize_path(head.path)
            norm = (p, head.query) if p is not None else None
            absolute = True
        if norm is None:
            return self._local(down, head, ex, 400, "DPE", "inbound", "Bad Request")
        path, query = norm
        if path != head.path or target[:1] not in ("/", "*"):
            target = path + "?" + query if query else path
        authz = rt.authz
        if authz is not None and not authz.empty:
            principal = down.peer_principal
            decision = authz.check(
                RequestAttrs(
                    source_principal=principal[9:]
                    if principal.startswith("spiffe://")
                    else principal,
                    source_ip=down.peer[0],
                    method=head.method,
                    host=head.host,
                    port=cluster.port,
                    path=path,
                    headers=merged_header_getter(head.headers),
                    mtls=ex.mtls,
                )
            )
            if not decision.allowed:
                ex.route = decision.policy
                return self._local(down, head, ex, 403, "RBAC", "inbound", "RBAC: access denied")
        limits = rt.inbound_limits
        if limits is not None:
            # the workload's own rate limits, after authorization (a denied call spends nothing)
            refused = limits.check(head.method, path, down.peer_principal)
            if refused is not None:
                ex.route = refused[0]
                rt.count_protection(refused, "inbound_rate_limited")
                return self._local(down, head, ex, 429, "RL", "inbound")
        extra = self._inbound_headers(down, head, ex)
        headers = head.headers
        if spoofed:
            headers = [(n, v) for n, v in headers if n not in SPOOFABLE_INBOUND]
        if absolute:
            # RFC 9112 §3.2.2: the target's authority replaces Host (the parser put it in
            # head.host, which authorization saw); the app gets what was authorized
            headers = [(n, v) for n, v in headers if n != "host"]
            headers.insert(0, ("host", head.host))
        # the caller's remaining deadline (x-envoy-expected-rq-timeout-ms) is honoured in _tries
        await self._forward(
            down, head, target, headers, extra, cluster, rt.policies.inbound(cluster), ex,
            "inbound", None,
        )

    # -- headers -----------------------------------------------------------------------------------
    def _trace(self, head: Any, ex: Exchange, extra: list[str]) -> None:
        """Continue (or start) the trace: a new span id per hop, in the format that came in."""
        sampler = self.rt.sampler
        if sampler is None:
            return
        hdrs = ex.hdrs
        if (
            "traceparent" in hdrs
            or "b3" in hdrs
            or "x-b3-traceid" in hdrs
            or "x-b3-sampled" in hdrs
            or "x-b3-flags" in hdrs
        ):
            ctx = continue_trace(hdrs.get, sampler)
        else:
            # none of the headers extract() starts from: it would return None (a new root)
            ctx = new_context(None, sampler)
        ex.trace = ctx
        if ctx.fmt == "w3c":
            # inject()'s W3C case, formatted straight into the head line
            extra.append(
                "traceparent: 00-"
                + ctx.trace_id
                + "-"
                + ctx.span_id
                + _FLAGS[(1 if ctx.sampled else 0) | (2 if ctx.random_id else 0)]
            )
            if ctx.tracestate:
                extra.append("tracestate: " + ctx.tracestate)
            return
        for name, value in inject(ctx):
            extra.append(name + ": " + value)

    def _outbound_headers(
        self, head: Any, route: Any, dest: Any, policy: Any, ex: Exchange
    ) -> list[str]:
        extra: list[str] = []
        self._trace(head, ex, extra)
        hdrs = ex.hdrs
        rid = hdrs.get("x-request-id")
        if not rid:
            rid = self.rt.new_request_id()
            extra.append("x-request-id: " + rid)
        ex.request_id = rid
        if hdrs.get("x-forwarded-proto") is None:
            extra.append("x-forwarded-proto: http")
        return extra

    def _inbound_headers(self, down: Any, head: Any, ex: Exchange) -> list[str]:
        extra: list[str] = []
        self._trace(head, ex, extra)
        hdrs = ex.hdrs
        rid = hdrs.get("x-request-id")
        if not rid:
            rid = self.rt.new_request_id()
            extra.append("x-request-id: " + rid)
        ex.request_id = rid
        xff = hdrs.get("x-forwarded-for")
        extra.append("x-forwarded-for: " + (xff + ", " + down.peer[0] if xff else down.peer[0]))
        if hdrs.get("x-forwarded-proto") is None:
            extra.append("x-forwarded-proto: " + ("https" if down.tls else "http"))
        if down.peer_principal:
            extra.append(
                f"x-forwarded-client-cert: By={self.rt.spiffe_id};URI={down.peer_principal}"
            )
        return extra

    # -- the exchange ------------------------------------------------------------------------------
    async def _forward(
        self,
        down: Any,
        head: Any,
        target: str,
        headers: list[tuple[str, str]],
        extra: list[str],
        cluster: Any,
        policy: Any,
        ex: Exchange,
        reporter: str,
        resp_ops: Any,
    ) -> None:
        """Local protections, then tries until one answers or the retry policy says stop."""
        dest = policy.dest
        if dest is None:
            await self._tries(
                down, head, target, headers, extra, cluster, policy, ex, reporter, resp_ops
            )
            return
        ex.fallback = dest.fallback
        if dest.limiter is not None:
            wait = dest.limiter.acquire()
            if wait < 0:
                self.rt.count_protection(dest, "rate_limited")
                return self._local(down, head, ex, 429, "RL", reporter)
            if wait > 0:
                await asyncio.sleep(wait)
        breaker = dest.breaker
        if breaker is not None and not breaker.try_acquire():
            self.rt.count_protection(dest, "breaker_open")
            return self._local(down, head, ex, 503, "UO", reporter)
        bulkhead = dest.bulkhead
        if bulkhead is not None and not bulkhead.try_acquire():
            if not await _wait_bulkhead(bulkhead):
                if breaker is not None:
                    breaker.release()
                self.rt.count_protection(dest, "bulkhead_full")
                return self._local(down, head, ex, 503, "UO", reporter)
        dest.budget.deposit()
        ok = False
        try:
            await self._tries(
                down, head, target, headers, extra, cluster, policy, ex, reporter, resp_ops
            )
            ok = 0 < ex.status < 500 and ex.flags in ("-", "DC")
        finally:
            if bulkhead is not None:
                bulkhead.release()
            if breaker is not None:
                if ex.flags == "DC":
                    breaker.release()  # the caller went away: neither a success nor a failure
                else:
                    breaker.on_result(_monotonic() - ex.start, not ok)
            if dest.tracker is not None and ok:
                dest.tracker.observe(_monotonic() - ex.start)

    async def _tries(
        self,
        down: Any,
        head: Any,
        target: str,
        headers: list[tuple[str, str]],
        extra: list[str],
        cluster: Any,
        policy: Any,
        ex: Exchange,
        reporter: str,
        resp_ops: Any,
    ) -> None:
        """Execute the attempt machine's actions (proxy/resilience/attempts.py) until the
        request is answered: this shell picks endpoints, dials, sends and waits; every
        decision (retry, back-off, deadline, hedge, which local reply) is the machine's."""
        rt = self.rt
        outbound = reporter == "outbound"
        m = _machine(down, head, policy, ex, outbound, self.env)
        framing = _framing(head)
        outlier = policy.outlier
        h2 = head.version == 20
        sent_continue = False
        try:
            while True:
                ep = rt.pick_endpoint(cluster, m.tried, outlier)
                act = m.begin(ep.key if ep is not None else None)
                ex.attempts = m.attempt
                if ep is not None:
                    ex.upstream = ep.key
                    ex.endpoint = ep
                    if outbound:
                        ex.peer = ep.spiffe_id  # outbound, the peer is the destination
                        ex.mtls = ep.tls
                if act == GIVE_UP:
                    return self._local(down, head, ex, m.status, m.flag, reporter)
                up_extra = m.try_headers(extra, framing)
                pool = rt.pool(ep, cluster, h2 and (m.grpc or ep.tls))
                # an idle keep-alive connection without a coroutine round trip when there is one
                take = getattr(pool, "take_idle", None)
                conn = take() if take is not None else None
                reused = True
                if conn is None:
                    conn, reused, act = await self._connect(pool, cluster, m, ep, outlier)
                if act == TRY:
                    source = m.source
                    if source is not None and head.expect_continue and not sent_continue:
                        down.send_continue()
                        sent_continue = True
                    delay = m.hedge_delay(source is not None)
                    if delay is not None:
                        act = await self._hedged(
                            down, head, conn, pool, ep, delay, cluster, target, headers,
                            up_extra, ex, reporter, resp_ops, outlier, m,
                        )
                    else:
                        rt.endpoint_started(ep)
                        try:
                            result = await self._attempt(
                                down, head, conn, target, headers, up_extra, source, ex,
                                reporter, resp_ops, ep, outlier, m,
                            )
                        finally:
                            rt.endpoint_finished(ep)
                        act = self._settle(down, head, conn, pool, ep, reused, result, ex,
                                           reporter, outlier, m)
                if act == BACKOFF:
                    if m.delay > 0:
                        await asyncio.sleep(m.delay)
                elif act == GIVE_UP:
                    return self._local(down, head, ex, m.status, m.flag, reporter)
                elif act != RETRY_NOW:
                    return
        finally:
            if m.slot is not None:
                m.release()

    async def _connect(
        self, pool: Any, cluster: Any, m: Attempts, ep: Any, outlier: Any
    ) -> tuple[Any, bool, int]:
        """A new (or queued-for) connection for this try: (conn, reused, the machine's action)."""
        t = m.timeout
        ct = cluster.connect_timeout
        try:
            conn, reused = await pool.acquire(min(ct, t) if t else ct, t)
        except PoolOverflow:  # a connectionPool threshold (Envoy's circuit breaker)
            return None, False, m.on_pool_overflow()  # x-envoy-overloaded
        except PendingTimeout:
            return None, False, m.on_pending_timeout()
        except (OSError, TimeoutError, ConnectionError) as exc:
            log.debug("connect to %s failed: %r", ep.key, exc)
            self.rt.endpoint_outcome(outlier, ep, None, True)
            return None, False, m.on_connect_failed()
        return conn, reused, TRY

    def _settle(
        self, down: Any, head: Any, conn: Any, pool: Any, ep: Any, reused: bool, result: Any,
        ex: Exchange, reporter: str, outlier: Any, m: Attempts,
    ) -> int:
        """After an unhedged try: the connection back to its pool, and the machine's action
        (STREAM: the request is done)."""
        if result is None:
            if conn.tunnel is not None:
                pool.active -= 1  # the connection now belongs to the tunnel, not the pool
            else:
                pool.release(conn)
            return STREAM
        # the try failed before any response byte reached the client
        conn.abort()
        pool.release(conn)
        kind = result[0]
        if kind == "retry":  # a response the machine retries (already decided and budgeted)
            return BACKOFF
        if kind == "malformed":  # the client's body broke its framing: its error, not ours
            down.keep_alive = False
            self._local(down, head, ex, 400, "DPE", reporter, "Bad Request")
            return STREAM
        self.rt.endpoint_outcome(outlier, ep, None, True)
        if kind == "upe":
            # the upstream's response broke HTTP/1.1: a reset with reason "protocol error"
            return m.on_protocol_error()
        if kind == "timeout":
            return m.on_try_timeout()
        # the connection closed or broke before a response head (result[1]: bytes came back)
        return m.on_reset(ep.key, reused, result[1])

    async def _hedged(
        self, down: Any, head: Any, conn: Any, pool: Any, ep: Any, delay: float, cluster: Any,
        target: str, headers: list[tuple[str, str]], up_extra: list[str], ex: Exchange,
        reporter: str, resp_ops: Any, outlier: Any, m: Attempts,
    ) -> int:
        """The first try, hedged: each time ``delay`` (the observed p95, or a fixed delay) passes
        without an answer, another copy goes to an endpoint that has none while the machine
        allows (``maxHedges``, each paid from the retry budget); the first response wins and
        the other connections are aborted."""
        rt = self.rt
        gate = _Gate()
        gate.conns.append(conn)
        loop = asyncio.get_running_loop()
        tries = [(conn, pool, ep)]
        rt.endpoint_started(ep)
        tasks = [loop.create_task(self._attempt(
            down, head, conn, target, headers, up_extra, None, ex, reporter, resp_ops, ep,
            outlier, m, gate,
        ))]
        try:
            while m.hedge_armed():
                done, _ = await asyncio.wait(tasks, timeout=delay)
                if done or gate.winner is not None or not m.on_hedge_timer():
                    break
                ep2 = rt.pick_endpoint(cluster, m.tried, outlier)
                if ep2 is None or ep2.key in m.tried:
                    break  # every endpoint already has a copy of this request
                pool2 = rt.pool(ep2, cluster)
                try:
                    conn2, _ = await pool2.acquire(cluster.connect_timeout)
                except (OSError, TimeoutError, ConnectionError, PoolOverflow):
                    continue
                if gate.winner is not None:
                    pool2.release(conn2)
                    break
                m.tried.add(ep2.key)
                rt.count_protection(m.dest, "hedge")
                tries.append((conn2, pool2, ep2))
                gate.conns.append(conn2)
                rt.endpoint_started(ep2)
                tasks.append(loop.create_task(self._attempt(
                    down, head, conn2, target, headers,
                    up_extra + ["x-envoy-attempt-count: %d" % (m.hedges + 1)], None, ex,
                    reporter, resp_ops, ep2, outlier, m, gate,
                )))
            results = await asyncio.gather(*tasks)
        except asyncio.CancelledError:
            for t in tasks:
                t.cancel()
            for c, p, _ep in tries:
                c.abort()
                p.release(c)
            raise
        finally:
            for _, _, e in tries:
                rt.endpoint_finished(e)
        return _hedge_outcome(tries, results, m)

    async def _attempt(
        self, down: Any, head: Any, conn: Any, target: str, headers: list[tuple[str, str]],
        up_extra: list[str], source: Any, ex: Exchange, reporter: str, resp_ops: Any, ep: Any,
        outlier: Any, m: Attempts, gate: Any = None,
    ) -> tuple[str, Any] | None:
        """One try. None when the response was (at least partly) sent; else why it failed.

        With a ``gate`` this try races a hedge: the first response head claims the gate (which
        aborts the other try's connection); the loser returns ("lost", ...)."""
        t_sent = _monotonic()
        fut = conn.start_request(head.method, target, headers, head.connection, up_extra, m.drop)
        pump = _send_body(source, conn) if source is not None else None
        # one timer per try (asyncio.timeout costs several times more on this path); an HTTP/1.1
        # connection keeps one timer for its sequential requests instead
        timer = None
        arm = None
        try_timeout = m.timeout
        if try_timeout is not None:
            arm = getattr(conn, "arm_timeout", None)
            if arm is not None:
                arm(fut, try_timeout)
            else:
                timer = asyncio.get_running_loop().call_later(try_timeout, _expire, fut)
        try:
            resp = await fut
        except TimeoutError:
            _cancel(pump)
            return _R_TIMEOUT
        except UpstreamReset as exc:
            _cancel(pump)
            if gate is not None and gate.winner is not None and gate.winner is not conn:
                return _R_LOST
            if source is not None and source.malformed:
                return _R_MALFORMED  # our pump reset the upstream request
            if type(exc) is UpstreamProtocolError:
                return _R_UPE
            return _R_RESET_BYTES if conn.got_bytes else _R_RESET
        except asyncio.CancelledError:
            _cancel(pump)
            conn.abort()
            if gate is None or gate.winner is None or gate.winner is conn:
                # the client left (DC), or the sidecar ended the request (stream idle: 408 SI)
                ex.status, ex.flags = getattr(down, "lost_reason", None) or (0, "DC")
                self._account(ex, head, reporter)
            raise
        finally:
            if timer is not None:
                timer.cancel()
            elif arm is not None:
                conn.disarm_timeout()
        if gate is not None:
            if not gate.claim(conn):
                _cancel(pump)
                return _R_LOST
            ex.upstream = ep.key
            ex.endpoint = ep
        ex.upstream_ms = (_monotonic() - t_sent) * 1000.0
        verdict = self._judge(down, head, conn, resp, ex, reporter, ep, outlier, m)
        if verdict != STREAM:
            _cancel(pump)  # retried (BACKOFF), or answered from the fallback (GIVE_UP)
            return _R_RETRY if verdict == BACKOFF else None
        data, resp_headers = self._respond(down, head, conn, resp, ex, reporter, resp_ops, m)
        if resp_headers is None:  # an upgrade, or the body broke: answered and accounted
            if resp.status != 101:
                _cancel(pump)
            return None
        if data is not None and not await self._stream(
            down, head, conn, data, ex, reporter, m, resp_headers
        ):
            _cancel(pump)  # the body broke
            return None
        if source is not None:
            _request_done(down, conn, source, pump, ex)
        self._account(ex, head, reporter)
        return None

    def _judge(
        self, down: Any, head: Any, conn: Any, resp: Any, ex: Exchange, reporter: str, ep: Any,
        outlier: Any, m: Attempts,
    ) -> int:
        """The response head's fate before it is streamed: STREAM, BACKOFF when the machine
        retries it, GIVE_UP when the fallback answered instead (the connection aborted)."""
        status = resp.status
        ex.status = status
        self.rt.endpoint_outcome(outlier, ep, status, False)
        grpc_hdr = resp.get("grpc-status") if status == 200 else None
        if grpc_hdr is not None:
            ex.grpc = grpc_hdr  # a trailers-only gRPC answer
        if status >= 500 or status == 409 or status == 429 or (grpc_hdr and grpc_hdr != "0"):
            grpc = int(grpc_hdr) if grpc_hdr and grpc_hdr.isdigit() else None
            if m.on_response(
                status, grpc, resp.get("x-envoy-ratelimited") is not None,
                resp.get("x-envoy-overloaded") is not None, resp.get("retry-after"),
            ) == BACKOFF:
                return BACKOFF
            fb = ex.fallback
            if fb is not None and status >= 500 and fb.applies("5xx", head.method):
                if self._fallback(down, head, ex, reporter, fb, str(status)):
                    conn.abort()
                    return GIVE_UP
        return STREAM

    def _respond(
        self, down: Any, head: Any, conn: Any, resp: Any, ex: Exchange, reporter: str,
        resp_ops: Any, m: Attempts,
    ) -> tuple[Any, Any]:
        """The response head to the caller, with the body when it is complete already (one
        write, no streaming). (None, _) once answered whole; (None, None) when the answer is
        over already (an upgrade, or a broken body, accounted); else (data read so far, the
        response headers) for `_stream`."""
        status = resp.status
        extra = []
        if reporter == "outbound":
            extra.append("x-envoy-upstream-service-time: %d" % int(ex.upstream_ms))
        if m.attempt > 1:
            ex.flags = m.response_flag(status)
        resp_headers = resp.headers
        if resp_ops is not None:
            resp_headers = apply_ops(apply_ops(resp_headers, resp_ops[0]), resp_ops[1])
        if status == 101:
            down.send_upgrade(resp, resp_headers, extra)
            _tunnel(down, conn)
            self._account(ex, head, reporter)
            return None, None
        rbody = conn.body
        no_body, length = conn.response_length()
        try:
            data = rbody.read_nowait()
        except ChannelClosed:
            self._broken(down, head, ex, reporter)
            return None, None
        if data is not None and rbody.at_eof and not rbody.trailers:
            fb = ex.fallback
            if fb is not None and 200 <= status < 300 and fb.caches(head.method, head.get):
                fb.stale.store(head.host, head.target, status, resp_headers, data)
            down.send_response(
                status, resp.reason, resp_headers, resp.connection, extra, length, True, data,
                no_body,
            )
            ex.resp_bytes = len(data)
            return None, _WHOLE
        down.send_response(
            status, resp.reason, resp_headers, resp.connection, extra, length, False, b"",
            no_body,
        )
        return (data if data is not None else b""), resp_headers

    async def _stream(
        self, down: Any, head: Any, conn: Any, data: bytes, ex: Exchange, reporter: str,
        m: Attempts, resp_headers: Any,
    ) -> bool:
        """The response body, piece by piece, within the route timeout (which spans the whole
        response, body included, as Envoy's); a copy kept for the stale cache when wanted.
        False when it broke (then answered and accounted here)."""
        fb = ex.fallback
        status = ex.status
        keep: list[bytes] | None = (
            [] if fb is not None and 200 <= status < 300 and fb.caches(head.method, head.get)
            else None
        )
        rbody = conn.body
        total = 0
        stop = None
        if m.deadline:
            stop = asyncio.get_running_loop().call_later(
                max(0.0, m.deadline - _monotonic()), _cut_body, conn, rbody, down, ex
            )
        try:
            while True:
                if not data:
                    data = await rbody.read()
                    if not data:
                        break
                total += len(data)
                if keep is not None:
                    # a copy for the stale cache, dropped once over its size cap
                    if total <= fb.stale.max_body:
                        keep.append(data)
                    else:
                        keep = None
                down.send_data(data)
                data = b""
                if down.paused:
                    await down.drain()
        except ChannelClosed:
            self._broken(down, head, ex, reporter)
            return False
        finally:
            if stop is not None:
                stop.cancel()
        trailers = rbody.trailers
        down.send_end(trailers)
        ex.resp_bytes = total
        if keep is not None and not trailers:
            fb.stale.store(head.host, head.target, status, resp_headers, b"".join(keep))
        if trailers:
            for name, value in trailers:
                if name == "grpc-status":
                    ex.grpc = value
                    break
        return True

    def _broken(self, down: Any, head: Any, ex: Exchange, reporter: str) -> None:
        """The upstream reset mid-body, or the route timeout cut it: the client must see a
        broken response, not a short one."""
        down.reset()
        if ex.flags != "UT":  # set by _cut_body when the route timeout cut the body
            ex.flags = "UPE"
        self._account(ex, head, reporter)
    # -- local replies and accounting --------------------------------------------------------------
    def _local(
        self,
        down: Any,
        head: Any,
        ex: Exchange,
        status: int,
        flag: str,
        reporter: str,
        body: str | None = None,
        grpc: int | None = None,
    ) -> None:
        """``grpc``: the grpc-status to answer with (a fault abort's ``grpcStatus``) instead of
        the one the HTTP status and flag map to."""
        fb = ex.fallback
        if (
            fb is not None
            and flag in fb.flags
            and head.method in fb.methods
            and self._fallback(down, head, ex, reporter, fb, flag)
        ):
            return
        ex.status = status
        ex.flags = flag
        extra: tuple[tuple[str, str], ...] = ()
        if grpc is not None:
            ex.grpc = str(grpc)
            extra = (("grpc-status", ex.grpc),)
        elif h2grpc.is_grpc(ex.hdrs.get("content-type")):
            ex.grpc = str(h2grpc.status_for_local(status, flag))
        down.send_local(status, flag, body, extra, self.rt.draining)
        self.rt.count_local_reply(status, flag)
        self._account(ex, head, reporter)

    def _fallback(
        self, down: Any, head: Any, ex: Exchange, reporter: str, fb: Any, cause: str
    ) -> bool:
        """Answer the configured fallback (proxy/resilience/fallback.py) in place of the
        failure ``cause``; False when there is none to give (then the error goes out)."""
        if h2grpc.is_grpc(ex.hdrs.get("content-type")):
            return False  # a gRPC caller expects a status in trailers, not a made-up body
        answer = fb.answer(head.method, head.host, head.target, cause)
        if answer is None:
            return False
        status, headers, body = answer
        ex.status = status
        ex.flags = "FB"
        if down.body is not None and not down.body.at_eof:
            down.keep_alive = False  # the request body was not read: the connection cannot go on
        down.send_response(
            status,
            local_reply.reason(status),
            headers,
            (),
            [],
            len(body),
            True,
            b"" if head.method == "HEAD" else body,
            head.method == "HEAD",
        )
        ex.resp_bytes = 0 if head.method == "HEAD" else len(body)
        self.rt.count_local_reply(status, "FB")
        self._account(ex, head, reporter)
        return True

    def _account(self, ex: Exchange, head: Any, reporter: str) -> None:
        self.rt.record(ex, head, reporter)


class _RuntimeEnv(Env):
    """The attempt machines' Env over the runtime: its counters and random source, and its
    maxRetries gates read live (a config swap replaces them)."""

    __slots__ = ("rt",)

    def __init__(self, rt: Any) -> None:
        self.rt = rt
        self.counters = rt
        self.rng = rt.random
        self.clock = _monotonic
        self.wall = _wallclock

    @property  # type: ignore[override]
    def gates(self) -> Any:
        return self.rt.retry_gates


def _machine(
    down: Any, head: Any, policy: Any, ex: Exchange, outbound: bool, env: Env
) -> Attempts:
    """The attempt machine for this request, from the route's compiled policy and the headers
    the caller sent: its deadline, gRPC, and (from the local app only, never from a remote
    peer) Envoy's per-request retry overrides."""
    hdrs = ex.hdrs
    ct = hdrs.get("content-type")
    grpc = ct is not None and h2grpc.is_grpc(ct)
    grpc_timeout = hdrs.get("grpc-timeout") if grpc else None
    expected = hdrs.get("x-envoy-expected-rq-timeout-ms")
    retry = policy.retry
    if outbound:
        ro = hdrs.get("x-envoy-retry-on")
        rg = hdrs.get("x-envoy-retry-grpc-on")
        mr = hdrs.get("x-envoy-max-retries")
        if ro is not None or rg is not None or mr is not None:
            retry = retry.with_request_headers(ro, rg, mr)
    # this request's own deadline: the caller's (gRPC or Envoy header) caps the route timeout
    # and is never extended. Per request: nothing of it may outlive the request.
    if grpc_timeout is None and expected is None:
        total = policy.timeout
    else:
        total = effective_timeout(policy.timeout, incoming_deadline(grpc_timeout, expected))
    return Attempts(
        env, retry, head.method, "idempotency-key" in hdrs,
        ReplayBody(down.body) if down.body is not None else None,
        ex.start + total if total else 0.0, policy.dest, ex.cluster,
        outbound, expected, grpc_timeout, grpc, _PROPAGATION if ex.trace is not None else None,
    )


def _framing(head: Any) -> list[str]:
    """The request's framing header lines, as the upstream connection must send them."""
    framing: list[str] = []
    if head.chunked:
        framing.append("transfer-encoding: chunked")
    elif head.content_length >= 0 and (
        head.content_length > 0 or head.method in ("POST", "PUT", "PATCH")
    ):
        framing.append("content-length: %d" % head.content_length)
    if head.upgrade == "websocket":
        framing.append("connection: upgrade")
        framing.append("upgrade: websocket")
    return framing


_WHOLE: Any = ()  # _respond: the response went out whole

# How a try ended short of a response (constants: a failed try allocates no tuple)
_R_TIMEOUT = ("timeout", False)
_R_LOST = ("lost", False)  # a hedged copy that another copy beat
_R_MALFORMED = ("malformed", False)
_R_UPE = ("upe", False)
_R_RESET = ("reset", False)  # [1]: whether any bytes came back
_R_RESET_BYTES = ("reset", True)
_R_RETRY = ("retry", False)  # the machine retries the response it got


def _hedge_outcome(tries: list[Any], results: list[Any], m: Attempts) -> int:
    """Settle the hedged copies: the winner's connection goes back to its pool, the others
    are aborted; the action is STREAM once one answered, else what failed (a retried
    response backs off; a timeout or reset gives up)."""
    outcome: Any = _R_RESET
    for (c, p, _), r in zip(tries, results, strict=True):
        if r is None:
            p.release(c)  # the winner, response delivered
            outcome = None
        else:
            c.abort()
            p.release(c)
            if outcome is not None and r[0] != "lost":
                outcome = r
    if outcome is None:
        return STREAM
    if outcome[0] == "retry":
        return BACKOFF
    return m.on_hedges_failed(outcome[0] == "timeout")


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class _Gate:
    """Who won a hedged race: the first try with a response head; the others are aborted."""

    __slots__ = ("winner", "conns")

    def __init__(self) -> None:
        self.winner: Any = None
        self.conns: list[Any] = []

    def claim(self, conn: Any) -> bool:
        if self.winner is not None:
            return self.winner is conn
        self.winner = conn
        for other in self.conns:
            if other is not conn:
                other.abort()
        return True


REPLAY_LIMIT = 65536


class ReplayBody:
    """A request body that a retry can send again: the first 64 KiB are kept as they stream.

    Envoy buffers request bodies for retries the same way (up to a limit); a larger body is
    still streamed, but the request is no longer retried once part of it went upstream.
    """

    __slots__ = ("ch", "buf", "size", "overflow", "started")

    def __init__(self, channel: Any) -> None:
        self.ch = channel
        self.buf: list[bytes] = []
        self.size = 0
        self.overflow = False
        self.started = False

    @property
    def replayable(self) -> bool:
        return not self.overflow

    @property
    def total(self) -> int:
        return self.ch.total

    @property
    def malformed(self) -> bool:
        """The client's body broke its framing (the pump then reset the upstream request)."""
        return type(self.ch._exc) is MalformedBody

    @property
    def trailers(self) -> Any:
        return self.ch.trailers

    def complete(self) -> list[bytes] | None:
        """The whole body, when it has all arrived already (a unary gRPC call, a small POST:
        HEADERS and DATA in one read), so the try sends it at once instead of starting a pump
        task; None while more is to come."""
        ch = self.ch
        if not ch._eof or ch._exc is not None or self.overflow:
            return None
        if not self.started:
            self.started = True
            data = ch.read_nowait()
            if data:
                if self.size + len(data) <= REPLAY_LIMIT:
                    self.buf.append(data)
                    self.size += len(data)
                else:
                    self.overflow = True
                    self.buf = []
                    return [data]
        elif ch._chunks:
            return None  # a retry of a body the first try did not read whole: use the pump
        return self.buf

    async def pieces(self) -> Any:
        self.started = True
        for d in list(self.buf):
            yield d
        while True:
            d = await self.ch.read()
            if not d:
                return
            if not self.overflow:
                if self.size + len(d) <= REPLAY_LIMIT:
                    self.buf.append(d)
                    self.size += len(d)
                else:
                    self.overflow = True
                    self.buf = []
            yield d


def _cut_body(conn: Any, rbody: Any, down: Any, ex: Exchange) -> None:
    """The route timeout fired while the response body was streaming: reset both sides. The
    status already went out, so the client learns it from the broken framing (HTTP/1.1: the
    connection closes before the body's end; HTTP/2: RST_STREAM), as from Envoy."""
    ex.flags = "UT"
    rbody.set_exception(ChannelClosed("route timeout during the response body"))
    conn.abort()
    down.reset()


def _cancel(task: Any) -> None:
    if task is not None and not task.done():
        task.cancel()


async def _wait_bulkhead(bulkhead: Any) -> bool:
    """Queue for a bulkhead permit up to its maxWaitDuration; True once granted."""
    if bulkhead.max_wait <= 0:
        return False
    fut = asyncio.get_running_loop().create_future()
    waiter = _FutureWaiter(fut)
    if not bulkhead.enqueue(waiter):
        return False
    try:
        async with asyncio.timeout(bulkhead.max_wait):
            await fut
        return True
    except (TimeoutError, asyncio.CancelledError):
        if not bulkhead.cancel(waiter, timed_out=True):
            bulkhead.release()  # granted just as we gave up: hand it back
        return False


class _FutureWaiter:
    __slots__ = ("fut",)

    def __init__(self, fut: asyncio.Future[None]) -> None:
        self.fut = fut

    def wake(self) -> None:
        if not self.fut.done():
            self.fut.set_result(None)


def _send_body(source: ReplayBody, conn: Any) -> Any:
    """The request body upstream: at once when it is all here, else a pump task (returned)."""
    whole = source.complete()
    if whole is None:
        return asyncio.get_running_loop().create_task(_pump(source, conn))
    for data in whole:
        conn.send_body(data)
    conn.end_request(source.trailers)
    return None


def _request_done(down: Any, conn: Any, source: ReplayBody, pump: Any, ex: Exchange) -> None:
    if pump is not None and not pump.done():
        # the upstream answered before reading the whole request body
        _cancel(pump)
        down.keep_alive = False
        conn.keep_alive = False
    ex.req_bytes = source.total


async def _pump(source: ReplayBody, conn: Any) -> None:
    """Request body -> upstream; the connection frames it (re-chunked for HTTP/1.1: never raw
    client chunk bytes)."""
    try:
        async for data in source.pieces():
            conn.send_body(data)
            if conn.paused:
                await conn.drain()
        conn.end_request(source.trailers)
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
