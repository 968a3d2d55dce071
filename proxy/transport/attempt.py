"""One try (send the request on a connection, judge the response head, stream the answer):
the facade over the compiled build or its twin.

``proxy/transport/_attempt_py.py`` is the readable source (one source compiled twice, as the
HTTP/1.1 parser). Every decision about the response is the attempt machine's or the fallback
policy's; this module does the I/O around them (``grpc-status`` is judged there too).
"""

from __future__ import annotations

from proxy import _accel

_impl = _accel.load("proxy.transport", "attempt")

R_TIMEOUT = _impl.R_TIMEOUT
R_LOST = _impl.R_LOST
R_MALFORMED = _impl.R_MALFORMED
R_UPE = _impl.R_UPE
R_RESET = _impl.R_RESET
R_RESET_BYTES = _impl.R_RESET_BYTES
R_RETRY = _impl.R_RETRY
attempt = _impl.attempt
judge = _impl.judge
respond = _impl.respond
stream = _impl.stream

__all__ = [
    "R_LOST",
    "R_MALFORMED",
    "R_RESET",
    "R_RESET_BYTES",
    "R_RETRY",
    "R_TIMEOUT",
    "R_UPE",
    "attempt",
    "judge",
    "respond",
    "stream",
]
