"""The compiled L4 view of one config: opaque service ports, their routes, the Sidecar listeners.

Built once per config by :mod:`proxy.tcp.compile` next to the HTTP route table; immutable. A
new TCP connection does one dict lookup for its service port and, when a VirtualService splits
it, one weighted pick (:func:`select`); SNI matching is only for ``tls`` routes.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class TcpRoute:
    name: str  # "ns/vs.tcp.0"
    sni: tuple[str, ...]  # tls routes: exact hosts or "*.suffix"; tcp routes: ()
    clusters: tuple[str, ...]
    cum_weights: tuple[int, ...]
    total: int


@dataclass(frozen=True, slots=True)
class TcpService:
    service: str  # FQDN
    port: int
    protocol: str  # "tcp" | "tls"
    routes: tuple[TcpRoute, ...]  # from VirtualService tcp/tls; empty: the default cluster
    default_cluster: str

    @property
    def needs_sni(self) -> bool:
        return any(r.sni for r in self.routes)


@dataclass(frozen=True, slots=True)
class EgressListener:
    """A Sidecar ``egress[]`` entry with a port: a local listener that reaches ``service``."""

    bind: str
    port: int
    service: str  # FQDN; "" when no egress host has that port (connections are closed)


@dataclass(frozen=True, slots=True)
class L4Table:
    services: dict[tuple[str, int], TcpService] = field(default_factory=dict)
    egress: tuple[EgressListener, ...] = ()
    # Sidecar ingress[]: port -> (host, port) of the app for HBONE streams to that port
    ingress: dict[int, tuple[str, int]] = field(default_factory=dict)
    # the local workload's own opaque ports (target port -> protocol), for the inbound side
    local_ports: frozenset[int] = frozenset()

    def lookup(self, service: str, port: int) -> TcpService | None:
        return self.services.get((service, port))


EMPTY_L4 = L4Table()


def sni_matches(patterns: tuple[str, ...], sni: str) -> bool:
    return any(p in (sni, "*") or (p.startswith("*.") and sni.endswith(p[1:])) for p in patterns)


def select(svc: TcpService, sni: str, r: float) -> str | None:
    """The cluster for one connection: first matching route, weighted by ``r`` in [0, 1).
    None when routes exist and none matches (Envoy: no filter chain, the connection closes)."""
    if not svc.routes:
        return svc.default_cluster
    for route in svc.routes:
        if route.sni and not sni_matches(route.sni, sni):
            continue
        if len(route.clusters) == 1 or route.total <= 0:
            return route.clusters[0]
        return route.clusters[bisect_right(route.cum_weights, int(r * route.total))]
    return None
