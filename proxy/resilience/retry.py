"""Retry decisions: which failed try may be tried again, and how long to wait first.

`RetryPolicy` is built once per route from the VirtualService `retries` block (or the mesh
default) and answers `should_retry` on the hot path with a few tuple/set look-ups.

Token semantics are Envoy's (research 1.7.2, 3.4):

==========================  ==========================================================
token                       retries
==========================  ==========================================================
5xx                         any 5xx response, and every no-response failure
gateway-error               502/503/504, and every no-response failure
reset                       every no-response failure (reset, per-try timeout, connect)
reset-before-request        a reset before the request was sent (and connect failure)
connect-failure             connect failure / connect timeout
refused-stream              HTTP/2 RST_STREAM(REFUSED_STREAM)
retriable-4xx               409
retriable-status-codes      statuses listed (bare integers in retryOn)
envoy-ratelimited           a response carrying x-envoy-ratelimited
cancelled, deadline-        grpc-status 1, 4, 13, 8, 14 respectively
exceeded, internal,
resource-exhausted,
unavailable
==========================  ==========================================================

Never retried, whatever the tokens: a try after response bytes went downstream
(`response_started`), a local overload reply or any response with `x-envoy-overloaded`
(`Outcome.LOCAL_OVERLOAD`), a response with `x-envoy-ratelimited` unless `envoy-ratelimited`,
and anything once `attempts` retries have been made. The global route timeout is not a retry
outcome at all: the caller answers 504 UT and stops.

Where meshlet differs from Istio, and why (research 1.7.3, 8; issue 3):

* **Default policy** (no `retries` block and no mesh default): 2 retries on
  `connect-failure,refused-stream,reset-before-request` only: failures where the request provably
  never reached the app. Istio >= 1.24 also retries gRPC `unavailable`/`cancelled`, which an app
  may return after doing work; `ISTIO_DEFAULT_RETRY` reproduces it for a MeshConfig that wants it.
* **Idempotency guard**: a try whose request was sent (RESET, TIMEOUT, RESPONSE) is retried
  only for GET HEAD OPTIONS TRACE PUT DELETE, or with an `Idempotency-Key` header, or when the
  route opts in (`meshlet.io/retry-non-idempotent`). Envoy and Istio never look at the method,
  which double-charges on retried POSTs (istio/istio#13851, #50506). This applies to configured
  policies too, so gRPC (always POST) needs the opt-in to retry on a grpc-status.
* gRPC codes are honoured wherever the caller saw them (headers, or trailers it could still
  act on); Envoy looks at headers only. Without a buffered response that is moot, since a
  started response is never retried.
* `retryOn` is trimmed around commas (istiod's validation rejects "5xx, reset").
* Back-off is Envoy's full-jitter exponential (base 25 ms, cap 10 x base); `Retry-After` is
  parsed by `retry_after_delay` and capped, Envoy honours it only with extra config.
* `retriable-headers` and `http3-post-connect-failure` are accepted (valid Istio input) but never
  fire: Istio exposes no header list, and meshlet speaks no HTTP/3.

Left to the caller: the retry budget (`RetryBudget.try_withdraw`), the remaining deadline, that
the request body is still buffered, and the per-try timeout in force
(`deadline.per_try_timeout(policy.per_try_timeout, route_timeout)`: ignored when not below it).
"""

from __future__ import annotations

import email.utils
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from ._duration import parse_optional_duration

__all__ = [
    "DEFAULT_BACKOFF_BASE",
    "IDEMPOTENT_METHODS",
    "ISTIO_DEFAULT_RETRY",
    "KNOWN_TOKENS",
    "MESHLET_DEFAULT_RETRY",
    "Outcome",
    "RetryPolicy",
    "retry_after_delay",
]


class Outcome(IntEnum):
    """How one try ended. The I/O layer maps transport events onto these."""

    CONNECT_FAILURE = 0  # TCP/TLS connect failed or timed out: nothing was sent
    REFUSED_STREAM = 1  # HTTP/2 REFUSED_STREAM: the server guarantees it did not process it
    RESET_BEFORE_REQUEST_SENT = 2  # connection/stream died before the request headers went out
    RESET = 3  # reset or disconnect after sending, before response headers
    TIMEOUT = 4  # per-try timeout (a local reset of the try)
    RESPONSE = 5  # response headers arrived: see status / grpc_status
    LOCAL_OVERLOAD = 6  # breaker/bulkhead overflow, or a response with x-envoy-overloaded


IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_IDEMPOTENT = IDEMPOTENT_METHODS

GRPC_TOKENS = {
    "cancelled": 1,
    "deadline-exceeded": 4,
    "resource-exhausted": 8,
    "internal": 13,
    "unavailable": 14,
}
HTTP_TOKENS = frozenset({
    "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure",
    "refused-stream", "retriable-4xx", "retriable-status-codes", "retriable-headers",
    "envoy-ratelimited", "http3-post-connect-failure",
})
KNOWN_TOKENS = HTTP_TOKENS | frozenset(GRPC_TOKENS)

MESHLET_DEFAULT_RETRY: Mapping[str, Any] = {
    "attempts": 2,
    "retryOn": "connect-failure,refused-stream,reset-before-request",
}
ISTIO_DEFAULT_RETRY: Mapping[str, Any] = {
    "attempts": 2,
    "retryOn": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
}

DEFAULT_BACKOFF_BASE = 0.025
DEFAULT_RETRY_AFTER_CAP = 60.0

# Outcomes where the app provably never saw the request: safe for any method.
_UNSENT = (True, True, True, False, False, False, False)
# Which tokens make each no-response outcome retriable (RESPONSE and LOCAL_OVERLOAD excluded).
_ANY_RESET = frozenset({"5xx", "gateway-error", "reset"})
_OUTCOME_TOKENS: tuple[frozenset[str], ...] = (
    _ANY_RESET | {"connect-failure", "reset-before-request"},  # CONNECT_FAILURE
    _ANY_RESET | {"refused-stream"},  # REFUSED_STREAM
    _ANY_RESET | {"reset-before-request"},  # RESET_BEFORE_REQUEST_SENT
    _ANY_RESET,  # RESET
    _ANY_RESET,  # TIMEOUT (per try)
    frozenset(),  # RESPONSE: decided by status
    frozenset(),  # LOCAL_OVERLOAD: never
)
_RESPONSE = int(Outcome.RESPONSE)  # a plain int: enum attribute look-ups are slow
_MAX_SHIFT = 40  # 2**40 * base exceeds any sane cap: stop growing there


def parse_retry_on(value: str | None) -> tuple[frozenset[str], frozenset[int]]:
    """Split a retryOn string into (tokens, status codes); unknown tokens raise ValueError.

    Bare integers that are HTTP statuses go to the status list and add `retriable-status-codes`
    (Istio's translation). Whitespace around commas is accepted.
    """
    tokens: set[str] = set()
    codes: set[int] = set()
    for raw in (value or "").split(","):
        tok = raw.strip()
        if not tok:
            continue
        if tok.isascii() and tok.isdigit():
            code = int(tok)
            if not 100 <= code <= 599:
                raise ValueError(f"retryOn: {tok!r} is not an HTTP status code")
            codes.add(code)
            tokens.add("retriable-status-codes")
        elif tok in KNOWN_TOKENS:
            tokens.add(tok)
        else:
            raise ValueError(f"retryOn: unknown retry condition {tok!r}")
    return frozenset(tokens), frozenset(codes)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A route's retry policy with its decision tables precomputed."""

    attempts: int = 0  # maximum *retries*; total tries = 1 + attempts
    per_try_timeout: float | None = None
    retry_on: frozenset[str] = frozenset()
    retriable_status_codes: frozenset[int] = frozenset()
    backoff_base: float = DEFAULT_BACKOFF_BASE
    backoff_max: float = 10 * DEFAULT_BACKOFF_BASE
    allow_non_idempotent: bool = False
    # Derived tables (filled in __post_init__).
    _by_outcome: tuple[bool, ...] = field(default=(), init=False, repr=False, compare=False)
    _statuses: frozenset[int] = field(default=frozenset(), init=False, repr=False, compare=False)
    _grpc: frozenset[int] = field(default=frozenset(), init=False, repr=False, compare=False)
    _ratelimited: bool = field(default=False, init=False, repr=False, compare=False)
    _caps: tuple[float, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        on = self.retry_on
        statuses: set[int] = set()
        if "5xx" in on:
            statuses.update(range(500, 600))
        if "gateway-error" in on:
            statuses.update((502, 503, 504))
        if "retriable-4xx" in on:
            statuses.add(409)
        if "retriable-status-codes" in on:
            statuses.update(self.retriable_status_codes)
        caps = tuple(
            min((2**n - 1) * self.backoff_base, self.backoff_max) for n in range(_MAX_SHIFT + 1)
        )
        s = object.__setattr__
        s(self, "_by_outcome", tuple(bool(on & toks) for toks in _OUTCOME_TOKENS))
        s(self, "_statuses", frozenset(statuses))
        s(self, "_grpc", frozenset(code for tok, code in GRPC_TOKENS.items() if tok in on))
        s(self, "_ratelimited", "envoy-ratelimited" in on)
        s(self, "_caps", caps)

    @classmethod
    def from_spec(
        cls,
        retries: Mapping[str, Any] | None,
        default: Mapping[str, Any] | None = None,
        route_opt_in_non_idempotent: bool = False,
    ) -> RetryPolicy:
        """Istio `HTTPRetry` translation (research 1.7.3 ConvertPolicy).

        `retries`: the VirtualService route's block, None when absent. `default`: the mesh
        default policy (MeshConfig), None for meshlet's safe default. With `retries` absent the
        default applies as is; with `retries` present, `attempts` (0 when unset) replaces the
        count, 0 disabling retries, and `retryOn` (when set) replaces the default's conditions.
        """
        base = MESHLET_DEFAULT_RETRY if default is None else default
        spec = base if retries is None else retries
        attempts = spec.get("attempts", 0 if retries is not None else 2)
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
            raise ValueError(f"retries.attempts: expected a non-negative integer, got {attempts!r}")
        retry_on = spec.get("retryOn")
        if retry_on is None:
            retry_on = base.get("retryOn")
        tokens, codes = parse_retry_on(retry_on)
        per_try = parse_optional_duration(spec.get("perTryTimeout"), None, "retries.perTryTimeout")
        backoff = parse_optional_duration(
            spec.get("backoff", base.get("backoff")), DEFAULT_BACKOFF_BASE, "retries.backoff")
        if not backoff:
            backoff = DEFAULT_BACKOFF_BASE
        if attempts == 0:
            tokens, codes = frozenset(), frozenset()
        return cls(
            attempts=attempts,
            per_try_timeout=per_try or None,
            retry_on=tokens,
            retriable_status_codes=codes,
            backoff_base=backoff,
            backoff_max=10 * backoff,
            allow_non_idempotent=route_opt_in_non_idempotent,
        )

    def with_request_headers(
        self,
        retry_on: str | None = None,
        retry_grpc_on: str | None = None,
        max_retries: str | None = None,
        retriable_status_codes: str | None = None,
    ) -> RetryPolicy:
        """Envoy's per-request overrides from the app (`x-envoy-retry-on`,
        `x-envoy-retry-grpc-on`, `x-envoy-max-retries`, `x-envoy-retriable-status-codes`):
        conditions are OR-ed with the route's; a policy with no retries gets 1 retry;
        `max-retries` applies only if some condition is active; extra status codes take effect
        with `retriable-status-codes`. Unknown tokens in headers are ignored, not errors.
        Allocates only when a header is present; honour these only from the local app (they
        are "internal" headers) and strip them before forwarding.
        """
        if (retry_on is None and retry_grpc_on is None and max_retries is None
                and retriable_status_codes is None):
            return self
        extra: set[str] = set()
        codes = set(self.retriable_status_codes)
        for raw in (retriable_status_codes or "").split(","):
            tok = raw.strip()
            if tok.isascii() and tok.isdigit() and 100 <= int(tok) <= 599:
                codes.add(int(tok))
        for value in (retry_on, retry_grpc_on):
            for raw in (value or "").split(","):
                tok = raw.strip()
                if tok in KNOWN_TOKENS:
                    extra.add(tok)
                elif tok.isascii() and tok.isdigit() and 100 <= int(tok) <= 599:
                    codes.add(int(tok))
                    extra.add("retriable-status-codes")
        tokens = self.retry_on | extra
        attempts = self.attempts if self.attempts or not extra else 1
        if max_retries is not None and tokens:
            mr = max_retries.strip()
            if mr.isascii() and mr.isdigit():
                attempts = int(mr)
        if tokens == self.retry_on and attempts == self.attempts and codes == set(
                self.retriable_status_codes):
            return self
        return RetryPolicy(
            attempts=attempts, per_try_timeout=self.per_try_timeout, retry_on=tokens,
            retriable_status_codes=frozenset(codes), backoff_base=self.backoff_base,
            backoff_max=self.backoff_max, allow_non_idempotent=self.allow_non_idempotent)

    def should_retry(
        self,
        outcome: Outcome,
        status: int,
        grpc_status: int | None,
        method: str,
        idempotency_key: bool,
        response_started: bool,
        attempt: int,
        *,
        ratelimited: bool = False,
    ) -> bool:
        """May the try that just failed be retried?

        `attempt`: 1-based number of the try that failed (1 = the original request).
        `status`/`grpc_status`: only read for `Outcome.RESPONSE`. `ratelimited`: the response
        carried `x-envoy-ratelimited`. The caller still checks the retry budget, the remaining
        deadline, and that the request body is still buffered.
        """
        if response_started or attempt > self.attempts:
            return False
        if outcome == _RESPONSE:
            if ratelimited:
                if not self._ratelimited:
                    return False
            elif status not in self._statuses and (
                grpc_status is None or grpc_status not in self._grpc
            ):
                return False
        elif not self._by_outcome[outcome]:
            return False
        elif _UNSENT[outcome]:
            return True
        return self.allow_non_idempotent or idempotency_key or method in _IDEMPOTENT

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before retry number `attempt` (1-based): uniform in
        [0, min((2**attempt - 1) * base, max)), Envoy's fully jittered exponential back-off."""
        caps = self._caps
        cap = caps[attempt] if 0 < attempt <= _MAX_SHIFT else caps[-1] if attempt > 0 else 0.0
        return rng.random() * cap


def retry_after_delay(
    header_value: str | None, now_wallclock: float, cap: float = DEFAULT_RETRY_AFTER_CAP
) -> float | None:
    """Seconds to wait from a `Retry-After` value (delta-seconds or HTTP-date), capped at `cap`.

    `now_wallclock` is the Unix time (an HTTP-date is wall-clock). A date in the past gives 0.0;
    malformed values give None (ignore the header). The caller further caps it at the request's
    remaining deadline and skips the retry if the wait does not fit.
    """
    if not header_value:
        return None
    v = header_value.strip()
    if v.isascii() and v.isdigit():
        delay = float(int(v))
    else:
        try:
            when = email.utils.parsedate_to_datetime(v)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None or when.tzinfo is None:
            return None
        delay = max(0.0, when.timestamp() - now_wallclock)
    return delay if delay < cap else cap
