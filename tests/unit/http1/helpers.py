"""Outcome normalisation shared by the http1 tests."""

from __future__ import annotations

from proxy.http1.errors import ProtocolError

REQUEST_FIELDS = (
    "method",
    "target",
    "path",
    "query",
    "version",
    "headers",
    "host",
    "content_length",
    "chunked",
    "keep_alive",
    "upgrade",
    "expect_continue",
    "connection",
)
RESPONSE_FIELDS = (
    "status",
    "reason",
    "version",
    "headers",
    "content_length",
    "chunked",
    "keep_alive",
    "connection",
)


def fields(head, names=REQUEST_FIELDS) -> dict:
    return {name: getattr(head, name) for name in names}


def outcome(parse, data, *, reason=True, **limits):
    """("ok", fields, consumed) | None | ("error", status[, reason]); anything else propagates."""
    try:
        result = parse(data, **limits)
    except ProtocolError as exc:
        return ("error", exc.status, exc.reason) if reason else ("error", exc.status)
    if result is None:
        return None
    head, n = result
    names = REQUEST_FIELDS if hasattr(head, "method") else RESPONSE_FIELDS
    return ("ok", fields(head, names), n)


def incremental(parse, data, **limits):
    """Feed growing prefixes (one byte more each time) until a head or an error comes out."""
    for k in range(1, len(data) + 1):
        r = outcome(parse, data[:k], reason=False, **limits)
        if r is not None:
            return r
    return None


def status_of(parse, data, **limits):
    r = outcome(parse, data, reason=False, **limits)
    assert r is not None and r[0] == "error", r
    return r[1]
