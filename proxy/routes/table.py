"""The immutable route table the data path reads.

Built once per config by :mod:`proxy.routes.compile`; a request takes the current table once and
keeps it for its whole life (Envoy's rule), so a swap is one attribute assignment and never
changes a request in flight. Classes use ``__slots__`` and tuples because the request path reads
them on every call; nothing here is mutated after compilation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from proxy.tcp.table import EMPTY_L4, L4Table

# StringMatch operators, shared with the matcher (kept as ints for the compiled fast path).
EXACT = 0
PREFIX = 1
REGEX = 2
PRESENT = 3


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: str
    port: int
    labels: dict[str, str]
    weight: int = 1
    tls: bool = False  # mTLS to a peer sidecar's inbound port
    spiffe_id: str = ""  # the identity the peer must present when tls is on
    key: str = ""  # "address:port", the key of per-endpoint runtime state
    hbone: int = 0  # the peer sidecar's HBONE port (opaque TCP tunnels there), 0: none


#: Istio's default for every connectionPool threshold: effectively no limit.
UNLIMITED = 2**32 - 1


class PoolSettings(NamedTuple):
    """What an endpoint pool takes from its cluster's DestinationRule ``connectionPool``.
    Hashable and ordered: pools are keyed by it, and moved between settings on a swap."""

    idle_timeout: float = 55.0  # http.idleTimeout
    max_requests_per_connection: int = 0  # 0: no limit
    max_connections: int = UNLIMITED  # tcp.maxConnections
    max_pending: int = UNLIMITED  # http.http1MaxPendingRequests
    max_requests: int = UNLIMITED  # http.http2MaxRequests
    max_concurrent_streams: int = 0  # http.maxConcurrentStreams; 0: meshlet's default
    max_connection_duration: float = 0.0  # tcp.maxConnectionDuration; 0: no limit
    keepalive: tuple[int, int, int] | tuple[()] = ()  # tcp.tcpKeepalive (time, interval, probes)


@dataclass(frozen=True, slots=True)
class UpstreamTLS:
    """A DestinationRule ``trafficPolicy.tls`` other than DISABLE, resolved at compile time.

    ISTIO_MUTUAL uses the sidecar's own identity and the mesh trust bundle; SIMPLE and MUTUAL
    use the files named here. Hashable: pools and SSL contexts are keyed by it."""

    mode: str  # ISTIO_MUTUAL | SIMPLE | MUTUAL
    ca_certificates: str = ""
    client_certificate: str = ""
    private_key: str = ""
    sni: str = ""
    subject_alt_names: tuple[str, ...] = ()
    insecure_skip_verify: bool = False
    ca_crl: str = ""
    source: str = ""  # "namespace/name" of the DestinationRule, for errors


@dataclass(frozen=True, slots=True)
class Cluster:
    name: str  # outbound|PORT|SUBSET|FQDN, as Istio names clusters
    service: str  # FQDN
    subset: str
    port: int
    endpoints: tuple[Endpoint, ...]
    lb: str = "ROUND_ROBIN"
    connect_timeout: float = 10.0
    # connectionPool thresholds (Envoy's circuit breakers), enforced per endpoint pool
    max_connections: int = UNLIMITED  # tcp.maxConnections
    max_pending: int = UNLIMITED  # http.http1MaxPendingRequests
    max_requests: int = UNLIMITED  # http.http2MaxRequests (concurrent requests)
    max_retries: int = UNLIMITED  # http.maxRetries (concurrent retries, whole cluster)
    max_requests_per_connection: int = 0
    max_concurrent_streams: int = 0  # http.maxConcurrentStreams (0: meshlet's 100)
    max_connection_duration: float = 0.0  # tcp.maxConnectionDuration (0: none)
    tcp_keepalive: tuple[int, int, int] | tuple[()] = ()  # (time, interval, probes); 0: OS's
    idle_timeout: float = 55.0
    tcp_idle_timeout: float = 3600.0  # connectionPool.tcp.idleTimeout (Envoy's default 1 h)
    outlier: dict[str, Any] | None = None
    tls_mode: str = ""  # DestinationRule tls.mode, "" when unset (auto: mTLS to mesh peers)
    origination: UpstreamTLS | None = None  # TLS the sidecar originates, when tls.mode says so
    resilience: dict[str, Any] = field(default_factory=dict)

    # what an endpoint pool takes from this cluster, computed once (read on every request)
    pool_settings: PoolSettings = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "pool_settings",
            PoolSettings(
                self.idle_timeout,
                self.max_requests_per_connection,
                self.max_connections,
                self.max_pending,
                self.max_requests,
                self.max_concurrent_streams,
                self.max_connection_duration,
                self.tcp_keepalive,
            ),
        )


@dataclass(frozen=True, slots=True)
class HeaderOps:
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.set or self.add or self.remove)


@dataclass(frozen=True, slots=True)
class Destination:
    service: str
    subset: str
    port: int  # 0: the request's port if the service has it, else the service's first port
    weight: int
    request_headers: HeaderOps
    response_headers: HeaderOps
    # port -> cluster name, and the cluster used when the port is not listed
    clusters: dict[int, str]
    default_cluster: str
    # bool(request_headers) / bool(response_headers), computed once: read on every request
    request_ops: bool = field(init=False, repr=False, compare=False)
    response_ops: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "request_ops", bool(self.request_headers))
        object.__setattr__(self, "response_ops", bool(self.response_headers))


@dataclass(frozen=True, slots=True)
class Matcher:
    """One StringMatch: ``op`` is EXACT/PREFIX/REGEX/PRESENT; ``rx`` the compiled regex."""

    name: str
    op: int
    value: str
    rx: Any
    invert: bool = False


@dataclass(frozen=True, slots=True)
class MatchBlock:
    """One HTTPMatchRequest: every condition must hold (AND)."""

    name: str
    uri: Matcher | None
    method: Matcher | None
    authority: Matcher | None
    scheme: Matcher | None
    headers: tuple[Matcher, ...]  # includes withoutHeaders (invert=True)
    query: tuple[Matcher, ...]
    ignore_uri_case: bool = False
    # the matcher's view, flattened to tuples once (see _plan): read per request without
    # attribute lookups
    plan: tuple[Any, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        u = self.uri
        object.__setattr__(
            self,
            "plan",
            (
                -1 if u is None else u.op,
                "" if u is None else u.value,
                None if u is None else u.rx,
                self.ignore_uri_case,
                _mplan(self.method),
                _mplan(self.authority),
                _mplan(self.scheme),
                tuple(_mplan(m) for m in self.headers),
                tuple(_mplan(m) for m in self.query),
            ),
        )


def _mplan(m: Matcher | None) -> tuple[int, str, Any, str, bool] | None:
    """A Matcher as ``(op, value, rx, name, invert)``."""
    return None if m is None else (m.op, m.value, m.rx, m.name, m.invert)


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    virtual_service: str
    matches: tuple[MatchBlock, ...]  # empty: matches everything
    destinations: tuple[Destination, ...]
    cum_weights: tuple[int, ...]
    total_weight: int
    timeout: float | None = None  # seconds; None = no route timeout
    retries: dict[str, Any] | None = None
    fault: dict[str, Any] | None = None
    mirror: tuple[str, float] | None = None  # (cluster name, fraction 0..1)
    rewrite_uri: str | None = None
    rewrite_uri_regex: tuple[Any, str] | None = None
    rewrite_authority: str | None = None
    request_headers: HeaderOps = HeaderOps()
    response_headers: HeaderOps = HeaderOps()
    direct_response: tuple[int, str] | None = None
    retry_non_idempotent: bool = False  # the VirtualService opted in (annotation)
    # bool(request_headers) / bool(response_headers), computed once: read on every request
    request_ops: bool = field(init=False, repr=False, compare=False)
    response_ops: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "request_ops", bool(self.request_headers))
        object.__setattr__(self, "response_ops", bool(self.response_headers))


@dataclass(frozen=True, slots=True)
class VirtualHost:
    name: str
    service: str
    routes: tuple[Route, ...]
    # ((route, ((block, block.plan), ...)), ...): what the matcher walks
    plan: tuple[Any, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "plan",
            tuple((r, tuple((b, b.plan) for b in r.matches)) for r in self.routes),
        )


@dataclass(frozen=True, slots=True)
class RouteTable:
    version: str
    hosts: dict[str, VirtualHost]  # every alias of every service, lowercase, no port
    clusters: dict[str, Cluster]
    services: dict[str, tuple[int, ...]]  # FQDN -> its ports
    resources: tuple[Any, ...] = ()  # what it was built from, for /config_dump
    # "ip:port" and "ip" of every endpoint and ServiceEntry address -> the service's host (for
    # captured connections whose Host header is an address)
    by_address: dict[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    l4: L4Table = EMPTY_L4  # opaque TCP ports, tcp/tls routes, Sidecar listeners

    def cluster(self, name: str) -> Cluster | None:
        return self.clusters.get(name)


EMPTY = RouteTable(version="", hosts={}, clusters={}, services={})
