"""Microbenchmark of the per-request telemetry operations (not a test; prints µs per call).

    python -m tests.unit.telemetry.bench_telemetry [--number N]

Each figure is the best of several timeit runs timed with ``time.process_time`` (CPU time, so
other processes on a shared machine inflate it less than wall time would).
The "request total" line is what an unsampled request pays with tracing configured but access
logging off, for one hop through one sidecar: continue_trace (extract + new_context, fused) +
inject + a new x-request-id + one record() + the tail decision. A retry adds new_context +
inject.
"""

from __future__ import annotations

import argparse
import io
import time
import timeit

from prometheus_client import CollectorRegistry

from proxy.telemetry.access_log import AccessLog
from proxy.telemetry.metrics import RequestMetrics
from proxy.telemetry.spans import SpanExporterBridge
from proxy.telemetry.tracing import (
    ParentBasedRatio,
    continue_trace,
    extract,
    inject,
    new_context,
    new_request_id,
)

_timer = time.process_time


class _Null(io.StringIO):
    def write(self, s: str) -> int:
        return len(s)


TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--number", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    series = RequestMetrics(CollectorRegistry()).series(
        reporter="source",
        destination_service="payment.default.svc.cluster.local",
        destination_version="v1",
        request_protocol="http",
    )
    record = series.record
    sampler = ParentBasedRatio(0.01)
    w3c = {"traceparent": TP, "user-agent": "x"}.get
    b3 = {"b3": "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1"}.get
    b3multi = {
        "x-b3-traceid": "4bf92f3577b34da6a3ce929d0e0e4736",
        "x-b3-spanid": "00f067aa0ba902b7",
        "x-b3-sampled": "1",
    }.get
    tracestate = {"traceparent": TP, "tracestate": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"}.get
    none = {"user-agent": "x"}.get
    parent = extract(w3c)
    child = new_context(parent, sampler)
    bridge = SpanExporterBridge(env={})
    unsampled = new_context(None, ParentBasedRatio(0.0))
    alog = AccessLog(_Null(), max_buffer=1 << 16)
    fields = dict(
        start_time=1_764_099_184.123,
        method="GET",
        authority="payment.default:8080",
        path="/api/v1/pay",
        protocol="HTTP/1.1",
        response_code=200,
        response_flags="-",
        grpc_status=None,
        duration_ms=12.5,
        upstream_service_time_ms=11,
        bytes_received=0,
        bytes_sent=1234,
        upstream_host="127.0.0.1:9001",
        upstream_cluster="outbound|8080|v1|payment.default.svc.cluster.local",
        request_id="4d932663-001b-49a2-bb27-fc8cffae7c34",
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        span_id="00f067aa0ba902b7",
        downstream_remote_address="127.0.0.1:40000",
        downstream_peer_principal="spiffe://cluster.local/ns/default/sa/orders",
        user_agent="curl/8.0",
        x_forwarded_for=None,
        route_name="default",
        reporter="source",
    )

    def request_total() -> None:
        ctx = continue_trace(w3c, sampler)
        inject(ctx)
        new_request_id()
        record(200, "-", "", 12.5, 0, 1234)
        bridge.wants(ctx, False, 1_000_000)

    cases = [
        ("RequestSeries.record()", lambda: record(200, "-", "", 12.5, 0, 1234)),
        ("extract() no trace headers", lambda: extract(none)),
        ("extract() W3C traceparent", lambda: extract(w3c)),
        ("extract() W3C + tracestate (cached)", lambda: extract(tracestate)),
        ("extract() B3 single", lambda: extract(b3)),
        ("extract() B3 multi", lambda: extract(b3multi)),
        ("new_context() child", lambda: new_context(parent, sampler)),
        ("continue_trace() W3C (extract+new_context)", lambda: continue_trace(w3c, sampler)),
        ("new_context() root (ratio 0.01)", lambda: new_context(None, sampler)),
        ("inject() W3C", lambda: inject(child)),
        ("new_request_id()", new_request_id),
        ("SpanExporterBridge.wants() (no endpoint)", lambda: bridge.wants(unsampled, False, 1000)),
        (
            "record_span() (no endpoint)",
            lambda: bridge.record_span(unsampled, "server", "GET", 0, 1, {}, False),
        ),
        ("AccessLog.log() 23 fields (buffered)", lambda: alog.log(**fields)),
        ("request total (traceparent in, no access log)", request_total),
    ]
    baseline = min(
        timeit.repeat(lambda: None, number=args.number, repeat=args.repeat, timer=_timer)
    )
    print(f"{'operation':<45} µs/call")
    for name, fn in cases:
        best = min(timeit.repeat(fn, number=args.number, repeat=args.repeat, timer=_timer))
        print(f"{name:<45} {(best - baseline) / args.number * 1e6:7.3f}")
    print(f"(lambda call overhead {baseline / args.number * 1e6:.3f} µs subtracted)")


if __name__ == "__main__":
    main()
