"""Local rate limiter: `limit_for_period` permits per `limit_refresh_period`, with reservation.

Resilience4j's AtomicRateLimiter (research 5.4), which is a token bucket of capacity
`limit_for_period` refilled in whole cycles: at each cycle start the permits go back up by
`limit_for_period` (never above it, so idle time does not bank a burst). A caller that finds
none left may *reserve* a future permit if it would be available within `timeout`: the permit
count goes negative and `acquire()` returns how long to wait. Otherwise the call is rejected,
which the proxy answers with 429 + `x-envoy-ratelimited`, flag RL (research 3.10).

Differences: R4j's defaults (`limitRefreshPeriod` 500 ns, `timeoutDuration` 5 s) are replaced by
the contract's (1 s, 0 s: reject at once, no queueing latency by default). Cycles are counted
from the limiter's creation, as in R4j. One limiter per sidecar per scope (no cross-sidecar
coordination, as Envoy's local rate limit).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from ._duration import parse_optional_duration


class RateLimiter:
    """Cycle-refilled token bucket with bounded reservation. Not thread-safe."""

    __slots__ = ("limit_for_period", "limit_refresh_period", "timeout", "_clock", "_start",
                 "_cycle", "_permits", "rejected")

    def __init__(
        self,
        limit_for_period: int = 50,
        limit_refresh_period: float = 1.0,
        timeout: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit_for_period < 1 or limit_refresh_period <= 0 or timeout < 0:
            raise ValueError("rate limiter: limitForPeriod >= 1, limitRefreshPeriod > 0, "
                             "timeoutDuration >= 0")
        self.limit_for_period = limit_for_period
        self.limit_refresh_period = limit_refresh_period
        self.timeout = timeout
        self._clock = clock
        self._start = clock()
        self._cycle = 0
        self._permits = limit_for_period
        self.rejected = 0

    @classmethod
    def from_spec(
        cls, spec: Mapping[str, Any] | None, clock: Callable[[], float] = time.monotonic
    ) -> RateLimiter:
        """From a ResiliencePolicy `rateLimiter` block
        ({limitForPeriod, limitRefreshPeriod, timeoutDuration})."""
        spec = spec or {}
        period = parse_optional_duration(
            spec.get("limitRefreshPeriod"), 1.0, "rateLimiter.limitRefreshPeriod")
        timeout = parse_optional_duration(
            spec.get("timeoutDuration"), 0.0, "rateLimiter.timeoutDuration")
        return cls(int(spec.get("limitForPeriod", 50)), period or 1.0, timeout or 0.0, clock)

    def _refill(self, now: float) -> int:
        cycle = int((now - self._start) / self.limit_refresh_period)
        if cycle > self._cycle:
            permits = self._permits + (cycle - self._cycle) * self.limit_for_period
            self._permits = permits if permits < self.limit_for_period else self.limit_for_period
            self._cycle = cycle
        return cycle

    def acquire(self) -> float:
        """0.0: go now. > 0: a permit is reserved, proceed after that many seconds (<= timeout).
        -1.0: rejected (answer 429 RL)."""
        now = self._clock()
        cycle = self._refill(now)
        permits = self._permits
        if permits > 0:
            self._permits = permits - 1
            return 0.0
        # Permit number (1 - permits) beyond the current cycle arrives after
        # ceil((1 - permits) / limit) more cycle starts.
        cycles_ahead = (self.limit_for_period - permits) // self.limit_for_period
        wait = self._start + (cycle + cycles_ahead) * self.limit_refresh_period - now
        if wait <= self.timeout:
            self._permits = permits - 1
            return wait if wait > 0.0 else 1e-9
        self.rejected += 1
        return -1.0

    @property
    def available_permits(self) -> int:
        """Permits left in this cycle (negative: reserved ahead). For `x-ratelimit-remaining`."""
        self._refill(self._clock())
        return self._permits

    def reset_after(self) -> float:
        """Seconds until the next refill (for `x-ratelimit-reset`)."""
        now = self._clock()
        cycle = self._refill(now)
        return self._start + (cycle + 1) * self.limit_refresh_period - now

    def drain(self) -> None:
        """Zero this cycle's remaining permits (R4j drainPermissionsOnResult, e.g. on a 429)."""
        self._refill(self._clock())
        if self._permits > 0:
            self._permits = 0
