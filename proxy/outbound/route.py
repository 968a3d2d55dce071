"""Route choice (which route, destination and compiled policy a request gets, or which local
answer): the facade over the compiled build or its twin.

``proxy/outbound/_route_py.py`` is the readable source (one source compiled twice, as the
HTTP/1.1 parser). Pure: the table, the compiled plans and a random draw decide.
"""

from __future__ import annotations

from proxy import _accel

_impl = _accel.load("proxy.outbound", "route")

FORWARD = _impl.FORWARD
NO_ROUTE = _impl.NO_ROUTE
DIRECT = _impl.DIRECT
NO_CLUSTER = _impl.NO_CLUSTER
PASSTHROUGH = _impl.PASSTHROUGH
choose = _impl.choose
rewrite = _impl.rewrite

__all__ = ["DIRECT", "FORWARD", "NO_CLUSTER", "NO_ROUTE", "PASSTHROUGH", "choose", "rewrite"]
