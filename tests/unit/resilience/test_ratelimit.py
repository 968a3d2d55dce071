from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.resilience.ratelimit import RateLimiter

from .conftest import FakeClock


def test_defaults_and_from_spec(clock: FakeClock) -> None:
    r = RateLimiter(clock=clock)
    assert (r.limit_for_period, r.limit_refresh_period, r.timeout) == (50, 1.0, 0.0)
    r = RateLimiter.from_spec(
        {"limitForPeriod": 5, "limitRefreshPeriod": "100ms", "timeoutDuration": "1s"}, clock)
    assert (r.limit_for_period, r.limit_refresh_period, r.timeout) == (5, 0.1, 1.0)


def test_limit_per_period_then_reject(clock: FakeClock) -> None:
    r = RateLimiter(3, 1.0, 0.0, clock)
    assert [r.acquire() for _ in range(4)] == [0.0, 0.0, 0.0, -1.0]
    assert r.rejected == 1
    clock.advance(0.999)
    assert r.acquire() == -1.0
    clock.advance(0.001)
    assert [r.acquire() for _ in range(4)] == [0.0, 0.0, 0.0, -1.0]


def test_no_burst_banking(clock: FakeClock) -> None:
    r = RateLimiter(3, 1.0, 0.0, clock)
    clock.advance(10.0)
    assert [r.acquire() for _ in range(4)] == [0.0, 0.0, 0.0, -1.0]


def test_reservation_within_timeout(clock: FakeClock) -> None:
    r = RateLimiter(2, 1.0, timeout=1.5, clock=clock)
    clock.advance(0.25)
    assert r.acquire() == 0.0
    assert r.acquire() == 0.0
    assert r.acquire() == pytest.approx(0.75)  # next cycle
    assert r.acquire() == pytest.approx(0.75)
    assert r.acquire() == -1.0  # would be 1.75 s away
    assert r.available_permits == -2
    clock.advance(0.75)  # the two reserved permits are consumed by the new cycle
    assert r.available_permits == 0
    assert r.acquire() == pytest.approx(1.0)
    assert r.acquire() == pytest.approx(1.0)
    assert r.acquire() == -1.0


def test_reset_after_and_drain(clock: FakeClock) -> None:
    r = RateLimiter(5, 2.0, 0.0, clock)
    clock.advance(0.5)
    assert r.reset_after() == pytest.approx(1.5)
    r.drain()
    assert r.acquire() == -1.0
    clock.advance(1.5)
    assert r.acquire() == 0.0


@pytest.mark.parametrize("kw", [{"limit_for_period": 0}, {"limit_refresh_period": 0},
                                {"timeout": -1}])
def test_invalid(kw: dict) -> None:
    with pytest.raises(ValueError):
        RateLimiter(**kw)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=0.3), max_size=300),
       st.integers(min_value=1, max_value=5), st.sampled_from([0.0, 0.5, 2.0]))
def test_rate_bound(gaps, limit, timeout) -> None:
    """Permits that start within any one cycle never exceed limit_for_period."""
    clock = FakeClock(0.0)
    r = RateLimiter(limit, 1.0, timeout, clock)
    starts: list[float] = []
    for g in gaps:
        clock.advance(g)
        w = r.acquire()
        assert w == -1.0 or 0.0 <= w <= timeout
        if w >= 0:
            starts.append(clock.now + w)
    per_cycle: dict[int, int] = {}
    for s in starts:
        c = int(s + 1e-9)
        per_cycle[c] = per_cycle.get(c, 0) + 1
    assert all(n <= limit for n in per_cycle.values())
