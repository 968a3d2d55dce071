"""DestinationRule ``connectionPool`` thresholds, enforced as Envoy's circuit breakers.

The endpoint pools (``upstream.py``, ``h2/client.py``) hold the counters and compare them with
limits compiled at config time (one integer compare per request); this module holds what they
share: the overflow exception the forwarder turns into ``503 UO`` with
``x-envoy-overloaded: true``, and the per-cluster gate of concurrent retries (``maxRetries``).

Kinds of overflow, as Envoy's counters: ``connections`` (``tcp.maxConnections``: no new
connection, so the request waits as pending), ``pending`` (``http.http1MaxPendingRequests``:
too many requests already waiting for a connection), ``requests``
(``http.http2MaxRequests``: too many requests in flight), ``retries`` (``http.maxRetries``).
"""

from __future__ import annotations


class PoolOverflow(Exception):
    """A connectionPool threshold refused the request (answered 503 UO, never retried)."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"upstream connection pool overflow ({kind})")
        self.kind = kind


class PendingTimeout(TimeoutError):
    """The request's time ran out while it waited for a connection (504 UT, as Envoy)."""


class RetryGate:
    """Concurrent retries of one cluster (``http.maxRetries``).

    A request holds at most one slot, from its first granted retry to its end: a later retry
    of the same request replaces the finished one (Envoy counts retries outstanding)."""

    __slots__ = ("service", "limit", "active", "overflows")

    def __init__(self, service: str, limit: int = 2**32 - 1) -> None:
        self.service = service
        self.limit = limit
        self.active = 0
        self.overflows = 0

    def take(self) -> bool:
        """A slot for a request that holds none yet; False (counted) when all are in use."""
        if self.active >= self.limit:
            self.overflows += 1
            return False
        self.active += 1
        return True

    def release(self) -> None:
        self.active -= 1

    def status(self) -> dict[str, int]:
        return {
            "max_retries": self.limit,
            "retries_active": self.active,
            "retry_overflows": self.overflows,
        }
