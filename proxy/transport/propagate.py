"""Header lines every hop adds, on both sides (the trace context and the request id): the
facade over the compiled build or its twin.

``proxy/transport/_propagate_py.py`` is the readable source (one source compiled twice, as the
HTTP/1.1 parser).
"""

from __future__ import annotations

from proxy import _accel

_impl = _accel.load("proxy.transport", "propagate")

trace = _impl.trace
hop_headers = _impl.hop_headers

__all__ = ["hop_headers", "trace"]
