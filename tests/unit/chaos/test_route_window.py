"""Per-route probe figures: the slot-wise difference of two reads of the control plane's raw
stats rings is what the sidecars reported between them, whatever slots the traffic fell in."""

from __future__ import annotations

import pytest

from control_plane.chaos import metrics
from control_plane.stats import BOUNDS, NB, StatsStore, histogram_quantile

SVC = "orders.default.svc.cluster.local"


def report(route: str, ok: int, failed: int, bucket: int, service: str = SVC) -> dict:
    buckets = [0] * NB
    buckets[bucket] = ok + failed
    return {"routes": [{"service": service, "route": route, "requests": ok + failed,
                        "failures": failed, "buckets": buckets}]}


def test_two_reads_give_what_was_reported_between_them():
    now = [1_800_000_003.0]
    store = StatsStore(clock=lambda: now[0])
    store.ingest(report("canary-split", 30, 0, 2))  # before the window: not counted
    store.ingest(report("other", 99, 9, 5))
    first = (now[0], store.export())
    # the window: more in the slot the first read saw, then two later slots
    store.ingest(report("canary-split", 10, 2, 2))
    now[0] += 10
    store.ingest(report("canary-split", 20, 4, 2))
    store.ingest(report("canary-split", 5, 0, 9, service="payment.default.svc.cluster.local"))
    now[0] += 10
    store.ingest(report("canary-split", 4, 0, 9))
    store.ingest(report("other", 50, 50, 5))
    second = (now[0], store.export())

    w = metrics.route_between(first, second, "orders", "canary-split")
    assert (w.requests, w.errors, w.seconds) == (40, 6, 20.0)
    assert w.rate == 2.0 and w.success_rate == pytest.approx(34 / 40)
    want = [0] * NB
    want[2], want[9] = 36, 4
    assert w.p99_ms == pytest.approx(histogram_quantile(0.99, want)) and w.p99_ms > BOUNDS[2]
    # the full name names the same service; another route or service is not counted
    assert metrics.route_between(first, second, SVC, "canary-split").requests == 40
    assert metrics.route_between(first, second, "payment", "canary-split").requests == 5
    idle = metrics.route_between(second, second, "orders", "canary-split")
    assert idle.requests == 0 and idle.success_rate is None and idle.p99_ms is None


def test_the_sliding_view_would_lose_traffic_the_slot_difference_keeps():
    """Why the probe does not diff /v1/stats/routes?window=1m: a slot leaving the 1 min window
    takes its traffic out of the second read."""
    now = [1_800_000_000.0]
    store = StatsStore(clock=lambda: now[0])
    store.ingest(report("r", 100, 0, 2))
    first = (now[0], store.export())
    v1 = store.route_view("1m")[0]["requests"]
    now[0] += 60
    store.ingest(report("r", 10, 0, 2))
    v2 = store.route_view("1m")[0]["requests"]
    assert v2 - v1 == -90  # nonsense as a count
    assert metrics.route_between(first, (now[0], store.export()), "orders", "r").requests == 10


def test_a_route_window_is_bounded_by_the_ring():
    with pytest.raises(ValueError, match="route window"):
        metrics.route_window("orders", "r", 600, dict)
    with pytest.raises(ValueError, match="route window"):
        metrics.route_window("orders", "r", 0, dict)
