# cython: annotation_typing=False
"""Route choice: which route, destination and compiled policy a request gets, or which local
answer. Pure (no I/O, no runtime): the table, the compiled plans and a random draw decide.

This file is compiled a second time by Cython as ``_route_c`` (``_route_c.py`` is a
symlink to it; ``_route_c.pxd`` adds the C types); ``proxy/outbound/route.py`` picks the build.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from proxy.routes import match
from proxy.server.headers import apply_ops
from proxy.transport.exchange import host_port

# What choose() decided (plain ints, compared per request)
FORWARD = 0  # (FORWARD, service, route, block, policy)
NO_ROUTE = 1  # (NO_ROUTE, service or host, None, None, None): 404 NR
DIRECT = 2  # (DIRECT, service, route, block, None): the route's direct response
NO_CLUSTER = 3  # (NO_CLUSTER, service, route, block, None): 503 NC
PASSTHROUGH = 4  # (PASSTHROUGH, original destination, None, None, None): outside the mesh


def choose(
    table: Any,
    plans: Mapping[int, Any],
    head: Any,
    original_dst: tuple[str, int] | None,
    rand: Callable[[], float],
) -> tuple[int, Any, Any, Any, Any]:
    """The route for ``head`` under ``table`` (and ``plans``, compiled with it). A captured
    request (``original_dst``) whose Host is no mesh name is routed by the address the app
    dialled, or passed through when that is no mesh address either (Istio's ALLOW_ANY)."""
    host, port = host_port(head.host)
    res = match.find(
        table, host, head.path, head.query, head.method, head.host, "http", head.headers
    )
    if res is None and original_dst is not None:
        # captured: the Host may be an address; else where the app dialled decides
        dst = original_dst
        svc = table.by_address.get(f"{dst[0]}:{dst[1]}") or table.by_address.get(host)
        if svc is None:
            return (PASSTHROUGH, dst, None, None, None)
        res = match.find(
            table, svc, head.path, head.query, head.method, head.host, "http", head.headers
        )
    if res is None or res[1] is None:
        return (NO_ROUTE, res[0].service if res is not None else host, None, None, None)
    vh, route, block = res
    if route.direct_response is not None:
        return (DIRECT, vh.service, route, block, None)
    dest = match.pick_destination(route, rand())
    plan = plans.get(id(dest))
    if plan is None:
        policy = None
    else:  # DestinationPlan.for_port, inline (once per request)
        by_port = plan.by_port
        policy = by_port.get(port, plan.default) if by_port else plan.default
    if policy is None:
        return (NO_CLUSTER, vh.service, route, block, None)
    return (FORWARD, vh.service, route, block, policy)


def rewrite(
    route: Any, block: Any, policy: Any, head: Any
) -> tuple[str, list[tuple[str, str]]]:
    """The request target and headers as they go upstream: the route's URI rewrite, the
    (route, destination) header operations compiled into ``policy``, the authority rewrite."""
    target = head.target
    if route.rewrite_uri is not None or route.rewrite_uri_regex is not None:
        new_path = match.rewrite_path(route, block, head.path)
        target = new_path + ("?" + head.query if head.query else "")
    headers = head.headers
    ops = policy.request_ops
    if ops is not None:
        headers = apply_ops(apply_ops(headers, ops[0]), ops[1])
    authority = route.rewrite_authority
    if authority:
        headers = [(n, authority if n == "host" else v) for n, v in headers]
    return target, headers
