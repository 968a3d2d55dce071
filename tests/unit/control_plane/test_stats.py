"""Golden metrics windows at the control plane (control_plane/stats.py): percentile merging from
histogram buckets, window rollover, replica merge, bounded memory."""

from __future__ import annotations

import random
import sys
from bisect import bisect_left

import pytest

from control_plane import stats
from control_plane.stats import BOUNDS, NB, StatsStore, histogram_quantile
from proxy.telemetry.metrics import ENVOY_BUCKETS_MS


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def buckets_of(samples: list[float]) -> list[int]:
    b = [0] * NB
    for s in samples:
        b[bisect_left(BOUNDS, s)] += 1  # the sidecar's rule: first bound >= value
    return b


def exact(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[max(0, min(len(s) - 1, int(q * len(s) + 0.5) - 1))]


def bucket_of(v: float) -> tuple[float, float]:
    i = bisect_left(BOUNDS, v)
    return (0.0 if i == 0 else BOUNDS[i - 1], BOUNDS[min(i, len(BOUNDS) - 1)])


def report(n: int, samples: list[float], *, src="frontend", dst="orders.default.svc.cluster.local",
           version="v1", failures=0, mtls=True) -> dict:
    return {"edges": [{"reporter": "source", "source": src, "source_namespace": "default",
                       "source_version": "v1", "destination": dst, "destination_version": version,
                       "requests": n, "failures": failures, "mtls": n if mtls else 0,
                       "sum_ms": sum(samples), "buckets": buckets_of(samples)}],
            "routes": [{"service": dst, "route": "canary-split", "requests": n,
                        "failures": failures, "buckets": buckets_of(samples)}]}


def test_bounds_are_istio_duration_buckets():
    assert BOUNDS == ENVOY_BUCKETS_MS and len(ENVOY_BUCKETS_MS) + 1 == NB


def test_quantile_matches_prometheus_interpolation():
    # 10 in (0, 0.5], 10 in (0.5, 1], 80 in (5, 10]: p50 is rank 50, 30th of 80 in (5, 10]
    b = [10, 10, 0, 80] + [0] * (NB - 4)
    assert histogram_quantile(0.5, b) == pytest.approx(5 + 5 * 30 / 80)
    assert histogram_quantile(0.05, b) == pytest.approx(0.25)  # first bucket starts at 0
    assert histogram_quantile(0.99, [0] * (NB - 1) + [5]) == BOUNDS[-1]  # +Inf: highest bound
    assert histogram_quantile(0.5, [0] * NB) is None


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_merged_percentiles_are_exact_within_bucket_resolution(seed):
    """Three sidecars' histograms over several slots merged: each quantile falls in the bucket
    holding the exact quantile of the union of all samples."""
    rng = random.Random(seed)
    clock = Clock()
    st = StatsStore(clock=clock)
    everything: list[float] = []
    for _slot in range(5):
        for sidecar in range(3):
            # different latency profiles per sidecar: averaging their p99s would be wrong
            samples = [rng.lognormvariate(1.5 + sidecar, 0.8) for _ in range(rng.randint(50, 400))]
            everything += samples
            st.ingest(report(len(samples), samples))
        clock.t += 10
    clock.t -= 10
    (edge,) = st.edge_view("1m")
    assert edge["requests"] == len(everything)
    for q, key in ((0.5, "p50_ms"), (0.9, "p90_ms"), (0.99, "p99_ms")):
        lo, hi = bucket_of(exact(everything, q))
        assert lo <= edge[key] <= hi, (q, edge[key], exact(everything, q))
    (route,) = st.route_view("1m")
    assert route["p99_ms"] == edge["p99_ms"]


def test_window_rollover_and_rates():
    clock = Clock()
    st = StatsStore(clock=clock)
    st.ingest(report(60, [3.0] * 60))
    (e,) = st.edge_view("1m")
    assert e["requests"] == 60 and e["rps"] == 1.0 and e["mtls"] is True
    assert e["success_rate"] == 1.0
    clock.t += 61  # out of the 1 min window, still in the 10 min one
    assert st.edge_view("1m") == []
    assert st.edge_view("10m")[0]["requests"] == 60
    st.ingest(report(10, [3.0] * 10, failures=5, mtls=False))
    (e,) = st.edge_view("1m")
    assert e["requests"] == 10 and e["success_rate"] == 0.5 and e["mtls"] is False
    (e10,) = st.edge_view("10m")
    assert e10["requests"] == 70 and e10["mtls"] is False
    clock.t += 601  # the ring slot of the first report is reused, not kept
    assert st.edge_view("10m") == []
    st.ingest(report(1, [3.0]))
    assert st.edge_view("10m")[0]["requests"] == 1


def test_services_group_callers_by_destination_version():
    clock = Clock()
    st = StatsStore(clock=clock)
    st.ingest(report(8, [1.0] * 8, version="v1"))
    st.ingest(report(2, [1.0] * 2, version="v2"))
    st.ingest(report(4, [1.0] * 4, src="inventory", version="v1"))
    got = {(s["name"], s["version"]): s["requests"] for s in st.service_view("1m")}
    assert got == {("orders", "v1"): 12, ("orders", "v2"): 2}


def test_replica_merge_equals_one_store_seeing_everything():
    clock = Clock()
    a, b, both = (StatsStore(clock=clock) for _ in range(3))
    for i in range(4):
        ra, rb = report(10 + i, [2.0 * (i + 1)] * (10 + i)), report(5, [400.0] * 5, version="v2")
        a.ingest(ra)
        b.ingest(rb)
        both.ingest(ra)
        both.ingest(rb)
        clock.t += 10
    merged = a.copy()
    merged.merge(b.export())
    assert merged.edge_view("1m") == both.edge_view("1m")
    assert merged.route_view("10m") == both.route_view("10m")
    with pytest.raises(ValueError, match="slots"):
        StatsStore(width=5, clock=clock).merge(a.export())


def test_memory_is_bounded_per_edge_and_in_edge_count():
    clock = Clock()
    st = StatsStore(clock=clock, max_edges=50, max_routes=50)
    for i in range(200):  # 200 distinct edges: only the 50 most recently reported are kept
        st.ingest(report(1, [1.0], src=f"caller-{i}"))
        clock.t += 1
    assert len(st.edges) == 50 and st.evicted >= 150
    assert {k[2] for k in st.edges} == {f"caller-{i}" for i in range(150, 200)}
    ring = next(iter(st.edges.values()))
    size0 = sys.getsizeof(ring.data) + sum(sys.getsizeof(d) for d in ring.data if d)
    for _ in range(5000):  # a long time of traffic on one edge: the ring does not grow
        st.ingest(report(3, [1.0, 2.0, 3.0], src="caller-199"))
        clock.t += 7
    ring = st.edges[next(k for k in st.edges if k[2] == "caller-199")]
    assert len(ring.data) == stats.DEFAULT_SLOTS
    assert sum(d is not None for d in ring.data) <= stats.DEFAULT_SLOTS
    size1 = sys.getsizeof(ring.data) + sum(sys.getsizeof(d) for d in ring.data if d)
    assert size1 <= stats.DEFAULT_SLOTS * (sys.getsizeof([0] * stats.AGG_LEN) + 8) + size0


def test_malformed_report_entries_are_skipped():
    st = StatsStore(clock=Clock())
    bad = [{"reporter": "source", "destination": "x", "requests": -1},
           {"reporter": "source", "destination": "x", "buckets": [1] * (NB + 1)},
           {"reporter": "source", "requests": 1},
           {"reporter": "source", "destination": "x", "requests": "7"}]
    assert st.ingest({"edges": bad, "routes": "nope"}) == 0
    assert st.rejected == 4 and not st.edges


def test_export_of_a_window_holds_only_its_slots():
    clock = Clock()
    st = StatsStore(clock=clock)
    st.ingest(report(7, [1.0] * 7, src="old"))
    clock.t += 120
    st.ingest(report(3, [1.0] * 3, src="new"))
    assert {tuple(e["key"])[2] for e in st.export("1m")["edges"]} == {"new"}
    assert {tuple(e["key"])[2] for e in st.export()["edges"]} == {"old", "new"}
    merged = StatsStore(clock=clock)
    merged.merge(st.export("1m"))
    assert merged.edge_view("1m") == st.edge_view("1m")


def tcp_report(conns: int, sent: int, received: int) -> dict:
    return {"edges": [{"reporter": "source", "source": "frontend", "source_namespace": "default",
                       "source_version": "v1", "destination": "redis.default.svc.cluster.local",
                       "destination_version": "v1", "tcp_connections": conns,
                       "tcp_sent_bytes": sent, "tcp_received_bytes": received}]}


def test_tcp_bytes_per_edge_add_up_in_windows_and_across_replicas():
    clock = Clock()
    a, b = StatsStore(clock=clock), StatsStore(clock=clock)
    a.ingest(tcp_report(2, 1000, 50))
    clock.t += 10
    a.ingest(tcp_report(1, 24, 6))
    b.ingest(tcp_report(4, 2000, 100))
    a.merge(b.export("1m"))
    (e,) = a.edge_view("1m")  # a TCP-only edge is listed, with no request rate
    assert (e["tcp_connections"], e["tcp_sent_bytes"], e["tcp_received_bytes"]) == (7, 3024, 156)
    assert e["requests"] == 0 and e["success_rate"] is None
    (s,) = a.service_view("1m")
    assert s["tcp_sent_bytes"] == 3024
    clock.t += 600  # out of every window
    assert a.edge_view("10m") == []
    bad = tcp_report(1, 10, 10)
    bad["edges"][0]["tcp_sent_bytes"] = -1
    assert StatsStore(clock=clock).ingest(bad) == 0
