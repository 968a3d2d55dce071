"""What the sidecar tells the control plane about its traffic: stats deltas and tap events.

:class:`StatsReport` turns the counters the request path already keeps (the pre-bound Istio
series of :mod:`proxy.telemetry.metrics`, and one per-route latency histogram) into a compact
delta since the previous report: per edge (this workload -> destination service and version, or
an unauthenticated caller -> this workload) requests, failures (5xx, local replies without a
response, i.e. status 0, and gRPC statuses other than OK), the latency buckets of
``istio_request_duration_milliseconds``, bytes and how many requests were mTLS, and, from the
deltas of the opaque TCP proxy's ``istio_tcp_{sent,received}_bytes_total`` and
``istio_tcp_connections_opened_total`` series (:mod:`proxy.tcp.metrics`), the TCP bytes and
connections of the same edge. Nothing is added per request or per byte for the edges; the
route histograms cost one dict lookup and an increment
(the bucket index is the one the Istio series already computed).

:class:`Tap` is a live request tap the control plane starts over the config stream: a filter, a
maximum rate and an expiry. The request path pays one ``if tap is not None`` when no tap is on.
An event is a summary (method, path without the query, status, flags, latency, route, upstream,
the caller and callee identities): never a header value or a body, so secrets cannot leak
through it. Events over the rate are dropped and counted.

Sans-I/O: no asyncio/socket/ssl; the clock is injected.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from proxy.tcp.metrics import LABELS as TCP_LABELS
from proxy.telemetry.metrics import ENVOY_BUCKETS_MS, ISTIO_LABELS, SERIES_LABELS

_ND = len(ENVOY_BUCKETS_MS) + 1
_I = {n: i for i, n in enumerate(SERIES_LABELS)}
_I_CODE_FULL = ISTIO_LABELS.index("response_code")
_I_GRPC_FULL = ISTIO_LABELS.index("grpc_response_status")
_T = {n: i for i, n in enumerate(TCP_LABELS)}
#: Most routes one sidecar keeps a histogram for (a route is config-bound, so this is a guard).
MAX_ROUTES = 2000
#: Most pending tap events per tap before new ones are dropped.
TAP_BUFFER = 256


def _failed(code: int) -> bool:
    return code >= 500 or code == 0


class StatsReport:
    """Builds the ``stats`` message from the deltas of the sidecar's counters."""

    def __init__(self, requests: Any, routes: dict[tuple[str, str], list],
                 tcp: Any = None) -> None:
        self.requests = requests  # proxy.telemetry.metrics.RequestMetrics
        self.routes = routes  # (service, route) -> [duration buckets..., failures]
        self.tcp = tcp  # proxy.tcp.metrics.TcpMetrics, or None (set later by the sidecar)
        self._prev: dict[int, list] = {}
        self._prev_routes: dict[tuple[str, str], list] = {}

    def build(self) -> dict:
        """The delta since the last call, as the ``stats`` message body (empty lists when idle)."""
        edges: dict[tuple[str, ...], dict] = {}
        for s in list(self.requests._order):
            v = s._values
            reporter = v[_I["reporter"]]
            if reporter == "destination" and v[_I["connection_security_policy"]] == "mutual_tls":
                continue  # the calling sidecar reports this edge (reporter=source)
            if reporter == "source":
                mtls = v[_I["destination_principal"]] != "unknown"
                key = ("source", v[_I["source_workload_namespace"]], v[_I["source_app"]],
                       v[_I["source_version"]], v[_I["destination_service"]],
                       v[_I["destination_version"]])
            else:
                mtls = False
                key = ("destination", v[_I["source_workload_namespace"]],
                       v[_I["source_workload"]], "unknown", v[_I["destination_service"]],
                       v[_I["destination_version"]])
            for full, _, e in list(s._entries):
                snap = e[:]
                prev = self._prev.get(id(e))
                self._prev[id(e)] = snap
                buckets = snap[:_ND]
                sums = snap[-3:]
                if prev is not None:
                    buckets = [a - b for a, b in zip(buckets, prev[:_ND], strict=True)]
                    sums = [a - b for a, b in zip(sums, prev[-3:], strict=True)]
                n = sum(buckets)
                if n <= 0:
                    continue
                code = _code(full)
                item = _edge(edges, key)
                item["requests"] += n
                if _failed(code) or full[_I_GRPC_FULL] not in ("", "0"):
                    item["failures"] += n
                if mtls:
                    item["mtls"] += n
                item["sum_ms"] += sums[0]
                item["request_bytes"] += sums[1]
                item["response_bytes"] += sums[2]
                b = item["buckets"]
                for i, c in enumerate(buckets):
                    b[i] += c
        if self.tcp is not None:
            self._tcp_edges(edges)
        routes = []
        for rkey, counts in list(self.routes.items()):
            snap = counts[:]
            prev = self._prev_routes.get(rkey)
            self._prev_routes[rkey] = snap
            delta = snap if prev is None else [a - b for a, b in zip(snap, prev, strict=True)]
            n = sum(delta[:_ND])
            if n <= 0:
                continue
            routes.append({"service": rkey[0], "route": rkey[1], "requests": n,
                           "failures": delta[_ND], "buckets": delta[:_ND]})
        for item in edges.values():
            item["sum_ms"] = round(item["sum_ms"], 3)
        return {"edges": list(edges.values()), "routes": routes}

    def _tcp_edges(self, edges: dict[tuple[str, ...], dict]) -> None:
        """Add what each TCP series ([received, sent, opened, closed]) gained to its edge. As
        for HTTP, an inbound mTLS connection is left to the calling sidecar to report."""
        for v, counts in list(self.tcp._series):
            reporter = v[_T["reporter"]]
            if reporter == "destination" and v[_T["connection_security_policy"]] == "mutual_tls":
                continue
            snap = counts[:3]
            prev = self._prev.get(id(counts))
            self._prev[id(counts)] = snap
            if prev is not None:
                snap = [a - b for a, b in zip(snap, prev, strict=True)]
            if not any(snap):
                continue
            if reporter == "source":
                key = ("source", v[_T["source_workload_namespace"]], v[_T["source_app"]],
                       v[_T["source_version"]], v[_T["destination_service"]],
                       v[_T["destination_version"]])
            else:
                key = ("destination", v[_T["source_workload_namespace"]],
                       v[_T["source_workload"]], "unknown", v[_T["destination_service"]],
                       v[_T["destination_version"]])
            item = _edge(edges, key)
            item["tcp_received_bytes"] += snap[0]
            item["tcp_sent_bytes"] += snap[1]
            item["tcp_connections"] += snap[2]


def _edge(edges: dict[tuple[str, ...], dict], key: tuple[str, ...]) -> dict:
    item = edges.get(key)
    if item is None:
        item = edges[key] = {
            "reporter": key[0], "source_namespace": key[1], "source": key[2],
            "source_version": key[3], "destination": key[4], "destination_version": key[5],
            "requests": 0, "failures": 0, "mtls": 0, "sum_ms": 0.0, "request_bytes": 0,
            "response_bytes": 0, "buckets": [0] * _ND, "tcp_sent_bytes": 0,
            "tcp_received_bytes": 0, "tcp_connections": 0,
        }
    return item


def _code(full: list[str]) -> int:
    try:
        return int(full[_I_CODE_FULL])
    except ValueError:
        return 0


class TapFilter:
    """Which requests one tap wants; built once when the tap starts."""

    __slots__ = ("id", "path_prefix", "method", "status", "expires", "rate", "tokens", "last",
                 "buffer", "dropped", "sent")

    def __init__(self, spec: dict, now: float) -> None:
        self.id = str(spec.get("id") or "")
        self.path_prefix = str(spec.get("path_prefix") or "")
        self.method = str(spec.get("method") or "").upper()
        st = spec.get("status")
        self.status = int(st) if isinstance(st, int | str) and str(st).isdigit() else 0
        self.expires = now + min(max(float(spec.get("expires_in") or 60.0), 0.1), 3600.0)
        self.rate = min(max(float(spec.get("max_rate") or 100.0), 0.1), 1000.0)
        self.tokens = min(self.rate, 10.0)
        self.last = now
        self.buffer: list[dict] = []
        self.dropped = 0
        self.sent = 0

    def matches(self, method: str, path: str, status: int) -> bool:
        if self.method and method != self.method:
            return False
        if self.path_prefix and not path.startswith(self.path_prefix):
            return False
        if self.status:
            if self.status < 10:  # 5 means 5xx
                return status // 100 == self.status
            return status == self.status
        return True

    def admit(self, now: float) -> bool:
        """Token bucket at ``rate`` per second; a buffer that is full drops too."""
        self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1.0 or len(self.buffer) >= TAP_BUFFER:
            self.dropped += 1
            return False
        self.tokens -= 1.0
        return True


class Tap:
    """The taps active on this sidecar. ``Telemetry.tap`` is this object while at least one tap
    runs and None otherwise, so the request path checks one attribute."""

    def __init__(self, workload: str, identity: str, wake: Callable[[], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.workload = workload
        self.identity = identity
        self.filters: dict[str, TapFilter] = {}
        self.wake = wake  # called when the first event of a batch is buffered
        self.clock = clock

    def start(self, spec: dict) -> None:
        f = TapFilter(spec, self.clock())
        if f.id:
            self.filters[f.id] = f

    def stop(self, tap_id: str) -> None:
        self.filters.pop(tap_id, None)

    @property
    def active(self) -> bool:
        return bool(self.filters)

    def offer(self, ex: Any, head: Any, reporter: str, dur_ms: float) -> None:
        now = self.clock()
        method, path, status = head.method, head.path, ex.status
        for f in list(self.filters.values()):
            if now >= f.expires:
                del self.filters[f.id]
                continue
            if not f.matches(method, path, status) or not f.admit(now):
                continue
            if not f.buffer:
                self.wake()
            outbound = reporter == "outbound"
            f.buffer.append({
                "ts": round(time.time(), 3),
                "direction": reporter,
                "method": method,
                "authority": head.host or "",
                "path": path,
                "status": status,
                "flags": ex.flags,
                "latency_ms": round(dur_ms, 3),
                "route": ex.route,
                "upstream": ex.upstream,
                "upstream_cluster": ex.cluster,
                "workload": self.workload,
                "source": self.identity if outbound else (ex.peer or "unknown"),
                "destination": (ex.peer or "unknown") if outbound else self.identity,
                "mtls": bool(ex.peer) if outbound else bool(ex.mtls),
            })

    def drain(self) -> list[dict]:
        """The ``tap_events`` messages to send now (one per tap with events or drops)."""
        now = self.clock()
        out = []
        for f in list(self.filters.values()):
            if f.buffer or f.dropped:
                out.append({"type": "tap_events", "id": f.id, "events": f.buffer,
                            "dropped": f.dropped})
                f.sent += len(f.buffer)
                f.buffer, f.dropped = [], 0
            if now >= f.expires:
                del self.filters[f.id]
        return out
