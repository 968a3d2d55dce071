"""Per-route and per-destination resilience, compiled once per config, kept across swaps.

:class:`RoutePolicy` holds what a route decides (timeout, retry policy, fault, hedging);
:class:`DestinationState` holds the live, stateful protections of one destination service
(circuit breaker, bulkhead, rate limiter, retry budget, latency tracker). A destination state
is reused by the next config when its ResiliencePolicy did not change, so a push does not reset
an open breaker or a spent budget; outlier detectors are kept per cluster the same way.
"""

from __future__ import annotations

import json
import random
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


class RoutePolicy:
    """What one (route, cluster) pair decides, compiled once per table."""

    __slots__ = ("timeout", "retry", "fault", "dest", "outlier", "connect_retries")

    def __init__(
        self,
        timeout: float | None,
        retry: RetryPolicy,
        fault: FaultPolicy | None,
        dest: DestinationState | None,
        outlier: OutlierDetector | None,
    ) -> None:
        self.timeout = timeout
        self.retry = retry
        self.fault = fault
        self.dest = dest
        self.outlier = outlier
        self.connect_retries = retry.attempts


class PolicyStore:
    """Builds policies and keeps the stateful parts alive across config versions."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.dests: dict[tuple[str, str], DestinationState] = {}
        self.outliers: dict[tuple[str, str], OutlierDetector] = {}
        self.policies: dict[tuple[int, str], RoutePolicy] = {}
        self.mesh_default_retry: dict[str, Any] | None = None
        self.on_new_destination: Any = None

    def reset_table(self, table: Any) -> None:
        """A new table: drop compiled route policies and state no cluster uses any more."""
        self.policies = {}
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
            if self.on_new_destination is not None:
                self.on_new_destination(d)
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

    def for_route(self, route: Any, cluster: Any) -> RoutePolicy:
        key = (id(route), cluster.name)
        p = self.policies.get(key)
        if p is None:
            p = RoutePolicy(
                route.timeout,
                RetryPolicy.from_spec(
                    route.retries, self.mesh_default_retry, route.retry_non_idempotent
                ),
                FaultPolicy.from_spec(route.fault) if route.fault else None,
                self.destination(cluster),
                self.outlier(cluster),
            )
            self.policies[key] = p
        return p

    def inbound(self, cluster: Any) -> RoutePolicy:
        key = (0, cluster.name)
        p = self.policies.get(key)
        if p is None:
            # inbound: the app is local; only a connect failure (app not up yet) is retried
            p = self.policies[key] = RoutePolicy(
                None,
                RetryPolicy.from_spec({"attempts": 1, "retryOn": "connect-failure"}),
                None,
                None,
                None,
            )
        return p


def _key(spec: Any) -> str:
    return json.dumps(spec, sort_keys=True, default=str) if spec else ""


def _endpoint_key(ep: Any) -> str:
    return ep.key
