from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.resilience.budget import RetryBudget

from .conftest import FakeClock


def drain(b: RetryBudget) -> int:
    n = 0
    while b.try_withdraw():
        n += 1
        assert n < 100_000
    return n


def test_ratio_over_window(clock: FakeClock) -> None:
    b = RetryBudget(clock=clock)
    for _ in range(1000):
        b.deposit()
    assert drain(b) == 200 + 10 * 10
    assert b.skipped == 1
    assert b.withdrawn == 300


def test_min_per_second_alone(clock: FakeClock) -> None:
    b = RetryBudget(ratio=0.2, min_per_second=10, ttl=10.0, clock=clock)
    assert drain(b) == 100
    assert b.available == 0


def test_deposits_expire_after_ttl(clock: FakeClock) -> None:
    b = RetryBudget(min_per_second=0, clock=clock)
    for _ in range(100):
        b.deposit()
    clock.advance(10.5)
    assert not b.try_withdraw()


def test_withdrawals_expire_and_budget_refills(clock: FakeClock) -> None:
    b = RetryBudget(min_per_second=1, ttl=10.0, clock=clock)
    assert drain(b) == 10
    clock.advance(5.0)
    assert not b.try_withdraw()
    clock.advance(5.5)
    assert drain(b) == 10


def test_sliding_not_tumbling(clock: FakeClock) -> None:
    b = RetryBudget(min_per_second=0, ttl=10.0, clock=clock)
    for _ in range(50):
        b.deposit()
    clock.advance(6.0)
    for _ in range(50):
        b.deposit()
    clock.advance(5.0)  # the first 50 expired, the second 50 remain
    assert drain(b) == 10


def test_steady_failure_rate_converges(clock: FakeClock) -> None:
    """Research 4.7 seed: 100 rps, 100 % failing, ratio 0.2, min 10/s: ~20 + 10 retries/s."""
    b = RetryBudget(clock=clock)
    retried_last_10s = 0
    for second in range(60):
        for _ in range(100):
            b.deposit()
            clock.advance(0.01)
            if b.try_withdraw() and second >= 50:
                retried_last_10s += 1
    assert 20 * 10 <= retried_last_10s <= 30 * 10 + 5


@pytest.mark.parametrize(("ratio", "requests", "expected"),
                         [(0.0, 1000, 100), (1.0, 100, 200), (2.0, 100, 300), (0.3, 1000, 400),
                          (0.25, 40, 110)])
def test_other_ratios(clock: FakeClock, ratio: float, requests: int, expected: int) -> None:
    b = RetryBudget(ratio=ratio, clock=clock)
    for _ in range(requests):
        b.deposit()
    assert drain(b) == expected


def test_from_spec(clock: FakeClock) -> None:
    b = RetryBudget.from_spec({"retryRatio": 0.5, "minRetriesPerSecond": 2, "ttl": "5s"}, clock)
    assert (b.ratio, b.min_per_second, b.ttl) == (0.5, 2.0, 5.0)
    d = RetryBudget.from_spec(None, clock)
    assert (d.ratio, d.min_per_second, d.ttl) == (0.2, 10.0, 10.0)


@pytest.mark.parametrize("kw", [{"ratio": -0.1}, {"min_per_second": -1}, {"ttl": 0.5},
                                {"ttl": 61}])
def test_invalid(kw: dict) -> None:
    with pytest.raises(ValueError):
        RetryBudget(**kw)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.floats(min_value=0, max_value=0.5)), max_size=400),
    st.sampled_from([0.1, 0.2, 0.5, 1.0]),
    st.integers(min_value=0, max_value=5),
)
def test_never_exceeds_ratio_plus_reserve(ops, ratio, min_per_second) -> None:
    """Whenever a retry is granted, the ttl window ending there holds: retries <= ratio *
    requests + min_per_second * ttl. (A window ending later may not: the deposits that paid
    for a retry can expire before the retry does, as in tower's TpsBudget; the budget is
    then in deficit and grants nothing until new requests pay it back.)"""
    clock = FakeClock()
    ttl = 2.0
    b = RetryBudget(ratio=ratio, min_per_second=min_per_second, ttl=ttl, clock=clock)
    events: list[tuple[float, bool]] = []
    for is_deposit, dt in ops:
        clock.advance(dt)
        if is_deposit:
            b.deposit()
            events.append((clock.now, True))
        elif b.try_withdraw():
            events.append((clock.now, False))
    # At each grant the alive buckets (the last 10 of ttl/10) obey the bound, so the window of
    # events sharing the alive buckets of that grant does.
    width = ttl / 10
    for t_end, is_deposit in events:
        if is_deposit:
            continue
        gen = int(t_end / width)
        window = [e for e in events if gen - 10 < int(e[0] / width) <= gen and e[0] <= t_end]
        deposits = sum(1 for _, d in window if d)
        retries = len(window) - deposits
        assert retries <= ratio * deposits + min_per_second * ttl + 1e-9
