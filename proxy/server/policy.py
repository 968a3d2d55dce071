"""Per-route resilience, compiled with the config into immutable objects; live state kept apart.

A config swap compiles every route destination once (:meth:`PolicyStore.compile`) into a
frozen :class:`RoutePolicy`: the cluster it goes to, the timeout, the retry policy, the fault,
the header operations, and references to the destination's live protections. The request path
only reads these objects, so nothing one request does can change what the next one sees (a
lazily filled, mutable policy is how a per-request deadline once leaked between requests).

What must carry state across requests lives in :class:`DestinationState` (circuit breaker,
bulkhead, rate limiter, retry budget, latency tracker, stale cache) and in the outlier
detectors, both held by the store keyed by destination (service and its ResiliencePolicy) or
cluster, and reused by the next config when their spec did not change, so a push does not reset
an open breaker or a spent budget.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from proxy.resilience.breaker import BreakerConfig, CircuitBreaker
from proxy.resilience.budget import RetryBudget
from proxy.resilience.bulkhead import Bulkhead
from proxy.resilience.fallback import FallbackPolicy
from proxy.resilience.fault import FaultPolicy
from proxy.resilience.hedging import HedgePolicy, LatencyTracker
from proxy.resilience.outlier import OutlierDetector
from proxy.resilience.ratelimit import RateLimiter
from proxy.resilience.retry import RetryPolicy


class DestinationState:
    """The live protections of one destination service (shared by every route to it)."""

    __slots__ = (
        "service",
        "breaker",
        "bulkhead",
        "limiter",
        "budget",
        "tracker",
        "hedge",
        "metrics",
        "fallback",
    )

    def __init__(self, service: str, spec: dict[str, Any]) -> None:
        self.service = service
        cb = spec.get("circuitBreaker")
        self.breaker = CircuitBreaker(BreakerConfig.from_spec(cb)) if cb is not None else None
        bh = spec.get("bulkhead")
        self.bulkhead = Bulkhead.from_spec(bh) if bh is not None else None
        rl = spec.get("rateLimiter")
        self.limiter = RateLimiter.from_spec(rl) if rl is not None else None
        # the retry budget is on for every destination unless configured otherwise (Linkerd)
        self.budget = RetryBudget.from_spec(spec.get("retryBudget"))
        self.hedge = HedgePolicy.from_spec(spec.get("hedging")) if spec.get("hedging") else None
        self.tracker = LatencyTracker() if self.hedge is not None else None
        self.metrics: Any = None
        fb = spec.get("fallback")
        # built once per policy: its stale cache lives as long as this state (kept across pushes)
        self.fallback = FallbackPolicy.from_spec(fb) if fb else None


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """What one route destination decides for one cluster, compiled once per config.

    ``dest`` and ``outlier`` are references to shared live state (see the module docstring);
    everything else is a value. ``request_ops`` / ``response_ops``: the (route, destination)
    header operations, None when neither level has any (decided here, not per request)."""

    timeout: float | None
    retry: RetryPolicy
    fault: FaultPolicy | None = None
    dest: DestinationState | None = None
    outlier: OutlierDetector | None = None
    cluster: Any = None  # the Cluster (None: the inbound/passthrough policy, for any cluster)
    request_ops: tuple[Any, Any] | None = None
    response_ops: tuple[Any, Any] | None = None
    # the request goes upstream changed: a URI or authority rewrite, or request header ops
    rewrites: bool = False

    @property
    def connect_retries(self) -> int:
        return self.retry.attempts


@dataclass(frozen=True, slots=True)
class DestinationPlan:
    """Where one weighted route destination goes: its policy by the request's port, and the
    one for any other port (None where the cluster does not exist: 503 NC)."""

    by_port: Mapping[int, RoutePolicy | None]
    default: RoutePolicy | None

    def for_port(self, port: int) -> RoutePolicy | None:
        by_port = self.by_port
        return by_port.get(port, self.default) if by_port else self.default


#: The inbound side (and passthrough): the app is local; only a connect failure (app not up
#: yet) is retried. One object for every request, never changed.
INBOUND_POLICY = RoutePolicy(
    None, RetryPolicy.from_spec({"attempts": 1, "retryOn": "connect-failure"})
)

_NO_PLANS: Mapping[int, DestinationPlan] = MappingProxyType({})


class PolicyStore:
    """Compiles the policies of a table and keeps the stateful parts alive across versions."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.dests: dict[tuple[str, str], DestinationState] = {}
        self.outliers: dict[tuple[str, str], OutlierDetector] = {}
        self.mesh_default_retry: dict[str, Any] | None = None
        self._on_new: Callable[[DestinationState], None] | None = None
        # compiled retry and fault policies by spec, from the last compile (frozen: shared)
        self._retries: dict[str, RetryPolicy] = {}
        self._faults: dict[str, FaultPolicy] = {}

    @property
    def on_new_destination(self) -> Callable[[DestinationState], None] | None:
        return self._on_new

    @on_new_destination.setter
    def on_new_destination(self, hook: Callable[[DestinationState], None] | None) -> None:
        """Called for every destination state made from now on, and at once for those compiled
        already (the first config is compiled before telemetry attaches)."""
        self._on_new = hook
        if hook is not None:
            for d in self.dests.values():
                hook(d)

    def compile(self, table: Any) -> Mapping[int, DestinationPlan]:
        """Every route destination's plan for ``table`` (keyed by ``id(destination)``; the
        table keeps its destinations alive), after dropping state no cluster uses any more.

        Equal retry and fault specs compile to one shared (frozen) object, within a table and
        from the previous one, and each cluster's live state is looked up once: a push of a
        large mesh costs little more than its route count."""
        self._retain(table)
        ctx = _Compile(table, self, self._retries, self._faults)
        plans: dict[int, DestinationPlan] = {}
        for vh in {id(v): v for v in table.hosts.values()}.values():
            for route in vh.routes:
                retry = ctx.retry(route)
                fault = ctx.fault(route)
                for d in route.destinations:
                    if id(d) not in plans:
                        plans[id(d)] = ctx.plan(route, d, retry, fault)
        self._retries, self._faults = ctx.new_retries, ctx.new_faults
        return MappingProxyType(plans) if plans else _NO_PLANS

    def _retain(self, table: Any) -> None:
        """Keep the state of destinations and outlier detectors the new table still uses."""
        live_dest = set()
        live_out = set()
        for c in table.clusters.values():
            live_dest.add((c.service, _key(c.resilience)))
            if c.outlier:
                k = (c.name, _key(c.outlier))
                live_out.add(k)
                det = self.outliers.get(k)
                if det is not None:
                    det.set_endpoints(ep.key for ep in c.endpoints)
        self.dests = {k: v for k, v in self.dests.items() if k in live_dest}
        self.outliers = {k: v for k, v in self.outliers.items() if k in live_out}
        mc = [r for r in table.resources if getattr(r, "kind", "") == "MeshConfig"]
        self.mesh_default_retry = (mc[0].spec.get("defaultRetryPolicy") if mc else None) or None

    def destination(self, cluster: Any) -> DestinationState:
        k = (cluster.service, _key(cluster.resilience))
        d = self.dests.get(k)
        if d is None:
            d = self.dests[k] = DestinationState(cluster.service, cluster.resilience)
            if self._on_new is not None:
                self._on_new(d)
        return d

    def outlier(self, cluster: Any) -> OutlierDetector | None:
        if not cluster.outlier:
            return None
        k = (cluster.name, _key(cluster.outlier))
        det = self.outliers.get(k)
        if det is None:
            det = self.outliers[k] = OutlierDetector(cluster.outlier, key=_endpoint_key)
            det.service = cluster.service  # type: ignore[attr-defined]  # for metrics labels
            det.set_endpoints(ep.key for ep in cluster.endpoints)
        return det


class _Compile:
    """One compile: caches by spec (carried from the previous compile) and by cluster."""

    __slots__ = ("table", "store", "old_retries", "old_faults", "new_retries", "new_faults",
                 "clusters")

    def __init__(
        self, table: Any, store: PolicyStore, retries: dict[str, RetryPolicy],
        faults: dict[str, FaultPolicy],
    ) -> None:
        self.table = table
        self.store = store
        self.old_retries = retries
        self.old_faults = faults
        self.new_retries: dict[str, RetryPolicy] = {}
        self.new_faults: dict[str, FaultPolicy] = {}
        self.clusters: dict[str, Any] = {}

    def retry(self, route: Any) -> RetryPolicy:
        default = self.store.mesh_default_retry
        k = _key([route.retries, default, route.retry_non_idempotent])
        p = self.new_retries.get(k) or self.old_retries.get(k)
        if p is None:
            p = RetryPolicy.from_spec(route.retries, default, route.retry_non_idempotent)
        self.new_retries[k] = p
        return p

    def fault(self, route: Any) -> FaultPolicy | None:
        if not route.fault:
            return None
        k = _key(route.fault)
        p = self.new_faults.get(k) or self.old_faults.get(k)
        if p is None:
            p = FaultPolicy.from_spec(route.fault)
        self.new_faults[k] = p
        return p

    def plan(self, route: Any, d: Any, retry: RetryPolicy, fault: Any) -> DestinationPlan:
        made: dict[str, RoutePolicy | None] = {}  # a destination's ports often share a cluster
        for cname in (d.default_cluster, *d.clusters.values()):
            if cname not in made:
                made[cname] = self.policy(route, d, cname, retry, fault)
        by_port = {port: made[cname] for port, cname in d.clusters.items()}
        return DestinationPlan(MappingProxyType(by_port), made[d.default_cluster])

    def policy(
        self, route: Any, d: Any, cname: str, retry: RetryPolicy, fault: Any
    ) -> RoutePolicy | None:
        got = self.clusters.get(cname, _UNSEEN)
        if got is _UNSEEN:
            cluster = self.table.clusters.get(cname)
            got = self.clusters[cname] = (
                None
                if cluster is None
                else (cluster, self.store.destination(cluster), self.store.outlier(cluster))
            )
        if got is None:
            return None
        cluster, dest, outlier = got
        request_ops = (
            (route.request_headers, d.request_headers)
            if route.request_ops or d.request_ops
            else None
        )
        return RoutePolicy(
            route.timeout,
            retry,
            fault,
            dest,
            outlier,
            cluster,
            request_ops,
            (route.response_headers, d.response_headers)
            if route.response_ops or d.response_ops
            else None,
            request_ops is not None
            or route.rewrite_uri is not None
            or route.rewrite_uri_regex is not None
            or bool(route.rewrite_authority),
        )


_UNSEEN: Any = object()


def _key(spec: Any) -> str:
    return json.dumps(spec, sort_keys=True, default=str) if spec else ""


def _endpoint_key(ep: Any) -> str:
    return ep.key
