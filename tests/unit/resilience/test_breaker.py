from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.resilience.breaker import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    BreakerConfig,
    CircuitBreaker,
)

from .conftest import FakeClock


def make(clock: FakeClock, **kw) -> tuple[CircuitBreaker, list[tuple[str, str]]]:
    cb = CircuitBreaker(BreakerConfig(**kw), clock)
    seen: list[tuple[str, str]] = []
    cb.on_state_change.append(lambda old, new: seen.append((old, new)))
    return cb, seen


def call(cb: CircuitBreaker, failure: bool = False, duration: float = 0.01) -> bool:
    if not cb.try_acquire():
        return False
    cb.on_result(duration, failure)
    return True


SMALL = dict(sliding_window_size=10, minimum_number_of_calls=10, wait_duration_in_open_state=5.0,
             permitted_number_of_calls_in_half_open_state=3)


def test_defaults_match_contract() -> None:
    c = BreakerConfig()
    assert (c.failure_rate_threshold, c.slow_call_rate_threshold, c.slow_call_duration_threshold,
            c.sliding_window_type, c.sliding_window_size, c.minimum_number_of_calls,
            c.wait_duration_in_open_state, c.permitted_number_of_calls_in_half_open_state) == (
        50.0, 100.0, 60.0, "COUNT_BASED", 100, 100, 60.0, 10)
    assert BreakerConfig.from_spec({}) == c
    assert BreakerConfig.from_spec(None) == c


def test_from_spec_fields() -> None:
    c = BreakerConfig.from_spec({
        "failureRateThreshold": 25, "slowCallRateThreshold": 80,
        "slowCallDurationThreshold": "500ms", "slidingWindowType": "time_based",
        "slidingWindowSize": 30, "minimumNumberOfCalls": 5, "waitDurationInOpenState": "1m",
        "permittedNumberOfCallsInHalfOpenState": 2, "maxWaitDurationInHalfOpenState": "10s",
    })
    assert c == BreakerConfig(25.0, 80.0, 0.5, "TIME_BASED", 30, 5, 60.0, 2, 10.0)


@pytest.mark.parametrize("spec", [
    {"failureRateThreshold": 0}, {"failureRateThreshold": 101}, {"slowCallRateThreshold": -1},
    {"slidingWindowType": "SESSION"}, {"slidingWindowSize": 0}, {"minimumNumberOfCalls": 1.5},
    {"waitDurationInOpenState": "0s"}, {"waitDurationInOpenState": "soon"},
])
def test_from_spec_invalid(spec: dict) -> None:
    with pytest.raises(ValueError):
        BreakerConfig.from_spec(spec)


def test_from_spec_ignores_unknown_fields() -> None:
    assert BreakerConfig.from_spec({"futureField": 1}) == BreakerConfig()


def test_stays_closed_below_minimum(clock: FakeClock) -> None:
    cb, _ = make(clock, **SMALL)
    for _ in range(9):
        assert call(cb, failure=True)
    assert cb.state == CLOSED
    assert cb.failure_rate == -1.0


def test_opens_at_threshold_inclusive(clock: FakeClock) -> None:
    cb, seen = make(clock, **SMALL)
    for i in range(10):
        call(cb, failure=i < 5)  # exactly 50 %
    assert cb.state == OPEN
    assert seen == [(CLOSED, OPEN)]


def test_below_threshold_stays_closed(clock: FakeClock) -> None:
    cb, _ = make(clock, **SMALL)
    for i in range(10):
        call(cb, failure=i < 4)
    assert cb.state == CLOSED
    assert cb.failure_rate == 40.0
    assert cb.slow_call_rate == 0.0


def test_count_window_slides(clock: FakeClock) -> None:
    cb, _ = make(clock, **SMALL)
    for _ in range(4):
        call(cb, failure=True)
    for _ in range(20):
        call(cb)
    assert cb.failure_rate == 0.0
    for _ in range(4):
        call(cb, failure=True)
    assert cb.state == CLOSED and cb.failure_rate == 40.0
    call(cb, failure=True)
    assert cb.state == OPEN


def test_minimum_clamped_to_count_window(clock: FakeClock) -> None:
    cb, _ = make(clock, sliding_window_size=4, minimum_number_of_calls=100)
    for _ in range(4):
        call(cb, failure=True)
    assert cb.state == OPEN


def test_open_rejects_then_half_open_after_wait(clock: FakeClock) -> None:
    cb, seen = make(clock, **SMALL)
    for _ in range(10):
        call(cb, failure=True)
    assert not cb.try_acquire()
    clock.advance(4.999)
    assert not cb.try_acquire()
    assert cb.not_permitted == 2
    assert cb.state == OPEN  # lazy: no transition without a call
    clock.advance(0.001)
    assert cb.state == OPEN
    assert cb.try_acquire()
    assert cb.state == HALF_OPEN
    assert seen == [(CLOSED, OPEN), (OPEN, HALF_OPEN)]


def trip_to_half_open(cb: CircuitBreaker, clock: FakeClock) -> None:
    for _ in range(10):
        call(cb, failure=True)
    clock.advance(5.0)


def test_half_open_success_closes(clock: FakeClock) -> None:
    cb, seen = make(clock, **SMALL)
    trip_to_half_open(cb, clock)
    assert [cb.try_acquire() for _ in range(4)] == [True, True, True, False]
    cb.on_result(0.01, False)
    cb.on_result(0.01, True)  # 1/3 failing < 50 %
    assert cb.state == HALF_OPEN
    cb.on_result(0.01, False)
    assert cb.state == CLOSED
    assert seen[-1] == (HALF_OPEN, CLOSED)
    assert cb.failure_rate == -1.0  # fresh window
    assert cb.buffered_calls == 0


def test_half_open_failure_reopens(clock: FakeClock) -> None:
    cb, seen = make(clock, **SMALL)
    trip_to_half_open(cb, clock)
    for _ in range(3):
        assert cb.try_acquire()
    cb.on_result(0.01, True)
    cb.on_result(0.01, True)
    cb.on_result(0.01, False)
    assert cb.state == OPEN
    assert seen == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, OPEN)]
    assert not cb.try_acquire()
    clock.advance(5.0)
    assert cb.try_acquire() and cb.state == HALF_OPEN


def test_half_open_verdict_after_minimum_calls(clock: FakeClock) -> None:
    cb, _ = make(clock, sliding_window_size=10, minimum_number_of_calls=2,
                 wait_duration_in_open_state=1.0, permitted_number_of_calls_in_half_open_state=5)
    call(cb, failure=True)
    call(cb, failure=True)
    assert cb.state == OPEN
    clock.advance(1.0)
    call(cb)
    assert cb.state == HALF_OPEN
    call(cb)
    assert cb.state == CLOSED


def test_release_returns_half_open_permit(clock: FakeClock) -> None:
    cb, _ = make(clock, **SMALL)
    trip_to_half_open(cb, clock)
    for _ in range(3):
        assert cb.try_acquire()
    assert not cb.try_acquire()
    cb.release()
    assert cb.try_acquire()
    assert cb.state == HALF_OPEN
    cb.release()
    cb.release()
    cb.release()
    cb.release()  # never more than the configured permits
    assert [cb.try_acquire() for _ in range(4)] == [True, True, True, False]


def test_release_in_closed_is_harmless(clock: FakeClock) -> None:
    cb, _ = make(clock, **SMALL)
    assert cb.try_acquire()
    cb.release()
    assert cb.state == CLOSED and cb.buffered_calls == 0


def test_max_wait_in_half_open_reopens(clock: FakeClock) -> None:
    cb, seen = make(clock, **SMALL, max_wait_duration_in_half_open_state=2.0)
    trip_to_half_open(cb, clock)
    assert cb.try_acquire()
    clock.advance(2.0)
    assert not cb.try_acquire()
    assert cb.state == OPEN
    assert seen[-1] == (HALF_OPEN, OPEN)


def test_results_while_open_are_ignored(clock: FakeClock) -> None:
    cb, _ = make(clock, **SMALL)
    for _ in range(10):
        call(cb, failure=True)
    cb.on_result(0.01, False)
    assert cb.state == OPEN


def test_slow_calls_open(clock: FakeClock) -> None:
    cb, seen = make(clock, **SMALL, slow_call_duration_threshold=1.0, slow_call_rate_threshold=60)
    for i in range(10):
        call(cb, failure=False, duration=1.5 if i >= 5 else 1.0)  # 1.0 is not slow (strict >)
    assert cb.state == CLOSED
    assert cb.slow_call_rate == 50.0
    assert cb.failure_rate == 0.0
    call(cb, duration=2.0)  # window now 6/10 slow
    assert cb.state == OPEN
    assert seen == [(CLOSED, OPEN)]


def test_slow_failure_counts_both(clock: FakeClock) -> None:
    cb, _ = make(clock, sliding_window_size=4, minimum_number_of_calls=4,
                 slow_call_duration_threshold=1.0, failure_rate_threshold=100,
                 slow_call_rate_threshold=100)
    for _ in range(3):
        call(cb, failure=True, duration=5.0)
    call(cb, failure=False, duration=0.1)
    assert (cb.failure_rate, cb.slow_call_rate) == (75.0, 75.0)
    assert cb.state == CLOSED


def test_half_open_slow_probes_reopen(clock: FakeClock) -> None:
    cb, _ = make(clock, **SMALL, slow_call_duration_threshold=1.0)
    trip_to_half_open(cb, clock)
    for _ in range(3):
        assert cb.try_acquire()
        cb.on_result(3.0, False)
    assert cb.state == OPEN


TIME = dict(sliding_window_type="TIME_BASED", sliding_window_size=10, minimum_number_of_calls=4,
            wait_duration_in_open_state=5.0, permitted_number_of_calls_in_half_open_state=2)


def test_time_window_trips(clock: FakeClock) -> None:
    cb, _ = make(clock, **TIME)
    for _ in range(2):
        call(cb)
        call(cb, failure=True)
        clock.advance(1.0)
    assert cb.state == OPEN


def test_time_window_expiry(clock: FakeClock) -> None:
    cb, _ = make(clock, **TIME)
    for _ in range(3):
        call(cb, failure=True)
    clock.advance(10.0)  # those three are now outside the 10 s window
    assert cb.failure_rate == -1.0
    assert cb.buffered_calls == 0
    call(cb, failure=True)
    assert cb.state == CLOSED
    for _ in range(3):
        call(cb)
    assert cb.state == CLOSED and cb.failure_rate == 25.0


def test_time_window_partial_expiry(clock: FakeClock) -> None:
    cb, _ = make(clock, **TIME)
    call(cb, failure=True)
    call(cb)
    clock.advance(5.0)
    call(cb)
    call(cb)
    assert cb.state == CLOSED and cb.failure_rate == 25.0
    clock.advance(4.9)
    assert cb.buffered_calls == 4
    clock.advance(0.1)  # the first second is now 10 s old and drops out
    assert cb.buffered_calls == 2
    call(cb)
    call(cb, failure=True)
    assert cb.failure_rate == 25.0
    assert cb.state == CLOSED


def test_time_window_minimum_not_clamped(clock: FakeClock) -> None:
    cb, _ = make(clock, **{**TIME, "minimum_number_of_calls": 50})
    for _ in range(10):
        for _ in range(4):
            call(cb, failure=True)
        clock.advance(1.0)
    assert cb.state == CLOSED  # 40 calls per window < 50: can never trip (R4j edge case)


def test_time_based_half_open_uses_count_window(clock: FakeClock) -> None:
    cb, _ = make(clock, **TIME)
    for _ in range(4):
        call(cb, failure=True)
    clock.advance(5.0)
    assert call(cb) and call(cb)
    assert cb.state == CLOSED


def test_status(clock: FakeClock) -> None:
    cb, _ = make(clock, **SMALL)
    call(cb, failure=True)
    assert cb.status() == {"state": CLOSED, "failure_rate": -1.0, "slow_call_rate": -1.0,
                           "buffered_calls": 1, "not_permitted": 0}


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["call_ok", "call_fail", "call_slow", "acquire",
                                           "release", "wait"]),
                          st.floats(min_value=0, max_value=3)), max_size=200))
def test_invariants(ops) -> None:
    clock = FakeClock()
    cb = CircuitBreaker(BreakerConfig(sliding_window_size=5, minimum_number_of_calls=3,
                                      wait_duration_in_open_state=2.0,
                                      permitted_number_of_calls_in_half_open_state=2,
                                      slow_call_duration_threshold=1.0), clock)
    held = 0
    for op, dt in ops:
        if op == "wait":
            clock.advance(dt)
        elif op == "acquire":
            held += cb.try_acquire()
        elif op == "release" and held:
            held -= 1
            cb.release()
        elif op.startswith("call") and held:
            held -= 1
            cb.on_result(2.0 if op == "call_slow" else 0.1, op == "call_fail")
        assert cb.state in (CLOSED, OPEN, HALF_OPEN)
        assert 0 <= cb.buffered_calls <= 5
        fr = cb.failure_rate
        assert fr == -1.0 or 0.0 <= fr <= 100.0
        if cb.state == HALF_OPEN:
            assert 0 <= cb._permits <= 2
