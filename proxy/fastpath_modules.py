"""Imports every accelerated facade so that ``_accel.IMPLEMENTATION`` is complete."""

from __future__ import annotations

import importlib

FACADES = (
    "proxy.http1.parser",
    "proxy.routes.match",
    "proxy.http2.hpack",
    "proxy.http2.frames",
    "proxy.http2.validate",
)


def load_all() -> None:
    for name in FACADES:
        try:
            importlib.import_module(name)
        except ImportError:  # a facade not written yet
            pass
