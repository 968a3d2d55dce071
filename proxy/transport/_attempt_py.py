# cython: annotation_typing=False
"""One try: send the request on a connection, judge the response head, stream the answer.

Every decision about the response (retry it, answer the fallback, stream it) is the attempt
machine's or the fallback policy's; this module does the I/O around them.

This file is compiled a second time by Cython as ``_attempt_c`` (``_attempt_c.py`` is a symlink
to it; ``_attempt_c.pxd`` types the exchange and the attempt machine its functions take);
``proxy/transport/attempt.py`` picks the build.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from proxy.resilience.attempts import BACKOFF, GIVE_UP, STREAM, Attempts
from proxy.server.channel import ChannelClosed
from proxy.server.headers import apply_ops
from proxy.server.upstream import UpstreamProtocolError, UpstreamReset

from .body import cancel, cut_body, request_done, send_body, tunnel
from .exchange import Exchange
from .replies import broken, fallback

_monotonic = time.monotonic

_WHOLE: Any = ()  # respond: the response went out whole

# How a try ended short of a response (constants: a failed try allocates no tuple)
R_TIMEOUT = ("timeout", False)
R_LOST = ("lost", False)  # a hedged copy that another copy beat
R_MALFORMED = ("malformed", False)
R_UPE = ("upe", False)
R_RESET = ("reset", False)  # [1]: whether any bytes came back
R_RESET_BYTES = ("reset", True)
R_RETRY = ("retry", False)  # the machine retries the response it got


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


async def attempt(
    ex: Exchange, m: Attempts, conn: Any, up_extra: list[str], source: Any, ep: Any,
    gate: Any = None,
) -> tuple[str, Any] | None:
    """One try. None when the response was (at least partly) sent; else why it failed.

    With a ``gate`` this try races a hedge: the first response head claims the gate (which
    aborts the other try's connection); the loser returns ``R_LOST``."""
    head = ex.head
    t_sent = _monotonic()
    fut = conn.start_request(head.method, ex.target, ex.headers, head.connection, up_extra, m.drop)
    pump = send_body(source, conn) if source is not None else None
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
        cancel(pump)
        return R_TIMEOUT
    except UpstreamReset as exc:
        cancel(pump)
        if gate is not None and gate.winner is not None and gate.winner is not conn:
            return R_LOST
        if source is not None and source.malformed:
            return R_MALFORMED  # our pump reset the upstream request
        if type(exc) is UpstreamProtocolError:
            return R_UPE
        return R_RESET_BYTES if conn.got_bytes else R_RESET
    except asyncio.CancelledError:
        cancel(pump)
        conn.abort()
        if gate is None or gate.winner is None or gate.winner is conn:
            # the client left (DC), or the sidecar ended the request (stream idle: 408 SI)
            ex.status, ex.flags = getattr(ex.down, "lost_reason", None) or (0, "DC")
            ex.side.account(ex)
        raise
    finally:
        if timer is not None:
            timer.cancel()
        elif arm is not None:
            conn.disarm_timeout()
    if gate is not None:
        if not gate.claim(conn):
            cancel(pump)
            return R_LOST
        ex.upstream = ep.key
        ex.endpoint = ep
    ex.upstream_ms = (_monotonic() - t_sent) * 1000.0
    verdict = judge(ex, conn, resp, ep, m)
    if verdict != STREAM:
        cancel(pump)  # retried (BACKOFF), or answered from the fallback (GIVE_UP)
        return R_RETRY if verdict == BACKOFF else None
    data, resp_headers = respond(ex, conn, resp, m)
    if resp_headers is None:  # an upgrade, or the body broke: answered and accounted
        if resp.status != 101:
            cancel(pump)
        return None
    if data is not None and not await stream(ex, conn, data, m, resp_headers):
        cancel(pump)  # the body broke
        return None
    if source is not None:
        request_done(ex.down, conn, source, pump, ex)
    ex.side.account(ex)
    return None


def judge(ex: Exchange, conn: Any, resp: Any, ep: Any, m: Attempts) -> int:
    """The response head's fate before it is streamed: STREAM, BACKOFF when the machine
    retries it, GIVE_UP when the fallback answered instead (the connection aborted)."""
    status = resp.status
    ex.status = status
    ex.side.rt.endpoint_outcome(ex.policy.outlier, ep, status, False)
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
        if (
            fb is not None and status >= 500 and fb.applies("5xx", ex.head.method)
            and fallback(ex, fb, str(status))
        ):
            conn.abort()
            return GIVE_UP
    return STREAM


def respond(ex: Exchange, conn: Any, resp: Any, m: Attempts) -> tuple[Any, Any]:
    """The response head to the caller, with the body when it is complete already (one
    write, no streaming). (None, _) once answered whole; (None, None) when the answer is
    over already (an upgrade, or a broken body, accounted); else (data read so far, the
    response headers) for `stream`."""
    status = resp.status
    down = ex.down
    extra = []
    if ex.side.service_time:
        extra.append("x-envoy-upstream-service-time: %d" % int(ex.upstream_ms))
    if m.attempt > 1:
        ex.flags = m.response_flag(status)
    resp_headers = resp.headers
    ops = ex.resp_ops
    if ops is not None:
        resp_headers = apply_ops(apply_ops(resp_headers, ops[0]), ops[1])
    if status == 101:
        down.send_upgrade(resp, resp_headers, extra)
        tunnel(down, conn)
        ex.side.account(ex)
        return None, None
    rbody = conn.body
    no_body, length = conn.response_length()
    try:
        data = rbody.read_nowait()
    except ChannelClosed:
        broken(ex)
        return None, None
    if data is not None and rbody.at_eof and not rbody.trailers:
        fb = ex.fallback
        head = ex.head
        if fb is not None and 200 <= status < 300 and fb.caches(head.method, head.get):
            fb.stale.store(head.host, head.target, status, resp_headers, data)
        down.send_response(
            status, resp.reason, resp_headers, resp.connection, extra, length, True, data,
            no_body,
        )
        ex.resp_bytes = len(data)
        return None, _WHOLE
    down.send_response(
        status, resp.reason, resp_headers, resp.connection, extra, length, False, b"", no_body,
    )
    return (data if data is not None else b""), resp_headers


async def stream(
    ex: Exchange, conn: Any, data: bytes, m: Attempts, resp_headers: Any
) -> bool:
    """The response body, piece by piece, within the route timeout (which spans the whole
    response, body included, as Envoy's); a copy kept for the stale cache when wanted.
    False when it broke (then answered and accounted here)."""
    fb = ex.fallback
    head = ex.head
    down = ex.down
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
            max(0.0, m.deadline - _monotonic()), cut_body, conn, rbody, down, ex
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
        broken(ex)
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
