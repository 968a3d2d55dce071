"""The attempt machine (every decision about one request's tries, with no I/O): the facade over
the compiled build or its twin.

``proxy/resilience/_attempts_py.py`` is the readable source, with the table of events in and
actions out and the retry semantics (one source compiled twice, as the HTTP/1.1 parser).
"""

from __future__ import annotations

from proxy import _accel

_impl = _accel.load("proxy.resilience", "attempts")

TRY = _impl.TRY
BACKOFF = _impl.BACKOFF
RETRY_NOW = _impl.RETRY_NOW
GIVE_UP = _impl.GIVE_UP
STREAM = _impl.STREAM
Attempts = _impl.Attempts
Env = _impl.Env

__all__ = ["BACKOFF", "GIVE_UP", "RETRY_NOW", "STREAM", "TRY", "Attempts", "Env"]
