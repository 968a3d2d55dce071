"""Istio's Sidecar kind: validation, which Sidecar applies, and what each sidecar receives."""

from __future__ import annotations

import pytest

from control_plane.api import scope
from control_plane.api.analyze import analyze
from control_plane.api.resources import InvalidConfig, load_text, load_text_with_warnings

MESH = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: ratings}}]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec: {host: ratings}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: payment, namespace: shop}
spec: {host: payment}
---
apiVersion: meshlet.dev/v1alpha1
kind: ResiliencePolicy
metadata: {name: payment, namespace: shop}
spec: {host: payment.shop.svc.cluster.local}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext}
spec:
  hosts: [api.example.com]
  resolution: DNS
  ports: [{number: 443, name: https, protocol: HTTPS}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mine}
spec: {selector: {matchLabels: {app: productpage}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: theirs}
spec: {selector: {matchLabels: {app: reviews}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: shop, namespace: shop}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: mesh, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: meshlet.dev/v1alpha1
kind: MeshConfig
metadata: {name: mesh}
spec: {}
"""
REGISTRY = [
    {"service": "reviews", "namespace": "default", "address": "127.0.0.1:1"},
    {"service": "ratings", "namespace": "default", "address": "127.0.0.1:2"},
    {"service": "payment", "namespace": "shop", "address": "127.0.0.1:3"},
    {"service": "productpage", "namespace": "default", "address": "127.0.0.1:4"},
]


def sidecar(egress_hosts: list[str] | None, ns: str = "default", name: str = "s",
            selector: dict | None = None) -> str:
    spec = ""
    if selector:
        spec += f"\n  workloadSelector: {{labels: {selector}}}"
    if egress_hosts is not None:
        spec += f"\n  egress: [{{hosts: {egress_hosts}}}]"
    return (f"---\napiVersion: networking.istio.io/v1beta1\nkind: Sidecar\n"
            f"metadata: {{name: {name}, namespace: {ns}}}\nspec:{spec or ' {}'}\n")


def kept(text: str, ns: str = "default", labels: dict | None = None):
    resources = load_text(text)
    sc = scope.compute(resources, REGISTRY, ns, labels or {"app": "productpage"})
    refs = {f"{resources[i].kind}/{resources[i].namespace}/{resources[i].name}"
            for i in sc.resources}
    return refs, {REGISTRY[j]["service"] for j in sc.registry}, sc


def test_no_sidecar_resource_means_everything():
    refs, services, sc = kept(MESH)
    assert sc.everything and len(refs) == 10 and len(services) == 4


def test_egress_hosts_limit_services_and_pull_in_virtual_service_destinations():
    refs, services, sc = kept(MESH + sidecar(["./reviews.default.svc.cluster.local"]))
    # reviews is allowed; its VirtualService routes to ratings, which comes along with its DR
    assert services == {"reviews", "ratings"}
    assert {"VirtualService/default/reviews", "DestinationRule/default/ratings"} <= refs
    # nothing of shop, nor the external service
    assert not any("/shop/" in r for r in refs) and "ServiceEntry/default/ext" not in refs
    # inbound config for this workload only; the mesh-wide PeerAuthentication applies to it
    assert "AuthorizationPolicy/default/mine" in refs
    assert "AuthorizationPolicy/default/theirs" not in refs
    assert "PeerAuthentication/istio-system/mesh" in refs
    assert {"MeshConfig/default/mesh", "Sidecar/default/s"} <= refs


def test_namespace_wildcards_short_names_and_none():
    refs, services, _ = kept(MESH + sidecar(["shop/*", "*/api.example.com"]))
    assert services == {"payment"}
    assert {"DestinationRule/shop/payment", "ResiliencePolicy/shop/payment",
            "ServiceEntry/default/ext"} <= refs
    _, services, _ = kept(MESH + sidecar(["~/*"]))
    assert services == set()
    _, services, _ = kept(MESH + sidecar(["default/ratings"]))  # a short name in that namespace
    assert services == {"ratings"}


def test_precedence_selector_then_namespace_then_root():
    text = (MESH + sidecar(["shop/*"], name="ns-default")
            + sidecar(["./ratings"], name="picky", selector={"app": "productpage"})
            + sidecar(["./*"], ns="istio-system", name="root"))
    _, services, sc = kept(text)
    assert sc.sidecar.name == "picky" and services == {"ratings"}
    _, services, sc = kept(text, labels={"app": "reviews"})
    assert sc.sidecar.name == "ns-default" and services == {"payment"}
    # the root namespace's default; "./" is the workload's own namespace
    _, services, sc = kept(text, ns="shop", labels={"app": "payment"})
    assert sc.sidecar.name == "root" and services == {"payment"}


def test_sidecar_without_egress_sees_everything():
    _, services, sc = kept(MESH + sidecar(None))
    assert sc.sidecar is not None and len(services) == 4


def test_validation_names_file_document_and_field():
    bad = sidecar(["reviews.default.svc.cluster.local", "nope!/x"]).lstrip("-\n")
    with pytest.raises(InvalidConfig) as e:
        load_text(bad, "sidecar.yaml")
    errors = [str(x) for x in e.value.errors]
    assert errors[0].startswith("sidecar.yaml: document 1 (Sidecar default/s): "
                                "spec.egress[0].hosts[0]: ")
    assert "namespace/dnsName" in errors[0]
    assert "spec.egress[0].hosts[1]" in errors[1]


def test_listener_fields_are_enforced_and_the_rest_warned():
    text = """apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: s}
spec:
  egress: [{port: {number: 9080, protocol: HTTP, name: http}, bind: 127.0.0.1, hosts: ["./*"],
            captureMode: NONE}]
  ingress: [{port: {number: 9080, protocol: HTTP, name: http}, defaultEndpoint: "127.0.0.1:8080"}]
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
"""
    [res], warns = load_text_with_warnings(text, "s.yaml")
    fields = sorted(w.field for w in warns)
    # egress port/bind and ingress open listeners (proxy/tcp); these two are not enforced
    assert fields == ["spec.egress[0].captureMode", "spec.outboundTrafficPolicy"]
    assert all("not enforced by meshlet" in w.reason for w in warns)
    assert res.kind == "Sidecar"


def test_analyze_sidecar_selecting_nothing_and_hosts_matching_nothing():
    text = MESH + sidecar(["./reviews", "*/revews.default.svc.cluster.local"],
                          selector={"app": "nobody"})
    findings = {(f.field, f.level): f.message for f in analyze(load_text(text),
                                                                services=["reviews"])}
    assert ("spec.workloadSelector.labels", "warning") in findings
    msg = findings[("spec.egress[0].hosts[1]", "warning")]
    assert "revews" in msg and "matches no known service" in msg
    assert ("spec.egress[0].hosts[0]", "warning") not in findings


OWN_SE = """
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: productpage}
spec:
  hosts: [productpage]
  ports: [{number: 9000, name: tcp-pp}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: pp-by-selector}
spec:
  hosts: [pp-alias.internal]
  workloadSelector: {labels: {app: productpage}}
  ports: [{number: 9001, name: tcp-alias}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: other, namespace: shop}
spec:
  hosts: [productpage]
  ports: [{number: 9002, name: tcp-other}]
"""


def test_egress_scoping_keeps_the_service_entries_declaring_the_workload_itself():
    # egress allows only shop: outbound view is shop's, but the workload's own ServiceEntries
    # (which its inbound side reads to accept opaque TCP on their ports) stay, as in Istio
    refs, services, _ = kept(MESH + OWN_SE + sidecar(["shop/payment"]))
    assert {"ServiceEntry/default/productpage", "ServiceEntry/default/pp-by-selector"} <= refs
    assert "ServiceEntry/shop/other" not in refs  # same short name, another namespace
    assert services == {"payment"}  # registry: still only what egress allows
    # another workload with the same Sidecar does not get productpage's entries
    refs, _, _ = kept(MESH + OWN_SE + sidecar(["shop/payment"]), labels={"app": "reviews"})
    assert not {"ServiceEntry/default/productpage", "ServiceEntry/default/pp-by-selector"} & refs
