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


def _plan_str(mp, subject):
    """A flattened Matcher ``(op, value, rx, name, invert)`` against ``subject``."""
    return _str_match(mp[0], mp[1], mp[2], subject)


def find(table, host, path, query, method, authority, scheme, headers):
    """First matching route for the request, as ``(virtual_host, route, block)``.

    Returns None when no service has this host (404 NR) and ``(vh, None, None)`` when the host
    is known but no rule matches (also 404 NR, with the virtual host for telemetry).
    ``headers`` is the parsed header list; it is turned into a dict only if a rule needs it.
    Walks ``vh.plan``, the routes' match blocks flattened to tuples at config time.
    """
    vh = table.hosts.get(host)
    if vh is None:
        return None
    hdrs = None
    qd = None
    for rp in vh.plan:
        blocks = rp[1]
        if not blocks:
            return vh, rp[0], None
        for bp in blocks:
            p = bp[1]
            # uri, method, authority, scheme, then headers and query (cheapest first)
            uop = p[0]
            if uop >= 0:
                subject = path.lower() if p[3] else path
                if uop == REGEX:
                    if p[2].fullmatch(subject) is None:
                        continue
                elif not _str_match(uop, p[1], p[2], subject):
                    continue
            mp = p[4]
            if mp is not None and not _plan_str(mp, method):
                continue
            mp = p[5]
            if mp is not None and not _plan_str(mp, authority):
                continue
            mp = p[6]
            if mp is not None and not _plan_str(mp, scheme):
                continue
            ms = p[7]
            if ms:
                if hdrs is None:
                    hdrs = _header_dict(headers)
                ok = True
                for mp in ms:
                    value = hdrs.get(mp[3])
                    if (value is not None and _plan_str(mp, value)) == mp[4]:
                        ok = False
                        break
                if not ok:
                    continue
            ms = p[8]
            if ms:
                if qd is None:
                    qd = _query_dict(query)
                ok = True
                for mp in ms:
                    value = qd.get(mp[3])
                    if value is None or not _plan_str(mp, value):
                        ok = False
                        break
                if not ok:
                    continue
            return vh, rp[0], bp[0]
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
