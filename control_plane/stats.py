"""Mesh golden metrics at the control plane: windows of edge and route aggregates (sans-I/O).

Sidecars report, every few seconds, what their request counters gained since the last report
(``proxy/telemetry/report.py``): per edge (source workload -> destination service and version)
and per route, requests, failures, the latency histogram in the bucket bounds of
``istio_request_duration_milliseconds``, bytes, how many requests were mTLS, and opaque TCP
bytes and connections. This module keeps them in fixed rings of ``width``-second slots
(60 x 10 s: a 10 min window, the last 6 slots a 1 min one), so memory per edge is bounded
whatever the traffic, and the number of edges is capped (the least recently reported edge is
evicted first).

Percentiles are merged the only correct way: bucket counts are added (across slots, sidecars and
control plane replicas) and the quantile is interpolated from the merged buckets exactly as
Prometheus' ``histogram_quantile`` does, never by averaging per-sidecar percentiles.

Slots are indexed by wall-clock time (``int(t // width)``), so the rings of two replicas line up
and :meth:`StatsStore.merge` of their :meth:`StatsStore.export` is a slot-wise sum.

Imports nothing from asyncio/socket/ssl; the clock is injected.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from proxy.telemetry.metrics import ENVOY_BUCKETS_MS

#: Latency bucket upper bounds (ms), those of ``istio_request_duration_milliseconds``; the last
#: bucket (+Inf) is implicit.
BOUNDS: tuple[float, ...] = ENVOY_BUCKETS_MS
NB = len(BOUNDS) + 1

#: The windows the API serves, in seconds.
WINDOWS: dict[str, int] = {"1m": 60, "10m": 600}
DEFAULT_WIDTH_S = 10
DEFAULT_SLOTS = 60
DEFAULT_MAX_EDGES = 5000
DEFAULT_MAX_ROUTES = 5000

# Layout of one aggregate (a plain list, cheap to add and to serialize):
# [requests, failures, mtls requests, latency sum ms, request bytes, response bytes, b0..b19,
#  tcp sent bytes, tcp received bytes, tcp connections opened]
REQ, FAIL, MTLS, SUM_MS, REQ_BYTES, RESP_BYTES = range(6)
B0 = 6
TCP_SENT, TCP_RECV, TCP_CONNS = B0 + NB, B0 + NB + 1, B0 + NB + 2
AGG_LEN = B0 + NB + 3


def new_agg() -> list:
    return [0] * AGG_LEN


def add_into(acc: list, other: Iterable[float]) -> None:
    for i, v in enumerate(other):
        acc[i] += v


def agg_from_report(item: dict) -> list:
    """One report entry as an aggregate; raises ValueError on a malformed one (never trusted)."""
    buckets = item.get("buckets") or []
    if not isinstance(buckets, list) or len(buckets) > NB:
        raise ValueError(f"buckets: expected at most {NB} counts")
    agg = new_agg()
    for i, name in ((REQ, "requests"), (FAIL, "failures"), (MTLS, "mtls"), (SUM_MS, "sum_ms"),
                    (REQ_BYTES, "request_bytes"), (RESP_BYTES, "response_bytes"),
                    (TCP_SENT, "tcp_sent_bytes"), (TCP_RECV, "tcp_received_bytes"),
                    (TCP_CONNS, "tcp_connections")):
        v = item.get(name, 0)
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 0 or not math.isfinite(v):
            raise ValueError(f"{name}: expected a non-negative number")
        agg[i] = v
    for i, v in enumerate(buckets):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError("buckets: expected non-negative integers")
        agg[B0 + i] = v
    return agg


def histogram_quantile(q: float, buckets: list[float] | tuple[float, ...],
                       bounds: tuple[float, ...] = BOUNDS) -> float | None:
    """The q-quantile of a histogram of per-bucket (not cumulative) counts, interpolated as
    Prometheus' ``histogram_quantile``: linear within the bucket holding the rank, the lower
    bound of the first bucket taken as 0, and a rank in the +Inf bucket answered with the highest
    finite bound. None when the histogram is empty."""
    total = sum(buckets)
    if total <= 0:
        return None
    if q <= 0:
        q = 0.0
    rank = min(q, 1.0) * total
    cum = 0.0
    for i, count in enumerate(buckets):
        if cum + count >= rank and count > 0:
            if i >= len(bounds):  # the +Inf bucket
                return float(bounds[-1])
            start = 0.0 if i == 0 else float(bounds[i - 1])
            end = float(bounds[i])
            return start + (end - start) * (rank - cum) / count
        cum += count
    return float(bounds[-1])


class Ring:
    """A fixed ring of ``slots`` aggregates, one per ``width`` seconds of wall-clock time."""

    __slots__ = ("width", "starts", "data")

    def __init__(self, width: int = DEFAULT_WIDTH_S, slots: int = DEFAULT_SLOTS) -> None:
        self.width = width
        self.starts = [-1] * slots  # the slot index (t // width) each position holds
        self.data: list[list | None] = [None] * slots

    def add(self, slot: int, agg: Iterable[float]) -> None:
        pos = slot % len(self.starts)
        cur = self.data[pos]
        if self.starts[pos] != slot or cur is None:
            if self.starts[pos] > slot:
                return  # older than what the ring holds: outside every window
            cur = self.data[pos] = new_agg()
            self.starts[pos] = slot
        add_into(cur, agg)

    def total(self, now_slot: int, n_slots: int) -> list:
        """The sum of the last ``n_slots`` slots up to and including ``now_slot``."""
        lo = now_slot - n_slots
        sel = [d for start, d in zip(self.starts, self.data, strict=True)
               if d is not None and lo < start <= now_slot]
        if len(sel) <= 1:
            return list(sel[0]) if sel else new_agg()
        return [sum(col) for col in zip(*sel, strict=True)]  # column sums in C

    def slots(self) -> list[list]:
        return [[s, list(d)] for s, d in zip(self.starts, self.data, strict=True) if d is not None]

    def latest(self) -> int:
        return max(self.starts)


class StatsStore:
    """Edges and routes of the mesh, each a :class:`Ring`, with a cap on how many are kept."""

    def __init__(
        self,
        *,
        width: int = DEFAULT_WIDTH_S,
        slots: int = DEFAULT_SLOTS,
        max_edges: int = DEFAULT_MAX_EDGES,
        max_routes: int = DEFAULT_MAX_ROUTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.width = width
        self.n_slots = slots
        self.max_edges = max_edges
        self.max_routes = max_routes
        self.clock = clock
        # key -> Ring; the order is that of the last report (oldest idle first, evicted first)
        self.edges: OrderedDict[tuple[str, ...], Ring] = OrderedDict()
        self.routes: OrderedDict[tuple[str, ...], Ring] = OrderedDict()
        self.evicted = 0
        self.rejected = 0

    # -- ingest ----------------------------------------------------------------------------
    def ingest(self, report: dict, reporter_ns: str = "default") -> int:
        """Add one sidecar report (the ``stats`` message). Malformed entries are skipped and
        counted in ``rejected``; returns the number of entries taken."""
        slot = int(self.clock() // self.width)
        taken = 0
        for item in _items(report.get("edges")):
            try:
                key = edge_key(item)
                agg = agg_from_report(item)
            except (ValueError, TypeError):
                self.rejected += 1
                continue
            self._add(self.edges, self.max_edges, key, slot, agg)
            taken += 1
        for item in _items(report.get("routes")):
            try:
                key = (_s(item, "service"), _s(item, "route"))
                agg = agg_from_report(item)
            except (ValueError, TypeError):
                self.rejected += 1
                continue
            self._add(self.routes, self.max_routes, key, slot, agg)
            taken += 1
        return taken

    def _add(self, table: OrderedDict, cap: int, key: tuple, slot: int, agg: list) -> None:
        ring = table.get(key)
        if ring is None:
            while len(table) >= cap:
                table.popitem(last=False)
                self.evicted += 1
            ring = table[key] = Ring(self.width, self.n_slots)
        else:
            table.move_to_end(key)
        ring.add(slot, agg)

    # -- replicas --------------------------------------------------------------------------
    def export(self, window: str | None = None) -> dict:
        """This store's raw rings (``/v1/stats/local``): what a peer replica merges; with a
        ``window``, only the slots inside it (a 1 min view needs 6 of the 60)."""
        now = self.clock()
        lo = int(now // self.width) - self.window_slots(window) if window else -1

        def entries(table: OrderedDict) -> list[dict]:
            out = []
            for k, r in table.items():
                slots = [s for s in r.slots() if s[0] > lo]
                if slots:
                    out.append({"key": list(k), "slots": slots})
            return out

        return {"width": self.width, "slots": self.n_slots, "now": now,
                "edges": entries(self.edges), "routes": entries(self.routes)}

    def merge(self, exported: dict) -> None:
        """Add another store's :meth:`export` into this one, slot by slot (same slot width)."""
        if int(exported.get("width", self.width)) != self.width:
            raise ValueError(f"cannot merge windows of {exported.get('width')} s slots into "
                             f"{self.width} s slots")
        for name, table, cap in (("edges", self.edges, self.max_edges),
                                 ("routes", self.routes, self.max_routes)):
            for entry in _items(exported.get(name)):
                key = tuple(str(k) for k in entry.get("key") or ())
                for slot, agg in entry.get("slots") or ():
                    if len(agg) != AGG_LEN:
                        raise ValueError(f"{name}: an aggregate of {len(agg)} values, not "
                                         f"{AGG_LEN}")
                    self._add(table, cap, key, int(slot), agg)

    def copy(self) -> StatsStore:
        out = StatsStore(width=self.width, slots=self.n_slots, max_edges=self.max_edges,
                         max_routes=self.max_routes, clock=self.clock)
        out.merge(self.export())
        return out

    # -- views -----------------------------------------------------------------------------
    def window_slots(self, window: str) -> int:
        if window not in WINDOWS:
            raise ValueError(f"unknown window {window!r}: one of {', '.join(WINDOWS)}")
        return max(1, min(self.n_slots, WINDOWS[window] // self.width))

    def edge_view(self, window: str = "1m") -> list[dict]:
        n = self.window_slots(window)
        now_slot = int(self.clock() // self.width)
        out = []
        for key, ring in self.edges.items():
            agg = ring.total(now_slot, n)
            if agg[REQ] <= 0 and agg[TCP_CONNS] <= 0 and agg[TCP_SENT] + agg[TCP_RECV] <= 0:
                continue
            reporter, src_ns, src, src_version, dst, dst_version = key
            out.append({
                "reporter": reporter,
                "source": {"workload": src, "namespace": src_ns, "version": src_version},
                "destination": {"service": dst, "name": _short(dst),
                                "namespace": _namespace(dst), "version": dst_version},
                **golden(agg, n * self.width),
            })
        out.sort(key=lambda e: (-e["rps"], e["source"]["workload"], e["destination"]["service"],
                                e["destination"]["version"]))
        return out

    def service_view(self, window: str = "1m") -> list[dict]:
        """Per destination service and version: everything its callers sent it."""
        n = self.window_slots(window)
        now_slot = int(self.clock() // self.width)
        totals: dict[tuple[str, str], list] = {}
        for key, ring in self.edges.items():
            agg = ring.total(now_slot, n)
            if agg[REQ] <= 0 and agg[TCP_CONNS] <= 0 and agg[TCP_SENT] + agg[TCP_RECV] <= 0:
                continue
            k = (key[4], key[5])
            add_into(totals.setdefault(k, new_agg()), agg)
        out = [
            {"service": svc, "name": _short(svc), "namespace": _namespace(svc), "version": ver,
             **golden(agg, n * self.width)}
            for (svc, ver), agg in totals.items()
        ]
        out.sort(key=lambda s: (-s["rps"], s["service"], s["version"]))
        return out

    def route_view(self, window: str = "1m") -> list[dict]:
        n = self.window_slots(window)
        now_slot = int(self.clock() // self.width)
        out = []
        for (svc, route), ring in self.routes.items():
            agg = ring.total(now_slot, n)
            out.append({"service": svc, "name": _short(svc), "route": route,
                        **golden(agg, n * self.width)})
        out.sort(key=lambda r: (-r["rps"], r["service"], r["route"]))
        return out


def golden(agg: list, span_s: float) -> dict[str, Any]:
    """Rate, success rate, latency percentiles and bytes of one aggregate over ``span_s``, and
    the opaque TCP bytes and connections of the same edge (zero for HTTP-only traffic)."""
    req = agg[REQ]
    buckets = agg[B0:TCP_SENT]
    return {
        "requests": req,
        "failures": agg[FAIL],
        "rps": round(req / span_s, 3) if span_s > 0 else 0.0,
        "success_rate": round((req - agg[FAIL]) / req, 4) if req else None,
        "p50_ms": _round(histogram_quantile(0.5, buckets)),
        "p90_ms": _round(histogram_quantile(0.9, buckets)),
        "p99_ms": _round(histogram_quantile(0.99, buckets)),
        "mtls": bool(req) and agg[MTLS] >= req,
        "mtls_requests": agg[MTLS],
        "request_bytes": agg[REQ_BYTES],
        "response_bytes": agg[RESP_BYTES],
        "buckets": list(buckets),
        "tcp_sent_bytes": agg[TCP_SENT],
        "tcp_received_bytes": agg[TCP_RECV],
        "tcp_connections": agg[TCP_CONNS],
    }


def edge_key(item: dict) -> tuple[str, ...]:
    return (
        _s(item, "reporter", "source"),
        _s(item, "source_namespace", "unknown"),
        _s(item, "source", "unknown"),
        _s(item, "source_version", "unknown"),
        _s(item, "destination"),
        _s(item, "destination_version", "unknown"),
    )


def _s(item: dict, name: str, default: str | None = None) -> str:
    v = item.get(name, default)
    if not isinstance(v, str) or not v or len(v) > 253:
        raise ValueError(f"{name}: expected a non-empty string")
    return v


def _items(v: object) -> list[dict]:
    return [i for i in v if isinstance(i, dict)] if isinstance(v, list) else []


def _short(host: str) -> str:
    parts = host.split(".")
    return parts[0] if len(parts) >= 3 and parts[2] == "svc" else host


def _namespace(host: str) -> str:
    parts = host.split(".")
    return parts[1] if len(parts) >= 3 and parts[2] == "svc" else ""


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)
