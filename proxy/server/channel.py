"""A one-producer, one-consumer byte channel with backpressure, for streaming bodies: the facade
over the compiled build or its twin.

``proxy/server/_channel_py.py`` is the readable source (one source compiled twice, as the
HTTP/1.1 parser): when more than ``high`` bytes wait unread the producer's transport is paused,
and resumed once the consumer drains below ``low``, so a slow reader slows the sender instead of
growing memory.
"""

from __future__ import annotations

from proxy import _accel

_impl = _accel.load("proxy.server", "channel")

ChannelClosed = _impl.ChannelClosed
MalformedBody = _impl.MalformedBody
BodyChannel = _impl.BodyChannel

__all__ = ["BodyChannel", "ChannelClosed", "MalformedBody"]
