"""The outbound stack (a request from the local app, routed into the mesh): the facade over the
compiled build or its twin.

``proxy/outbound/_stack_py.py`` is the readable source (one source compiled twice, as the
HTTP/1.1 parser): it reads the route table once before any await, so a config swap never
changes a request in flight, and turns every failure into a local reply with a response flag.
"""

from __future__ import annotations

from proxy import _accel

_impl = _accel.load("proxy.outbound", "stack")

OutboundStack = _impl.OutboundStack

__all__ = ["OutboundStack"]
