"""Per-destination circuit breaker with Resilience4j's model (research 5.1, 5.2).

States CLOSED -> OPEN -> HALF_OPEN -> (CLOSED | OPEN):

* CLOSED admits every call and records each result in a sliding window: the last N calls
  (COUNT_BASED, a ring) or the last N seconds (TIME_BASED, one bucket per second). Once
  `minimum_number_of_calls` are in the window (clamped to the window size for COUNT_BASED),
  failure rate >= threshold or slow-call rate >= threshold opens it. Thresholds are inclusive,
  "slow" is strictly longer than `slow_call_duration_threshold`, and a slow success counts.
* OPEN rejects every call (`not_permitted` += 1). After `wait_duration_in_open_state` the next
  `try_acquire` moves it to HALF_OPEN (R4j's lazy transition; no timers in a sans-I/O core).
* HALF_OPEN admits `permitted_number_of_calls_in_half_open_state` calls (a `release()`d permit is
  returned) and records them in a fresh window; once `min(minimum, permitted)` results are in,
  any threshold reached reopens it, otherwise it closes with a fresh window. With
  `max_wait_duration_in_half_open_state` > 0 it reopens if the verdict takes longer.

What counts as a failure is the caller's call (contract: a 5xx, a reset or a timeout); an OPEN
breaker is answered locally with 503 UO + `x-envoy-overloaded` so callers never retry it.

Differences from Resilience4j: no DISABLED / METRICS_ONLY / FORCED states, no exception
classifiers, no `waitIntervalFunctionInOpenState`. Results reported while OPEN are dropped (R4j
records them into a window nobody reads). As in R4j, a permit is just a count: a slow call
admitted while CLOSED that finishes during HALF_OPEN is recorded as a probe. Rates are
percentages (0-100) and -1.0 while below the minimum number of calls, as in R4j.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ._duration import parse_optional_duration

CLOSED = "CLOSED"
OPEN = "OPEN"
HALF_OPEN = "HALF_OPEN"
COUNT_BASED = "COUNT_BASED"
TIME_BASED = "TIME_BASED"

_FAIL = 1
_SLOW = 2


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """Resilience4j CircuitBreakerConfig fields (seconds for durations, percents for rates)."""

    failure_rate_threshold: float = 50.0
    slow_call_rate_threshold: float = 100.0
    slow_call_duration_threshold: float = 60.0
    sliding_window_type: str = COUNT_BASED
    sliding_window_size: int = 100
    minimum_number_of_calls: int = 100
    wait_duration_in_open_state: float = 60.0
    permitted_number_of_calls_in_half_open_state: int = 10
    max_wait_duration_in_half_open_state: float = 0.0

    def __post_init__(self) -> None:
        for name in ("failure_rate_threshold", "slow_call_rate_threshold"):
            v = getattr(self, name)
            if not 0 < v <= 100:
                raise ValueError(f"circuitBreaker.{_camel(name)}: must be in (0, 100], got {v}")
        if self.sliding_window_type not in (COUNT_BASED, TIME_BASED):
            raise ValueError(
                "circuitBreaker.slidingWindowType: expected COUNT_BASED or TIME_BASED, "
                f"got {self.sliding_window_type!r}")
        for name in ("sliding_window_size", "minimum_number_of_calls",
                     "permitted_number_of_calls_in_half_open_state"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(
                    f"circuitBreaker.{_camel(name)}: must be an integer >= 1, got {v!r}")
        if self.slow_call_duration_threshold <= 0 or self.wait_duration_in_open_state <= 0:
            raise ValueError("circuitBreaker: durations must be positive")

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None) -> BreakerConfig:
        """From a ResiliencePolicy `circuitBreaker` block (camelCase, Istio-style durations).

        Unknown fields are ignored: the spec was validated (strictly) by the shared
        `control_plane.api` code, and a newer field must not break an older sidecar. Bad values
        of known fields still raise ValueError.
        """
        spec = spec or {}
        d = cls()
        kw: dict[str, Any] = {}
        for name in ("failure_rate_threshold", "slow_call_rate_threshold"):
            if _camel(name) in spec:
                kw[name] = float(spec[_camel(name)])
        for name in ("sliding_window_size", "minimum_number_of_calls",
                     "permitted_number_of_calls_in_half_open_state"):
            if _camel(name) in spec:
                kw[name] = spec[_camel(name)]
        if "slidingWindowType" in spec:
            kw["sliding_window_type"] = str(spec["slidingWindowType"]).upper()
        for name in ("slow_call_duration_threshold", "wait_duration_in_open_state",
                     "max_wait_duration_in_half_open_state"):
            key = _camel(name)
            kw[name] = parse_optional_duration(
                spec.get(key), getattr(d, name), f"circuitBreaker.{key}")
        return cls(**kw)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)



class _CountWindow:
    """The last `size` outcomes in a ring, with running totals."""

    __slots__ = ("_ring", "_pos", "size", "calls", "failed", "slow")

    def __init__(self, size: int) -> None:
        self._ring = bytearray(size)
        self._pos = 0
        self.size = size
        self.calls = self.failed = self.slow = 0

    def record(self, code: int) -> None:
        pos = self._pos
        if self.calls == self.size:
            old = self._ring[pos]
            if old != code:  # the common steady state (success replacing success) skips this
                self._ring[pos] = code
                self.failed += (code & _FAIL) - (old & _FAIL)
                self.slow += (code >> 1) - (old >> 1)
        else:
            self.calls += 1
            if code:
                self._ring[pos] = code
                self.failed += code & _FAIL
                self.slow += code >> 1
        pos += 1
        self._pos = pos if pos < self.size else 0

    def expire(self, now: float) -> None:
        """A count window never expires."""


class _TimeWindow:
    """Calls in the last `size` whole seconds: one bucket per epoch second, running totals."""

    __slots__ = ("_calls", "_failed", "_slow", "_sec", "size", "calls", "failed", "slow")

    def __init__(self, size: int, now: float) -> None:
        self.size = size
        self._calls = [0] * size
        self._failed = [0] * size
        self._slow = [0] * size
        self._sec = int(now)
        self.calls = self.failed = self.slow = 0

    def expire(self, now: float) -> None:
        sec = int(now)
        old = self._sec
        if sec == old:
            return
        if sec - old >= self.size or sec < old:
            n = self.size
            self._calls, self._failed, self._slow = [0] * n, [0] * n, [0] * n
            self.calls = self.failed = self.slow = 0
        else:
            for s in range(old + 1, sec + 1):
                i = s % self.size
                self.calls -= self._calls[i]
                self.failed -= self._failed[i]
                self.slow -= self._slow[i]
                self._calls[i] = self._failed[i] = self._slow[i] = 0
        self._sec = sec

    def record(self, code: int) -> None:
        # The breaker has just called expire(now).
        i = self._sec % self.size
        self._calls[i] += 1
        self.calls += 1
        if code & _FAIL:
            self._failed[i] += 1
            self.failed += 1
        if code & _SLOW:
            self._slow[i] += 1
            self.slow += 1


class CircuitBreaker:
    """One breaker (per sidecar, per destination). Not thread-safe: one event loop owns it."""

    __slots__ = (
        "config", "_clock", "state", "_window", "_min_calls", "_open_until", "_half_open_until",
        "_permits", "not_permitted", "on_state_change", "_slow_s", "_fr", "_sr", "_timed",
    )

    def __init__(
        self, config: BreakerConfig | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config = config or BreakerConfig()
        self._clock = clock
        self._slow_s = config.slow_call_duration_threshold
        self._timed = False
        self._fr = config.failure_rate_threshold
        self._sr = config.slow_call_rate_threshold
        self.not_permitted = 0
        self.on_state_change: list[Callable[[str, str], None]] = []
        self._open_until = 0.0
        self._half_open_until = 0.0
        self._permits = 0
        self.state = CLOSED
        self._window: _CountWindow | _TimeWindow
        self._min_calls = 0
        self._reset_closed_window()

    def _reset_closed_window(self) -> None:
        c = self.config
        if c.sliding_window_type == COUNT_BASED:
            self._window = _CountWindow(c.sliding_window_size)
            self._min_calls = min(c.minimum_number_of_calls, c.sliding_window_size)
            self._timed = False
        else:
            self._window = _TimeWindow(c.sliding_window_size, self._clock())
            self._min_calls = c.minimum_number_of_calls
            self._timed = True

    def _transition(self, new: str) -> None:
        old = self.state
        c = self.config
        now = self._clock()
        if new == OPEN:
            self._open_until = now + c.wait_duration_in_open_state
        elif new == HALF_OPEN:
            n = c.permitted_number_of_calls_in_half_open_state
            self._window = _CountWindow(n)
            self._min_calls = min(c.minimum_number_of_calls, n)
            self._timed = False
            self._permits = n
            w = c.max_wait_duration_in_half_open_state
            self._half_open_until = now + w if w > 0 else float("inf")
        else:
            self._reset_closed_window()
        self.state = new
        for cb in self.on_state_change:
            cb(old, new)

    def try_acquire(self) -> bool:
        """Admit a call? A True must be followed by exactly one `on_result` or `release`."""
        state = self.state
        if state is CLOSED:
            return True
        now = self._clock()
        if state is OPEN:
            if now < self._open_until:
                self.not_permitted += 1
                return False
            self._transition(HALF_OPEN)
        elif now >= self._half_open_until:
            self._transition(OPEN)
            self.not_permitted += 1
            return False
        if self._permits > 0:
            self._permits -= 1
            return True
        self.not_permitted += 1
        return False

    def release(self) -> None:
        """Give back a permit whose call was cancelled or ignored (records nothing)."""
        if self.state is HALF_OPEN and self._permits < (
            self.config.permitted_number_of_calls_in_half_open_state
        ):
            self._permits += 1

    def on_result(self, duration_s: float, failure: bool) -> None:
        """Record a finished call admitted by `try_acquire`."""
        state = self.state
        if state is OPEN:
            return
        if failure:
            code = 3 if duration_s > self._slow_s else 1
        elif duration_s > self._slow_s:
            code = 2
        else:
            code = 0
        w = self._window
        if self._timed:
            w.expire(self._clock())
            w.record(code)
        else:
            w.record(code)
            # A fast success cannot raise either rate of a count window: if the last verdict
            # (taken at calls - 1 >= minimum) was "below", this one is too.
            if not code and w.calls > self._min_calls:
                return
        calls = w.calls
        if calls < self._min_calls:
            return
        if w.failed * 100.0 >= self._fr * calls or w.slow * 100.0 >= self._sr * calls:
            self._transition(OPEN)
        elif state is HALF_OPEN:
            self._transition(CLOSED)

    def _rate(self, part: str) -> float:
        w = self._window
        if self._timed:
            w.expire(self._clock())
        if w.calls < self._min_calls or w.calls == 0:
            return -1.0
        return getattr(w, part) * 100.0 / w.calls

    @property
    def failure_rate(self) -> float:
        """Failure percentage over the current window, -1.0 below the minimum number of calls."""
        return self._rate("failed")

    @property
    def slow_call_rate(self) -> float:
        """Slow-call percentage over the current window, -1.0 below the minimum number of calls."""
        return self._rate("slow")

    @property
    def buffered_calls(self) -> int:
        """Calls in the current window (the HALF_OPEN probe window while half-open)."""
        if self._timed:
            self._window.expire(self._clock())
        return self._window.calls

    def status(self) -> dict[str, Any]:
        """The breaker's view for /clusters and metrics."""
        return {
            "state": self.state,
            "failure_rate": self.failure_rate,
            "slow_call_rate": self.slow_call_rate,
            "buffered_calls": self.buffered_calls,
            "not_permitted": self.not_permitted,
        }
