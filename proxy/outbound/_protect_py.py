# cython: annotation_typing=False
"""The destination's local protections around the tries: rate limiter, circuit breaker and
bulkhead admit the request (or answer 429 RL / 503 UO), the retry budget earns a deposit, and
the outcome feeds the breaker and the hedging latency tracker.

This file is compiled a second time by Cython as ``_protect_c`` (``_protect_c.py`` is a
symlink to it; ``_protect_c.pxd`` adds the C types); ``proxy/outbound/protect.py`` picks the build.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from proxy.transport.exchange import Exchange
from proxy.transport.replies import local
from proxy.transport.tries import forward

_monotonic = time.monotonic


async def protected(ex: Exchange) -> None:
    """Forward ``ex`` under its destination's protections (none: straight to the tries)."""
    dest = ex.policy.dest
    if dest is None:
        await forward(ex)
        return
    rt = ex.side.rt
    ex.fallback = dest.fallback
    if dest.limiter is not None:
        wait = dest.limiter.acquire()
        if wait < 0:
            rt.count_protection(dest, "rate_limited")
            return local(ex, 429, "RL")
        if wait > 0:
            await asyncio.sleep(wait)
    breaker = dest.breaker
    if breaker is not None and not breaker.try_acquire():
        rt.count_protection(dest, "breaker_open")
        return local(ex, 503, "UO")
    bulkhead = dest.bulkhead
    if bulkhead is not None and not bulkhead.try_acquire() and not await _wait_bulkhead(bulkhead):
        if breaker is not None:
            breaker.release()
        rt.count_protection(dest, "bulkhead_full")
        return local(ex, 503, "UO")
    dest.budget.deposit()
    ok = False
    try:
        await forward(ex)
        ok = 0 < ex.status < 500 and ex.flags in ("-", "DC")
    finally:
        if bulkhead is not None:
            bulkhead.release()
        if breaker is not None:
            if ex.flags == "DC":
                breaker.release()  # the caller went away: neither a success nor a failure
            else:
                breaker.on_result(_monotonic() - ex.start, not ok)
        if dest.tracker is not None and ok:
            dest.tracker.observe(_monotonic() - ex.start)


async def _wait_bulkhead(bulkhead: Any) -> bool:
    """Queue for a bulkhead permit up to its maxWaitDuration; True once granted."""
    if bulkhead.max_wait <= 0:
        return False
    fut = asyncio.get_running_loop().create_future()
    waiter = _FutureWaiter(fut)
    if not bulkhead.enqueue(waiter):
        return False
    try:
        async with asyncio.timeout(bulkhead.max_wait):
            await fut
        return True
    except (TimeoutError, asyncio.CancelledError):
        if not bulkhead.cancel(waiter, timed_out=True):
            bulkhead.release()  # granted just as we gave up: hand it back
        return False


class _FutureWaiter:
    __slots__ = ("fut",)

    def __init__(self, fut: asyncio.Future[None]) -> None:
        self.fut = fut

    def wake(self) -> None:
        if not self.fut.done():
            self.fut.set_result(None)
