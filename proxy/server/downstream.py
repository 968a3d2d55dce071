"""The downstream side of a listener (one protocol object per client connection): the facade
over the compiled build or its twin.

``proxy/server/_downstream_py.py`` is the readable source (one source compiled twice, as the
HTTP/1.1 parser): :class:`Downstream` parses request heads strictly, runs one request task at a
time (pipelined requests wait, so responses go out in order), answers a malformed head and
closes, and is the sink the forwarding layer writes the response to.
"""

from __future__ import annotations

from proxy import _accel

_impl = _accel.load("proxy.server", "downstream")

Downstream = _impl.Downstream
H2_PREFACE = _impl.H2_PREFACE

__all__ = ["H2_PREFACE", "Downstream"]
