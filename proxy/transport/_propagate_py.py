# cython: annotation_typing=False
"""Header lines every hop adds, on both sides: the trace context and the request id.

This file is compiled a second time by Cython as ``_propagate_c`` (``_propagate_c.py`` is a
symlink to it; ``_propagate_c.pxd`` adds the C types); ``proxy/transport/propagate.py`` picks
the build.
"""

from __future__ import annotations

from typing import Any

from proxy.telemetry.tracing import continue_trace, inject, new_context

from .exchange import Exchange

# traceparent flags suffix by (sampled | random-trace-id << 1), as inject() formats them
_FLAGS = ("-00", "-01", "-02", "-03")


def trace(sampler: Any, ex: Exchange, extra: list[str]) -> None:
    """Continue (or start) the trace: a new span id per hop, in the format that came in."""
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


def hop_headers(rt: Any, ex: Exchange) -> list[str]:
    """The trace context and ``x-request-id`` (kept, or made), as header lines in ``ex.extra``."""
    extra = ex.extra
    trace(rt.sampler, ex, extra)
    rid = ex.hdrs.get("x-request-id")
    if not rid:
        rid = rt.new_request_id()
        extra.append("x-request-id: " + rid)
    ex.request_id = rid
    return extra
