"""Facade of the route matcher: the compiled module when built, else the pure-Python twin."""

from __future__ import annotations

from proxy import _accel

_impl = _accel.load("proxy.routes", "match")

find = _impl.find
pick_destination = _impl.pick_destination
rewrite_path = _impl.rewrite_path
IMPLEMENTATION = _accel.IMPLEMENTATION["proxy.routes.match"]
