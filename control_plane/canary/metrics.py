"""Where the canary controller reads what each version of a service served.

A :class:`MetricsSource` answers one question: the running totals (requests, failures, latency
histogram in the buckets of ``istio_request_duration_milliseconds``) one version of one service
has served since the source started. The controller subtracts two readings to get an interval,
so a source never needs to know the controller's interval (the control plane's stats windows
have 10 s slots; a canary interval may be 2 s).

Two sources:

- :class:`StatsStoreSource`: in process, from the control plane's mesh telemetry (the sidecar
  reports on the config stream, ``control_plane.stats.StatsStore``). The preferred one.
- :class:`AdminScrapeSource`: the sidecars' own Prometheus ``/metrics`` on their admin ports
  (the addresses they registered), for a control plane without mesh telemetry.

Both count a request once: the calling sidecar's view (``reporter=source``) of every edge, plus
the receiving sidecar's view of calls that came without mTLS (no calling sidecar reported them),
as the mesh telemetry reports do. A failure is a 5xx or a local reply without a response.
"""

from __future__ import annotations

import asyncio
import logging
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

    def __init__(self, stats: Any) -> None:
        self.stats = stats  # control_plane.stats.StatsStore
        self._seen: dict[tuple[tuple[str, ...], int], list] = {}
        self._totals: dict[tuple[str, str], list[float]] = {}

    async def refresh(self) -> None:
        seen: dict[tuple[tuple[str, ...], int], list] = {}
        for key, ring in list(self.stats.edges.items()):
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


class AdminScrapeSource:
    """The sidecars' own ``/metrics`` (admin port), scraped on :meth:`refresh`."""

    def __init__(self, registry: Any, timeout_s: float = 1.0) -> None:
        self.registry = registry  # control_plane.registry.Registry
        self.timeout_s = timeout_s
        # per sidecar: (destination service, version) -> [requests, failures, buckets...]
        self._by_node: dict[str, dict[tuple[str, str], list[float]]] = {}

    async def refresh(self) -> None:
        import aiohttp

        regs = [r for r in self.registry.all() if r.admin_address and r.connected]
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async def one(reg: Any) -> None:
                try:
                    async with session.get(f"http://{reg.admin_address}/metrics") as resp:
                        if resp.status == 200:
                            self._by_node[reg.node_id] = parse_istio(await resp.text())
                except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                    log.debug("canary metrics: %s unreachable: %s", reg.node_id, e)

            await asyncio.gather(*(one(r) for r in regs))

    def totals(self, host: str, version: str) -> Totals:
        acc = [0.0] * (2 + NB)
        for per in self._by_node.values():
            row = per.get((host, version))
            if row is not None:
                acc = [a + b for a, b in zip(acc, row, strict=True)]
        return Totals(acc[0], acc[1], tuple(acc[2:]))


def _counted(labels: dict[str, str]) -> bool:
    reporter = labels.get("reporter")
    return reporter == "source" or (
        reporter == "destination" and labels.get("connection_security_policy") != "mutual_tls")


def _failure(code: str) -> bool:
    return not code.isdigit() or int(code) >= 500 or int(code) == 0


def parse_istio(text: str) -> dict[tuple[str, str], list[float]]:
    """``istio_requests_total`` and the duration histogram of one sidecar, summed per
    (destination service, destination version)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, str], list[float]] = {}
    index = {float(b): i for i, b in enumerate(BOUNDS)}
    cumulative: dict[tuple, list[float]] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name not in ("istio_requests", "istio_request_duration_milliseconds"):
            continue
        for sample in fam.samples:
            lab = sample.labels
            if not _counted(lab):
                continue
            key = (lab.get("destination_service", ""), lab.get("destination_version", "unknown"))
            row = out.setdefault(key, [0.0] * (2 + NB))
            if sample.name == "istio_requests_total":
                row[0] += sample.value
                if _failure(lab.get("response_code", "")):
                    row[1] += sample.value
            elif sample.name == "istio_request_duration_milliseconds_bucket":
                le = lab.get("le", "")
                series = tuple(sorted((k, v) for k, v in lab.items() if k != "le"))
                cum = cumulative.setdefault((key, series), [0.0] * NB)
                pos = len(BOUNDS) if le == "+Inf" else index.get(float(le))
                if pos is not None:
                    cum[pos] = sample.value
    for ((key, _series), cum) in cumulative.items():
        row = out[key]
        prev = 0.0
        for i, c in enumerate(cum):
            row[2 + i] += max(0.0, c - prev)
            prev = max(prev, c)
    return out
