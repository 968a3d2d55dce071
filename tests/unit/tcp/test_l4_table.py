"""Protocol selection, L4 route compilation and selection, Sidecar listeners: no sockets."""

from __future__ import annotations

import pytest

from control_plane.api.resources import InvalidConfig, load_text
from proxy.routes.compile import compile_table
from proxy.tcp.protocol import HTTP, TCP, TLS, UNDECLARED, port_protocol
from proxy.tcp.sni import server_name
from proxy.tcp.table import select


@pytest.mark.parametrize(
    ("protocol", "name", "app", "want"),
    [
        ("TCP", "x", None, TCP), ("MYSQL", "", None, TCP), ("REDIS", "", None, TCP),
        ("MONGO", "", None, TCP), ("TLS", "", None, TLS), ("HTTPS", "", None, TLS),
        ("HTTP", "tcp-x", None, HTTP), ("GRPC", "", None, HTTP), ("HTTP2", "", None, HTTP),
        (None, "tcp-redis", None, TCP), (None, "mysql", None, TCP), (None, "http-web", None, HTTP),
        (None, "grpc-api", None, HTTP), (None, "tls-db", None, TLS), (None, "web", None, UNDECLARED),
        (None, "web", "postgresql", TCP), (None, "web", "kubernetes.io/h2c", HTTP),
        (None, "", None, UNDECLARED),
    ],
)  # fmt: skip
def test_port_protocol_as_istio(protocol, name, app, want):
    assert port_protocol(protocol, name, app) == want


CONFIG = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: cache}
spec:
  hosts: [cache]
  ports:
  - {number: 6379, name: tcp-redis, protocol: TCP}
  - {number: 8080, name: http}
  - {number: 5432, name: db, appProtocol: postgresql}
  - {number: 9000, name: other}
  - {number: 443, name: tls, protocol: TLS}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: cache}
spec:
  host: cache
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 7, connectTimeout: 2s, idleTimeout: 30s,
            tcpKeepalive: {time: 60s, interval: 5s, probes: 3}}
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: cache}
spec:
  hosts: [cache]
  tls:
  - match: [{sniHosts: [a.example.com], port: 443}]
    route: [{destination: {host: cache, subset: v2}}]
  tcp:
  - match: [{port: 6379}]
    route:
    - {destination: {host: cache, subset: v1}, weight: 80}
    - {destination: {host: cache, subset: v2}, weight: 20}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: client}
spec:
  workloadSelector: {labels: {app: client}}
  egress:
  - port: {number: 6379, protocol: TCP}
    bind: 127.0.0.1
    hosts: ["./cache"]
  - hosts: ["./*"]
  ingress:
  - port: {number: 9000, protocol: TCP}
    defaultEndpoint: 127.0.0.1:9001
"""
FQ = "cache.default.svc.cluster.local"


def _table(labels=None):
    reg = [{"service": "cache", "namespace": "default", "labels": {"version": "v1"},
            "address": "127.0.0.1:1111", "spiffe_id": "spiffe://cluster.local/ns/default/sa/cache",
            "hbone_port": 2222}]  # fmt: skip
    return compile_table(load_text(CONFIG), reg, "default", labels or {"app": "client"}, "v")


def test_opaque_ports_compile_with_routes_and_pool_settings():
    t = _table()
    l4 = t.l4
    assert set(l4.services) == {(FQ, 6379), (FQ, 5432), (FQ, 443)}  # http and undeclared: not
    redis = l4.lookup(FQ, 6379)
    assert [r.clusters for r in redis.routes] == [
        (f"outbound|6379|v1|{FQ}", f"outbound|6379|v2|{FQ}")
    ]
    assert l4.lookup(FQ, 5432).routes == ()
    c = t.cluster(f"outbound|6379|v1|{FQ}")
    assert (c.max_connections, c.connect_timeout, c.tcp_idle_timeout) == (7, 2.0, 30.0)
    assert c.tcp_keepalive == (60, 5, 3)  # (time, interval, probes)
    assert c.endpoints[0].hbone == 2222 and c.endpoints[0].tls
    # the DestinationRule's trafficPolicy covers every port; without one, Envoy's hour
    assert t.cluster(f"outbound|5432||{FQ}").tcp_idle_timeout == 30.0
    bare = compile_table(load_text(CONFIG.split("---")[0]), [], "default", {}, "v")
    assert bare.cluster(f"outbound|5432||{FQ}").tcp_idle_timeout == 3600.0


def test_weighted_selection_and_sni_routes():
    t = _table()
    redis = t.l4.lookup(FQ, 6379)
    picks = [select(redis, "", i / 1000) for i in range(1000)]
    assert picks.count(f"outbound|6379|v1|{FQ}") == 800
    tls = t.l4.lookup(FQ, 443)
    assert select(tls, "a.example.com", 0.5) == f"outbound|443|v2|{FQ}"
    assert select(tls, "b.example.com", 0.5) is None  # no filter chain: closed, as Envoy


def test_sidecar_listeners_for_the_selected_workload_only():
    t = _table()
    assert [(e.bind, e.port, e.service) for e in t.l4.egress] == [("127.0.0.1", 6379, FQ)]
    assert t.l4.ingress == {9000: ("127.0.0.1", 9001)}
    assert _table({"app": "other"}).l4.egress == ()


def test_invalid_l4_config_is_refused_with_the_field_named():
    bad = CONFIG.replace("sniHosts: [a.example.com], ", "").replace(
        "defaultEndpoint: 127.0.0.1:9001", "defaultEndpoint: 10.0.0.1:9001"
    )
    with pytest.raises(InvalidConfig) as exc:
        load_text(bad)
    text = str(exc.value)
    assert "sniHosts" in text and "defaultEndpoint" in text


def _client_hello(name: str) -> bytes:
    import ssl

    ctx = ssl.create_default_context()
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def test_sni_is_read_from_a_real_client_hello():
    hello = _client_hello("db.example.com")
    assert server_name(hello) == "db.example.com"
    assert server_name(hello[:3]) is None  # more bytes needed
    assert server_name(hello[:40]) is None
    assert server_name(b"PING\r\n") == ""  # not TLS


def test_captured_connection_picks_the_service_port_from_its_original_destination():
    from proxy.tcp.proxy import captured_service

    text = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db]
  addresses: [10.96.0.10]
  ports: [{number: 5432, name: tcp-pg}, {number: 8080, name: http}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.5}]
"""
    t = compile_table(load_text(text), [], "default", {"app": "client"}, "v")
    svc = captured_service(t, ("10.96.0.10", 5432))
    assert svc is not None and (svc.service, svc.port) == ("db.default.svc.cluster.local", 5432)
    assert captured_service(t, ("10.0.0.5", 5432)) is not None  # an endpoint address too
    assert captured_service(t, ("10.96.0.10", 8080)) is None  # HTTP: detection as before
    assert captured_service(t, ("10.9.9.9", 5432)) is None  # not a mesh service
