"""Spec schemas of meshlet's own kinds (``meshlet.dev/v1alpha1``): ResiliencePolicy,
InboundRateLimit and MeshConfig, with the contract's defaults (Resilience4j's and Linkerd's).
"""

from __future__ import annotations

import copy
import re
from typing import Any

from control_plane.api.networking import HOST, MATCH_LABELS, RETRIES
from control_plane.api.schema import (
    Ctx,
    boolean,
    dns1123_label,
    dns1123_subdomain,
    duration,
    enum,
    http_header_name,
    index,
    integer,
    join,
    list_of,
    map_of,
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


# fallback: the answer given instead of an error (proxy/resilience/fallback.py has the semantics)
_FALLBACK_TRIGGERS = ("connectFailure", "retriesExhausted", "timeout", "circuitOpen")
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")
_STATIC_BODY_MAX = 65536


def _static_body(value: Any, path: str, ctx: Ctx) -> None:
    string()(value, path, ctx)
    if isinstance(value, str) and len(value.encode()) > _STATIC_BODY_MAX:
        ctx.error(path, f"must be at most {_STATIC_BODY_MAX} bytes")


def _header_value(value: Any, path: str, ctx: Ctx) -> None:
    if not isinstance(value, str):
        ctx.error(path, "must be a string")
    elif any(c in value for c in "\r\n\0"):
        ctx.error(path, "must not contain CR, LF or NUL")


def _fallback_static_headers(value: Any, path: str, ctx: Ctx) -> None:
    map_of(_header_value, key=http_header_name)(value, path, ctx)
    if isinstance(value, dict):
        for k in value:
            if isinstance(k, str) and k.lower() in (
                "content-length", "transfer-encoding", "connection", "x-meshlet-response-flags"
            ):
                ctx.error(join(path, k), "is set by the sidecar and cannot be configured")


def _fallback_methods(value: dict, path: str, ctx: Ctx) -> None:
    others = [m for m in value.get("methods") or () if m not in ("GET", "HEAD")]
    if others and value.get("static") is None:
        ctx.error(
            join(path, "methods"),
            f"{', '.join(others)} can only get a static answer (stale answers are for GET and "
            "HEAD): add fallback.static or drop them",
        )


FALLBACK = obj(
    {
        "static": obj(
            {
                "status": integer(200, 599),
                "headers": _fallback_static_headers,
                "body": _static_body,
            },
            name="Fallback.Static",
        ),
        "stale": obj(
            {
                "maxAge": duration(0.001),
                "maxEntries": integer(1, 1_000_000),
                "maxBodyBytes": integer(1, 16 << 20),
            },
            name="Fallback.Stale",
        ),
        "triggers": list_of(enum(*_FALLBACK_TRIGGERS), nonempty=True),
        "methods": list_of(enum(*_METHODS), nonempty=True),
    },
    at_least_one=[("static", "stale")],
    checks=[_fallback_methods],
    name="Fallback",
)

RESILIENCE_POLICY = obj(
    {
        "host": HOST,
        "circuitBreaker": CIRCUIT_BREAKER,
        "bulkhead": BULKHEAD,
        "rateLimiter": RATE_LIMITER,
        "retryBudget": RETRY_BUDGET,
        "hedging": HEDGING,
        "fallback": FALLBACK,
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


# InboundRateLimit: the server side's own limit (Linkerd 2.17's HTTPLocalRateLimitPolicy:
# total, per identity, overrides for named clients), on the workloads its selector picks.
# Its own kind rather than a ResiliencePolicy section: a ResiliencePolicy names a destination
# host and is enforced by every *caller's* sidecar, each with its own buckets; this one names
# the *receiving* workload (selected like an AuthorizationPolicy) and is enforced once, in that
# workload's sidecar, where the caller's identity is known from mTLS.
_RPS = obj({"requestsPerSecond": integer(1)}, required=["requestsPerSecond"], name="RateLimit")


def _path_pattern(value: Any, path: str, ctx: Ctx) -> None:
    if not isinstance(value, str) or not value:
        ctx.error(path, "must be a non-empty string")
    elif value != "*" and value.count("*") > 1:
        ctx.error(path, 'at most one "*", at the start or the end')
    elif "*" in value[1:-1]:
        ctx.error(path, '"*" may only start or end a path (exact, "prefix*", "*suffix", "*")')
    elif not (value.startswith(("/", "*"))):
        ctx.error(path, 'must start with "/" (or "*")')


_CLIENT_REF = obj(
    {
        "kind": enum("ServiceAccount"),
        "group": enum(""),
        "name": string(check=dns1123_subdomain),
        "namespace": string(check=dns1123_label),
    },
    required=["name"],
    name="ClientRef",
)


def _limits_check(value: dict, path: str, ctx: Ctx) -> None:
    """Linkerd's rules: a per-client rate above the total could never be reached; one client
    in two overrides is ambiguous."""
    total = (value.get("total") or {}).get("requestsPerSecond")
    ident = (value.get("identity") or {}).get("requestsPerSecond")
    if total is not None and ident is not None and ident > total:
        ctx.error(join(join(path, "identity"), "requestsPerSecond"),
                  f"{ident} is more than total.requestsPerSecond ({total})")
    seen: dict[tuple[str, str], str] = {}
    for i, o in enumerate(value.get("overrides") or ()):
        where = index(join(path, "overrides"), i)
        rps = o.get("requestsPerSecond")
        if total is not None and rps is not None and rps > total:
            ctx.error(join(where, "requestsPerSecond"),
                      f"{rps} is more than total.requestsPerSecond ({total})")
        for j, ref in enumerate(o.get("clientRefs") or ()):
            key = (str(ref.get("namespace") or ""), str(ref.get("name")))
            ref_path = index(join(where, "clientRefs"), j)
            if key in seen:
                ctx.error(ref_path, f"ServiceAccount {key[1]} is already in {seen[key]}")
            else:
                seen[key] = ref_path


INBOUND_RATE_LIMIT = obj(
    {
        "selector": MATCH_LABELS,
        "match": list_of(
            obj(
                {
                    "paths": list_of(_path_pattern, nonempty=True),
                    "methods": list_of(string(nonempty=True), nonempty=True),
                },
                at_least_one=[("paths", "methods")],
                name="InboundRateLimit.Match",
            ),
            nonempty=True,
        ),
        "total": _RPS,
        "identity": _RPS,
        "overrides": list_of(
            obj(
                {
                    "requestsPerSecond": integer(1),
                    "clientRefs": list_of(_CLIENT_REF, nonempty=True),
                },
                required=["requestsPerSecond", "clientRefs"],
                name="InboundRateLimit.Override",
            ),
            nonempty=True,
        ),
    },
    at_least_one=[("total", "identity", "overrides")],
    checks=[_limits_check],
    unsupported={
        "targetRef": "targetRef is not supported by meshlet; use selector (the workload's labels)"
    },
    name="InboundRateLimit",
)


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
