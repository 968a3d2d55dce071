"""The answers the sidecar makes itself: local replies (with a response flag), fallback
answers in their place, and broken responses; each accounts for the request once."""

from __future__ import annotations

from typing import Any

from proxy.server import local_reply
from proxy.server.h2 import grpc as h2grpc

from .exchange import Exchange


def local(
    ex: Exchange, status: int, flag: str, body: str | None = None, grpc: int | None = None
) -> None:
    """Answer ``status`` with response flag ``flag``, or the destination's fallback when it
    covers the flag. ``grpc``: the grpc-status to answer with (a fault abort's ``grpcStatus``)
    instead of the one the HTTP status and flag map to."""
    fb = ex.fallback
    head = ex.head
    if fb is not None and flag in fb.flags and head.method in fb.methods and fallback(ex, fb, flag):
        return
    ex.status = status
    ex.flags = flag
    extra: tuple[tuple[str, str], ...] = ()
    if grpc is not None:
        ex.grpc = str(grpc)
        extra = (("grpc-status", ex.grpc),)
    elif h2grpc.is_grpc(ex.hdrs.get("content-type")):
        ex.grpc = str(h2grpc.status_for_local(status, flag))
    rt = ex.side.rt
    ex.down.send_local(status, flag, body, extra, rt.draining)
    rt.count_local_reply(status, flag)
    ex.side.account(ex)


def fallback(ex: Exchange, fb: Any, cause: str) -> bool:
    """Answer the configured fallback (proxy/resilience/fallback.py) in place of the failure
    ``cause``; False when there is none to give (then the error goes out)."""
    if h2grpc.is_grpc(ex.hdrs.get("content-type")):
        return False  # a gRPC caller expects a status in trailers, not a made-up body
    head = ex.head
    answer = fb.answer(head.method, head.host, head.target, cause)
    if answer is None:
        return False
    status, headers, body = answer
    ex.status = status
    ex.flags = "FB"
    down = ex.down
    if down.body is not None and not down.body.at_eof:
        down.keep_alive = False  # the request body was not read: the connection cannot go on
    is_head = head.method == "HEAD"
    down.send_response(
        status, local_reply.reason(status), headers, (), [], len(body), True,
        b"" if is_head else body, is_head,
    )
    ex.resp_bytes = 0 if is_head else len(body)
    ex.side.rt.count_local_reply(status, "FB")
    ex.side.account(ex)
    return True


def broken(ex: Exchange) -> None:
    """The upstream reset mid-body, or the route timeout cut it: the client must see a broken
    response, not a short one."""
    ex.down.reset()
    if ex.flags != "UT":  # set by body.cut_body when the route timeout cut the body
        ex.flags = "UPE"
    ex.side.account(ex)
