"""A request's tries (until one answers or the attempt machine gives up): the facade over the
compiled build or its twin.

``proxy/transport/_tries_py.py`` is the readable source (one source compiled twice, as the
HTTP/1.1 parser): :func:`forward` executes the machine's actions, :func:`attempts_for` makes the
machine from the route's compiled policy and the caller's headers (its deadline from
``grpc-timeout`` or Envoy's expected-timeout header, and the retry overrides).
"""

from __future__ import annotations

from proxy import _accel

_impl = _accel.load("proxy.transport", "tries")

forward = _impl.forward
attempts_for = _impl.attempts_for
request_framing = _impl.request_framing
connect = _impl.connect
settle = _impl.settle

__all__ = ["attempts_for", "connect", "forward", "request_framing", "settle"]
