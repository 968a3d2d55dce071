"""``/explain``: what the sidecar would do with a request, without sending it.

The decision comes from the functions the data path itself calls, so the explanation cannot
drift from what a request gets: outbound, ``proxy.outbound.route.choose`` (host or captured
address, PASSTHROUGH, route rule, per-port policy plan) with a fixed draw per destination;
inbound, ``proxy.inbound.admit`` (PeerAuthentication at accept, normalisation, authorization,
the workload's rate limits asked without taking a permit). Around that decision it reports the
virtual host, the route, every destination with its share, endpoints and health, and the
compiled timeout, retry, fault, breaker, bulkhead and rate-limit settings. Read-only: it
changes no load-balancer position, budget, breaker or rate-limit bucket.
"""

from __future__ import annotations

from typing import Any

from control_plane.api.hosts import split_host_port
from proxy.http1.parser import RequestHead
from proxy.inbound.admit import (
    DEADLINE_PASSED,
    DryRunLimits,
    admit,
    authorize,
    caller_deadline,
    normalise,
    refuses_connection,
)
from proxy.outbound.route import DIRECT, FORWARD, NO_ROUTE, PASSTHROUGH, choose
from proxy.routes import match
from proxy.transport.exchange import host_port


def _headers(query: dict[str, str]) -> list[tuple[str, str]]:
    """Headers from ``header=name:value`` (repeatable, comma-joined by aiohttp) or ``h.name=v``."""
    out: list[tuple[str, str]] = []
    for key, value in query.items():
        if key.startswith("h."):
            out.append((key[2:].lower(), value))
        elif key == "header":
            for item in value.split("\n"):
                name, sep, v = item.partition(":")
                if sep:
                    out.append((name.strip().lower(), v.strip()))
    return out


def _head(query: dict[str, str], headers: list[tuple[str, str]]) -> Any:
    """The described request as the HTTP/1.1 parser would have handed it to the stacks (the
    Host is a header too, as on the wire: header matches and authorization can see it)."""
    raw_path = query.get("path", "/")
    path, _, qs = raw_path.partition("?")
    host = query.get("host", "")
    return RequestHead(
        method=query.get("method", "GET").upper(),
        target=raw_path,
        path=path,
        query=qs,
        headers=([("host", host)] if host else []) + headers,
        host=host,
    )


def _flag(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.lower() in ("1", "true", "yes", "on")


def _policy_view(route: Any, p: Any) -> dict[str, Any]:
    """The compiled policy ``choose`` picked for one destination (as the data path uses it)."""
    r = p.retry
    view: dict[str, Any] = {
        "timeout_s": p.timeout,
        "retries": {
            "attempts": r.attempts,
            "retry_on": sorted(r.retry_on),
            "retriable_status_codes": sorted(r.retriable_status_codes),
            "per_try_timeout_s": r.per_try_timeout,
            "non_idempotent_allowed": r.allow_non_idempotent,
        },
        "fault": route.fault,
        "mirror": {"cluster": route.mirror[0], "fraction": route.mirror[1]}
        if route.mirror
        else None,
    }
    d = p.dest
    if d is not None:
        view["retry_budget"] = {"available": d.budget.available}
        if d.breaker is not None:
            view["circuit_breaker"] = d.breaker.status()
        if d.bulkhead is not None:
            view["bulkhead"] = {
                "max_concurrent_calls": d.bulkhead.max_concurrent_calls,
                "active": d.bulkhead.active,
            }
        if d.limiter is not None:
            view["rate_limiter"] = {"available_permits": d.limiter.available_permits}
    return view


def _destination(
    rt: Any, head: Any, original_dst: Any, route: Any, index: int, port: int
) -> dict[str, Any]:
    """Destination ``index`` of ``route``: ``choose`` run with the draw that lands on it (the
    middle of its weight band), so its cluster and policy are the ones a request drawing it
    gets. A destination of weight 0 is never drawn."""
    d = route.destinations[index]
    cum = route.cum_weights
    start = cum[index - 1] if index else 0
    weight = cum[index] - start
    total = route.total_weight or 1
    cname = d.clusters.get(port, d.default_cluster) if d.clusters else d.default_cluster
    entry: dict[str, Any] = {
        "service": d.service,
        "subset": d.subset or None,
        "cluster": cname,
        "share": round(weight / total, 4),
    }
    if weight <= 0:
        entry["decision"] = "never chosen: weight 0"
        return entry
    draw = (start + weight / 2) / total
    kind, _, _, _, policy = choose(rt.table, rt.plans, head, original_dst, lambda: draw)
    if kind != FORWARD:
        entry["decision"] = "503 NC: cluster not found"
        return entry
    cluster = policy.cluster
    entry["cluster"] = cluster.name
    entry["lb"] = cluster.lb
    entry["endpoints"] = [
        {
            "address": ep.key,
            "labels": ep.labels,
            "mtls": ep.tls,
            "identity": ep.spiffe_id or None,
            **rt.endpoint_health(cluster, ep),
        }
        for ep in cluster.endpoints
    ]
    if not cluster.endpoints:
        entry["decision"] = "503 UH: no endpoint"
    entry["policy"] = _policy_view(route, policy)
    return entry


def _original_dst(query: dict[str, str], out: dict[str, Any]) -> tuple[str, int] | None:
    """``original_dst=ip:port``: the request is one the capture redirected (what the app
    dialled), as ``down.original_dst`` is on the data path."""
    raw = query.get("original_dst", "")
    if not raw:
        return None
    host, port = split_host_port(raw)
    out["original_dst"] = f"{host}:{port}"
    return (host.strip("[]"), port)


def _no_route(table: Any, service: str, out: dict[str, Any]) -> None:
    vh = table.hosts.get(service)
    if vh is not None and vh.service == service:
        out["virtual_host"] = _vh_view(vh)
        out["decision"] = "404 NR: the host is known but no rule matches"
        return
    out["decision"] = f"404 NR: no mesh service is named {service!r}"
    out["known_hosts"] = sorted({vh.service for vh in table.hosts.values()})


def _vh_view(vh: Any) -> dict[str, Any]:
    return {"service": vh.service, "virtual_service": vh.name, "rules": [r.name for r in vh.routes]}


def _outbound(rt: Any, head: Any, query: dict[str, str], out: dict[str, Any]) -> None:
    """The outbound stack's decision (``OutboundStack.handle``), from ``choose``."""
    table = rt.table
    if head.method == "CONNECT":
        out["decision"] = "404 NR: CONNECT is not routed here (tunnels are HBONE's)"
        return
    original_dst = _original_dst(query, out)
    kind, service, route, block, _ = choose(table, rt.plans, head, original_dst, lambda: 0.0)
    if kind == PASSTHROUGH:
        dst = f"{service[0]}:{service[1]}"
        out["decision"] = f"passthrough: outside the mesh, forwarded to {dst} unchanged"
        out["passthrough"] = {"cluster": "PassthroughCluster", "address": dst}
        return
    if kind == NO_ROUTE:
        _no_route(table, service, out)
        return
    out["virtual_host"] = _vh_view(table.hosts[service])
    out["route"] = {
        "name": route.name,
        "virtual_service": route.virtual_service,
        "matched_by": block.name if block is not None else "(no match: catch-all)",
    }
    if original_dst is not None and host_port(head.host)[0] not in table.hosts:
        out["route"]["routed_by"] = "original_dst"
    if kind == DIRECT:
        out["decision"] = f"{route.direct_response[0]} direct response"
        return
    if route.rewrite_uri is not None or route.rewrite_uri_regex is not None:
        out["route"]["rewritten_path"] = match.rewrite_path(route, block, head.path)
    port = host_port(head.host)[1]
    out["destinations"] = [
        _destination(rt, head, original_dst, route, i, port) for i in range(len(route.destinations))
    ]


def _deadline(head: Any, out: dict[str, Any]) -> Any:
    """The last admission step: the caller's deadline (``caller_deadline_s``), refused when it
    has passed already (a request in flight also spends time in the sidecar: not shown)."""
    first: dict[str, str] = {}
    for name, value in head.headers:
        first.setdefault(name, value)  # the first value wins, as the stack's header scan
    left = caller_deadline(first)
    if left is None:
        return None
    out["caller_deadline_s"] = left
    return DEADLINE_PASSED if left <= 0.0 else None


def _inbound(sidecar: Any, head: Any, query: dict[str, str], out: dict[str, Any]) -> None:
    """The inbound stack's decision (listener accept, then ``InboundStack.handle``)."""
    rt = sidecar.runtime
    principal = query.get("principal", "")
    mtls = _flag(query.get("mtls"), bool(principal))
    norm = normalise(head)
    out["normalized_path"] = norm[1] if norm is not None else None
    mode = rt.mtls_mode
    out["mtls_mode"] = mode
    # the listener applies PeerAuthentication only when it has a certificate to serve mTLS with
    listener = sidecar.listeners.get("inbound")
    enforced = listener is not None and listener.mtls_mode is not None
    refused = enforced and refuses_connection(mode, mtls)
    out["peer_authentication"] = {"mode": mode, "enforced": enforced, "allowed": not refused}
    if refused:
        how = "a plaintext" if mode == "STRICT" else "an mTLS"
        out["decision"] = f"refused: PeerAuthentication {mode} resets {how} connection at accept"
        return
    if norm is None:
        out["decision"] = "400 DPE: the path cannot be normalized"
        return
    path = norm[1]
    cluster = rt.inbound_cluster
    peer_ip = query.get("source_ip", "")
    decision = authorize(head, path, principal, peer_ip, mtls, cluster.port, rt.authz)
    if decision is None:
        out["authorization"] = {"allowed": True, "reason": "no AuthorizationPolicy applies"}
    else:
        out["authorization"] = {
            "allowed": decision.allowed,
            "policy": decision.policy,
            "reason": decision.reason,
            "policies_in_force": list(rt.authz.policies),
        }
    limits = DryRunLimits(rt.inbound_limits) if rt.inbound_limits is not None else None
    refused = admit(head, path, principal, peer_ip, mtls, cluster.port, rt.authz, limits)
    out["forward_to"] = cluster.endpoints[0].key
    if refused is None:
        refused = _deadline(head, out)
    if refused is None:
        out["decision"] = f"forward to {cluster.endpoints[0].key}"
        return
    status, flag, _, rule, subject = refused
    why = f"refused by {rule}" if rule else "the caller's deadline has passed"
    out["decision"] = f"{status} {flag}: {why}"
    if subject is not None:
        out["rate_limit"] = {"policy": subject[0], "limit": subject[1]}


def explain(sidecar: Any, query: dict[str, str]) -> dict[str, Any]:
    """The ``/explain`` answer for the request ``query`` describes."""
    rt = sidecar.runtime
    direction = query.get("direction", "outbound")
    headers = _headers(query)
    head = _head(query, headers)
    out: dict[str, Any] = {
        "config_version": rt.table.version,
        "direction": direction,
        "request": {"method": head.method, "path": head.target, "headers": dict(headers)},
    }
    if direction == "inbound":
        _inbound(sidecar, head, query, out)
    else:
        _outbound(rt, head, query, out)
    return out
