from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.resilience.retry import (
    ISTIO_DEFAULT_RETRY,
    Outcome,
    RetryPolicy,
    parse_retry_on,
    retry_after_delay,
)

O = Outcome  # noqa: E741  (short name keeps the tables readable)


def pol(retry_on: str, attempts: int = 3, opt_in: bool = True) -> RetryPolicy:
    return RetryPolicy.from_spec(
        {"attempts": attempts, "retryOn": retry_on}, route_opt_in_non_idempotent=opt_in)


def decide(p: RetryPolicy, outcome: Outcome, status: int = 0, grpc: int | None = None,
           method: str = "GET", key: bool = False, started: bool = False, attempt: int = 1,
           ratelimited: bool = False) -> bool:
    return p.should_retry(outcome, status, grpc, method, key, started, attempt,
                          ratelimited=ratelimited)


# Every token against every outcome kind (method GET: the idempotency guard is not in play).
# Columns: CONNECT_FAILURE, REFUSED_STREAM, RESET_BEFORE_REQUEST_SENT, RESET, TIMEOUT.
NO_RESPONSE = (O.CONNECT_FAILURE, O.REFUSED_STREAM, O.RESET_BEFORE_REQUEST_SENT, O.RESET,
               O.TIMEOUT)
TOKEN_RESET_TABLE = {
    "5xx": (1, 1, 1, 1, 1),
    "gateway-error": (1, 1, 1, 1, 1),
    "reset": (1, 1, 1, 1, 1),
    "reset-before-request": (1, 0, 1, 0, 0),
    "connect-failure": (1, 0, 0, 0, 0),
    "refused-stream": (0, 1, 0, 0, 0),
    "retriable-4xx": (0, 0, 0, 0, 0),
    "retriable-status-codes": (0, 0, 0, 0, 0),
    "envoy-ratelimited": (0, 0, 0, 0, 0),
    "unavailable": (0, 0, 0, 0, 0),
    "cancelled": (0, 0, 0, 0, 0),
}


@pytest.mark.parametrize(("token", "row"), sorted(TOKEN_RESET_TABLE.items()))
def test_no_response_outcomes_per_token(token: str, row: tuple[int, ...]) -> None:
    p = pol(token)
    assert tuple(int(decide(p, o)) for o in NO_RESPONSE) == row


# (retryOn, status, grpc-status, expected)
RESPONSE_TABLE = [
    ("5xx", 500, None, True),
    ("5xx", 503, None, True),
    ("5xx", 599, None, True),
    ("5xx", 499, None, False),
    ("5xx", 200, None, False),
    ("gateway-error", 502, None, True),
    ("gateway-error", 503, None, True),
    ("gateway-error", 504, None, True),
    ("gateway-error", 500, None, False),
    ("gateway-error", 501, None, False),
    ("retriable-4xx", 409, None, True),
    ("retriable-4xx", 429, None, False),
    ("retriable-4xx", 500, None, False),
    ("503", 503, None, True),
    ("503", 502, None, False),
    ("retriable-status-codes,429", 429, None, True),
    ("retriable-status-codes", 503, None, False),  # empty list (Istio >= 1.24 default)
    ("reset", 503, None, False),
    ("connect-failure", 503, None, False),
    ("cancelled", 200, 1, True),
    ("deadline-exceeded", 200, 4, True),
    ("resource-exhausted", 200, 8, True),
    ("internal", 200, 13, True),
    ("unavailable", 200, 14, True),
    ("unavailable", 200, 13, False),
    ("unavailable", 200, 0, False),
    ("unavailable", 200, None, False),
    ("cancelled,deadline-exceeded,internal,resource-exhausted,unavailable", 200, 2, False),
    ("5xx", 200, 14, False),  # gRPC codes need gRPC tokens
]


@pytest.mark.parametrize(("retry_on", "status", "grpc", "expected"), RESPONSE_TABLE)
def test_response_outcomes(retry_on: str, status: int, grpc: int | None, expected: bool) -> None:
    assert decide(pol(retry_on), O.RESPONSE, status, grpc) is expected


def test_ratelimited_only_with_envoy_ratelimited() -> None:
    assert not decide(pol("5xx,retriable-4xx,429"), O.RESPONSE, 429, ratelimited=True)
    assert not decide(pol("5xx"), O.RESPONSE, 503, ratelimited=True)
    assert decide(pol("envoy-ratelimited"), O.RESPONSE, 429, ratelimited=True)
    assert not decide(pol("envoy-ratelimited"), O.RESPONSE, 429, ratelimited=False)


@pytest.mark.parametrize("retry_on", ["5xx", "gateway-error,reset,connect-failure,refused-stream",
                                      "envoy-ratelimited,reset-before-request,503"])
def test_local_overload_never_retried(retry_on: str) -> None:
    p = pol(retry_on)
    assert not decide(p, O.LOCAL_OVERLOAD, 503)
    assert not decide(p, O.LOCAL_OVERLOAD, 503, key=True)


@pytest.mark.parametrize("outcome", list(Outcome))
def test_never_after_response_started(outcome: Outcome) -> None:
    p = pol("5xx,reset,connect-failure,refused-stream,reset-before-request,unavailable")
    assert not decide(p, outcome, 503, 14, started=True)


def test_attempts_bound() -> None:
    p = pol("5xx", attempts=2)
    assert decide(p, O.RESPONSE, 503, attempt=1)
    assert decide(p, O.RESPONSE, 503, attempt=2)
    assert not decide(p, O.RESPONSE, 503, attempt=3)


# -- idempotency guard ---------------------------------------------------------------------

SENT = (O.RESET, O.TIMEOUT, O.RESPONSE)
UNSENT = (O.CONNECT_FAILURE, O.REFUSED_STREAM, O.RESET_BEFORE_REQUEST_SENT)
ALL_TOKENS = "5xx,reset,connect-failure,refused-stream,reset-before-request"


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"])
@pytest.mark.parametrize("outcome", SENT + UNSENT)
def test_idempotent_methods_retried(method: str, outcome: Outcome) -> None:
    assert decide(pol(ALL_TOKENS, opt_in=False), outcome, 503, method=method)


@pytest.mark.parametrize("method", ["POST", "PATCH", "CONNECT", "get"])
@pytest.mark.parametrize("outcome", SENT)
def test_non_idempotent_sent_not_retried(method: str, outcome: Outcome) -> None:
    p = pol(ALL_TOKENS, opt_in=False)
    assert not decide(p, outcome, 503, method=method)
    assert decide(p, outcome, 503, method=method, key=True)  # Idempotency-Key
    assert decide(pol(ALL_TOKENS, opt_in=True), outcome, 503, method=method)  # route opt-in


@pytest.mark.parametrize("outcome", UNSENT)
def test_non_idempotent_unsent_retried(outcome: Outcome) -> None:
    assert decide(pol(ALL_TOKENS, opt_in=False), outcome, method="POST")


def test_grpc_post_needs_opt_in() -> None:
    spec = {"attempts": 2, "retryOn": "unavailable"}
    assert not decide(RetryPolicy.from_spec(spec), O.RESPONSE, 200, 14, method="POST")
    assert decide(RetryPolicy.from_spec(spec, route_opt_in_non_idempotent=True),
                  O.RESPONSE, 200, 14, method="POST")


# -- from_spec: defaults and Istio translation ------------------------------------------------

def test_safe_default_without_config() -> None:
    p = RetryPolicy.from_spec(None)
    assert p.attempts == 2
    assert p.retry_on == {"connect-failure", "refused-stream", "reset-before-request"}
    assert p.per_try_timeout is None
    assert (p.backoff_base, p.backoff_max) == (0.025, 0.25)
    for o in UNSENT:
        assert decide(p, o, method="POST")
    assert not decide(p, O.RESET, method="GET")
    assert not decide(p, O.TIMEOUT, method="GET")
    assert not decide(p, O.RESPONSE, 503, 14, method="GET")
    assert not decide(p, O.RESPONSE, 503, method="POST")


def test_istio_compat_default() -> None:
    p = RetryPolicy.from_spec(None, default=ISTIO_DEFAULT_RETRY)
    assert p.attempts == 2
    assert decide(p, O.RESPONSE, 200, 14, method="GET")
    assert decide(p, O.RESPONSE, 200, 1, method="GET")
    assert not decide(p, O.RESPONSE, 503, method="GET")  # empty status list since 1.24
    assert not decide(p, O.RESET, method="GET")


def test_retries_block_without_retry_on_keeps_default_conditions() -> None:
    p = RetryPolicy.from_spec({"attempts": 5, "perTryTimeout": "2s"})
    assert p.attempts == 5
    assert p.per_try_timeout == 2.0
    assert p.retry_on == {"connect-failure", "refused-stream", "reset-before-request"}
    p = RetryPolicy.from_spec({"attempts": 1}, default={"attempts": 3, "retryOn": "5xx"})
    assert (p.attempts, p.retry_on) == (1, frozenset({"5xx"}))


@pytest.mark.parametrize("spec", [{}, {"attempts": 0}, {"attempts": 0, "retryOn": "5xx"}])
def test_zero_attempts_disables(spec: dict) -> None:
    p = RetryPolicy.from_spec(spec)
    assert p.attempts == 0
    for o in Outcome:
        assert not decide(p, o, 503, 14, attempt=1)


def test_mesh_default_with_zero_attempts_disables() -> None:
    p = RetryPolicy.from_spec(None, default={"attempts": 0})
    assert not decide(p, O.CONNECT_FAILURE)


def test_retry_on_parsing() -> None:
    assert parse_retry_on(" 5xx , reset,503 ,,") == (
        frozenset({"5xx", "reset", "retriable-status-codes"}), frozenset({503}))
    assert parse_retry_on(None) == (frozenset(), frozenset())
    for bad in ("5xxx", "700", "reset;5xx", "99"):
        with pytest.raises(ValueError):
            parse_retry_on(bad)


@pytest.mark.parametrize("spec", [{"attempts": -1}, {"attempts": "2"}, {"attempts": True},
                                  {"attempts": 2, "retryOn": "bogus"},
                                  {"attempts": 2, "perTryTimeout": "fast"}])
def test_invalid_specs(spec: dict) -> None:
    with pytest.raises(ValueError):
        RetryPolicy.from_spec(spec)


def test_configured_backoff() -> None:
    p = RetryPolicy.from_spec({"attempts": 2, "retryOn": "5xx", "backoff": "100ms"})
    assert (p.backoff_base, p.backoff_max) == (0.1, 1.0)


# -- request header overrides ---------------------------------------------------------------

def test_header_overrides() -> None:
    base = RetryPolicy.from_spec({"attempts": 0})
    assert base.with_request_headers() is base
    p = base.with_request_headers(retry_on="5xx")
    assert p.attempts == 1 and decide(p, O.RESPONSE, 500)
    p = base.with_request_headers(retry_on="5xx", max_retries="4")
    assert p.attempts == 4
    p = base.with_request_headers(retry_grpc_on="unavailable, bogus")
    assert decide(p, O.RESPONSE, 200, 14) and not decide(p, O.RESPONSE, 500)
    assert base.with_request_headers(max_retries="4").attempts == 0  # no condition active
    safe = RetryPolicy.from_spec(None)
    p = safe.with_request_headers(retry_on="503")
    assert p.attempts == 2 and decide(p, O.RESPONSE, 503) and decide(p, O.CONNECT_FAILURE)


# -- back-off and Retry-After ---------------------------------------------------------------

@pytest.mark.parametrize(("attempt", "cap"), [(0, 0.0), (1, 0.025), (2, 0.075), (3, 0.175),
                                              (4, 0.25), (50, 0.25), (10_000, 0.25)])
def test_backoff_caps(attempt: int, cap: float) -> None:
    p = RetryPolicy.from_spec(None)
    draws = [p.backoff(attempt, random.Random(i)) for i in range(300)]
    assert all(0.0 <= d <= cap for d in draws)
    if cap:
        assert max(draws) > cap * 0.9  # fully jittered: uses the whole range


@given(st.integers(min_value=-5, max_value=200), st.integers(min_value=0, max_value=2**32),
       st.floats(min_value=0.001, max_value=5.0))
def test_backoff_within_bounds(attempt: int, seed: int, base: float) -> None:
    p = RetryPolicy.from_spec({"attempts": 3, "retryOn": "5xx", "backoff": base})
    d = p.backoff(attempt, random.Random(seed))
    assert 0.0 <= d < 10 * base + 1e-12
    if attempt >= 1:
        assert d < (2 ** min(attempt, 60) - 1) * base + 1e-12


NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5", 5.0),
        ("0", 0.0),
        (" 12 ", 12.0),
        ("3600", 60.0),  # capped
        (format_datetime(datetime.fromtimestamp(NOW + 30, UTC), usegmt=True), 30.0),
        (format_datetime(datetime.fromtimestamp(NOW - 30, UTC), usegmt=True), 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        ("-1", None),
        ("1.5", None),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_delay(value: str | None, expected: float | None) -> None:
    assert retry_after_delay(value, NOW) == expected


def test_retry_after_custom_cap() -> None:
    assert retry_after_delay("10", NOW, cap=2.5) == 2.5


def test_header_retriable_status_codes() -> None:
    base = RetryPolicy.from_spec({"attempts": 2, "retryOn": "retriable-status-codes,503"})
    p = base.with_request_headers(retriable_status_codes="429, 409,abc,999")
    assert p.retriable_status_codes == {503, 429, 409}
    assert decide(p, O.RESPONSE, 429) and not decide(base, O.RESPONSE, 429)
    # Extra codes alone do not turn retries on for a policy without the condition.
    p = RetryPolicy.from_spec({"attempts": 2, "retryOn": "5xx"}).with_request_headers(
        retriable_status_codes="429")
    assert not decide(p, O.RESPONSE, 429)
