# cython: annotation_typing=False
"""The tries of one request: pick an endpoint, connect, try (or hedge), settle, until the
attempt machine says the request is answered.

This shell picks endpoints, dials, sends and waits; every decision (retry, back-off, deadline,
hedge, which local reply) is the machine's (proxy/resilience/attempts.py).

This file is compiled a second time by Cython as ``_tries_c`` (``_tries_c.py`` is a symlink to it;
``_tries_c.pxd`` types the exchange and the attempt machine its functions take);
``proxy/transport/tries.py`` picks the build.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from proxy.resilience.attempts import BACKOFF, GIVE_UP, RETRY_NOW, STREAM, TRY, Attempts
from proxy.resilience.deadline import effective_timeout, incoming_deadline
from proxy.server.h2 import grpc as h2grpc
from proxy.server.pool_limits import PendingTimeout, PoolOverflow
from proxy.telemetry.tracing import PROPAGATION_HEADERS

from .attempt import attempt
from .body import ReplayBody
from .exchange import Exchange
from .hedge import hedged
from .replies import local

log = logging.getLogger("meshlet.proxy")

_PROPAGATION = frozenset(PROPAGATION_HEADERS)


async def forward(ex: Exchange) -> None:
    """Tries until one answers or the machine gives up (then a local reply); ``ex`` carries
    the compiled policy, the cluster and what to send."""
    side = ex.side
    rt = side.rt
    down = ex.down
    head = ex.head
    cluster = ex.upstream_cluster
    outlier = ex.policy.outlier
    m = attempts_for(ex)
    framing = request_framing(head)
    h2 = head.version == 20
    endpoint_peer = side.endpoint_peer
    sent_continue = False
    try:
        while True:
            ep = rt.pick_endpoint(cluster, m.tried, outlier)
            act = m.begin(ep.key if ep is not None else None)
            ex.attempts = m.attempt
            if ep is not None:
                ex.upstream = ep.key
                ex.endpoint = ep
                if endpoint_peer:
                    ex.peer = ep.spiffe_id  # outbound, the peer is the destination
                    ex.mtls = ep.tls
            if act == GIVE_UP:
                return local(ex, m.status, m.flag)
            up_extra = m.try_headers(ex.extra, framing)
            pool = rt.pool(ep, cluster, h2 and (m.grpc or ep.tls))
            # an idle keep-alive connection without a coroutine round trip when there is one
            take = getattr(pool, "take_idle", None)
            conn = take() if take is not None else None
            reused = True
            if conn is None:
                conn, reused, act = await connect(ex, pool, m, ep)
            if act == TRY:
                source = m.source
                if source is not None and head.expect_continue and not sent_continue:
                    down.send_continue()
                    sent_continue = True
                delay = m.hedge_delay(source is not None)
                if delay is not None:
                    act = await hedged(ex, m, conn, pool, ep, delay, up_extra)
                else:
                    rt.endpoint_started(ep)
                    try:
                        result = await attempt(ex, m, conn, up_extra, source, ep)
                    finally:
                        rt.endpoint_finished(ep)
                    act = settle(ex, m, conn, pool, ep, reused, result)
            if act == BACKOFF:
                if m.delay > 0:
                    await asyncio.sleep(m.delay)
            elif act == GIVE_UP:
                return local(ex, m.status, m.flag)
            elif act != RETRY_NOW:
                return
    finally:
        if m.slot is not None:
            m.release()


def attempts_for(ex: Exchange) -> Attempts:
    """The attempt machine for this request, from the route's compiled policy and the headers
    the caller sent: its deadline, gRPC, and (where the side honours them) Envoy's per-request
    retry overrides. Everything per request lives in the machine, never in the policy."""
    policy = ex.policy
    side = ex.side
    hdrs = ex.hdrs
    ct = hdrs.get("content-type")
    grpc = ct is not None and h2grpc.is_grpc(ct)
    grpc_timeout = hdrs.get("grpc-timeout") if grpc else None
    expected = hdrs.get("x-envoy-expected-rq-timeout-ms")
    retry = policy.retry
    if side.retry_overrides:
        ro = hdrs.get("x-envoy-retry-on")
        rg = hdrs.get("x-envoy-retry-grpc-on")
        mr = hdrs.get("x-envoy-max-retries")
        if ro is not None or rg is not None or mr is not None:
            retry = retry.with_request_headers(ro, rg, mr)
    # this request's own deadline: the caller's (gRPC or Envoy header) caps the route timeout
    # and is never extended; the inbound stack has derived it already (ex.deadline)
    if ex.deadline:
        total = effective_timeout(policy.timeout, ex.deadline - ex.start)
    elif grpc_timeout is None and expected is None:
        total = policy.timeout
    else:
        total = effective_timeout(policy.timeout, incoming_deadline(grpc_timeout, expected))
    head = ex.head
    body = ex.down.body
    return Attempts(
        side.env, retry, head.method, "idempotency-key" in hdrs,
        ReplayBody(body) if body is not None else None,
        ex.start + total if total else 0.0, policy.dest, ex.cluster,
        side.outbound, expected, grpc_timeout, grpc,
        _PROPAGATION if ex.trace is not None else None,
    )


def request_framing(head: Any) -> list[str]:
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


async def connect(ex: Exchange, pool: Any, m: Attempts, ep: Any) -> tuple[Any, bool, int]:
    """A new (or queued-for) connection for this try: (conn, reused, the machine's action)."""
    t = m.timeout
    ct = ex.upstream_cluster.connect_timeout
    try:
        conn, reused = await pool.acquire(min(ct, t) if t else ct, t)
    except PoolOverflow:  # a connectionPool threshold (Envoy's circuit breaker)
        return None, False, m.on_pool_overflow()  # x-envoy-overloaded
    except PendingTimeout:
        return None, False, m.on_pending_timeout()
    except (OSError, TimeoutError, ConnectionError) as exc:
        log.debug("connect to %s failed: %r", ep.key, exc)
        ex.side.rt.endpoint_outcome(ex.policy.outlier, ep, None, True)
        return None, False, m.on_connect_failed()
    return conn, reused, TRY


def settle(
    ex: Exchange, m: Attempts, conn: Any, pool: Any, ep: Any, reused: bool, result: Any
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
        ex.down.keep_alive = False
        local(ex, 400, "DPE", "Bad Request")
        return STREAM
    ex.side.rt.endpoint_outcome(ex.policy.outlier, ep, None, True)
    if kind == "upe":
        # the upstream's response broke HTTP/1.1: a reset with reason "protocol error"
        return m.on_protocol_error()
    if kind == "timeout":
        return m.on_try_timeout()
    # the connection closed or broke before a response head (result[1]: bytes came back)
    return m.on_reset(ep.key, reused, result[1])
