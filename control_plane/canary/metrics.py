"""Where the canary controller reads what each version of a service served.

A :class:`MetricsSource` answers one question: the running totals (requests, failures, latency
histogram in the buckets of ``istio_request_duration_milliseconds``) one version of one service
has served since the source started. The controller subtracts two readings to get an interval,
so a source never needs to know the controller's interval (the control plane's stats windows
have 10 s slots; a canary interval may be 2 s).

The source is the control plane's mesh telemetry, read in process
(:class:`StatsStoreSource` over ``control_plane.stats.StatsStore``: the sidecars' reports on the
config stream, merged with the other replicas' windows). The reports count a request once (the
calling sidecar's view, or the receiving one's for a caller without a sidecar); a failure is a
5xx, a local reply without a response, or a gRPC status other than OK.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from control_plane.canary.machine import Window
from proxy.telemetry.metrics import ENVOY_BUCKETS_MS

log = logging.getLogger(__name__)

BOUNDS: tuple[float, ...] = ENVOY_BUCKETS_MS
NB = len(BOUNDS) + 1


@dataclass(frozen=True)
class Totals:
    """Running totals of one version; ``buckets`` are per-bucket counts (not cumulative)."""

    requests: float = 0
    failures: float = 0
    buckets: tuple[float, ...] = (0,) * NB

    def minus(self, earlier: Totals) -> Window:
        """The interval between ``earlier`` and this reading. A total that went down (a
        sidecar restarted, a source was rebuilt) restarts from zero rather than going negative."""
        if self.requests < earlier.requests or self.failures < earlier.failures:
            earlier = Totals()
        buckets = [max(0.0, a - b) for a, b in zip(self.buckets, earlier.buckets, strict=True)]
        return Window(requests=int(self.requests - earlier.requests),
                      failures=int(self.failures - earlier.failures),
                      p99_ms=histogram_quantile(0.99, buckets))


class MetricsSource(Protocol):
    async def refresh(self) -> None:
        """Bring the readings up to date (a scrape; nothing for an in-process source)."""

    def totals(self, host: str, version: str) -> Totals:
        """Running totals of ``version`` of ``host`` (a fully qualified service name)."""


def histogram_quantile(q: float, buckets: list[float]) -> float | None:
    """Prometheus' ``histogram_quantile`` on per-bucket counts: linear inside the bucket that
    holds the rank, 0 as the first bucket's lower bound, the highest finite bound for a rank in
    +Inf. None for an empty histogram."""
    total = sum(buckets)
    if total <= 0:
        return None
    rank = q * total
    cum = 0.0
    for i, count in enumerate(buckets):
        if count > 0 and cum + count >= rank:
            if i >= len(BOUNDS):
                return float(BOUNDS[-1])
            start = 0.0 if i == 0 else float(BOUNDS[i - 1])
            return start + (float(BOUNDS[i]) - start) * (rank - cum) / count
        cum += count
    return float(BOUNDS[-1])


class StatsStoreSource:
    """The control plane's mesh telemetry, read in process.

    A StatsStore keeps rings of wall-clock slots, and a slot keeps growing while it is current,
    so a running total is built here by adding, slot by slot, what each slot gained since it was
    last read. Nothing is lost when a slot leaves the ring, and the interval can be shorter than
    a slot."""

    # StatsStore aggregate layout: [requests, failures, mtls, sum ms, req bytes, resp bytes, b..]
    _REQ, _FAIL, _B0 = 0, 1, 6

    def __init__(self, fetch: Callable[[], Awaitable[Any]]) -> None:
        # returns the StatsStore to read: this replica's, merged with its peers' windows
        self.fetch = fetch
        self._seen: dict[tuple[tuple[str, ...], int], list] = {}
        self._totals: dict[tuple[str, str], list[float]] = {}

    async def refresh(self) -> None:
        stats = await self.fetch()
        seen: dict[tuple[tuple[str, ...], int], list] = {}
        for key, ring in list(stats.edges.items()):
            # edge key: (reporter, src ns, src, src version, destination, destination version)
            acc = self._totals.setdefault((key[4], key[5]), [0.0] * (2 + NB))
            for slot, agg in ring.slots():
                before = self._seen.get((key, slot))
                seen[(key, slot)] = list(agg)
                acc[0] += agg[self._REQ] - (before[self._REQ] if before else 0)
                acc[1] += agg[self._FAIL] - (before[self._FAIL] if before else 0)
                for i in range(NB):
                    acc[2 + i] += agg[self._B0 + i] - (before[self._B0 + i] if before else 0)
        self._seen = seen  # slots no longer in a ring are forgotten: bounded memory

    def totals(self, host: str, version: str) -> Totals:
        acc = self._totals.get((host, version))
        if acc is None:
            return Totals()
        return Totals(acc[0], acc[1], tuple(acc[2:]))
