"""Linkerd-style retry budget: retries may add at most `ratio` of the original traffic, plus
`min_per_second` free retries for quiet clients, measured over a sliding `ttl` window.

Algorithm (tower `TpsBudget`, research 4.1): every original request deposits `D` units, every
retry or hedge withdraws `W` units where `W / D = 1 / ratio`; a withdrawal succeeds while
`sum(window) + reserve >= W`, with `reserve = min_per_second * ttl * W`. Deposits and
withdrawals both expire after `ttl`, so at every granted retry, over the `ttl` window ending
there::

    retries <= ratio * requests + min_per_second * ttl

(Deposits that paid for a retry may expire before it does; the window is then in deficit and
grants nothing until new requests pay it back, as tower's budget.)

The window is 10 buckets of `ttl / 10`, kept with a running sum, so `deposit` and
`try_withdraw` are O(1) (a bucket rotation touches at most 10 slots).

Differences from tower/Linkerd:

* tower scales by `int(1 / ratio)` (ratio 0.3 behaves as 0.333); meshlet uses 1000 units per
  deposit and `round(1000 / ratio)` per withdrawal, so the ratio is honoured to 0.1 %.
* Linkerd deposits when a response is *not* retried; meshlet deposits once per original
  request (the caller's choice of moment), which is the same count without needing to know the
  outcome first.
* The budget is one per destination service per sidecar (Linkerd: per route/profile), and it is
  on by default (contract), shared by retries and hedges.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from ._duration import parse_optional_duration

_SLOTS = 10
_UNIT = 1000


class RetryBudget:
    """A sliding-window retry budget (per destination, per sidecar)."""

    __slots__ = (
        "_clock", "_deposit", "_withdraw", "_reserve", "_width", "_slots", "_sum", "_gen",
        "ratio", "min_per_second", "ttl", "skipped", "withdrawn",
    )

    def __init__(
        self,
        ratio: float = 0.2,
        min_per_second: float = 10,
        ttl: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ratio < 0 or min_per_second < 0:
            raise ValueError("retry budget: ratio and min_per_second must not be negative")
        if not 1.0 <= ttl <= 60.0:
            raise ValueError("retry budget: ttl must be between 1s and 60s")
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.ttl = ttl
        self._clock = clock
        if ratio == 0:
            self._deposit, self._withdraw = 0, 1
        else:
            self._deposit, self._withdraw = _UNIT, max(1, round(_UNIT / ratio))
        self._reserve = int(min_per_second * ttl * self._withdraw)
        self._width = ttl / _SLOTS
        self._slots = [0] * _SLOTS
        self._sum = 0
        self._gen = int(clock() / self._width)
        self.skipped = 0  # retries refused for lack of budget
        self.withdrawn = 0  # retries granted

    @classmethod
    def from_spec(
        cls, spec: Mapping[str, Any] | None, clock: Callable[[], float] = time.monotonic
    ) -> RetryBudget:
        """From a ResiliencePolicy `retryBudget` ({retryRatio, minRetriesPerSecond, ttl});
        None or {} gives the defaults (the budget is on for every host)."""
        spec = spec or {}
        ttl = parse_optional_duration(spec.get("ttl"), 10.0, "retryBudget.ttl")
        return cls(
            ratio=float(spec.get("retryRatio", 0.2)),
            min_per_second=float(spec.get("minRetriesPerSecond", 10)),
            ttl=ttl if ttl is not None else 10.0,
            clock=clock,
        )

    def _rotate(self, gen: int) -> None:
        """Expire the buckets that fell out of the window on reaching bucket `gen`."""
        old = self._gen
        slots = self._slots
        if gen - old >= _SLOTS or gen < old:
            slots[:] = [0] * _SLOTS
            self._sum = 0
        else:
            for g in range(old + 1, gen + 1):
                i = g % _SLOTS
                self._sum -= slots[i]
                slots[i] = 0
        self._gen = gen

    def deposit(self) -> None:
        """Count one original request."""
        gen = int(self._clock() / self._width)
        if gen != self._gen:
            self._rotate(gen)
        self._slots[gen % _SLOTS] += self._deposit
        self._sum += self._deposit

    def try_withdraw(self) -> bool:
        """Take budget for one retry or hedge; False (and `skipped` += 1) when exhausted."""
        gen = int(self._clock() / self._width)
        if gen != self._gen:
            self._rotate(gen)
        w = self._withdraw
        if self._sum + self._reserve >= w:
            self._slots[gen % _SLOTS] -= w
            self._sum -= w
            self.withdrawn += 1
            return True
        self.skipped += 1
        return False

    @property
    def available(self) -> int:
        """Whole retries the budget would grant right now (for /clusters and metrics)."""
        gen = int(self._clock() / self._width)
        if gen != self._gen:
            self._rotate(gen)
        return max(0, (self._sum + self._reserve) // self._withdraw)
