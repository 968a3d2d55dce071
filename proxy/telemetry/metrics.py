"""Prometheus metrics: Istio's standard request metrics on a per-request budget, and meshlet's own.

The request path must not pay for labels. A :class:`RequestSeries` is bound once, at config time,
to every Istio label except the three that vary per response (``response_code``,
``response_flags``, ``grpc_response_status``). ``record()`` then does one dict lookup keyed by
those three, three ``bisect`` calls and six in-place list increments: no locks, no
prometheus_client child lookups, no string formatting. Everything else (cumulative buckets, label
sets, text) happens at scrape time in :class:`RequestMetrics`, a prometheus_client custom
collector.

Thread-safety: ``record()`` runs on the event-loop thread; a scrape on another thread may read a
bucket list while it is being incremented. Each histogram's ``_count`` is derived from its own
buckets, so a scrape is always internally consistent per histogram and at worst one request
behind.

Bucket bounds (research 4.1): Istio sets no buckets of its own, so Envoy's default bounds apply
to all three histograms, bytes included, unless ``sidecar.istio.io/statsHistogramBuckets``
overrides them. meshlet does the same, so ``histogram_quantile`` over mixed Envoy/meshlet fleets
lines up.
"""

from __future__ import annotations

import math
import threading
import weakref
from bisect import bisect_left
from collections.abc import Iterable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

__all__ = [
    "BYTES_BUCKETS",
    "CONTENT_TYPE",
    "ENVOY_BUCKETS_MS",
    "ISTIO_LABELS",
    "SERIES_LABELS",
    "UPSTREAM_TLS_HANDSHAKES",
    "INBOUND_TLS_HANDSHAKES",
    "HandshakeCounts",
    "MeshletMetrics",
    "RequestMetrics",
    "RequestSeries",
    "peer_labels",
    "render",
    "service_labels",
]

#: Envoy's ``defaultBuckets()`` (``source/common/stats/histogram_impl.cc``), in milliseconds.
ENVOY_BUCKETS_MS: tuple[float, ...] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000,
    600000, 1800000, 3600000,
)  # fmt: skip

#: Istio's byte histograms use the same Envoy defaults (research 4.1).
BYTES_BUCKETS: tuple[float, ...] = ENVOY_BUCKETS_MS

#: Every label of the Istio HTTP metrics, in the order ``istio_stats.cc`` emits them.
ISTIO_LABELS: tuple[str, ...] = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
    "response_code",
    "grpc_response_status",
)

#: The per-record dimension; everything else is bound by :meth:`RequestMetrics.series`.
_DIM_LABELS = ("response_code", "response_flags", "grpc_response_status")

#: The labels a series is bound to (``ISTIO_LABELS`` minus the per-record three), in order.
SERIES_LABELS: tuple[str, ...] = tuple(n for n in ISTIO_LABELS if n not in _DIM_LABELS)
_SERIES_LABEL_SET = frozenset(SERIES_LABELS)

# Where the per-record values go inside a full ISTIO_LABELS value list.
_I_FLAGS = ISTIO_LABELS.index("response_flags")
_I_CODE = ISTIO_LABELS.index("response_code")
_I_GRPC = ISTIO_LABELS.index("grpc_response_status")

# Layout of one flat per-dimension counter list (see RequestSeries.record):
# [duration buckets (N+1, last is +Inf)] [request-bytes buckets (M+1)] [response-bytes (M+1)]
# [duration sum, request-bytes sum, response-bytes sum]
_ND = len(ENVOY_BUCKETS_MS) + 1
_NB = len(BYTES_BUCKETS) + 1
_OFF_REQ = _ND
_OFF_RESP = _ND + _NB
_OFF_SUM = _ND + 2 * _NB
_SLOTS = _OFF_SUM + 3

#: The classic text format, as Envoy serves it; every Prometheus version scrapes it. (Newer
#: prometheus_client advertises ``version=1.0.0`` for the same bytes when names are legacy.)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


# RequestMetrics registered in each registry, so render() can write them directly.
_fast: weakref.WeakKeyDictionary[CollectorRegistry, list[RequestMetrics]] = (
    weakref.WeakKeyDictionary()
)
# Set while render() runs generate_latest on this thread: RequestMetrics.collect() then yields
# nothing, because render() appends the same families itself.
_rendering = threading.local()


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of ``registry`` (serve it with :data:`CONTENT_TYPE`).

    prometheus_client's ``generate_latest`` costs tens of microseconds per sample line (label
    validation and escaping per sample), which for Istio's 25-label histograms would stall the
    event loop for a large part of a second per scrape. The :class:`RequestMetrics` in
    ``registry`` are therefore written by :meth:`RequestMetrics.exposition` (label strings
    escaped once per series) and everything else by ``generate_latest``.
    """
    fast = _fast.get(registry, ())
    if not fast:
        return generate_latest(registry)
    _rendering.active = True
    try:
        head = generate_latest(registry)
    finally:
        _rendering.active = False
    return head + "".join(m.exposition() for m in fast).encode()


class RequestSeries:
    """Istio's four request metrics for one pre-bound label set.

    Counts are kept per ``(response_code, response_flags, grpc_response_status)`` in one flat
    list of plain ints/floats; bucket counts are per bucket (not cumulative) and summed at scrape.
    """

    __slots__ = ("_dims", "_entries", "_values")

    def __init__(self, values: tuple[str, ...]) -> None:
        # values: one per SERIES_LABELS entry
        self._values = values
        # (code, flags, grpc) -> flat counter list
        self._dims: dict[tuple[int, str, str], list] = {}
        # Append-only [(full label values, escaped label text, counter list)] read by the scrape;
        # appends are atomic under the GIL, so the scrape never sees a dict changing size.
        self._entries: list[tuple[list[str], str, list]] = []

    def record(
        self,
        response_code: int,
        response_flags: str,
        grpc_response_status: str,
        duration_ms: float,
        request_bytes: int,
        response_bytes: int,
        # Bound at definition: locals are cheaper than module globals on this path.
        _bisect=bisect_left,
        _dur=ENVOY_BUCKETS_MS,
        _bytes=BYTES_BUCKETS,
        _req=_OFF_REQ,
        _resp=_OFF_RESP,
        _sum=_OFF_SUM,
    ) -> int:
        """Count one finished request; returns the duration bucket's index (the route view of
        the control plane reuses it). Hot path: keep it allocation- and lock-free."""
        try:
            e = self._dims[(response_code, response_flags, grpc_response_status)]
        except KeyError:
            e = self._new_dim(response_code, response_flags, grpc_response_status)
        # bisect_left gives the first bound >= value, i.e. Prometheus' inclusive `le`.
        i = _bisect(_dur, duration_ms)
        e[i] += 1
        e[_req + _bisect(_bytes, request_bytes)] += 1
        e[_resp + _bisect(_bytes, response_bytes)] += 1
        e[_sum] += duration_ms
        e[_sum + 1] += request_bytes
        e[_sum + 2] += response_bytes
        return i

    def _new_dim(self, code: int, flags: str, grpc: str) -> list:
        # "" and "-" (no flags) must land on one exposed series; so must 200 and "200".
        canon = (int(code), flags or "-", grpc or "")
        e = self._dims.get(canon)
        if e is None:
            e = [0] * _SLOTS
            e[_OFF_SUM] = 0.0
            full = list(self._values)
            # SERIES_LABELS is ISTIO_LABELS minus the three; re-insert them in Istio's order.
            dims = ((_I_FLAGS, canon[1]), (_I_CODE, str(canon[0])), (_I_GRPC, canon[2]))
            for i, v in sorted(dims):
                full.insert(i, v)
            text = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(ISTIO_LABELS, full, strict=True))
            self._entries.append((full, text, e))
            self._dims[canon] = e
        self._dims[(code, flags, grpc)] = e
        return e

    def labels(self) -> dict[str, str]:
        """The bound labels (for debugging and ``/config_dump``)."""
        return dict(zip(SERIES_LABELS, self._values, strict=True))


class RequestMetrics:
    """Registry of pre-bound :class:`RequestSeries`, exposed as Istio's metrics at scrape time."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._series: dict[tuple[str, ...], RequestSeries] = {}
        self._order: list[RequestSeries] = []
        if registry is not None:
            registry.register(self)
            _fast.setdefault(registry, []).append(self)

    def series(self, **labels: str) -> RequestSeries:
        """The series for these labels; same labels give the same object. Call at config time.

        Missing labels default to ``"unknown"`` (Istio's value for missing peer information).
        """
        unknown = labels.keys() - _SERIES_LABEL_SET
        if unknown:
            raise TypeError(f"not a pre-bound Istio label: {', '.join(sorted(unknown))}")
        values = tuple(str(labels.get(n) or "unknown") for n in SERIES_LABELS)
        s = self._series.get(values)
        if s is None:
            s = self._series[values] = RequestSeries(values)
            self._order.append(s)
        return s

    # --- prometheus_client Collector protocol -------------------------------------------------

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterator[Metric]:
        if getattr(_rendering, "active", False):
            return  # render() writes these itself
        requests, duration, req_bytes, resp_bytes = self._families()
        dur_le = [floatToGoString(b) for b in ENVOY_BUCKETS_MS] + ["+Inf"]
        bytes_le = [floatToGoString(b) for b in BYTES_BUCKETS] + ["+Inf"]
        for s in list(self._order):
            for full, _, e in list(s._entries):
                snap = e[:]  # one consistent-enough copy per scrape
                dur = _cumulative(dur_le, snap, 0, _ND)
                requests.add_metric(full, dur[-1][1])
                duration.add_metric(full, dur, snap[_OFF_SUM])
                req_bytes.add_metric(
                    full, _cumulative(bytes_le, snap, _OFF_REQ, _NB), snap[_OFF_SUM + 1]
                )
                resp_bytes.add_metric(
                    full, _cumulative(bytes_le, snap, _OFF_RESP, _NB), snap[_OFF_SUM + 2]
                )
        yield requests
        yield duration
        yield req_bytes
        yield resp_bytes

    def exposition(self) -> str:
        """These four families in the Prometheus text format (what :func:`render` appends)."""
        snaps = [(text, e[:]) for s in list(self._order) for _, text, e in list(s._entries)]
        out = [_HEADERS[0]]
        for text, snap in snaps:
            out.append(f"istio_requests_total{{{text}}} {sum(snap[0:_ND])}\n")
        hists = (
            (_HEADERS[1], "istio_request_duration_milliseconds", 0, _DUR_LE, _OFF_SUM),
            (_HEADERS[2], "istio_request_bytes", _OFF_REQ, _BYTES_LE, _OFF_SUM + 1),
            (_HEADERS[3], "istio_response_bytes", _OFF_RESP, _BYTES_LE, _OFF_SUM + 2),
        )
        for header, name, off, les, sum_i in hists:
            out.append(header)
            bucket = name + "_bucket{"
            for text, snap in snaps:
                acc = 0
                for i, le in enumerate(les):
                    acc += snap[off + i]
                    out.append(f'{bucket}{text},le="{le}"}} {acc}\n')
                out.append(f"{name}_sum{{{text}}} {_number(snap[sum_i])}\n")
                out.append(f"{name}_count{{{text}}} {acc}\n")
        return "".join(out)

    @staticmethod
    def _families() -> tuple[
        CounterMetricFamily, HistogramMetricFamily, HistogramMetricFamily, HistogramMetricFamily
    ]:
        labels = list(ISTIO_LABELS)
        return (
            CounterMetricFamily(
                "istio_requests",
                "Requests handled by the proxy (Istio standard metric).",
                labels=labels,
            ),
            HistogramMetricFamily(
                "istio_request_duration_milliseconds",
                "Request duration in milliseconds (Istio standard metric).",
                labels=labels,
            ),
            HistogramMetricFamily(
                "istio_request_bytes",
                "HTTP request body sizes in bytes (Istio standard metric).",
                labels=labels,
            ),
            HistogramMetricFamily(
                "istio_response_bytes",
                "HTTP response body sizes in bytes (Istio standard metric).",
                labels=labels,
            ),
        )


_DUR_LE = [floatToGoString(b) for b in ENVOY_BUCKETS_MS] + ["+Inf"]
_BYTES_LE = [floatToGoString(b) for b in BYTES_BUCKETS] + ["+Inf"]


def _headers() -> list[str]:
    out = []
    for i, fam in enumerate(RequestMetrics._families()):
        name = fam.name + ("_total" if i == 0 else "")
        out.append(f"# HELP {name} {fam.documentation}\n# TYPE {name} {fam.type}\n")
    return out


_HEADERS = _headers()


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    if math.isfinite(v):
        return repr(v)
    return "NaN" if v != v else ("+Inf" if v > 0 else "-Inf")


def _cumulative(le: list[str], snap: list, off: int, n: int) -> list[tuple[str, float]]:
    out = []
    acc = 0
    for i in range(n):
        acc += snap[off + i]
        out.append((le[i], acc))
    return out


def peer_labels(
    side: str,
    *,
    workload: str | None = None,
    namespace: str | None = None,
    principal: str | None = None,
    labels: dict[str, str] | None = None,
    cluster: str | None = None,
) -> dict[str, str]:
    """The ``source_*`` or ``destination_*`` workload labels of one peer, derived as Istio does.

    ``labels`` are the workload's own labels (``--label k=v``, a WorkloadEntry's labels): the app
    is ``app``; the version ``version``; the canonical service ``service.istio.io/canonical-name``
    > ``app.kubernetes.io/name`` > ``app`` (else the workload name); the canonical revision
    ``service.istio.io/canonical-revision`` > ``app.kubernetes.io/version`` > ``version`` >
    ``latest`` (research 4.1). Missing values are left out, so :meth:`RequestMetrics.series` fills
    in ``unknown``.
    """
    if side not in ("source", "destination"):
        raise ValueError("side must be 'source' or 'destination'")
    lab = labels or {}
    canonical = (
        lab.get("service.istio.io/canonical-name")
        or lab.get("app.kubernetes.io/name")
        or lab.get("app")
        or workload
    )
    revision = (
        lab.get("service.istio.io/canonical-revision")
        or lab.get("app.kubernetes.io/version")
        or lab.get("version")
        or "latest"
    )
    out = {
        "workload": workload,
        "workload_namespace": namespace,
        "principal": principal,
        "app": lab.get("app"),
        "version": lab.get("version"),
        "canonical_service": canonical,
        "canonical_revision": revision if (canonical or lab) else None,
        "cluster": cluster,
    }
    return {f"{side}_{k}": v for k, v in out.items() if v}


def service_labels(host: str) -> dict[str, str]:
    """``destination_service`` (the FQDN) and its ``_name`` / ``_namespace`` parts.

    ``payment.default.svc.cluster.local`` gives name ``payment`` and namespace ``default``; a host
    outside the cluster domain (a ServiceEntry for ``api.example.com``) keeps the whole host as
    its name and an unknown namespace, as Istio reports it.
    """
    out = {"destination_service": host, "destination_service_name": host}
    parts = host.split(".")
    if len(parts) >= 3 and parts[2] == "svc":
        out["destination_service_name"] = parts[0]
        out["destination_service_namespace"] = parts[1]
    return out


class HandshakeCounts:
    """Outbound mTLS handshakes of this process, full and resumed: two plain integers bumped
    once per new upstream connection (``proxy/server/tls_session.py``), exposed as
    ``meshlet_upstream_tls_handshakes_total{resumed="true|false"}`` by :class:`MeshletMetrics`.
    Process-wide because the pools that count them know nothing of telemetry."""

    __slots__ = ("full", "resumed")

    def __init__(self) -> None:
        self.full = 0
        self.resumed = 0

    def count(self, resumed: bool) -> None:
        if resumed:
            self.resumed += 1
        else:
            self.full += 1


#: The one instance the sidecar's upstream pools count into.
UPSTREAM_TLS_HANDSHAKES = HandshakeCounts()
#: Inbound TLS handshakes the listeners completed (``meshlet_inbound_tls_handshakes_total``):
#: with the upstream count of the calling sidecars, how well resumption works across the mesh.
INBOUND_TLS_HANDSHAKES = HandshakeCounts()


class _HandshakeCollector:
    def __init__(self, counts: HandshakeCounts, name: str, doc: str) -> None:
        self.counts = counts
        self.name = name
        self.doc = doc

    def describe(self) -> Iterable[Metric]:
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        m = CounterMetricFamily(self.name, self.doc, labels=["resumed"])
        m.add_metric(["false"], self.counts.full)
        m.add_metric(["true"], self.counts.resumed)
        yield m


#: Circuit-breaker states, as Resilience4j names them (lowercase).
BREAKER_STATES = ("closed", "open", "half_open", "disabled", "forced_open")


class MeshletMetrics:
    """meshlet's own figures, as plain prometheus_client metrics.

    None of these is per request on the success path. Where one is incremented while serving
    (a retry, a rejection), bind the child once at config time and keep it::

        retries = mm.retries.labels(destination_service=host, reason="5xx")   # config time
        retries.inc()                                                          # per retry
    """

    def __init__(
        self, registry: CollectorRegistry, *, version: str = "", fastpath: str = ""
    ) -> None:
        # registered in this order, which is the order /metrics lists them in
        self._config_metrics(registry, version, fastpath)
        self._resilience_metrics(registry)
        self._identity_metrics(registry)
        self._connection_metrics(registry)

    def _config_metrics(self, r: CollectorRegistry, version: str, fastpath: str) -> None:
        """The build, and the config in effect: its version, applies and push lag."""
        self.build_info = Gauge(
            "meshlet_build_info",
            "meshlet build; value is always 1.",
            ["version", "fastpath"],
            registry=r,
        )
        if version or fastpath:
            self.build_info.labels(version=version, fastpath=fastpath).set(1)
        self.config_version = Gauge(
            "meshlet_config_version",
            "Config version in effect (label); value is always 1 for the current one.",
            ["version"],
            registry=r,
        )
        self.config_applies = Counter(
            "meshlet_config_applies",
            "Config snapshots received, by result (ack|nack).",
            ["result"],
            registry=r,
        )
        self.config_push_lag = Gauge(
            "meshlet_config_push_lag_seconds",
            "Seconds between the control plane creating the snapshot in effect and its apply.",
            registry=r,
        )

    def _resilience_metrics(self, r: CollectorRegistry) -> None:
        """What the resilience policies did: retries, ejections, breakers, bulkheads, rate
        limits, hedges, connectionPool overflow."""
        self.retries = Counter(
            "meshlet_retries",
            "Retries attempted, by destination and reason.",
            ["destination_service", "reason"],
            registry=r,
        )
        self.retry_budget_skipped = Counter(
            "meshlet_retry_budget_skipped",
            "Retries not attempted because the budget was spent.",
            ["destination_service"],
            registry=r,
        )
        self.outlier_ejections = Counter(
            "meshlet_outlier_ejections",
            "Endpoints ejected by outlier detection.",
            ["destination_service"],
            registry=r,
        )
        self.outlier_ejected_endpoints = Gauge(
            "meshlet_outlier_ejected_endpoints",
            "Endpoints currently ejected.",
            ["destination_service"],
            registry=r,
        )
        self.circuit_breaker_state = Gauge(
            "meshlet_circuit_breaker_state",
            "1 for the breaker's current state, 0 for the others.",
            ["destination_service", "state"],
            registry=r,
        )
        self.circuit_breaker_not_permitted = Counter(
            "meshlet_circuit_breaker_not_permitted",
            "Calls refused because the circuit breaker was open (UO).",
            ["destination_service"],
            registry=r,
        )
        self.bulkhead_rejected = Counter(
            "meshlet_bulkhead_rejected",
            "Calls refused because the bulkhead was full (UO).",
            ["destination_service"],
            registry=r,
        )
        self.rate_limited = Counter(
            "meshlet_rate_limited",
            "Requests refused by the local rate limiter (RL).",
            ["destination_service"],
            registry=r,
        )
        self.inbound_rate_limited = Counter(
            "meshlet_inbound_rate_limited",
            "Inbound requests refused by an InboundRateLimit (429 RL), by policy and by which "
            "of its limits refused: total, identity or override.",
            ["policy", "limit"],
            registry=r,
        )
        self.hedges = Counter(
            "meshlet_hedges",
            "Hedged requests sent.",
            ["destination_service"],
            registry=r,
        )
        self.upstream_overflow = Counter(
            "meshlet_upstream_overflow",
            "Requests or retries refused by a DestinationRule connectionPool threshold (503 UO), "
            "by kind (pending|requests|retries).",
            ["destination_service", "kind"],
            registry=r,
        )

    def _identity_metrics(self, r: CollectorRegistry) -> None:
        """The workload certificate: when it expires, how renewals went."""
        self.certificate_expiry = Gauge(
            "meshlet_certificate_expiry_timestamp_seconds",
            "Unix time at which the workload certificate expires.",
            registry=r,
        )
        self.certificate_renewals = Counter(
            "meshlet_certificate_renewals",
            "Certificate renewals, by result (success|failure).",
            ["result"],
            registry=r,
        )

    def _connection_metrics(self, r: CollectorRegistry) -> None:
        """Connections and the sidecar's own replies; TLS handshakes (read from counts kept
        by the listeners and pools, at scrape time)."""
        self.downstream_connections_active = Gauge(
            "meshlet_downstream_connections_active",
            "Open downstream connections per listener.",
            ["listener"],
            registry=r,
        )
        self.local_replies = Counter(
            "meshlet_local_replies",
            "Responses the sidecar made itself, by status and flag.",
            ["code", "flag"],
            registry=r,
        )
        for counts, name, doc in (
            (
                UPSTREAM_TLS_HANDSHAKES,
                "meshlet_upstream_tls_handshakes",
                "Outbound mTLS handshakes, by whether the TLS session was resumed.",
            ),
            (
                INBOUND_TLS_HANDSHAKES,
                "meshlet_inbound_tls_handshakes",
                "Inbound TLS handshakes completed, by whether the TLS session was resumed.",
            ),
        ):
            r.register(_HandshakeCollector(counts, name, doc))  # type: ignore[arg-type]

    def set_config_version(self, version: str) -> None:
        """Make ``version`` the only series of ``meshlet_config_version``."""
        self.config_version.clear()
        self.config_version.labels(version=str(version)).set(1)

    def set_breaker_state(self, destination_service: str, state: str) -> None:
        """Set 1 on ``state`` and 0 on every other state of that destination's breaker."""
        state = state.lower()
        if state not in BREAKER_STATES:
            raise ValueError(f"unknown circuit breaker state {state!r}")
        for s in BREAKER_STATES:
            self.circuit_breaker_state.labels(destination_service=destination_service, state=s).set(
                1 if s == state else 0
            )
