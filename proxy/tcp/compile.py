"""Resources -> :class:`proxy.tcp.table.L4Table`: opaque ports, VirtualService ``tcp``/``tls``
routes, and the Sidecar kind's egress/ingress listeners of this workload.

Called by :mod:`proxy.routes.compile` with its compiler, so TCP clusters are the same clusters
(``outbound|PORT|SUBSET|FQDN``, DestinationRule settings, outlier detection) HTTP uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from control_plane.api.hosts import fqdn
from proxy.tcp.protocol import is_opaque
from proxy.tcp.table import EgressListener, L4Table, TcpRoute, TcpService


def compile_l4(c: Any) -> tuple[L4Table, list[str]]:
    """``c`` is the route compiler (services collected, clusters built)."""
    warnings: list[str] = []
    routes: dict[tuple[str, int], list[TcpRoute]] = {}
    for vs in c.resources:
        if vs.kind != "VirtualService":
            continue
        for host in vs.spec.get("hosts") or ():
            fq = fqdn(host, vs.namespace)
            svc = c.services.get(fq)
            if svc is None:
                continue
            for kind in ("tls", "tcp"):
                for i, rspec in enumerate(vs.spec.get(kind) or ()):
                    for port, proto in svc.protocols.items():
                        if not is_opaque(proto):
                            continue
                        route = _route(c, vs, kind, i, rspec, port)
                        if route is not None:
                            routes.setdefault((fq, port), []).append(route)
    services: dict[tuple[str, int], TcpService] = {}
    for fq, svc in c.services.items():
        for port, proto in svc.protocols.items():
            if not is_opaque(proto):
                continue
            _, default = c.cluster_map(fq, svc.namespace, "", port)
            rs = routes.get((fq, port), [])
            # TLS routes first: an SNI match is more specific than a port match (Envoy's
            # filter chain order), each kind keeping its VirtualService order
            rs.sort(key=lambda r: not r.sni)
            services[(fq, port)] = TcpService(fq, port, proto, tuple(rs), default)
    # this workload's own opaque ports (numbers and target ports): HBONE streams to them are
    # accepted by the inbound side
    local = c.services.get(fqdn(c.local_service, c.namespace)) if c.local_service else None
    local_ports: frozenset[int] = frozenset()
    if local is not None:
        opaque = {n for n, p in local.protocols.items() if is_opaque(p)}
        local_ports = frozenset(opaque) | frozenset(t for n, _, t in local.ports if n in opaque)
    egress, ingress = _sidecar(c, services, warnings)
    return L4Table(services, egress, ingress, local_ports), warnings


def _route(
    c: Any, vs: Any, kind: str, index: int, spec: Mapping[str, Any], port: int
) -> TcpRoute | None:
    sni: list[str] = []
    matches = spec.get("match") or ()
    ok = not matches
    for m in matches:
        if m.get("port") and int(m["port"]) != port:
            continue
        src = m.get("sourceLabels")
        if src and not all(c.labels.get(k) == v for k, v in src.items()):
            continue
        if m.get("sourceNamespace") and m["sourceNamespace"] != c.namespace:
            continue
        ok = True
        sni.extend(str(h).lower() for h in m.get("sniHosts") or ())
    if not ok:
        return None
    clusters, cum, total = [], [], 0
    dests = spec.get("route") or ()
    for d in dests:
        dst = d["destination"]
        dport = int((dst.get("port") or {}).get("number") or 0) or port
        by_port, default = c.cluster_map(dst["host"], vs.namespace, dst.get("subset") or "", dport)
        clusters.append(by_port.get(dport, default))
        total += 1 if len(dests) == 1 else int(d.get("weight") or 0)
        cum.append(total)
    if kind == "tls" and not sni:
        sni = ["*"]
    return TcpRoute(
        f"{vs.namespace}/{vs.name}.{kind}.{index}", tuple(sni), tuple(clusters), tuple(cum), total
    )


def _selected_sidecar(c: Any) -> Any:
    """Istio's precedence: a Sidecar of the namespace selecting this workload, else the
    namespace's selector-less one, else the root namespace's; ties by name."""
    scs = sorted((r for r in c.resources if r.kind == "Sidecar"), key=lambda r: r.name)
    for r in scs:
        sel = (r.spec.get("workloadSelector") or {}).get("labels")
        if r.namespace == c.namespace and sel and all(c.labels.get(k) == v for k, v in sel.items()):
            return r
    for ns in (c.namespace, "istio-system"):
        for r in scs:
            if r.namespace == ns and not (r.spec.get("workloadSelector") or {}).get("labels"):
                return r
    return None


def _host_allows(pattern: str, ns: str, svc: Any) -> bool:
    pns, _, host = pattern.partition("/")
    if pns == "~":
        return False
    if pns == ".":
        pns = ns
    if pns != "*" and pns != svc.namespace:
        return False
    if host == "*":
        return True
    if host.startswith("*."):
        return svc.fqdn.endswith(host[1:])
    return fqdn(host, svc.namespace if pns == "*" else pns) == svc.fqdn


def _sidecar(
    c: Any, services: dict[tuple[str, int], TcpService], warnings: list[str]
) -> tuple[tuple[EgressListener, ...], dict[int, tuple[str, int]]]:
    sc = _selected_sidecar(c)
    if sc is None:
        return (), {}
    name = f"Sidecar {sc.namespace}/{sc.name}"
    egress: list[EgressListener] = []
    for i, eg in enumerate(sc.spec.get("egress") or ()):
        port = eg.get("port")
        if not port:
            continue  # the default outbound listener: scoping only
        number = int(port["number"])
        proto = str(port.get("protocol") or "TCP").upper()
        if proto in ("HTTP", "HTTP2", "GRPC", "GRPC-WEB"):
            warnings.append(
                f"{name}: egress[{i}] port {number} is {proto}; HTTP egress listeners are "
                "not opened (the app uses the outbound port)"
            )
            continue
        target = ""
        for fq, svc in sorted(c.services.items()):
            if (fq, number) in services and any(
                _host_allows(h, c.namespace, svc) for h in eg.get("hosts") or ()
            ):
                target = fq
                break
        if not target:
            warnings.append(
                f"{name}: egress[{i}] port {number}: no egress host has an opaque port "
                f"{number}; connections to it are closed"
            )
        egress.append(EgressListener(str(eg.get("bind") or "127.0.0.1"), number, target))
    ingress: dict[int, tuple[str, int]] = {}
    for ing in sc.spec.get("ingress") or ():
        number = int(ing["port"]["number"])
        ep = ing.get("defaultEndpoint")
        if ep:
            host, _, p = str(ep).rpartition(":")
            host = host.strip("[]")
            ingress[number] = ("127.0.0.1" if host in ("0.0.0.0", "localhost") else host, int(p))
        else:
            ingress[number] = ("", 0)  # the app port
    return tuple(egress), ingress
