"""One proxied TCP connection's record: bytes each way, timing, outcome; feeds metrics and the
access log. Counters are plain attributes bumped as data flows (Istio reports TCP bytes while a
connection lives, not only at its close)."""

from __future__ import annotations

import time
from typing import Any


class TcpRecord:
    __slots__ = ("reporter", "start", "received", "sent", "series", "peer", "cluster",
                 "upstream", "downstream", "flags", "reason", "done", "on_close", "service",
                 "security")  # fmt: skip

    def __init__(self, reporter: str, series: list[int] | None, on_close: Any) -> None:
        self.reporter = reporter  # "source" (outbound) | "destination" (inbound)
        self.start = time.monotonic()
        self.received = 0  # bytes from the client side (the request direction)
        self.sent = 0  # bytes to the client side (the response direction)
        self.series = series  # [received, sent, opened, closed] of this connection's labels
        self.peer = ""  # the other side's SPIFFE ID when mTLS
        self.cluster = ""
        self.upstream = ""
        self.downstream = ""
        self.service = ""
        self.security = "none"
        self.flags = ""
        self.reason = ""
        self.done = False
        self.on_close = on_close
        if series is not None:
            series[2] += 1

    def bind(self, series: list[int] | None) -> None:
        """Count the connection in ``series`` from now on: for a record made before its
        endpoint was settled (an HBONE connection that failed over to another endpoint)."""
        self.series = series
        if series is not None:
            series[2] += 1

    def rx(self, n: int) -> None:
        self.received += n
        s = self.series
        if s is not None:
            s[0] += n

    def tx(self, n: int) -> None:
        self.sent += n
        s = self.series
        if s is not None:
            s[1] += n

    def close(self, reason: str, flags: str = "") -> None:
        if self.done:
            return
        self.done = True
        self.reason = reason
        if flags:
            self.flags = flags
        if self.series is not None:
            self.series[3] += 1
        if self.on_close is not None:
            self.on_close(self)
