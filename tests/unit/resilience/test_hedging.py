from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.resilience.hedging import HedgePolicy, LatencyTracker


def test_none_until_min_samples() -> None:
    t = LatencyTracker(window=200, min_samples=20)
    for i in range(19):
        t.observe(i / 1000)
    assert t.quantile(0.95) is None
    t.observe(0.019)
    assert t.quantile(0.95) == pytest.approx(0.018)  # nearest rank: 19th of 20


def test_quantile_nearest_rank() -> None:
    t = LatencyTracker(window=100, min_samples=1, recompute_every=1)
    for i in range(1, 101):
        t.observe(float(i))
    assert t.quantile(0.95) == 95.0
    assert t.quantile(0.5) == 50.0
    assert t.quantile(1.0) == 100.0
    assert t.quantile(0.0) == 1.0


def test_ring_forgets_old_samples() -> None:
    t = LatencyTracker(window=10, min_samples=5, recompute_every=1)
    for _ in range(10):
        t.observe(5.0)
    for _ in range(10):
        t.observe(1.0)
    assert t.count == 10
    assert t.quantile(0.99) == 1.0


def test_snapshot_recomputed_every_n() -> None:
    t = LatencyTracker(window=100, min_samples=10, recompute_every=10)
    for _ in range(10):
        t.observe(1.0)
    assert t.quantile(0.5) == 1.0
    for _ in range(9):
        t.observe(9.0)
    assert t.quantile(0.99) == 1.0  # stale snapshot: cheap reads between recomputes
    t.observe(9.0)
    assert t.quantile(0.99) == 9.0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=10), min_size=1, max_size=300),
       st.floats(min_value=0.01, max_value=1.0))
def test_quantile_matches_sorted_window(samples, q) -> None:
    t = LatencyTracker(window=50, min_samples=1, recompute_every=1)
    for s in samples:
        t.observe(s)
    window = sorted(samples[-50:])
    got = t.quantile(q)
    assert got in window
    assert window[0] <= got <= window[-1]
    rank = sum(1 for x in window if x <= got)
    assert rank >= q * len(window) - 1e-9


@pytest.mark.parametrize(("spec", "quantile", "fixed", "max_hedges"), [
    ({}, 0.95, None, 1),
    ({"delay": "p95"}, 0.95, None, 1),
    ({"delay": "p99.9", "maxHedges": 2}, 0.999, None, 2),
    ({"delay": "P50"}, 0.5, None, 1),
    ({"delay": "50ms"}, None, 0.05, 1),
    ({"delay": "1s", "maxHedges": 0}, None, 1.0, 0),
])
def test_from_spec(spec, quantile, fixed, max_hedges) -> None:
    p = HedgePolicy.from_spec(spec)
    assert p is not None
    assert (p.quantile, p.fixed_delay, p.max_hedges) == (quantile, fixed, max_hedges)


def test_absent_is_off() -> None:
    assert HedgePolicy.from_spec(None) is None


@pytest.mark.parametrize("spec", [{"delay": "p0"}, {"delay": "p100"}, {"delay": "fast"},
                                  {"delay": "0s"}, {"maxHedges": -1}, {"maxHedges": "1"}])
def test_from_spec_invalid(spec) -> None:
    with pytest.raises(ValueError):
        HedgePolicy.from_spec(spec)


def test_delay_s() -> None:
    t = LatencyTracker(window=100, min_samples=10)
    p95 = HedgePolicy.from_spec({"delay": "p95"})
    fixed = HedgePolicy.from_spec({"delay": "20ms"})
    off = HedgePolicy.from_spec({"delay": "20ms", "maxHedges": 0})
    assert p95 is not None and fixed is not None and off is not None
    assert p95.delay_s(t) is None  # cold start: no hedging
    assert p95.delay_s(None) is None
    assert fixed.delay_s(None) == 0.02
    assert off.delay_s(t) is None
    rng = random.Random(7)
    for _ in range(100):
        t.observe(rng.uniform(0.010, 0.020))
    d = p95.delay_s(t)
    assert d is not None and 0.018 <= d <= 0.020


@pytest.mark.parametrize(("method", "key", "expected"), [
    ("GET", False, True), ("PUT", False, True), ("POST", False, False), ("POST", True, True),
    ("PATCH", False, False)])
def test_applies_only_to_idempotent(method: str, key: bool, expected: bool) -> None:
    assert HedgePolicy.applies_to(method, key) is expected
