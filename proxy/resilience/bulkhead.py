"""Bulkhead: at most N concurrent calls to a destination, with an optional FIFO wait queue.

Resilience4j's SemaphoreBulkhead (research 5.3) with fair (FIFO) hand-off, mapped onto Envoy's
`max_requests` (concurrency) and `max_pending_requests` (queue length). Envoy bounds a queued
request's wait only by the route timeout; meshlet adds R4j's `maxWaitDuration`.

Sans-I/O split: this class only counts and orders. The I/O layer drives waiting::

    if bulkhead.try_acquire():            # permit granted now
        ...
    elif bulkhead.max_wait > 0 and bulkhead.enqueue(waiter):
        # arm a timer for bulkhead.max_wait; on expiry: if bulkhead.cancel(waiter): 503 UO
        # waiter.wake() is called when a release() hands it the permit
    else:
        ...                               # 503 UO + x-envoy-overloaded (rejected counted)
    ...
    bulkhead.release()                    # exactly once per granted permit

`wake()` is called synchronously inside `release()` with the permit already transferred
(`active` unchanged), so an I/O waiter should only resolve a future there. A newcomer never
overtakes a queued waiter. `cancel()` returns False when the waiter was already woken: it then
owns a permit and must `release()` it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Protocol

from ._duration import parse_optional_duration


class Waiter(Protocol):
    def wake(self) -> None: ...


class Bulkhead:
    """A concurrency limit with a FIFO waiter queue. Not thread-safe: one event loop owns it."""

    __slots__ = ("max_concurrent_calls", "max_wait", "max_waiting", "active", "rejected",
                 "_waiters")

    def __init__(
        self, max_concurrent_calls: int = 25, max_wait: float = 0.0,
        max_waiting: int | None = None,
    ) -> None:
        if max_concurrent_calls < 0 or max_wait < 0:
            raise ValueError("bulkhead: limits must not be negative")
        self.max_concurrent_calls = max_concurrent_calls
        self.max_wait = max_wait
        self.max_waiting = max_waiting  # None: unbounded queue (bounded in time by max_wait)
        self.active = 0
        self.rejected = 0
        self._waiters: OrderedDict[Waiter, None] = OrderedDict()

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None) -> Bulkhead:
        """From a ResiliencePolicy `bulkhead` block ({maxConcurrentCalls, maxWaitDuration})."""
        spec = spec or {}
        wait = parse_optional_duration(spec.get("maxWaitDuration"), 0.0, "bulkhead.maxWaitDuration")
        return cls(int(spec.get("maxConcurrentCalls", 25)), wait or 0.0)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_acquire(self) -> bool:
        """Take a permit if one is free and nobody is queued ahead.

        A refusal counts as `rejected` only when the bulkhead does not queue (`max_wait` 0);
        otherwise the caller is expected to `enqueue` and the outcome is counted there.
        """
        if self.active < self.max_concurrent_calls and not self._waiters:
            self.active += 1
            return True
        if self.max_wait <= 0:
            self.rejected += 1
        return False

    def enqueue(self, waiter: Waiter) -> bool:
        """Queue a caller for the next free permit; False (rejected) if the queue is full.

        If a permit is free and nobody is queued (the caller skipped `try_acquire`, or one was
        released in between), the waiter is granted it at once: `wake()` runs before this
        returns True.
        """
        if self.max_wait <= 0 or (
            self.max_waiting is not None and len(self._waiters) >= self.max_waiting
        ):
            self.rejected += 1
            return False
        if self.active < self.max_concurrent_calls and not self._waiters:
            self.active += 1
            waiter.wake()
            return True
        self._waiters[waiter] = None
        return True

    def cancel(self, waiter: Waiter, timed_out: bool = True) -> bool:
        """Withdraw a queued waiter (wait timed out, or the downstream went away).

        True if it was still queued (counted as `rejected` when `timed_out`); False if it had
        already been handed a permit, which the caller must then `release()`.
        """
        if self._waiters.pop(waiter, _MISSING) is _MISSING:
            return False
        if timed_out:
            self.rejected += 1
        return True

    def release(self) -> None:
        """Return a permit: hand it to the oldest waiter, or free it."""
        waiters = self._waiters
        if waiters and self.active <= self.max_concurrent_calls:
            waiter, _ = waiters.popitem(last=False)
            waiter.wake()
            return
        if self.active > 0:
            self.active -= 1

    def set_limit(self, max_concurrent_calls: int, max_wait: float | None = None) -> None:
        """Apply a new config in place (in-flight calls keep their permits)."""
        self.max_concurrent_calls = max_concurrent_calls
        if max_wait is not None:
            self.max_wait = max_wait
        waiters = self._waiters
        while waiters and self.active < max_concurrent_calls:
            self.active += 1
            waiter, _ = waiters.popitem(last=False)
            waiter.wake()


_MISSING = object()
