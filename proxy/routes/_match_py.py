"""Route matching: the second half of the fast path (pure-Python twin).

One source compiled twice: ``_match_c.py`` is a symlink to this file and ``_match_c.pxd`` gives
Cython the types, so the twins cannot drift. Pure functions of (table, request); no I/O, no
allocation beyond the lazily built header/query dicts a rule actually needs.

Semantics (Istio HTTPMatchRequest): rules in order, first match wins; within a rule the ``match``
blocks are ORed and the conditions inside one block ANDed; ``uri`` matches the path without its
query; regexes must match the whole value (RE2 full match); a header listed several times is
matched against its values joined with ``,`` (Envoy); ``withoutHeaders`` holds when the header is
absent or does not match; a query parameter is matched on its first occurrence.
"""

from __future__ import annotations

from bisect import bisect_right
from urllib.parse import unquote_plus

EXACT = 0
PREFIX = 1
REGEX = 2
PRESENT = 3


def _str_match(op, value, rx, subject):
    if op == EXACT:
        return subject == value
    if op == PREFIX:
        return subject.startswith(value)
    if op == REGEX:
        return rx.fullmatch(subject) is not None
    return True


def _header_dict(headers):
    d = {}
    for name, value in headers:
        old = d.get(name)
        d[name] = value if old is None else old + "," + value
    return d


def _query_dict(query):
    d = {}
    if not query:
        return d
    for part in query.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        key = unquote_plus(key)
        if key not in d:
            d[key] = unquote_plus(value)
    return d


def _block_matches(block, path, method, authority, scheme, hdrs, query, qd):
    m = block.uri
    if m is not None:
        subject = path.lower() if block.ignore_uri_case else path
        if m.op == REGEX:
            if m.rx.fullmatch(subject) is None:
                return False, hdrs, qd
        elif not _str_match(m.op, m.value, m.rx, subject):
            return False, hdrs, qd
    m = block.method
    if m is not None and not _str_match(m.op, m.value, m.rx, method):
        return False, hdrs, qd
    m = block.authority
    if m is not None and not _str_match(m.op, m.value, m.rx, authority):
        return False, hdrs, qd
    m = block.scheme
    if m is not None and not _str_match(m.op, m.value, m.rx, scheme):
        return False, hdrs, qd
    if block.headers:
        if hdrs is None:
            hdrs = {}
        for m in block.headers:
            value = hdrs.get(m.name)
            ok = value is not None and _str_match(m.op, m.value, m.rx, value)
            if ok == m.invert:
                return False, hdrs, qd
    if block.query:
        if qd is None:
            qd = _query_dict(query)
        for m in block.query:
            value = qd.get(m.name)
            if value is None or not _str_match(m.op, m.value, m.rx, value):
                return False, hdrs, qd
    return True, hdrs, qd


def find(table, host, path, query, method, authority, scheme, headers):
    """First matching route for the request, as ``(virtual_host, route, block)``.

    Returns None when no service has this host (404 NR) and ``(vh, None, None)`` when the host
    is known but no rule matches (also 404 NR, with the virtual host for telemetry).
    ``headers`` is the parsed header list; it is turned into a dict only if a rule needs it.
    """
    vh = table.hosts.get(host)
    if vh is None:
        return None
    hdrs = None
    qd = None
    for route in vh.routes:
        if not route.matches:
            return vh, route, None
        for block in route.matches:
            if block.headers and hdrs is None:
                hdrs = _header_dict(headers)
            ok, hdrs, qd = _block_matches(block, path, method, authority, scheme, hdrs, query, qd)
            if ok:
                return vh, route, block
    return vh, None, None


def pick_destination(route, r):
    """Weighted choice by ``weight / sum`` with ``r`` uniform in [0, 1)."""
    dests = route.destinations
    if len(dests) == 1:
        return dests[0]
    return dests[bisect_right(route.cum_weights, int(r * route.total_weight))]


def rewrite_path(route, block, path):
    """Istio ``rewrite.uri``: replaces the matched prefix, or the whole path otherwise."""
    rx_rw = route.rewrite_uri_regex
    if rx_rw is not None:
        return rx_rw[0].sub(rx_rw[1], path)
    new = route.rewrite_uri
    if new is None:
        return path
    if block is not None and block.uri is not None and block.uri.op == PREFIX:
        rest = path[len(block.uri.value):]
        if new.endswith("/") and rest.startswith("/"):
            rest = rest[1:]
        return new + rest
    return new
