"""One destination's resilience state, built from its `ResiliencePolicy` spec.

Holds the per-destination, per-sidecar objects the forwarding path consults: circuit breaker,
bulkhead, rate limiter (each None when its section is absent: off), retry budget (always on,
contract), hedge policy and the latency tracker feeding it. A config push rebuilds this with
`previous=` the old one: a section whose spec did not change keeps its live object, so a push
does not reset an OPEN breaker, the budget's window or the bulkhead's in-flight count.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from .breaker import BreakerConfig, CircuitBreaker
from .budget import RetryBudget
from .bulkhead import Bulkhead
from .hedging import HedgePolicy, LatencyTracker
from .ratelimit import RateLimiter

_SECTIONS = ("circuitBreaker", "bulkhead", "rateLimiter", "retryBudget", "hedging")


class DestinationResilience:
    __slots__ = ("spec", "breaker", "bulkhead", "rate_limiter", "budget", "hedge", "latency")

    def __init__(
        self,
        spec: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        previous: DestinationResilience | None = None,
    ) -> None:
        spec = dict(spec or {})
        self.spec = {k: spec.get(k) for k in _SECTIONS}
        old = previous.spec if previous is not None else {}

        def same(section: str) -> bool:
            return previous is not None and old.get(section) == self.spec[section]

        cb = self.spec["circuitBreaker"]
        self.breaker: CircuitBreaker | None
        if same("circuitBreaker"):
            self.breaker = previous.breaker  # type: ignore[union-attr]
        else:
            self.breaker = (
                None if cb is None else CircuitBreaker(BreakerConfig.from_spec(cb), clock))

        bh = self.spec["bulkhead"]
        self.bulkhead: Bulkhead | None
        if same("bulkhead"):
            self.bulkhead = previous.bulkhead  # type: ignore[union-attr]
        elif bh is None:
            self.bulkhead = None
        else:
            fresh = Bulkhead.from_spec(bh)
            live = previous.bulkhead if previous is not None else None
            if live is not None:  # keep in-flight permits and waiters, apply the new limits
                live.set_limit(fresh.max_concurrent_calls, fresh.max_wait)
                fresh = live
            self.bulkhead = fresh

        rl = self.spec["rateLimiter"]
        self.rate_limiter: RateLimiter | None
        if same("rateLimiter"):
            self.rate_limiter = previous.rate_limiter  # type: ignore[union-attr]
        else:
            self.rate_limiter = None if rl is None else RateLimiter.from_spec(rl, clock)

        if same("retryBudget"):
            self.budget: RetryBudget = previous.budget  # type: ignore[union-attr]
        else:
            self.budget = RetryBudget.from_spec(self.spec["retryBudget"], clock)

        self.hedge = HedgePolicy.from_spec(self.spec["hedging"])
        keep = previous.latency if previous is not None else None
        self.latency: LatencyTracker | None = (
            (keep or LatencyTracker()) if self.hedge is not None and self.hedge.quantile else None
        )

    def status(self) -> dict[str, Any]:
        """For /clusters and metrics."""
        out: dict[str, Any] = {
            "retry_budget": {
                "available": self.budget.available,
                "withdrawn": self.budget.withdrawn,
                "skipped": self.budget.skipped,
            }
        }
        if self.breaker is not None:
            out["circuit_breaker"] = self.breaker.status()
        if self.bulkhead is not None:
            out["bulkhead"] = {
                "active": self.bulkhead.active,
                "waiting": self.bulkhead.waiting,
                "rejected": self.bulkhead.rejected,
                "max_concurrent_calls": self.bulkhead.max_concurrent_calls,
            }
        if self.rate_limiter is not None:
            out["rate_limiter"] = {
                "available_permits": self.rate_limiter.available_permits,
                "rejected": self.rate_limiter.rejected,
            }
        return out
