"""Spec schemas of meshlet's own kinds (``meshlet.dev/v1alpha1``): ResiliencePolicy and
MeshConfig, with the contract's defaults (Resilience4j's and Linkerd's).
"""

from __future__ import annotations

import copy
import re
from typing import Any

from control_plane.api.networking import HOST, RETRIES
from control_plane.api.schema import (
    Ctx,
    boolean,
    duration,
    enum,
    integer,
    number,
    obj,
    parse_duration,
    string,
)

# The contract's defaults, section by section. Durations stay strings, as a user writes them.
RESILIENCE_DEFAULTS: dict[str, dict[str, Any]] = {
    "circuitBreaker": {
        "failureRateThreshold": 50,
        "slowCallRateThreshold": 100,
        "slowCallDurationThreshold": "60s",
        "slidingWindowType": "COUNT_BASED",
        "slidingWindowSize": 100,
        "minimumNumberOfCalls": 100,
        "waitDurationInOpenState": "60s",
        "permittedNumberOfCallsInHalfOpenState": 10,
    },
    "bulkhead": {"maxConcurrentCalls": 25, "maxWaitDuration": "0s"},
    "rateLimiter": {"limitForPeriod": 50, "limitRefreshPeriod": "1s", "timeoutDuration": "0s"},
    "retryBudget": {"retryRatio": 0.2, "minRetriesPerSecond": 10, "ttl": "10s"},
    "hedging": {"delay": "p95", "maxHedges": 1},
}

_PERCENTILE = re.compile(r"^p(\d{1,2}(\.\d+)?)$")


def parse_hedge_delay(value: str) -> tuple[str, float]:
    """``"p95"`` -> ("percentile", 95.0); ``"50ms"`` -> ("fixed", 0.05). Raises ValueError."""
    m = _PERCENTILE.match(value) if isinstance(value, str) else None
    if m:
        pct = float(m.group(1))
        if not 0 < pct < 100:
            raise ValueError(f"percentile {value!r} must be between p1 and p99.9")
        return "percentile", pct
    try:
        return "fixed", parse_duration(value)
    except ValueError:
        raise ValueError(
            f'{value!r} must be a percentile such as "p95" or a duration such as "50ms"'
        )


def _hedge_delay(value: Any, path: str, ctx: Ctx) -> None:
    try:
        kind, amount = parse_hedge_delay(value)
    except ValueError as exc:
        ctx.error(path, str(exc))
        return
    if kind == "fixed" and amount <= 0:
        ctx.error(path, "must be greater than 0")


def _ttl(value: Any, path: str, ctx: Ctx) -> None:
    duration(1.0, 60.0)(value, path, ctx)


CIRCUIT_BREAKER = obj(
    {
        "failureRateThreshold": number(0, 100, lo_open=True),
        "slowCallRateThreshold": number(0, 100, lo_open=True),
        "slowCallDurationThreshold": duration(1e-9),
        "slidingWindowType": enum("COUNT_BASED", "TIME_BASED"),
        "slidingWindowSize": integer(1),
        "minimumNumberOfCalls": integer(1),
        "waitDurationInOpenState": duration(0.001),
        "permittedNumberOfCallsInHalfOpenState": integer(1),
    },
    name="CircuitBreaker",
)
BULKHEAD = obj({"maxConcurrentCalls": integer(0), "maxWaitDuration": duration(0)}, name="Bulkhead")
RATE_LIMITER = obj(
    {
        "limitForPeriod": integer(1),
        "limitRefreshPeriod": duration(1e-9),
        "timeoutDuration": duration(0),
    },
    name="RateLimiter",
)
RETRY_BUDGET = obj(
    {"retryRatio": number(0), "minRetriesPerSecond": integer(0), "ttl": _ttl},
    name="RetryBudget",
)
HEDGING = obj({"delay": _hedge_delay, "maxHedges": integer(1)}, name="Hedging")

RESILIENCE_POLICY = obj(
    {
        "host": HOST,
        "circuitBreaker": CIRCUIT_BREAKER,
        "bulkhead": BULKHEAD,
        "rateLimiter": RATE_LIMITER,
        "retryBudget": RETRY_BUDGET,
        "hedging": HEDGING,
    },
    required=["host"],
    name="ResiliencePolicy",
)


def defaults_resilience(spec: dict) -> dict:
    """``spec`` with the contract's defaults filled in for each section it sets, plus
    ``retryBudget``, which is on for every host. Sections absent from ``spec`` (other than
    retryBudget) stay absent: they are off. ``spec`` itself is not modified."""
    out: dict[str, Any] = {
        k: copy.deepcopy(v) for k, v in spec.items() if k not in RESILIENCE_DEFAULTS
    }
    for section, defaults in RESILIENCE_DEFAULTS.items():
        if section in spec or section == "retryBudget":
            merged = dict(defaults)
            merged.update(copy.deepcopy(spec.get(section) or {}))
            out[section] = merged
    return out


# MeshConfig: the one per mesh.
MESH_CONFIG = obj(
    {
        "trustDomain": string(
            nonempty=True,
            pattern=r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9_]*[a-z0-9])?)*$",
            what="trust domain (lowercase letters, digits, '.', '-', '_')",
        ),
        # short lifetimes (down to 5 s) are for rotation drills and tests; 24 h is the default
        "certificateLifetime": duration(5.0),
        "defaultRetryPolicy": RETRIES,
        "tracing": obj({"sampling": number(0, 100)}, name="MeshConfig.Tracing"),
        "accessLog": obj(
            {
                "enabled": boolean(),
                "path": string(nonempty=True),
                "encoding": enum("JSON", "TEXT"),
            },
            name="MeshConfig.AccessLog",
        ),
    },
    name="MeshConfig",
)
