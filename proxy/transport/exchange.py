"""One request in flight (:class:`Exchange`) and the direction it travels (:class:`Side`): the
facade over the compiled build or its twin.

``proxy/transport/_exchange_py.py`` is the readable source (one source compiled twice, as the
HTTP/1.1 parser): the exchange carries everything the forwarding layer needs so its functions
take one object instead of a dozen parameters, and is the record metrics and the access log read.
"""

from __future__ import annotations

from proxy import _accel

_impl = _accel.load("proxy.transport", "exchange")

WANTED = _impl.WANTED
Side = _impl.Side
RuntimeEnv = _impl.RuntimeEnv
Exchange = _impl.Exchange
scan = _impl.scan
host_port = _impl.host_port

__all__ = ["WANTED", "Exchange", "RuntimeEnv", "Side", "host_port", "scan"]
