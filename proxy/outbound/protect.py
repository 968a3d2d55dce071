"""The destination's local protections around the tries (rate limiter, circuit breaker,
bulkhead, retry budget deposit, outcome to the breaker and the hedging latency tracker): the
facade over the compiled build or its twin.

``proxy/outbound/_protect_py.py`` is the readable source (one source compiled twice, as the
HTTP/1.1 parser).
"""

from __future__ import annotations

from proxy import _accel

_impl = _accel.load("proxy.outbound", "protect")

protected = _impl.protected

__all__ = ["protected"]
