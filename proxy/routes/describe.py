"""A compiled match block as one line a person reads (``meshlet proxy-config routes``' MATCH).

The sidecar's ``/config_dump`` shows what it matches on, not the block's name or index, so the
column says ``headers x-canary exact always`` where Istio's YAML said
``headers: {x-canary: {exact: always}}``. Config-time only.
"""

from __future__ import annotations

from proxy.routes.table import EXACT, PREFIX, REGEX, MatchBlock, Matcher

_OPS = {EXACT: "exact", PREFIX: "prefix", REGEX: "regex"}


def _matcher(kind: str, m: Matcher) -> str:
    name = "" if kind == m.name else f" {m.name}"
    if m.op in _OPS:
        text = f"{kind}{name} {_OPS[m.op]} {m.value}"
    else:
        text = f"{kind}{name} present"
    return f"not {text}" if m.invert else text


def describe_block(block: MatchBlock) -> str:
    """Every condition of one HTTPMatchRequest, ANDed: ``uri prefix /api and method exact GET``."""
    parts = []
    if block.uri is not None:
        parts.append(_matcher("uri", block.uri) + (" (ignore case)" if block.ignore_uri_case
                                                     else ""))
    for kind, m in (("method", block.method), ("authority", block.authority),
                    ("scheme", block.scheme)):
        if m is not None:
            parts.append(_matcher(kind, m))
    parts += [_matcher("headers", m) for m in block.headers]
    parts += [_matcher("queryParams", m) for m in block.query]
    return " and ".join(parts) or "*"
