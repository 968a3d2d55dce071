"""The attempt machine without sockets: given these events, expect these actions.

The expected actions are the request path's answers before the machine existed (once
proxy/server/forward.py, now proxy/transport/tries.py, attempt.py, hedge.py), so these tests pin the
decisions the integration tests (test_resilience, test_hedging, ...) check over the wire.
"""

from __future__ import annotations

import random
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.resilience.attempts import BACKOFF, GIVE_UP, RETRY_NOW, STREAM, TRY, Attempts, Env
from proxy.resilience.budget import RetryBudget
from proxy.resilience.deadline import MIN_TIMEOUT
from proxy.resilience.hedging import HedgePolicy, LatencyTracker
from proxy.resilience.retry import Outcome, RetryPolicy
from proxy.server.pool_limits import RetryGate
from tests.unit.twins import load_linked_build

from .conftest import FakeClock


@pytest.fixture(autouse=True, scope="module", params=["twin", "compiled"])
def build(request: pytest.FixtureRequest) -> Any:
    """Every test runs against both builds of the machine: the module's ``Attempts`` and
    ``Env`` (what ``machine`` makes) are the twin's, then the compiled module's. Module-scoped,
    so hypothesis sees no function-scoped fixture."""
    global Attempts, Env
    saved = Attempts, Env
    mod = load_linked_build("proxy.resilience", "attempts", twin=request.param == "twin")
    Attempts, Env = mod.Attempts, mod.Env
    yield mod
    Attempts, Env = saved


class Counters:
    """What the machine counts (the runtime's counters, outside the machine)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def count_retry(self, dest: Any, outcome: Any) -> None:
        self.events.append(("retry", outcome))

    def count_protection(self, dest: Any, kind: str) -> None:
        self.events.append(("protection", kind))

    def count_overflow(self, service: str, kind: str) -> None:
        self.events.append(("overflow", (service, kind)))


class Dest:
    """A destination's resilience as the compiled policy carries it."""

    def __init__(
        self,
        budget: RetryBudget,
        hedge: HedgePolicy | None = None,
        tracker: LatencyTracker | None = None,
    ) -> None:
        self.budget = budget
        self.hedge = hedge
        self.tracker = tracker


class Body:
    def __init__(self, replayable: bool = True, started: bool = False) -> None:
        self.replayable = replayable
        self.started = started


def policy(retry_on: str = "5xx", attempts: int = 2, **kw: Any) -> RetryPolicy:
    spec: dict[str, Any] = {"attempts": attempts, "retryOn": retry_on, **kw}
    return RetryPolicy.from_spec(spec)


def budget(clock: FakeClock, ratio: float = 0.2, per_second: float = 10) -> RetryBudget:
    return RetryBudget(ratio=ratio, min_per_second=per_second, clock=clock)


def machine(
    clock: FakeClock,
    retry: RetryPolicy | None = None,
    method: str = "GET",
    *,
    key: bool = False,
    source: Any = None,
    timeout: float = 0.0,
    dest: Any = None,
    gates: dict[str, RetryGate] | None = None,
    counters: Counters | None = None,
    **headers: Any,
) -> Attempts:
    env = Env(
        counters if counters is not None else Counters(),
        gates,
        random.Random(7),
        clock,
        lambda: 1_700_000_000.0,
    )
    return Attempts(
        env,
        retry if retry is not None else policy(),
        method,
        key,
        source,
        clock() + timeout if timeout else 0.0,
        dest,
        "c",
        **headers,
    )


# -- trying -----------------------------------------------------------------------------------
def test_no_endpoint_first_is_uh_later_urx(clock: FakeClock) -> None:
    m = machine(clock)
    assert m.begin(None) == GIVE_UP and (m.status, m.flag) == (503, "UH")
    m = machine(clock)
    assert m.begin("a") == TRY
    assert m.on_connect_failed() == BACKOFF
    assert m.begin(None) == GIVE_UP and (m.status, m.flag) == (503, "URX")


def test_deadline_passed_before_a_try_is_ut(clock: FakeClock) -> None:
    m = machine(clock, timeout=1.0)
    assert m.begin("a") == TRY and m.timeout == pytest.approx(1.0)
    assert m.on_connect_failed() == BACKOFF
    clock.advance(1.0)
    assert m.begin("b") == GIVE_UP and (m.status, m.flag) == (504, "UT")


def test_try_timeout_is_per_try_within_what_is_left(clock: FakeClock) -> None:
    m = machine(clock, policy(perTryTimeout="0.3s"), timeout=1.0)
    assert m.begin("a") == TRY and m.timeout == pytest.approx(0.3)
    clock.advance(0.8)
    assert m.on_try_timeout() == BACKOFF
    clock.advance(m.delay)
    assert m.begin("b") == TRY
    assert m.timeout == pytest.approx(0.2 - m.delay)
    # no deadline, no per-try timeout: no timer at all
    m = machine(clock)
    m.begin("a")
    assert m.timeout is None


def test_try_headers(clock: FakeClock) -> None:
    m = machine(clock, timeout=2.0, outbound=True)
    m.begin("a")
    assert m.try_headers(["x: 1"], ["content-length: 0"]) == [
        "x: 1", "x-envoy-expected-rq-timeout-ms: 2000", "content-length: 0"
    ]
    assert m.drop is None
    # the caller's expected-rq-timeout and grpc-timeout are replaced, the trace headers dropped
    prop = frozenset({"traceparent"})
    m = machine(
        clock, timeout=2.0, outbound=True, expected="5000", grpc_timeout="10S", grpc=True,
        propagation=prop,
    )
    m.begin("a")
    assert m.try_headers([], []) == ["x-envoy-expected-rq-timeout-ms: 2000", "grpc-timeout: 2S"]
    assert m.drop == {"traceparent", "x-envoy-expected-rq-timeout-ms", "grpc-timeout"}
    # inbound: no expected-rq-timeout upstream; a shorter grpc-timeout is kept as sent
    m = machine(clock, timeout=2.0, expected="5000", grpc_timeout="100m", grpc=True)
    m.begin("a")
    assert m.try_headers([], []) == ["grpc-timeout: 100m"] and m.drop == {"grpc-timeout"}
    # no deadline: nothing rewritten; the attempt count from the second try
    m = machine(clock, expected="5000", grpc_timeout="1S", grpc=True, propagation=prop)
    m.begin("a")
    assert m.try_headers([], []) == [] and m.drop is prop
    m.on_connect_failed()
    m.begin("b")
    assert m.try_headers([], []) == ["x-envoy-attempt-count: 2"] and m.drop is prop


def test_pool_answers(clock: FakeClock) -> None:
    m = machine(clock)
    m.begin("a")
    assert m.on_pool_overflow() == GIVE_UP and (m.status, m.flag) == (503, "UO")
    assert m.on_pending_timeout() == GIVE_UP and (m.status, m.flag) == (504, "UT")


def test_connect_failure_retried_for_any_method_until_attempts(clock: FakeClock) -> None:
    m = machine(clock, policy("connect-failure", 2), "POST")
    for key in "ab":
        assert m.begin(key) == TRY
        assert m.on_connect_failed() == BACKOFF
    assert m.begin("c") == TRY
    assert m.on_connect_failed() == GIVE_UP and (m.status, m.flag) == (503, "UF,URX")
    m = machine(clock, policy("connect-failure", 0))
    m.begin("a")
    assert m.on_connect_failed() == GIVE_UP and (m.status, m.flag) == (503, "UF")


# -- responses ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "key", "opt_in", "expected"),
    [
        ("GET", False, False, BACKOFF),
        ("PUT", False, False, BACKOFF),
        ("POST", False, False, STREAM),  # the idempotency guard
        ("POST", True, False, BACKOFF),  # Idempotency-Key
        ("POST", False, True, BACKOFF),  # meshlet.io/retry-non-idempotent
    ],
)
def test_response_retry_and_idempotency(
    clock: FakeClock, method: str, key: bool, opt_in: bool, expected: int
) -> None:
    retry = RetryPolicy.from_spec(
        {"attempts": 2, "retryOn": "5xx"}, route_opt_in_non_idempotent=opt_in
    )
    m = machine(clock, retry, method, key=key)
    m.begin("a")
    assert m.on_response(503, None, False, False, None) == expected


def test_response_rules(clock: FakeClock) -> None:
    m = machine(clock, policy("5xx,unavailable"))
    m.begin("a")
    assert m.on_response(503, None, False, True, None) == STREAM  # x-envoy-overloaded
    assert m.on_response(503, None, True, False, None) == STREAM  # ratelimited, no token
    assert m.on_response(200, 14, False, False, None) == BACKOFF  # grpc unavailable
    assert m.on_response(404, None, False, False, None) == STREAM
    assert m.response_flag(503) == "URX" and m.response_flag(200) == "-"


def test_retry_after_raises_the_backoff_within_the_deadline(clock: FakeClock) -> None:
    m = machine(clock, timeout=5.0)
    m.begin("a")
    assert m.on_response(503, None, False, False, "2") == BACKOFF
    assert m.delay == 2.0
    m = machine(clock, timeout=1.0)
    m.begin("a")
    clock.advance(0.5)
    assert m.on_response(503, None, False, False, "2") == BACKOFF
    assert m.delay == pytest.approx(0.5)  # capped at what is left


def test_try_timeout_at_the_deadline_is_not_retried(clock: FakeClock) -> None:
    m = machine(clock, policy("reset", 5), timeout=1.0)
    m.begin("a")
    clock.advance(0.9996)  # within half a millisecond of the deadline
    assert m.on_try_timeout() == GIVE_UP and (m.status, m.flag) == (504, "UT")


def test_protocol_error_is_a_reset_else_upe(clock: FakeClock) -> None:
    m = machine(clock, policy("reset", 1))
    m.begin("a")
    assert m.on_protocol_error() == BACKOFF
    m.begin("b")
    assert m.on_protocol_error() == GIVE_UP and (m.status, m.flag) == (502, "UPE")


def test_stale_pooled_connection_is_retried_at_once(clock: FakeClock) -> None:
    m = machine(clock, policy("connect-failure", 0))
    m.begin("a")
    assert m.on_reset("a", True, False) == RETRY_NOW and "a" not in m.tried
    m.begin("a")
    assert m.on_reset("a", True, False) == RETRY_NOW
    m.begin("a")  # the third try: no more free stale retries
    assert m.on_reset("a", True, False) == GIVE_UP and (m.status, m.flag) == (503, "UC,URX")
    m = machine(clock, policy("connect-failure", 0))
    m.begin("a")
    assert m.on_reset("a", True, True) == GIVE_UP and (m.status, m.flag) == (503, "UC")
    m = machine(clock, policy("connect-failure", 0), "POST")
    m.begin("a")
    assert m.on_reset("a", True, False) == GIVE_UP  # not idempotent
    m = machine(clock, policy("connect-failure", 0), source=Body(False, True))
    m.begin("a")
    assert m.on_reset("a", True, False) == GIVE_UP  # the body can no longer be replayed


def test_unreplayable_body_is_not_retried(clock: FakeClock) -> None:
    m = machine(clock, policy("5xx,connect-failure"), "PUT", source=Body(replayable=False))
    m.begin("a")
    assert m.on_connect_failed() == GIVE_UP
    assert m.on_response(503, None, False, False, None) == STREAM


def test_max_retries_gate_slot_held_once_and_released(clock: FakeClock) -> None:
    gate = RetryGate("svc", limit=1)
    counters = Counters()
    m = machine(clock, policy("connect-failure", 3), gates={"c": gate}, counters=counters)
    m.begin("a")
    assert m.on_connect_failed() == BACKOFF and gate.active == 1
    m.begin("b")
    assert m.on_connect_failed() == BACKOFF and gate.active == 1  # the same slot
    other = machine(clock, policy("connect-failure", 3), gates={"c": gate}, counters=counters)
    other.begin("a")
    assert other.on_connect_failed() == GIVE_UP  # the cluster's one retry is in flight
    assert ("overflow", ("svc", "retries")) in counters.events
    m.release()
    m.release()  # idempotent
    assert gate.active == 0


def test_budget_exhausted_skips_the_retry(clock: FakeClock) -> None:
    counters = Counters()
    dest = Dest(budget(clock, ratio=0.5, per_second=0))
    dest.budget.deposit()
    dest.budget.deposit()  # room for exactly one retry
    m = machine(clock, policy("5xx", 5), dest=dest, counters=counters)
    m.begin("a")
    assert m.on_response(503, None, False, False, None) == BACKOFF
    m.begin("b")
    assert m.on_response(503, None, False, False, None) == STREAM
    assert counters.events == [("retry", Outcome.RESPONSE), ("protection", "budget_skipped")]


# -- hedging ------------------------------------------------------------------------------------
def test_hedge_delay_rules(clock: FakeClock) -> None:
    dest = Dest(budget(clock), HedgePolicy.from_spec({"delay": "50ms", "maxHedges": 2}))
    m = machine(clock, dest=dest)
    m.begin("a")
    assert m.hedge_delay(False) == pytest.approx(0.05)
    assert m.hedge_delay(True) is None  # a request body
    assert machine(clock, dest=dest, method="POST").hedge_delay(False) is None
    m = machine(clock, dest=dest, timeout=0.04)
    m.begin("a")
    assert m.hedge_delay(False) is None  # does not fit in the try's timeout
    m = machine(clock, dest=dest)
    m.begin("a")
    m.on_connect_failed()
    m.begin("b")
    assert m.hedge_delay(False) is None  # only the first try is hedged
    cold = Dest(budget(clock), HedgePolicy.from_spec({"delay": "p95"}), LatencyTracker())
    m = machine(clock, dest=cold)
    m.begin("a")
    assert m.hedge_delay(False) is None  # no samples yet


def test_hedges_bounded_by_max_and_budget(clock: FakeClock) -> None:
    dest = Dest(budget(clock), HedgePolicy.from_spec({"delay": "50ms", "maxHedges": 2}))
    m = machine(clock, dest=dest)
    m.begin("a")
    assert m.hedge_delay(False) is not None
    assert m.hedge_armed() and m.on_hedge_timer() and m.hedges == 1
    assert m.on_hedge_timer() and m.hedges == 2
    assert not m.hedge_armed() and not m.on_hedge_timer()
    poor = Dest(budget(clock, per_second=0), dest.hedge)
    m = machine(clock, dest=poor)
    m.begin("a")
    assert m.hedge_delay(False) is not None
    assert not m.on_hedge_timer() and m.hedges == 0
    assert m.on_hedges_failed(True) == GIVE_UP and (m.status, m.flag) == (504, "UT")
    assert m.on_hedges_failed(False) == GIVE_UP and (m.status, m.flag) == (503, "UC")


def test_the_machine_imports_no_asyncio_or_ssl() -> None:
    code = (
        "import sys, proxy.resilience.attempts; "
        "print(sorted(m for m in ('asyncio', 'ssl') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- properties ---------------------------------------------------------------------------------
FAILURES = ("connect", "reset", "reset_bytes", "stale", "upe", "timeout", "5xx", "grpc14", "ok")
RETRY_ONS = ("5xx", "reset", "connect-failure", "gateway-error,unavailable", "retriable-4xx")


@settings(max_examples=300, deadline=None)
@given(
    retry_on=st.sampled_from(RETRY_ONS),
    attempts=st.integers(0, 5),
    per_try=st.sampled_from([None, "0.05s", "0.3s"]),
    timeout=st.sampled_from([0.0, 0.2, 1.0]),
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH"]),
    key=st.booleans(),
    deposits=st.integers(0, 20),
    per_second=st.sampled_from([0, 1]),
    hedges=st.integers(0, 3),
    events=st.lists(
        st.tuples(st.sampled_from(FAILURES), st.floats(0.0, 0.5), st.integers(0, 4)),
        min_size=1,
        max_size=12,
    ),
)
def test_properties(
    retry_on: str,
    attempts: int,
    per_try: str | None,
    timeout: float,
    method: str,
    key: bool,
    deposits: int,
    per_second: int,
    hedges: int,
    events: list[tuple[str, float, int]],
) -> None:
    """Whatever happens: no try or wait runs past the deadline, a request that reached the
    upstream is retried only when idempotent (or the route opts in, not here), the budget is
    never overdrawn, retries stay within ``attempts`` and hedges within ``maxHedges``."""
    clock = FakeClock()
    budget_clock = FakeClock()  # frozen: nothing of the budget expires during the request
    b = RetryBudget(ratio=0.2, min_per_second=per_second, ttl=1.0, clock=budget_clock)
    for _ in range(deposits):
        b.deposit()
    available = b.available
    hedge = HedgePolicy.from_spec({"delay": "10ms", "maxHedges": hedges})
    dest = Dest(b, hedge)
    spec: dict[str, Any] = {"attempts": attempts, "retryOn": retry_on}
    if per_try:
        spec["perTryTimeout"] = per_try
    m = machine(clock, RetryPolicy.from_spec(spec), method, key=key, timeout=timeout, dest=dest)
    deadline = m.deadline
    idempotent = key or method in ("GET", "PUT")
    backoffs = 0
    for kind, took, extra_hedges in events:
        act = m.begin("ep%d" % m.attempt)
        if act == GIVE_UP:
            break
        assert act == TRY
        if deadline:
            assert m.timeout is not None
            assert clock() + m.timeout <= deadline + MIN_TIMEOUT + 1e-9
        if m.hedge_delay(False) is not None:
            for _ in range(extra_hedges):
                if not m.hedge_armed() or not m.on_hedge_timer():
                    break
        clock.advance(took if m.timeout is None else min(took, m.timeout))
        sent = kind not in ("connect",)
        if kind == "connect":
            act = m.on_connect_failed()
        elif kind in ("reset", "reset_bytes", "stale"):
            act = m.on_reset(f"ep{m.attempt - 1}", kind == "stale", kind == "reset_bytes")
        elif kind == "upe":
            act = m.on_protocol_error()
        elif kind == "timeout":
            act = m.on_try_timeout()
        elif kind == "5xx":
            act = m.on_response(503, None, False, False, "1")
        elif kind == "grpc14":
            act = m.on_response(200, 14, False, False, None)
        else:
            act = m.on_response(409, None, False, False, None)
        if sent and not idempotent:
            assert act not in (BACKOFF, RETRY_NOW)  # a sent POST/PATCH is never tried again
        if act == BACKOFF:
            backoffs += 1
            assert m.delay >= 0
            if deadline:
                assert clock() + m.delay <= deadline + 1e-9
            clock.advance(m.delay)
        elif act != RETRY_NOW:
            break
    assert backoffs <= attempts
    sent_hedges = getattr(m, "hedges", 0)  # set once a try is hedged
    assert sent_hedges <= hedges
    assert backoffs + sent_hedges <= available  # never more than the budget granted
    m.release()
