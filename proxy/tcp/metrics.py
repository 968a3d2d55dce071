"""Istio's TCP metrics: ``istio_tcp_{received,sent}_bytes_total`` and
``istio_tcp_connections_{opened,closed}_total``, with Istio's labels, for both reporters.

Series are bound once per (reporter, cluster, endpoint or peer): a connection holds the bound
list ``[received, sent, opened, closed]`` and bumps it in place as data flows; labels and text
are made at scrape time only (the pattern of :mod:`proxy.telemetry.metrics`).

Also ``meshlet_hbone_tls_handshakes_total{direction, resumed}``: the HBONE connections' TLS
handshakes, full or resumed, outbound (to peers' 15008) and inbound (on ours), read at scrape
time from the proxy's two-by-two counts; and ``meshlet_hbone_goaway_total{direction}``: GOAWAYs
sent on inbound HBONE connections (this sidecar drained) and received on outbound ones (a peer
drained).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric

LABELS = (
    "reporter", "source_workload", "source_workload_namespace", "source_principal", "source_app",
    "source_version", "source_canonical_service", "source_canonical_revision",
    "destination_workload", "destination_workload_namespace", "destination_principal",
    "destination_app", "destination_version", "destination_service",
    "destination_service_name", "destination_service_namespace",
    "destination_canonical_service", "destination_canonical_revision", "request_protocol",
    "response_flags", "connection_security_policy",
)  # fmt: skip

_FAMILIES = (
    ("istio_tcp_received_bytes_total", "Bytes received from the client side of TCP connections"),
    ("istio_tcp_sent_bytes_total", "Bytes sent to the client side of TCP connections"),
    ("istio_tcp_connections_opened_total", "TCP connections opened"),
    ("istio_tcp_connections_closed_total", "TCP connections closed"),
)


class TcpMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._series: list[tuple[tuple[str, ...], list[int]]] = []
        # direction -> [full, resumed], the TcpProxy's own counts (set by the sidecar)
        self.handshakes: dict[str, list[int]] | None = None
        self.goaways: dict[str, int] | None = None  # direction -> count, the TcpProxy's own
        if registry is not None:
            registry.register(self)

    def series(self, **labels: str) -> list[int]:
        values = tuple(str(labels.get(k) or "unknown") for k in LABELS)
        counts = [0, 0, 0, 0]
        self._series.append((values, counts))
        return counts

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        fams = [
            CounterMetricFamily(n[: -len("_total")], d, labels=list(LABELS)) for n, d in _FAMILIES
        ]
        merged: dict[tuple[str, ...], list[int]] = {}
        for values, counts in self._series:
            m = merged.get(values)
            if m is None:
                merged[values] = list(counts)
            else:
                for i in range(4):
                    m[i] += counts[i]
        for values, counts in merged.items():
            for i, fam in enumerate(fams):
                fam.add_metric(list(values), counts[i])
        yield from fams
        if self.handshakes is not None:
            hs = CounterMetricFamily("meshlet_hbone_tls_handshakes",
                                     "TLS handshakes of HBONE connections, full or resumed",
                                     labels=["direction", "resumed"])  # fmt: skip
            for direction, (full, resumed) in self.handshakes.items():
                hs.add_metric([direction, "false"], full)
                hs.add_metric([direction, "true"], resumed)
            yield hs
        if self.goaways is not None:
            ga = CounterMetricFamily("meshlet_hbone_goaway",
                                     "GOAWAYs on HBONE connections: sent on inbound ones (drain), "
                                     "received on outbound ones", labels=["direction"])  # fmt: skip
            for direction, n in self.goaways.items():
                ga.add_metric([direction], n)
            yield ga
