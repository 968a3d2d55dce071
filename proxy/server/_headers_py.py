# cython: annotation_typing=False
"""Building the heads the proxy sends: hop-by-hop removal and Envoy's request/response headers.

Done with plain string joins in one pass over the parsed header list; header names are already
lowercase from the parser. Hop-by-hop headers (RFC 9110 7.6.1) and every header a ``Connection``
token names are removed, except the identity headers a client must never be able to strip.

This file is compiled a second time by Cython as ``_headers_c`` (``_headers_c.py`` is a symlink to
it and ``_headers_c.pxd`` types the loops); ``proxy/server/headers.py`` picks the build.
"""

from __future__ import annotations

from typing import Any

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "upgrade",
        "trailer",
        "proxy-authenticate",
        "proxy-authorization",
        "content-length",
        "expect",
        "http2-settings",
    }
)
# Never removable through a Connection token (security-ops 6.2 row 18)
PROTECTED = frozenset(
    {
        "x-forwarded-client-cert",
        "x-request-id",
        "traceparent",
        "host",
        "authorization",
        "x-forwarded-for",
    }
)
# Set by the sidecar only; a client's copy is dropped (security-ops 6.2 row 19)
SPOOFABLE_INBOUND = frozenset(
    {
        "x-forwarded-client-cert",
        "x-meshlet-peer-identity",
        "x-envoy-peer-metadata",
        "x-envoy-peer-metadata-id",
    }
)


def request_head(
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    connection_tokens: tuple[str, ...],
    extra: list[str],
    drop: frozenset[str] | None = None,
) -> bytes:
    """``method target HTTP/1.1`` + filtered headers + ``extra`` (preformatted ``name: value``)."""
    parts = [f"{method} {target} HTTP/1.1"]
    append = parts.append
    # (no generator expressions here: the compiled build's cpdef functions take no closures)
    skip_tokens = frozenset(connection_tokens) - PROTECTED if connection_tokens else None
    for name, value in headers:
        if name in HOP_BY_HOP or (drop is not None and name in drop):
            continue
        if skip_tokens and name in skip_tokens:
            continue
        append(f"{name}: {value}")
    parts.extend(extra)
    parts.append("\r\n")
    return "\r\n".join(parts).encode("latin-1")


def response_head(
    status: int,
    reason: str,
    headers: list[tuple[str, str]],
    connection_tokens: tuple[str, ...],
    extra: list[str],
    drop: frozenset[str] | None = None,
    version: int = 11,
) -> bytes:
    parts = [f"HTTP/{'1.1' if version == 11 else '1.0'} {status} {reason}"]
    append = parts.append
    skip_tokens = connection_tokens and frozenset(connection_tokens)
    for name, value in headers:
        if name in HOP_BY_HOP or (drop is not None and name in drop):
            continue
        if skip_tokens and name in skip_tokens:
            continue
        append(f"{name}: {value}")
    parts.extend(extra)
    parts.append("\r\n")
    return "\r\n".join(parts).encode("latin-1")


def apply_ops(headers: list[tuple[str, str]], ops: Any) -> list[tuple[str, str]]:
    """Istio ``headers.{request,response}``: remove, then set (replace), then add (append)."""
    if not ops:
        return headers
    drop = set(ops.remove)
    for name, _ in ops.set:
        drop.add(name)
    out = [(n, v) for n, v in headers if n not in drop]
    out.extend(ops.set)
    out.extend(ops.add)
    return out
