"""The sidecar's side of mesh telemetry (proxy/telemetry/report.py): stats deltas from the
counters the request path already keeps, and the live tap's filter, rate bound and contents."""

from __future__ import annotations

from types import SimpleNamespace

from proxy.telemetry.metrics import ENVOY_BUCKETS_MS, RequestMetrics
from proxy.telemetry.report import TAP_BUFFER, StatsReport, Tap
from proxy.telemetry.uplink import _combine

ND = len(ENVOY_BUCKETS_MS) + 1


def outbound(m: RequestMetrics, version: str, peer: str = "spiffe://cluster.local/ns/default/sa/orders"):
    return m.series(reporter="source", source_workload="frontend-v1",
                    source_workload_namespace="default", source_app="frontend",
                    source_version="v1", destination_service="orders.default.svc.cluster.local",
                    destination_version=version, destination_principal=peer)


def inbound(m: RequestMetrics, mtls: bool):
    return m.series(reporter="destination", source_workload="unknown" if not mtls else "frontend",
                    source_workload_namespace="unknown" if not mtls else "default",
                    destination_service="frontend.default.svc.cluster.local",
                    destination_version="v1",
                    connection_security_policy="mutual_tls" if mtls else "none")


def test_reports_are_deltas_per_edge_with_failures_and_mtls():
    m = RequestMetrics()
    routes: dict = {}
    rep = StatsReport(m, routes)
    v1, v2 = outbound(m, "v1"), outbound(m, "v2", peer="unknown")
    for _ in range(8):
        v1.record(200, "-", "", 3.0, 0, 10)
    v1.record(503, "UO", "", 0.2, 0, 0)
    v1.record(200, "-", "14", 7.0, 0, 0)  # gRPC UNAVAILABLE in a 200: a failure
    v1.record(200, "-", "0", 7.0, 0, 0)  # gRPC OK
    v2.record(200, "-", "", 40.0, 5, 5)
    inbound(m, mtls=True).record(200, "-", "", 1.0, 0, 0)  # the caller reports it
    inbound(m, mtls=False).record(404, "NR", "", 1.0, 0, 0)  # from outside the mesh
    body = rep.build()
    edges = {(e["reporter"], e["destination"], e["destination_version"]): e
             for e in body["edges"]}
    assert set(edges) == {("source", "orders.default.svc.cluster.local", "v1"),
                          ("source", "orders.default.svc.cluster.local", "v2"),
                          ("destination", "frontend.default.svc.cluster.local", "v1")}
    e1 = edges[("source", "orders.default.svc.cluster.local", "v1")]
    assert (e1["requests"], e1["failures"], e1["mtls"]) == (11, 2, 11)
    assert e1["source"] == "frontend" and e1["source_version"] == "v1"
    assert len(e1["buckets"]) == ND and e1["buckets"][2] == 8 and e1["buckets"][0] == 1
    assert e1["buckets"][3] == 2
    assert edges[("source", "orders.default.svc.cluster.local", "v2")]["mtls"] == 0
    ext = edges[("destination", "frontend.default.svc.cluster.local", "v1")]
    assert ext["source"] == "unknown" and ext["failures"] == 0
    # nothing new: nothing sent; then only what came since
    assert rep.build() == {"edges": [], "routes": []}
    v1.record(500, "-", "", 7.0, 0, 0)
    (e,) = rep.build()["edges"]
    assert (e["requests"], e["failures"], sum(e["buckets"])) == (1, 1, 1)


def test_route_histograms_are_reported_as_deltas():
    routes = {("orders.default.svc.cluster.local", "canary-split"): [0] * (ND + 1)}
    rep = StatsReport(RequestMetrics(), routes)
    c = routes[("orders.default.svc.cluster.local", "canary-split")]
    c[3] += 5
    c[ND] += 2
    (r,) = rep.build()["routes"]
    assert (r["route"], r["requests"], r["failures"]) == ("canary-split", 5, 2)
    c[4] += 1
    (r,) = rep.build()["routes"]
    assert (r["requests"], r["failures"], r["buckets"][4]) == (1, 0, 1)


class Clock:
    t = 100.0

    def __call__(self) -> float:
        return self.t


def exchange(status=200, peer="spiffe://cluster.local/ns/default/sa/frontend"):
    return SimpleNamespace(status=status, flags="-", route="canary-split", upstream="10.0.0.1:80",
                           cluster="outbound|80|v1|orders", peer=peer, mtls=True)


def head(method="GET", path="/orders", **headers):
    return SimpleNamespace(method=method, path=path, host="orders", target=path + "?secret=1",
                           headers=list(headers.items()), get=headers.get)


def test_tap_filters_bounds_its_rate_and_expires():
    clock = Clock()
    woken = []
    tap = Tap("orders-v1", "spiffe://cluster.local/ns/default/sa/orders",
              lambda: woken.append(1), clock)
    tap.start({"id": "t1", "path_prefix": "/orders", "method": "get", "status": "2",
               "max_rate": 2, "expires_in": 10})
    tap.offer(exchange(), head(path="/other"), "inbound", 1.0)
    tap.offer(exchange(), head(method="POST"), "inbound", 1.0)
    tap.offer(exchange(status=500), head(), "inbound", 1.0)
    assert tap.drain() == []
    for _ in range(5):  # 2 per second: the first 2 pass, 3 are dropped and counted
        tap.offer(exchange(), head(), "inbound", 1.0)
    (msg,) = tap.drain()
    assert len(msg["events"]) == 2 and msg["dropped"] == 3 and woken == [1]
    clock.t += 1.0
    tap.offer(exchange(), head(), "inbound", 1.0)
    assert len(tap.drain()[0]["events"]) == 1
    clock.t += 10
    tap.offer(exchange(), head(), "inbound", 1.0)
    assert tap.drain() == [] and not tap.active


def test_tap_buffer_is_bounded():
    tap = Tap("w", "id", lambda: None, Clock())
    tap.start({"id": "t", "max_rate": 1000})
    tap.filters["t"].tokens = 10_000
    for _ in range(TAP_BUFFER + 50):
        tap.offer(exchange(), head(), "inbound", 1.0)
    (msg,) = tap.drain()
    assert len(msg["events"]) == TAP_BUFFER and msg["dropped"] == 50


def test_tap_events_hold_no_header_values_body_or_query():
    tap = Tap("orders-v1", "spiffe://cluster.local/ns/default/sa/orders", lambda: None, Clock())
    tap.start({"id": "t"})
    h = head(method="POST", authorization="Bearer SECRET", cookie="s=SECRET")
    tap.offer(exchange(), h, "inbound", 2.5)
    tap.offer(exchange(peer="spiffe://cluster.local/ns/default/sa/payment"), h, "outbound", 2.5)
    (msg,) = tap.drain()
    inb, out = msg["events"]
    assert "SECRET" not in repr(msg) and "secret=1" not in repr(msg)
    assert inb["source"].endswith("/sa/frontend") and inb["destination"].endswith("/sa/orders")
    assert out["source"].endswith("/sa/orders") and out["destination"].endswith("/sa/payment")
    assert set(inb) == {"ts", "direction", "method", "authority", "path", "status", "flags",
                        "latency_ms", "route", "upstream", "upstream_cluster", "workload",
                        "source", "destination", "mtls"}


def test_an_unsent_report_is_added_to_the_next():
    a = {"edges": [{"reporter": "source", "source_namespace": "d", "source": "f",
                    "source_version": "v1", "destination": "o", "destination_version": "v1",
                    "requests": 2, "failures": 1, "buckets": [1, 1]}],
         "routes": [{"service": "o", "route": "r", "requests": 2, "failures": 0,
                     "buckets": [2, 0]}]}
    b = {"edges": [{**a["edges"][0], "requests": 3, "failures": 0, "buckets": [0, 3]}],
         "routes": []}
    c = _combine(a, b)
    assert c["edges"][0]["requests"] == 5 and c["edges"][0]["failures"] == 1
    assert c["edges"][0]["buckets"] == [1, 4] and c["routes"] == a["routes"]


def test_record_returns_the_duration_bucket_the_route_histogram_reuses():
    s = RequestMetrics().series(reporter="source")
    assert s.record(200, "-", "", 0.3, 0, 0) == 0
    assert s.record(200, "-", "", 1.0, 0, 0) == 1  # bounds are inclusive, as Prometheus' le
    assert s.record(200, "-", "", 7.0, 0, 0) == 3
    assert s.record(200, "-", "", 1e9, 0, 0) == len(ENVOY_BUCKETS_MS)  # +Inf


def test_tcp_bytes_and_connections_join_their_edge_as_deltas():
    from proxy.tcp.metrics import TcpMetrics

    m, tcp = RequestMetrics(), TcpMetrics()
    rep = StatsReport(m, {}, tcp)
    out = tcp.series(reporter="source", source_workload_namespace="default",
                     source_app="frontend", source_version="v1",
                     destination_service="redis.default.svc.cluster.local",
                     destination_version="v1", request_protocol="tcp")
    mesh_in = tcp.series(reporter="destination", connection_security_policy="mutual_tls",
                         destination_service="frontend.default.svc.cluster.local")
    out[:] = [100, 2000, 3, 1]  # received, sent, opened, closed
    mesh_in[:] = [5, 5, 1, 0]  # the calling sidecar reports it
    outbound(m, "v1").record(200, "-", "", 3.0, 0, 10)  # an HTTP edge alongside
    body = rep.build()
    edges = {e["destination"]: e for e in body["edges"]}
    assert set(edges) == {"redis.default.svc.cluster.local", "orders.default.svc.cluster.local"}
    r = edges["redis.default.svc.cluster.local"]
    assert (r["reporter"], r["source"], r["source_version"]) == ("source", "frontend", "v1")
    assert (r["tcp_received_bytes"], r["tcp_sent_bytes"], r["tcp_connections"]) == (100, 2000, 3)
    assert r["requests"] == 0 and sum(r["buckets"]) == 0
    assert edges["orders.default.svc.cluster.local"]["tcp_connections"] == 0
    # only what the counters gained since; a connection closing alone is not news
    out[3] += 1
    assert rep.build() == {"edges": [], "routes": []}
    out[0] += 7
    out[1] += 9
    (e,) = rep.build()["edges"]
    assert (e["tcp_received_bytes"], e["tcp_sent_bytes"], e["tcp_connections"]) == (7, 9, 0)
