"""The chaos extension's pure parts: the fault documents it applies (valid, expiring, scoped by
header), the figures it computes from sidecar metrics, and expiry bookkeeping."""

from __future__ import annotations

import pytest

from control_plane.api.expiry import EXPIRES_AT, live, parse_expires_at
from control_plane.api.resources import from_dict
from control_plane.chaos import metrics
from control_plane.chaos.actions import fault_resource

NOW = 1_800_000_000.0


@pytest.mark.parametrize("header", [{"x-user": "chaos-test"}, "x-user=chaos-test",
                                    "x-user: chaos-test"])
def test_a_delay_fault_is_a_valid_expiring_overlay_scoped_by_header(header):
    doc = fault_resource(
        "payment", {"delay": {"fixedDelay": "2s", "percentage": {"value": 50.0}}}, header,
        "90s", now=NOW,
    )
    r = from_dict(doc, "chaos", 1)  # the control plane's own validation
    assert parse_expires_at(r.annotations[EXPIRES_AT]) == pytest.approx(NOW + 90, abs=1e-3)
    (route,) = r.spec["http"]
    assert route["match"] == [{"headers": {"x-user": {"exact": "chaos-test"}}}]
    assert route["route"] == [{"destination": {"host": "payment"}}]
    assert r.labels == {"meshlet.dev/chaos": "true"}


def test_a_fault_without_an_end_is_refused():
    with pytest.raises(ValueError):
        fault_resource("payment", {"abort": {"httpStatus": 503}}, None, "0s")


def test_live_drops_expired_and_says_when_to_look_again():
    class R:
        def __init__(self, at: str | None) -> None:
            self.annotations = {EXPIRES_AT: at} if at else {}

    keep, gone, later = R(None), R("2020-01-01T00:00:00Z"), R("2030-01-01T00:00:00+01:00")
    out, nxt = live([keep, gone, later], parse_expires_at("2026-01-01T00:00:00Z"))
    assert out == [keep, later]
    assert nxt == parse_expires_at("2029-12-31T23:00:00Z")


TEXT = """# HELP istio_requests_total x
istio_requests_total{reporter="source",destination_service="orders.default.svc.cluster.local",response_code="200"} 90
istio_requests_total{reporter="source",destination_service="orders.default.svc.cluster.local",response_code="503"} 10
istio_requests_total{reporter="destination",destination_service="orders.default.svc.cluster.local",response_code="503"} 99
istio_request_duration_milliseconds_bucket{reporter="source",destination_service="orders.default.svc.cluster.local",le="10.0"} 50
istio_request_duration_milliseconds_bucket{reporter="source",destination_service="orders.default.svc.cluster.local",le="100.0"} 98
istio_request_duration_milliseconds_bucket{reporter="source",destination_service="orders.default.svc.cluster.local",le="1000.0"} 100
istio_request_duration_milliseconds_bucket{reporter="source",destination_service="orders.default.svc.cluster.local",le="+Inf"} 100
"""


def test_metrics_are_read_from_the_callers_side():
    got = metrics.parse(TEXT)["orders.default.svc.cluster.local"]
    assert (got.requests, got.errors) == (100, 10)
    # Prometheus' histogram_quantile: rank 99 lies half-way through the 100..1000 bucket
    assert metrics.quantile(0.99, got.buckets) == pytest.approx(550.0)
    assert metrics.quantile(0.5, got.buckets) == pytest.approx(10.0)


def test_a_window_between_samples_survives_a_restarted_sidecar():
    old = (0.0, {"a": {"orders.x": metrics.Counts(100, 10, {float("inf"): 100})},
                 "b": {"orders.x": metrics.Counts(50, 0, {float("inf"): 50})}})
    new = (5.0, {"a": {"orders.x": metrics.Counts(130, 10, {float("inf"): 130})},
                 # b restarted: its counters went down, so its new counts are the delta
                 "b": {"orders.x": metrics.Counts(7, 7, {float("inf"): 7})}})
    w = metrics.between(old, new, "orders")
    assert (w.requests, w.errors, w.rate) == (37, 7, pytest.approx(7.4))
    assert w.success_rate == pytest.approx(30 / 37)
    assert metrics.between(old, new, "payment").success_rate is None  # silence is not success
