"""``/explain``: what the sidecar would do with a request, without sending it.

Runs the same matcher and the same compiled policies as the data path against a described
request (method, host, path, headers, and for the inbound side the caller's identity), and says
which route rule matches, which subsets and endpoints it can go to with their health, and which
timeout, retry, fault, breaker, bulkhead, rate-limit and authorization rules apply. Read-only:
it changes no load-balancer position, budget or breaker.
"""

from __future__ import annotations

from typing import Any

from control_plane.api.hosts import split_host_port
from proxy.routes import match


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


def _policy_view(rt: Any, route: Any, dest: Any, port: int) -> dict[str, Any]:
    p = rt.route_policy(dest, port)  # the policy compiled with the config, as the data path
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


def explain(sidecar: Any, query: dict[str, str]) -> dict[str, Any]:
    rt = sidecar.runtime
    table = rt.table
    direction = query.get("direction", "outbound")
    method = query.get("method", "GET").upper()
    raw_path = query.get("path", "/")
    path, _, qs = raw_path.partition("?")
    headers = _headers(query)
    out: dict[str, Any] = {
        "config_version": table.version,
        "direction": direction,
        "request": {"method": method, "path": raw_path, "headers": dict(headers)},
    }
    if direction == "inbound":
        from proxy.authz.engine import RequestAttrs, merged_header_getter
        from proxy.authz.normalize import normalize_path

        norm = normalize_path(path)
        principal = query.get("principal", "")
        out["normalized_path"] = norm
        out["mtls_mode"] = rt.mtls_mode
        if norm is None:
            out["decision"] = "400 DPE: the path cannot be normalized"
            return out
        authz = rt.authz
        if authz is None or authz.empty:
            out["authorization"] = {"allowed": True, "reason": "no AuthorizationPolicy applies"}
        else:
            d = authz.check(
                RequestAttrs(
                    source_principal=principal.removeprefix("spiffe://"),
                    method=method,
                    host=query.get("host", ""),
                    port=rt.inbound_cluster.port,
                    path=norm,
                    headers=merged_header_getter(headers),
                    mtls=bool(principal),
                )
            )
            out["authorization"] = {
                "allowed": d.allowed,
                "policy": d.policy,
                "reason": d.reason,
                "policies_in_force": list(authz.policies),
            }
        out["forward_to"] = rt.inbound_cluster.endpoints[0].key
        return out
    host_hdr = query.get("host", "")
    host, port = split_host_port(host_hdr)
    res = match.find(table, host, path, qs, method, host_hdr, "http", headers)
    if res is None:
        out["decision"] = f"404 NR: no mesh service is named {host!r}"
        out["known_hosts"] = sorted({vh.service for vh in table.hosts.values()})
        return out
    vh, route, block = res
    out["virtual_host"] = {
        "service": vh.service,
        "virtual_service": vh.name,
        "rules": [r.name for r in vh.routes],
    }
    if route is None:
        out["decision"] = "404 NR: the host is known but no rule matches"
        return out
    out["route"] = {
        "name": route.name,
        "virtual_service": route.virtual_service,
        "matched_by": block.name if block is not None else "(no match: catch-all)",
    }
    if route.direct_response is not None:
        out["decision"] = f"{route.direct_response[0]} direct response"
        return out
    if route.rewrite_uri is not None or route.rewrite_uri_regex is not None:
        out["route"]["rewritten_path"] = match.rewrite_path(route, block, path)
    dests = []
    total = route.total_weight or 1
    for d in route.destinations:
        cname = d.clusters.get(port, d.default_cluster) if d.clusters else d.default_cluster
        cluster = table.clusters.get(cname)
        entry: dict[str, Any] = {
            "service": d.service,
            "subset": d.subset or None,
            "cluster": cname,
            "share": round((d.weight if len(route.destinations) > 1 else total) / total, 4),
        }
        if cluster is None:
            entry["decision"] = "503 NC: cluster not found"
        else:
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
            entry["policy"] = _policy_view(rt, route, d, port)
        dests.append(entry)
    out["destinations"] = dests
    return out
