"""Building the heads the proxy sends (hop-by-hop removal, Envoy's request and response
headers): the facade over the compiled build or its twin.

``proxy/server/_headers_py.py`` is the readable source (one source compiled twice, as the
HTTP/1.1 parser): :func:`request_head`, :func:`response_head`, :func:`apply_ops`, and the header
sets :data:`HOP_BY_HOP`, :data:`PROTECTED` (never removable through a Connection token) and
:data:`SPOOFABLE_INBOUND` (set by the sidecar only).
"""

from __future__ import annotations

from proxy import _accel

_impl = _accel.load("proxy.server", "headers")

HOP_BY_HOP = _impl.HOP_BY_HOP
PROTECTED = _impl.PROTECTED
SPOOFABLE_INBOUND = _impl.SPOOFABLE_INBOUND
request_head = _impl.request_head
response_head = _impl.response_head
apply_ops = _impl.apply_ops

__all__ = [
    "HOP_BY_HOP",
    "PROTECTED",
    "SPOOFABLE_INBOUND",
    "apply_ops",
    "request_head",
    "response_head",
]
