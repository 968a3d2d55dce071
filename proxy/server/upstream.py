"""Upstream HTTP/1.1 connections and their per-endpoint keep-alive pools: the facade over the
compiled build or its twin.

``proxy/server/_upstream_py.py`` is the readable source (one source compiled twice, as the
HTTP/1.1 parser): :class:`UpstreamConnection` (one request at a time, the response head parsed
strictly, the body streamed through a ``BodyChannel``), :class:`EndpointPool` (LIFO idle
connections per endpoint, DestinationRule ``connectionPool`` thresholds), the
:class:`UpstreamReset` / :class:`UpstreamProtocolError` failures and :func:`set_keepalive`.
"""

from __future__ import annotations

from proxy import _accel

_impl = _accel.load("proxy.server", "upstream")

UpstreamReset = _impl.UpstreamReset
UpstreamProtocolError = _impl.UpstreamProtocolError
UpstreamConnection = _impl.UpstreamConnection
EndpointPool = _impl.EndpointPool
set_keepalive = _impl.set_keepalive
encode_chunk = _impl.encode_chunk
encode_last_chunk = _impl.encode_last_chunk

__all__ = [
    "EndpointPool",
    "UpstreamConnection",
    "UpstreamProtocolError",
    "UpstreamReset",
    "set_keepalive",
]
