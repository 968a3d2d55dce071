"""``/explain`` decides with the data path's own functions, without sockets: every weighted
destination comes from ``route.choose`` with the draw that lands on it, a captured request is
routed by its original destination or passed through, PeerAuthentication is applied only where
the listener can enforce it, and the inbound rate limits are asked without taking a permit."""

from __future__ import annotations

from types import SimpleNamespace

from control_plane.api.resources import load_text
from proxy.explain import explain
from proxy.http1.parser import RequestHead
from proxy.inbound.admit import DryRunLimits, refuses_connection
from proxy.resilience.inbound_ratelimit import compile_limits
from proxy.routes.compile import compile_table
from proxy.server.runtime import Runtime

CONFIG = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: inventory}
spec:
  hosts: [inventory]
  addresses: [10.96.0.7]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.1, ports: {http: 9}, labels: {version: v1}}
  - {address: 127.0.0.2, ports: {http: 9}, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: inventory}
spec:
  host: inventory
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: gone, labels: {version: v9}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: inventory}
spec:
  hosts: [inventory]
  http:
  - name: split
    route:
    - {destination: {host: inventory, subset: v1}, weight: 90}
    - {destination: {host: inventory, subset: v2}, weight: 10}
    - {destination: {host: inventory, subset: gone}, weight: 0}
"""

LIMIT = """
apiVersion: meshlet.dev/v1alpha1
kind: InboundRateLimit
metadata: {name: slow, namespace: default}
spec:
  total: {requestsPerSecond: 2}
"""


def _sidecar(text: str = CONFIG, inbound_mtls: bool = False) -> SimpleNamespace:
    rt = Runtime("orders", "default", "v1", {"app": "orders"}, 8080)
    rt.swap(compile_table(load_text(text), [], "default", rt.labels, "1"))
    listener = SimpleNamespace(mtls_mode=(lambda: rt.mtls_mode) if inbound_mtls else None)
    return SimpleNamespace(runtime=rt, listeners={"inbound": listener})


def test_every_weighted_destination_comes_from_choose_with_its_share():
    sc = _sidecar()
    data = explain(sc, {"host": "inventory", "path": "/x"})
    v1, v2, gone = data["destinations"]
    assert (v1["subset"], v1["share"], v2["subset"], v2["share"]) == ("v1", 0.9, "v2", 0.1)
    assert v1["endpoints"][0]["labels"] == {"version": "v1"}
    assert v2["endpoints"][0]["labels"] == {"version": "v2"}
    assert gone == {
        "service": "inventory.default.svc.cluster.local",
        "subset": "gone",
        "cluster": gone["cluster"],
        "share": 0.0,
        "decision": "never chosen: weight 0",
    }
    # explaining moved no load-balancer position
    assert sc.runtime.rr == {}


def test_a_captured_request_is_routed_by_the_address_the_app_dialled():
    sc = _sidecar()
    data = explain(sc, {"host": "10.96.0.7", "path": "/x", "original_dst": "10.96.0.7:80"})
    assert data["original_dst"] == "10.96.0.7:80"
    assert data["virtual_host"]["service"] == "inventory.default.svc.cluster.local"
    assert data["route"]["routed_by"] == "original_dst"
    assert [d["subset"] for d in data["destinations"]] == ["v1", "v2", "gone"]
    # without the capture the same Host is no mesh name
    assert explain(sc, {"host": "10.96.0.7", "path": "/x"})["decision"].startswith("404 NR")


def test_a_captured_request_outside_the_mesh_passes_through():
    data = explain(_sidecar(), {"host": "203.0.113.9", "original_dst": "203.0.113.9:8443"})
    assert data["decision"].startswith("passthrough")
    assert data["passthrough"] == {"cluster": "PassthroughCluster", "address": "203.0.113.9:8443"}


def test_connect_is_not_routed_on_the_outbound_port():
    data = explain(_sidecar(), {"host": "inventory:443", "method": "CONNECT"})
    assert data["decision"].startswith("404 NR")


def test_peer_authentication_applies_where_the_listener_enforces_it():
    assert refuses_connection("STRICT", False) and not refuses_connection("STRICT", True)
    assert refuses_connection("DISABLE", True) and not refuses_connection("DISABLE", False)
    assert not refuses_connection("PERMISSIVE", False)
    strict = (
        CONFIG
        + "---\n"
        + (
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
            "metadata: {name: default, namespace: default}\nspec: {mtls: {mode: STRICT}}\n"
        )
    )
    sc = _sidecar(strict, inbound_mtls=True)
    sc.runtime.mtls_mode = "STRICT"
    data = explain(sc, {"direction": "inbound", "path": "/"})
    assert data["decision"].startswith("refused: PeerAuthentication STRICT")
    # a sidecar without a certificate serves no mTLS: the mode is not enforced, as the listener
    sc = _sidecar(strict, inbound_mtls=False)
    sc.runtime.mtls_mode = "STRICT"
    data = explain(sc, {"direction": "inbound", "path": "/"})
    assert data["peer_authentication"] == {"mode": "STRICT", "enforced": False, "allowed": True}
    assert data["decision"].startswith("forward to")


def test_the_inbound_rate_limit_is_asked_without_taking_a_permit():
    now = [100.0]
    limits = compile_limits(load_text(LIMIT), "default", {}, None, lambda: now[0])
    assert limits is not None
    dry = DryRunLimits(limits)
    for _ in range(5):
        assert dry.check("GET", "/", "") is None  # asking spends nothing
    assert limits.check("GET", "/", "") is None and limits.check("GET", "/", "") is None
    assert dry.check("GET", "/", "") == ("default/slow", "total")
    assert limits.check("GET", "/", "") == ("default/slow", "total")
    now[0] += 1.0
    assert dry.check("GET", "/", "") is None


def test_an_inbound_request_over_the_limit_is_explained_as_429():
    sc = _sidecar(CONFIG + "---\n" + LIMIT)
    rt = sc.runtime
    rt.inbound_limits = compile_limits(load_text(LIMIT), "default", {}, None, lambda: 50.0)
    head = RequestHead(method="GET", target="/", path="/", headers=[], host="")
    assert rt.inbound_limits.check(head.method, "/", "") is None
    assert rt.inbound_limits.check(head.method, "/", "") is None
    data = explain(sc, {"direction": "inbound", "path": "/"})
    assert data["decision"] == "429 RL: refused by default/slow"
    assert data["rate_limit"] == {"policy": "default/slow", "limit": "total"}
