"""Duration parsing (shared with the sidecar) and the ResiliencePolicy defaults."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control_plane.api.resources import (
    RESILIENCE_DEFAULTS,
    defaults_resilience,
    parse_duration,
    parse_hedge_delay,
)


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("1s", 1.0),
        ("0.5s", 0.5),
        ("1.5s", 1.5),
        (".25s", 0.25),
        ("100ms", 0.1),
        ("500us", 0.0005),
        ("500µs", 0.0005),
        ("250ns", 2.5e-7),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("2m3.5s", 123.5),
        ("0s", 0.0),
        ("0", 0.0),
        ("1.000340012s", 1.000340012),
        (" 10s ", 10.0),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "1", "10", "-1s", "1 s", "s", "1d", "1sec", "1.2.3s", "ms", "1s2", "+1s", "1e3s"]
)
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("value", [1, 1.5, None, True, ["1s"]])
def test_parse_duration_rejects_non_strings(value):
    with pytest.raises(ValueError):
        parse_duration(value)  # type: ignore[arg-type]


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["ms", "s", "m", "h"]))
def test_parse_duration_integers(n, unit):
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    assert parse_duration(f"{n}{unit}") == pytest.approx(n * scale)


@given(st.text(max_size=12))
def test_parse_duration_only_value_error(text):
    try:
        assert parse_duration(text) >= 0
    except ValueError:
        pass


def test_hedge_delay():
    assert parse_hedge_delay("p95") == ("percentile", 95.0)
    assert parse_hedge_delay("p99.9") == ("percentile", 99.9)
    assert parse_hedge_delay("50ms") == ("fixed", 0.05)
    for bad in ("p0", "p100", "95", "pfast"):
        with pytest.raises(ValueError):
            parse_hedge_delay(bad)


def test_defaults_resilience_fills_present_sections_and_retry_budget():
    spec = {"host": "payment", "circuitBreaker": {"failureRateThreshold": 25}}
    out = defaults_resilience(spec)
    assert out["host"] == "payment"
    assert out["circuitBreaker"] == {
        **RESILIENCE_DEFAULTS["circuitBreaker"],
        "failureRateThreshold": 25,
    }
    assert out["retryBudget"] == {"retryRatio": 0.2, "minRetriesPerSecond": 10, "ttl": "10s"}
    assert "bulkhead" not in out and "rateLimiter" not in out and "hedging" not in out
    assert spec == {"host": "payment", "circuitBreaker": {"failureRateThreshold": 25}}


def test_defaults_resilience_every_section():
    spec = {
        "host": "p",
        "bulkhead": {},
        "rateLimiter": {"limitForPeriod": 5},
        "hedging": {},
        "retryBudget": {"retryRatio": 0.5},
    }
    out = defaults_resilience(spec)
    assert out["bulkhead"] == {"maxConcurrentCalls": 25, "maxWaitDuration": "0s"}
    assert out["rateLimiter"] == {
        "limitForPeriod": 5,
        "limitRefreshPeriod": "1s",
        "timeoutDuration": "0s",
    }
    assert out["hedging"] == {"delay": "p95", "maxHedges": 1}
    assert out["retryBudget"]["retryRatio"] == 0.5
    assert out["retryBudget"]["ttl"] == "10s"
