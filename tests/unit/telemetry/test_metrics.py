"""Istio request metrics and meshlet's own: counts, bucket placement, names, exposition."""

from __future__ import annotations

import subprocess

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from proxy.telemetry.metrics import (
    BYTES_BUCKETS,
    CONTENT_TYPE,
    ENVOY_BUCKETS_MS,
    ISTIO_LABELS,
    SERIES_LABELS,
    MeshletMetrics,
    RequestMetrics,
    render,
)

# Verbatim from istio_stats.cc / research 4.1.
ISTIO_HTTP_LABELS = {
    "reporter", "source_workload", "source_workload_namespace", "source_principal", "source_app",
    "source_version", "source_canonical_service", "source_canonical_revision", "source_cluster",
    "destination_workload", "destination_workload_namespace", "destination_principal",
    "destination_app", "destination_version", "destination_service", "destination_service_name",
    "destination_service_namespace", "destination_canonical_service",
    "destination_canonical_revision", "destination_cluster", "request_protocol", "response_flags",
    "connection_security_policy", "response_code", "grpc_response_status",
}  # fmt: skip

LABELS = dict(
    reporter="source",
    source_workload="orders-v1",
    source_workload_namespace="default",
    source_principal="spiffe://cluster.local/ns/default/sa/orders",
    source_app="orders",
    source_version="v1",
    source_canonical_service="orders",
    source_canonical_revision="v1",
    destination_workload="payment-v1",
    destination_workload_namespace="default",
    destination_principal="spiffe://cluster.local/ns/default/sa/payment",
    destination_app="payment",
    destination_version="v1",
    destination_service="payment.default.svc.cluster.local",
    destination_service_name="payment",
    destination_service_namespace="default",
    destination_canonical_service="payment",
    destination_canonical_revision="v1",
    request_protocol="http",
    connection_security_policy="unknown",
    source_cluster="Kubernetes",
    destination_cluster="Kubernetes",
)


def samples(registry):
    """{(sample name, frozenset(labels)): value}"""
    out = {}
    for fam in text_string_to_metric_families(render(registry).decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def families(registry):
    return {f.name: f for f in text_string_to_metric_families(render(registry).decode())}


def test_label_set_is_istios():
    assert set(ISTIO_LABELS) == ISTIO_HTTP_LABELS
    assert len(ISTIO_LABELS) == len(ISTIO_HTTP_LABELS)
    assert set(SERIES_LABELS) == ISTIO_HTTP_LABELS - {
        "response_code",
        "response_flags",
        "grpc_response_status",
    }
    assert set(LABELS) == set(SERIES_LABELS)


def test_envoy_buckets():
    assert ENVOY_BUCKETS_MS == (
        0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000,
        600000, 1800000, 3600000,
    )  # fmt: skip
    assert BYTES_BUCKETS == ENVOY_BUCKETS_MS  # research 4.1: Envoy defaults for all three


def test_series_is_cached_and_defaults_unknown():
    m = RequestMetrics()
    a = m.series(**LABELS)
    assert m.series(**LABELS) is a
    b = m.series(reporter="destination")
    assert b is not a
    assert b.labels()["source_workload"] == "unknown"
    assert b.labels()["reporter"] == "destination"
    with pytest.raises(TypeError):
        m.series(response_code="200")
    with pytest.raises(TypeError):
        m.series(destination_servce="typo")


def test_names_and_types():
    r = CollectorRegistry()
    m = RequestMetrics(r)
    m.series(**LABELS).record(200, "-", "", 3.0, 10, 20)
    f = families(r)
    assert f["istio_requests"].type == "counter"
    assert f["istio_request_duration_milliseconds"].type == "histogram"
    assert f["istio_request_bytes"].type == "histogram"
    assert f["istio_response_bytes"].type == "histogram"
    names = {s.name for fam in f.values() for s in fam.samples}
    assert names >= {
        "istio_requests_total",
        "istio_request_duration_milliseconds_bucket",
        "istio_request_duration_milliseconds_sum",
        "istio_request_duration_milliseconds_count",
        "istio_request_bytes_bucket",
        "istio_request_bytes_sum",
        "istio_request_bytes_count",
        "istio_response_bytes_bucket",
        "istio_response_bytes_sum",
        "istio_response_bytes_count",
    }
    for fam in f.values():
        for s in fam.samples:
            assert set(s.labels) - {"le"} == ISTIO_HTTP_LABELS, s


def test_exact_counts_and_bucket_placement():
    r = CollectorRegistry()
    m = RequestMetrics(r)
    s = m.series(**LABELS)
    # durations on and around bucket bounds: `le` is inclusive
    for d in (0.2, 0.5, 0.7, 1.0, 4.9, 5.0, 5.1, 3_600_000, 3_600_001):
        s.record(200, "-", "", d, 100, 1_000_001)
    s.record(503, "UO", "", 0.1, 0, 0)
    s.record(503, "UO", "", 0.1, 0, 0)
    s.record(200, "", "", 1.0, 0, 0)  # "" and "-" are the same series
    x = samples(r)
    base = {**LABELS, "grpc_response_status": ""}
    ok = frozenset({**base, "response_code": "200", "response_flags": "-"}.items())
    uo = frozenset({**base, "response_code": "503", "response_flags": "UO"}.items())
    assert x[("istio_requests_total", ok)] == 10
    assert x[("istio_requests_total", uo)] == 2

    def bucket(name, labels, le):
        return x[(name + "_bucket", labels | {("le", le)})]

    dur = "istio_request_duration_milliseconds"
    assert bucket(dur, ok, "0.5") == 2  # 0.2, 0.5
    assert bucket(dur, ok, "1.0") == 5  # + 0.7, 1.0, 1.0
    assert bucket(dur, ok, "5.0") == 7  # + 4.9, 5.0
    assert bucket(dur, ok, "10.0") == 8  # + 5.1
    assert bucket(dur, ok, "3.6e+06") == 9
    assert bucket(dur, ok, "+Inf") == 10
    assert x[(dur + "_count", ok)] == 10
    assert x[(dur + "_sum", ok)] == pytest.approx(
        0.2 + 0.5 + 0.7 + 1.0 + 4.9 + 5.0 + 5.1 + 3_600_000 + 3_600_001 + 1.0
    )
    assert bucket(dur, uo, "0.5") == 2
    assert bucket("istio_request_bytes", ok, "100.0") == 10
    assert bucket("istio_request_bytes", ok, "50.0") == 1  # the 0-byte request
    assert bucket("istio_request_bytes", ok, "0.5") == 1
    assert x[("istio_request_bytes_sum", ok)] == 900
    assert bucket("istio_response_bytes", ok, "600000.0") == 1  # only the empty response
    assert bucket("istio_response_bytes", ok, "1.8e+06") == 10
    assert x[("istio_response_bytes_sum", ok)] == 9 * 1_000_001
    assert x[("istio_response_bytes_count", uo)] == 2


def test_grpc_status_and_codes_are_per_record_dimensions():
    r = CollectorRegistry()
    s = RequestMetrics(r).series(**{**LABELS, "request_protocol": "grpc"})
    s.record(200, "-", "0", 1, 1, 1)
    s.record(200, "-", "14", 1, 1, 1)
    s.record(200, "-", "14", 1, 1, 1)
    s.record(0, "DC", "", 1, 1, 0)
    x = samples(r)
    got = {
        (
            dict(k[1])["response_code"],
            dict(k[1])["response_flags"],
            dict(k[1])["grpc_response_status"],
        ): v
        for k, v in x.items()
        if k[0] == "istio_requests_total"
    }
    assert got == {("200", "-", "0"): 1, ("200", "-", "14"): 2, ("0", "DC", ""): 1}


def test_many_series_are_independent():
    r = CollectorRegistry()
    m = RequestMetrics(r)
    for v in ("v1", "v2"):
        for _ in range(3 if v == "v1" else 5):
            m.series(**{**LABELS, "destination_version": v}).record(200, "-", "", 1, 1, 1)
    x = samples(r)
    got = {
        dict(k[1])["destination_version"]: v for k, v in x.items() if k[0] == "istio_requests_total"
    }
    assert got == {"v1": 3, "v2": 5}


def test_label_values_are_escaped():
    r = CollectorRegistry()
    RequestMetrics(r).series(destination_service='we"ird\\svc\nname').record(200, "-", "", 1, 1, 1)
    x = samples(r)
    assert any(dict(k[1]).get("destination_service") == 'we"ird\\svc\nname' for k in x)


def _meshlet(r):
    mm = MeshletMetrics(r, version="0.1.0", fastpath="python")
    mm.set_config_version("42")
    mm.config_applies.labels(result="ack").inc()
    mm.config_push_lag.set(0.25)
    mm.retries.labels(destination_service="payment", reason="5xx").inc(2)
    mm.retry_budget_skipped.labels(destination_service="payment").inc()
    mm.outlier_ejections.labels(destination_service="payment").inc()
    mm.outlier_ejected_endpoints.labels(destination_service="payment").set(1)
    mm.set_breaker_state("payment", "OPEN")
    mm.circuit_breaker_not_permitted.labels(destination_service="payment").inc()
    mm.bulkhead_rejected.labels(destination_service="payment").inc()
    mm.rate_limited.labels(destination_service="payment").inc()
    mm.hedges.labels(destination_service="payment").inc()
    mm.certificate_expiry.set(1_800_000_000)
    mm.certificate_renewals.labels(result="success").inc()
    mm.downstream_connections_active.labels(listener="outbound").inc()
    mm.local_replies.labels(code="503", flag="UO").inc()
    return mm


def test_meshlet_metrics():
    r = CollectorRegistry()
    mm = _meshlet(r)
    x = samples(r)
    build = frozenset({"version": "0.1.0", "fastpath": "python"}.items())
    assert x[("meshlet_build_info", build)] == 1
    assert x[("meshlet_config_version", frozenset({"version": "42"}.items()))] == 1
    mm.set_config_version("43")
    x = samples(r)
    assert ("meshlet_config_version", frozenset({"version": "42"}.items())) not in x
    assert (
        x[
            (
                "meshlet_retries_total",
                frozenset({"destination_service": "payment", "reason": "5xx"}.items()),
            )
        ]
        == 2
    )
    states = {
        dict(k[1])["state"]: v for k, v in x.items() if k[0] == "meshlet_circuit_breaker_state"
    }
    assert states == {"closed": 0, "open": 1, "half_open": 0, "disabled": 0, "forced_open": 0}
    mm.set_breaker_state("payment", "half_open")
    x = samples(r)
    assert (
        x[
            (
                "meshlet_circuit_breaker_state",
                frozenset({"destination_service": "payment", "state": "half_open"}.items()),
            )
        ]
        == 1
    )
    with pytest.raises(ValueError):
        mm.set_breaker_state("payment", "ajar")
    names = {k[0] for k in x}
    assert names >= {
        "meshlet_config_applies_total",
        "meshlet_config_push_lag_seconds",
        "meshlet_retry_budget_skipped_total",
        "meshlet_outlier_ejections_total",
        "meshlet_outlier_ejected_endpoints",
        "meshlet_circuit_breaker_not_permitted_total",
        "meshlet_bulkhead_rejected_total",
        "meshlet_rate_limited_total",
        "meshlet_hedges_total",
        "meshlet_certificate_expiry_timestamp_seconds",
        "meshlet_certificate_renewals_total",
        "meshlet_downstream_connections_active",
        "meshlet_local_replies_total",
    }
    assert all(n.startswith(("meshlet_", "istio_")) for n in names)


def test_content_type():
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")


def test_exposition_passes_promtool(tmp_path):
    r = CollectorRegistry()
    m = RequestMetrics(r)
    _meshlet(r)
    for v in ("v1", "v2"):
        s = m.series(**{**LABELS, "destination_version": v})
        s.record(200, "-", "", 12.5, 100, 2000)
        s.record(503, "UO", "", 0.3, 0, 19)
        s.record(504, "UT", "", 15000, 10, 24)
    m.series(reporter="destination", request_protocol="grpc").record(200, "-", "0", 1, 5, 5)
    text = render(r)
    proc = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, timeout=60
    )
    out = (proc.stdout + proc.stderr).decode()
    # Exit 1 would be a parse error; 3 means lint findings only. The one finding allowed is
    # promtool's unit lint on Istio's own name, which dashboards require verbatim.
    assert proc.returncode in (0, 3), out
    findings = [line for line in out.splitlines() if line.strip()]
    allowed = (
        'istio_request_duration_milliseconds use base unit "seconds" instead of "milliseconds"'
    )
    assert all(f == allowed for f in findings), out


def test_empty_registry_renders():
    r = CollectorRegistry()
    RequestMetrics(r)
    fams = families(r)
    assert fams["istio_requests"].samples == []  # no series, no samples


def _parsed(text: str) -> dict:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_fast_render_equals_prometheus_client_rendering():
    from prometheus_client import generate_latest

    r = CollectorRegistry()
    m = RequestMetrics(r)
    _meshlet(r)
    for v in ("v1", 'we"ird\\v\n2'):
        s = m.series(**{**LABELS, "destination_version": v})
        s.record(200, "-", "", 12.5, 100, 2000)
        s.record(200, "-", "", 0.5, 0, 3_600_000)
        s.record(503, "UO", "", 0.3, 0, 19)
    fast = render(r).decode()
    slow = generate_latest(r).decode()  # the custom collector's own (slow) path
    assert _parsed(fast) == _parsed(slow)
    assert fast.count("# TYPE istio_requests_total counter") == 1
    assert fast.count("# TYPE istio_request_duration_milliseconds histogram") == 1


def test_render_of_a_registry_without_request_metrics():
    r = CollectorRegistry()
    _meshlet(r)
    assert b"meshlet_build_info" in render(r) and b"istio_" not in render(r)


def test_render_is_fast_enough_for_the_event_loop():
    import time

    r = CollectorRegistry()
    m = RequestMetrics(r)
    for i in range(50):
        s = m.series(**{**LABELS, "destination_service": f"svc{i}.default.svc.cluster.local"})
        for code, flags in ((200, "-"), (503, "UO"), (404, "NR"), (504, "UT")):
            s.record(code, flags, "", 3.0, 10, 100)
    t = time.process_time()
    body = render(r)
    dt = time.process_time() - t
    assert body.count(b"\n") > 13_000
    # generous bound for a loaded CI machine; prometheus_client alone takes ~1 s here
    assert dt < 0.25, dt


def test_peer_labels_follow_istio_precedence():
    from proxy.telemetry.metrics import peer_labels

    got = peer_labels(
        "source",
        workload="orders-v1",
        namespace="default",
        principal="spiffe://cluster.local/ns/default/sa/orders",
        labels={"app": "orders", "version": "v1"},
    )
    assert got == {
        "source_workload": "orders-v1",
        "source_workload_namespace": "default",
        "source_principal": "spiffe://cluster.local/ns/default/sa/orders",
        "source_app": "orders",
        "source_version": "v1",
        "source_canonical_service": "orders",
        "source_canonical_revision": "v1",
    }
    got = peer_labels(
        "destination",
        workload="w",
        labels={
            "app": "a",
            "app.kubernetes.io/name": "k8s-name",
            "service.istio.io/canonical-name": "canon",
            "version": "v9",
            "app.kubernetes.io/version": "2.0",
        },
    )
    assert got["destination_canonical_service"] == "canon"
    assert got["destination_canonical_revision"] == "2.0"
    assert peer_labels("destination", workload="w")["destination_canonical_revision"] == "latest"
    assert peer_labels("source") == {}
    with pytest.raises(ValueError):
        peer_labels("client")
    # usable directly by series()
    RequestMetrics().series(reporter="source", **got)


def test_service_labels():
    from proxy.telemetry.metrics import service_labels

    assert service_labels("payment.default.svc.cluster.local") == {
        "destination_service": "payment.default.svc.cluster.local",
        "destination_service_name": "payment",
        "destination_service_namespace": "default",
    }
    assert service_labels("api.example.com") == {
        "destination_service": "api.example.com",
        "destination_service_name": "api.example.com",
    }
