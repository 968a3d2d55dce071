from __future__ import annotations

from proxy.resilience.breaker import OPEN
from proxy.resilience.policy import DestinationResilience

from .conftest import FakeClock

FULL = {
    "host": "payment.default.svc.cluster.local",
    "circuitBreaker": {"slidingWindowSize": 2, "minimumNumberOfCalls": 2},
    "bulkhead": {"maxConcurrentCalls": 2},
    "rateLimiter": {"limitForPeriod": 5},
    "retryBudget": {"retryRatio": 0.5},
    "hedging": {"delay": "p90"},
}


def test_absent_sections_are_off_but_budget_is_on(clock: FakeClock) -> None:
    d = DestinationResilience(None, clock)
    assert d.breaker is None and d.bulkhead is None and d.rate_limiter is None
    assert d.hedge is None and d.latency is None
    assert d.budget.ratio == 0.2
    assert d.status() == {"retry_budget": {"available": 100, "withdrawn": 0, "skipped": 0}}


def test_full_spec(clock: FakeClock) -> None:
    d = DestinationResilience(FULL, clock)
    assert d.breaker is not None and d.breaker.config.sliding_window_size == 2
    assert d.bulkhead is not None and d.bulkhead.max_concurrent_calls == 2
    assert d.rate_limiter is not None and d.rate_limiter.limit_for_period == 5
    assert d.budget.ratio == 0.5
    assert d.hedge is not None and d.hedge.quantile == 0.9 and d.latency is not None
    assert set(d.status()) == {"retry_budget", "circuit_breaker", "bulkhead", "rate_limiter"}


def test_push_keeps_live_state_of_unchanged_sections(clock: FakeClock) -> None:
    d = DestinationResilience(FULL, clock)
    assert d.breaker is not None and d.bulkhead is not None
    for _ in range(2):
        d.breaker.try_acquire()
        d.breaker.on_result(0.1, True)
    assert d.breaker.state == OPEN
    d.bulkhead.try_acquire()
    d.budget.deposit()
    assert d.latency is not None
    d.latency.observe(0.2)
    d2 = DestinationResilience({**FULL, "bulkhead": {"maxConcurrentCalls": 1},
                                "rateLimiter": {"limitForPeriod": 9}}, clock, previous=d)
    assert d2.breaker is d.breaker and d2.breaker.state == OPEN
    assert d2.budget is d.budget
    assert d2.bulkhead is d.bulkhead and d2.bulkhead.max_concurrent_calls == 1
    assert d2.bulkhead.active == 1
    assert d2.rate_limiter is not None and d2.rate_limiter.limit_for_period == 9
    assert d2.latency is d.latency
    d3 = DestinationResilience({"host": "x"}, clock, previous=d2)
    assert d3.breaker is None and d3.bulkhead is None and d3.budget is not d2.budget
