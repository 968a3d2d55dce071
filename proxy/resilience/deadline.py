"""Deadlines: parse and format the timeout headers, and pick the timeout one request gets.

Units: every duration here is in **seconds** (float), including what
`parse_expected_timeout_ms` returns; the `_ms` names the header's unit, not the result's.

Semantics (research 1.6, 3.1-3.3, 3.9, 8):

* Route timeout: Istio's, where 0 or absent means no timeout (raw Envoy defaults to 15 s;
  Istio writes 0). It covers the whole response, retries and back-off included.
* Downstream deadline: what the caller has left, from `grpc-timeout` or
  `x-envoy-expected-rq-timeout-ms`. Envoy's client sidecar caps `grpc-timeout` at the route
  timeout (`max_grpc_timeout`), and its server side honours `grpc-timeout` uncapped but ignores
  `x-envoy-expected-rq-timeout-ms` unless `respect_expected_rq_timeout` is set (Istio does not).
  meshlet honours both on both sides: the effective timeout is the smaller of the route timeout
  and the downstream deadline. **An incoming deadline is never extended.**
* `x-envoy-upstream-rq-timeout-ms`: in Envoy it *replaces* the route timeout (0 = none) and
  even wins over `grpc-timeout`. meshlet lets it replace the route timeout but, unlike Envoy,
  still never lets it extend a downstream deadline. The I/O layer must honour it only from
  trusted senders: on the outbound side from the local app (app-to-sidecar is "internal" in Envoy
  terms), on the inbound side only from an mTLS-authenticated mesh peer; it strips the header
  otherwise and always before forwarding upstream.
* An already expired deadline yields `MIN_TIMEOUT` (1 ms), as Envoy writes 1 ms into
  `x-envoy-expected-rq-timeout-ms` once the deadline has passed: the result is never 0, so
  `None` is the only "no timeout" value and truthiness checks stay safe.
* Per-try timeouts are ignored when not smaller than the global timeout (Envoy rule).
"""

from __future__ import annotations

import math

MIN_TIMEOUT = 0.001
"""Smallest timeout ever returned (seconds): an expired deadline still gets a 1 ms try."""

# gRPC wire units (PROTOCOL-HTTP2.md: TimeoutUnit), seconds per unit.
_GRPC_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
# Formatting: finest unit first; (suffix, nanoseconds per unit).
_GRPC_FORMAT = (("n", 1), ("u", 1_000), ("m", 1_000_000), ("S", 1_000_000_000),
                ("M", 60_000_000_000), ("H", 3_600_000_000_000))
_GRPC_MAX_VALUE = 99_999_999  # at most 8 digits


def parse_grpc_timeout(value: str) -> float | None:
    """Seconds from a `grpc-timeout` value ("100m", "5S", "1H"); None if malformed.

    The gRPC grammar: 1-8 ASCII digits then one unit of H M S m u n. Anything else
    (empty, 9 digits, a sign, spaces, unknown unit) is invalid; the caller then ignores the
    header, as grpc-go does.
    """
    n = len(value)
    if n < 2 or n > 9:
        return None
    scale = _GRPC_UNITS.get(value[-1])
    digits = value[:-1]
    if scale is None or not (digits.isascii() and digits.isdigit()):
        return None
    return int(digits) * scale


def format_grpc_timeout(seconds: float) -> str:
    """The `grpc-timeout` value for `seconds` (at nanosecond precision).

    The coarsest unit that states it exactly ("50m", "2S"); failing that, the finest unit whose
    value fits 8 digits, rounded up (as grpc-go does) so a deadline is never shortened. A
    non-positive input becomes "1n" rather than "0n": a zero timeout means "already expired" to
    some servers and "none" to others.
    """
    ns = max(1, math.ceil(round(seconds * 1e9, 3)))
    for suffix, per in reversed(_GRPC_FORMAT):
        if ns % per == 0 and ns // per <= _GRPC_MAX_VALUE:
            return f"{ns // per}{suffix}"
    for suffix, per in _GRPC_FORMAT:
        v = -(-ns // per)
        if v <= _GRPC_MAX_VALUE:
            return f"{v}{suffix}"
    return f"{_GRPC_MAX_VALUE}H"


def parse_expected_timeout_ms(header: str | None) -> float | None:
    """Seconds from an integer-milliseconds header (`x-envoy-expected-rq-timeout-ms`,
    `x-envoy-upstream-rq-timeout-ms`, `x-envoy-upstream-rq-per-try-timeout-ms`).

    None when absent or malformed (Envoy ignores an unparsable value). "0" gives 0.0; what zero
    means depends on the header (for the upstream-rq-timeout override it means "no timeout").
    """
    if not header:
        return None
    header = header.strip()
    if not (header.isascii() and header.isdigit()) or len(header) > 15:
        return None
    return int(header) / 1000.0


_FORMATTED: dict[float, str] = {}  # a route's timeout recurs on every request: format it once


def format_timeout_ms(seconds: float, _memo: dict[float, str] = _FORMATTED) -> str:
    """`x-envoy-expected-rq-timeout-ms` value: whole milliseconds rounded up, at least 1."""
    s = _memo.get(seconds)
    if s is None:
        s = str(max(1, math.ceil(round(seconds * 1000.0, 6))))
        if len(_memo) >= 1024:  # remaining deadlines vary per request: keep the memo bounded
            _memo.clear()
        _memo[seconds] = s
    return s


def incoming_deadline(grpc_timeout: str | None, expected_rq_timeout_ms: str | None) -> float | None:
    """The downstream deadline in seconds: the smaller of a valid `grpc-timeout` and
    `x-envoy-expected-rq-timeout-ms` (a "0" there means the caller's deadline has passed);
    None when neither header is present and valid."""
    g = parse_grpc_timeout(grpc_timeout) if grpc_timeout else None
    e = parse_expected_timeout_ms(expected_rq_timeout_ms)
    if g is None:
        return e
    if e is None or g < e:
        return g
    return e


def effective_timeout(
    route_timeout_s: float | None,
    downstream_deadline_s: float | None,
    *,
    rq_timeout_override_s: float | None = None,
) -> float | None:
    """The total timeout for one request, in seconds, or None for no timeout.

    `route_timeout_s`: the VirtualService `timeout` (None or 0 = off).
    `downstream_deadline_s`: the caller's remaining budget (`grpc-timeout` or
    `x-envoy-expected-rq-timeout-ms`, whichever is smaller; None when neither is present).
    `rq_timeout_override_s`: a trusted `x-envoy-upstream-rq-timeout-ms` (0 = no route timeout).
    """
    if rq_timeout_override_s is not None:
        route_timeout_s = rq_timeout_override_s
    if route_timeout_s and route_timeout_s < MIN_TIMEOUT:
        route_timeout_s = MIN_TIMEOUT
    if downstream_deadline_s is None:
        return route_timeout_s if route_timeout_s else None
    if downstream_deadline_s < MIN_TIMEOUT:
        return MIN_TIMEOUT
    if route_timeout_s and route_timeout_s < downstream_deadline_s:
        return route_timeout_s
    return downstream_deadline_s


def per_try_timeout(per_try_s: float | None, global_s: float | None) -> float | None:
    """The per-try timeout in force: None when unset or not smaller than the global timeout."""
    if not per_try_s:
        return None
    if global_s is not None and per_try_s >= global_s:
        return None
    return per_try_s


def attempt_timeout(
    per_try_s: float | None, remaining_s: float | None, hedging: bool = False
) -> float | None:
    """Timeout for the next try and the value to advertise upstream (Envoy `setTimeoutHeaders`):
    `min(per_try, remaining)`; with hedging the remaining global budget, since a hedged try is
    not cut at the per-try timeout. Never below `MIN_TIMEOUT` once a deadline exists.
    """
    t = remaining_s if (hedging or not per_try_s) else (
        per_try_s if remaining_s is None or per_try_s < remaining_s else remaining_s)
    if t is None:
        return None
    return t if t >= MIN_TIMEOUT else MIN_TIMEOUT
