"""Sans-I/O resilience primitives for the sidecar: deadlines, retry policy and budget, circuit
breaker, bulkhead, rate limiter, outlier detection, hedging and fault injection.

Nothing here does I/O, spawns tasks or reads the clock on its own: time comes from an injected
`clock` (default `time.monotonic`) and randomness from an injected `random.Random`, so every
decision is testable with a fake clock. Each module's docstring states the semantics chosen and
where they differ from Istio/Envoy, Linkerd or Resilience4j.
"""

from __future__ import annotations

from .breaker import BreakerConfig, CircuitBreaker
from .budget import RetryBudget
from .bulkhead import Bulkhead
from .deadline import (
    effective_timeout,
    format_grpc_timeout,
    format_timeout_ms,
    incoming_deadline,
    parse_expected_timeout_ms,
    parse_grpc_timeout,
)
from .fault import FaultPolicy
from .hedging import HedgePolicy, LatencyTracker
from .outlier import OutlierDetector
from .policy import DestinationResilience
from .ratelimit import RateLimiter
from .retry import Outcome, RetryPolicy, retry_after_delay

__all__ = [
    "BreakerConfig",
    "Bulkhead",
    "CircuitBreaker",
    "DestinationResilience",
    "FaultPolicy",
    "HedgePolicy",
    "LatencyTracker",
    "Outcome",
    "OutlierDetector",
    "RateLimiter",
    "RetryBudget",
    "RetryPolicy",
    "effective_timeout",
    "format_grpc_timeout",
    "format_timeout_ms",
    "incoming_deadline",
    "parse_expected_timeout_ms",
    "parse_grpc_timeout",
    "retry_after_delay",
]
