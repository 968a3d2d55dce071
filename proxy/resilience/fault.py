"""Fault injection decisions for a VirtualService route's `fault` block (research 1.8).

Istio parity:

* `delay.fixedDelay` with `delay.percentage.value` (a float percent, 0.0001 resolution); the
  deprecated integer `delay.percent` is used only when `percentage` is absent. **When both are
  absent the probability is 0: nothing is delayed** (Istio's translation; docs before late 2022
  said "all"). `exponentialDelay` is refused, as Istio does.
* `abort.httpStatus` (200-599) or `abort.grpcStatus` (upper-case name such as `UNAVAILABLE`;
  meshlet also accepts the number), probability as for delay, default 0.
* Delay and abort are independent draws; if both fire the request is delayed, then aborted.
  The proxy applies them on the outbound side before routing: an injected abort is not retried
  by the same proxy and the delay does not count against the route timeout. Flags: DI, FI.

`decide(rng)` returns `(delay_s, abort_status, grpc_status)`; a gRPC abort comes back as
`(…, 200, code)` because it is sent as a trailers-only HTTP 200 with `grpc-status`, so
`abort_status is not None` alone means "abort". A probability of 0 or 100 % skips the draw.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._duration import parse_duration

GRPC_CODES = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5, "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9, "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12,
    "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}

NO_FAULT: tuple[float, int | None, int | None] = (0.0, None, None)


def _probability(block: Mapping[str, Any], where: str) -> float:
    pct = block.get("percentage")
    if pct is not None:
        value = pct.get("value", 0.0) if isinstance(pct, Mapping) else pct
    else:
        value = block.get("percent", 0)
    value = float(value)
    if not 0.0 <= value <= 100.0:
        raise ValueError(f"fault.{where}.percentage: must be within 0-100, got {value}")
    return value / 100.0


@dataclass(frozen=True, slots=True)
class FaultPolicy:
    delay_s: float = 0.0
    delay_probability: float = 0.0
    abort_status: int | None = None
    grpc_status: int | None = None
    abort_probability: float = 0.0

    @classmethod
    def from_spec(cls, fault: Mapping[str, Any] | None) -> FaultPolicy | None:
        """From an Istio `HTTPFaultInjection` dict; None when there is no fault block."""
        if fault is None:
            return None
        delay, abort = fault.get("delay"), fault.get("abort")
        if delay is None and abort is None:
            raise ValueError("fault: needs delay or abort")
        kw: dict[str, Any] = {}
        if delay:
            if "exponentialDelay" in delay:
                raise ValueError("fault.delay.exponentialDelay: not supported")
            if "fixedDelay" not in delay:
                raise ValueError("fault.delay.fixedDelay: required")
            kw["delay_s"] = parse_duration(delay["fixedDelay"], "fault.delay.fixedDelay")
            kw["delay_probability"] = _probability(delay, "delay")
        if abort:
            if "http2Error" in abort:
                raise ValueError("fault.abort.http2Error: not supported")
            if "grpcStatus" in abort:
                g = abort["grpcStatus"]
                code = g if isinstance(g, int) and not isinstance(g, bool) else GRPC_CODES.get(
                    str(g).strip())
                if code is None or not 0 <= code <= 16:
                    raise ValueError(f"fault.abort.grpcStatus: unknown gRPC status {g!r}")
                kw["abort_status"], kw["grpc_status"] = 200, code
            elif "httpStatus" in abort:
                status = abort["httpStatus"]
                if isinstance(status, bool) or not isinstance(status, int) or not (
                        200 <= status <= 599):
                    raise ValueError(f"fault.abort.httpStatus: must be 200-599, got {status!r}")
                kw["abort_status"] = status
            else:
                # Accepted with a warning by validation (as by Istio): an abort that does nothing.
                return cls(**kw)
            kw["abort_probability"] = _probability(abort, "abort")
        return cls(**kw)

    def decide(self, rng: random.Random) -> tuple[float, int | None, int | None]:
        """Draw this request's faults: (delay seconds, abort HTTP status, abort grpc-status)."""
        p = self.delay_probability
        delay = 0.0
        if p and self.delay_s and (p >= 1.0 or rng.random() < p):
            delay = self.delay_s
        p = self.abort_probability
        if p and self.abort_status is not None and (p >= 1.0 or rng.random() < p):
            return (delay, self.abort_status, self.grpc_status)
        return (delay, None, None) if delay else NO_FAULT
