"""AuthorizationPolicy evaluation: Istio's documented examples (security-ops.md 2.1-2.5)."""

from __future__ import annotations

import logging

import pytest

from control_plane.api.resources import InvalidConfig
from proxy.authz.engine import (
    DENY_BODY,
    DENY_STATUS,
    Decision,
    RequestAttrs,
    compile_policies,
    merged_header_getter,
    peer_identity,
)
from tests.unit.authz.helpers import ORDERS, WORKLOAD_LABELS, ap, req

ALLOW_NOTHING = {}
DENY_ALL = {"action": "DENY", "rules": [{}]}
ALLOW_ALL = {"rules": [{}]}


def decide(specs: list[dict], r: RequestAttrs, *, protocol: str = "http") -> Decision:
    resources = [ap(f"p{i}", s) for i, s in enumerate(specs)]
    return compile_policies(resources, "default", WORKLOAD_LABELS, protocol=protocol).check(r)


def allowed(specs: list[dict], r: RequestAttrs, **kw: str) -> bool:
    return decide(specs, r, **kw).allowed


# (id, policy specs, request, allowed?)
TABLE = [
    # evaluation order and the common shapes (2.2)
    ("no-policy-allows", [], req(), True),
    ("allow-nothing", [ALLOW_NOTHING], req(), False),
    ("allow-empty-rules-list", [{"action": "ALLOW", "rules": []}], req(), False),
    ("allow-all", [ALLOW_ALL], req(), True),
    ("deny-all", [DENY_ALL], req(), False),
    ("deny-without-rules-has-no-effect", [{"action": "DENY"}], req(), True),
    ("deny-wins-over-allow", [ALLOW_ALL, DENY_ALL], req(), False),
    ("allow-elsewhere-admits-past-allow-nothing", [ALLOW_NOTHING, ALLOW_ALL], req(), True),
    ("only-deny-policies-then-allow", [{"action": "DENY", "rules": [{"to": [
        {"operation": {"methods": ["DELETE"]}}]}]}], req(), True),
    ("audit-never-denies", [{"action": "AUDIT", "rules": [{}]}], req(), True),
    ("audit-never-allows", [ALLOW_NOTHING, {"action": "AUDIT", "rules": [{}]}], req(), False),
    # principals (mTLS only)
    ("principal-exact", [{"rules": [{"from": [{"source": {"principals": [ORDERS]}}]}]}],
     req(), True),
    ("principal-other", [{"rules": [{"from": [{"source": {
        "principals": ["cluster.local/ns/default/sa/payment"]}}]}]}], req(), False),
    ("principal-prefix", [{"rules": [{"from": [{"source": {
        "principals": ["cluster.local/ns/default/*"]}}]}]}], req(), True),
    ("principal-suffix", [{"rules": [{"from": [{"source": {
        "principals": ["*/sa/orders"]}}]}]}], req(), True),
    ("principal-presence", [{"rules": [{"from": [{"source": {"principals": ["*"]}}]}]}],
     req(), True),
    ("plaintext-principal-rule-denied", [{"rules": [{"from": [{"source": {
        "principals": [ORDERS]}}]}]}], req(principal=None), False),
    ("plaintext-presence-denied", [{"rules": [{"from": [{"source": {"principals": ["*"]}}]}]}],
     req(principal=None), False),
    ("identity-without-mtls-ignored", [{"rules": [{"from": [{"source": {
        "principals": [ORDERS]}}]}]}], req(mtls=False), False),
    ("deny-principal-does-not-fire-on-plaintext", [{"action": "DENY", "rules": [{"from": [
        {"source": {"principals": [ORDERS]}}]}]}], req(principal=None), True),
    ("deny-notPrincipals-star-blocks-plaintext", [{"action": "DENY", "rules": [{"from": [
        {"source": {"notPrincipals": ["*"]}}]}]}], req(principal=None), False),
    ("deny-notPrincipals-star-passes-mtls", [{"action": "DENY", "rules": [{"from": [
        {"source": {"notPrincipals": ["*"]}}]}]}], req(), True),
    # namespaces
    ("namespace", [{"rules": [{"from": [{"source": {"namespaces": ["default"]}}]}]}],
     req(), True),
    ("namespace-other", [{"rules": [{"from": [{"source": {"namespaces": ["prod"]}}]}]}],
     req(), False),
    ("namespace-plaintext", [{"rules": [{"from": [{"source": {"namespaces": ["default"]}}]}]}],
     req(principal=None), False),
    ("notNamespaces", [{"action": "DENY", "rules": [{"from": [{"source": {
        "notNamespaces": ["default"]}}]}]}], req(principal="cluster.local/ns/evil/sa/x"), False),
    # serviceAccounts: dots are literal (CVE-2026-39350)
    ("serviceAccounts", [{"rules": [{"from": [{"source": {
        "serviceAccounts": ["default/orders"]}}]}]}], req(), True),
    ("serviceAccounts-policy-namespace", [{"rules": [{"from": [{"source": {
        "serviceAccounts": ["orders"]}}]}]}], req(), True),
    ("serviceAccounts-dot-literal", [{"rules": [{"from": [{"source": {
        "serviceAccounts": ["default/a.b"]}}]}]}],
     req(principal="cluster.local/ns/default/sa/aXb"), False),
    # methods + paths (the bookinfo example)
    ("method-path-prefix", [{"rules": [{"to": [{"operation": {
        "methods": ["GET"], "paths": ["/items*"]}}]}]}], req(path="/items/42"), True),
    ("method-mismatch", [{"rules": [{"to": [{"operation": {
        "methods": ["GET"], "paths": ["/items*"]}}]}]}], req(method="POST"), False),
    ("path-exact-ignores-nothing", [{"rules": [{"to": [{"operation": {"paths": ["/items"]}}]}]}],
     req(path="/items/"), False),
    ("path-suffix", [{"rules": [{"to": [{"operation": {"paths": ["*.css"]}}]}]}],
     req(path="/static/site.css"), True),
    ("notPaths-allow", [{"rules": [{"to": [{"operation": {"notPaths": ["/admin*"]}}]}]}],
     req(path="/items"), True),
    ("notPaths-allow-blocks", [{"rules": [{"to": [{"operation": {"notPaths": ["/admin*"]}}]}]}],
     req(path="/admin/users"), False),
    ("path-template-one-segment", [{"rules": [{"to": [{"operation": {
        "paths": ["/foo/{*}"]}}]}]}], req(path="/foo/bar"), True),
    ("path-template-one-segment-only", [{"rules": [{"to": [{"operation": {
        "paths": ["/foo/{*}"]}}]}]}], req(path="/foo/bar/baz"), False),
    ("path-template-many", [{"rules": [{"to": [{"operation": {
        "paths": ["/foo/{**}/"]}}]}]}], req(path="/foo/bar/baz.txt"), True),
    ("path-template-many-anchored", [{"rules": [{"to": [{"operation": {
        "paths": ["/foo/{**}/"]}}]}]}], req(path="/bar/foo/bar"), False),
    ("path-template-mid", [{"rules": [{"to": [{"operation": {
        "paths": ["/v1/{*}/items"]}}]}]}], req(path="/v1/x.y/items"), True),
    # ports (strings in the spec)
    ("ports", [{"rules": [{"to": [{"operation": {"ports": ["8080"]}}]}]}], req(), True),
    ("ports-other", [{"rules": [{"to": [{"operation": {"ports": ["9090"]}}]}]}], req(), False),
    ("notPorts", [{"action": "DENY", "rules": [{"to": [{"operation": {
        "notPorts": ["8080"]}}]}]}], req(port=9090), False),
    # hosts: case-insensitive; an exact host does not ignore a port (2.3)
    ("hosts", [{"rules": [{"to": [{"operation": {
        "hosts": ["inventory.default.svc.cluster.local"]}}]}]}], req(), True),
    ("hosts-case", [{"rules": [{"to": [{"operation": {"hosts": ["Example.com"]}}]}]}],
     req(host="eXample.COM"), True),
    ("hosts-port-not-ignored", [{"rules": [{"to": [{"operation": {"hosts": ["httpbin.com"]}}]}]}],
     req(host="httpbin.com:80"), False),
    ("hosts-with-port-wildcard", [{"rules": [{"to": [{"operation": {
        "hosts": ["httpbin.com", "httpbin.com:*"]}}]}]}], req(host="httpbin.com:80"), True),
    ("hosts-suffix", [{"rules": [{"to": [{"operation": {"hosts": ["*.example.com"]}}]}]}],
     req(host="api.EXAMPLE.com"), True),
    ("deny-host-uppercase-bypass", [{"action": "DENY", "rules": [{"to": [{"operation": {
        "hosts": ["secret.com"]}}]}]}], req(host="Secret.com"), False),
    # when: request headers (merged), source.ip, destination.port, source.principal
    ("when-header", [{"rules": [{"when": [{"key": "request.headers[User-Agent]",
        "values": ["Mozilla/*"]}]}]}], req(headers=[("user-agent", "Mozilla/5.0")]), True),
    ("when-header-absent", [{"rules": [{"when": [{"key": "request.headers[x-token]",
        "values": ["*"]}]}]}], req(), False),
    ("when-header-notValues", [{"action": "DENY", "rules": [{"when": [
        {"key": "request.headers[x-env]", "notValues": ["prod"]}]}]}],
     req(headers=[("x-env", "dev")]), False),
    ("when-header-duplicates-merged", [{"action": "DENY", "rules": [{"when": [
        {"key": "request.headers[x-role]", "values": ["*admin"]}]}]}],
     req(headers=[("x-role", "user"), ("x-role", "admin")]), False),
    ("when-source-ip", [{"rules": [{"when": [{"key": "source.ip",
        "values": ["10.0.0.0/24"]}]}]}], req(ip="10.0.0.99"), True),
    ("when-source-ip-notValues", [{"rules": [{"when": [{"key": "source.ip",
        "notValues": ["10.0.0.7"]}]}]}], req(ip="10.0.0.7"), False),
    ("when-destination-port", [{"rules": [{"when": [{"key": "destination.port",
        "values": ["8080"]}]}]}], req(), True),
    ("when-source-principal", [{"rules": [{"when": [{"key": "source.principal",
        "values": ["*/sa/orders"]}]}]}], req(), True),
    ("when-source-namespace-plaintext", [{"rules": [{"when": [{"key": "source.namespace",
        "values": ["default"]}]}]}], req(principal=None), False),
    # ipBlocks
    ("ipBlocks-cidr", [{"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/8"]}}]}]}],
     req(ip="10.9.8.7"), True),
    ("ipBlocks-single", [{"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.7"]}}]}]}],
     req(ip="10.0.0.8"), False),
    ("ipBlocks-v6", [{"rules": [{"from": [{"source": {"ipBlocks": ["fd00::/8"]}}]}]}],
     req(ip="fd00::1"), True),
    ("ipBlocks-v4-mapped", [{"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/8"]}}]}]}],
     req(ip="::ffff:10.1.2.3"), True),
    ("notIpBlocks-deny", [{"action": "DENY", "rules": [{"from": [{"source": {
        "notIpBlocks": ["10.0.0.0/8"]}}]}]}], req(ip="192.168.1.1"), False),
    ("ipBlocks-garbage-ip", [{"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/8"]}}]}]}],
     req(ip="not-an-ip"), False),
    ("remoteIpBlocks-is-source", [{"rules": [{"from": [{"source": {
        "remoteIpBlocks": ["10.0.0.0/8"]}}]}]}], req(ip="10.1.1.1"), True),
    # AND inside a rule, OR across rules, from and to lists
    ("and-within-rule", [{"rules": [{"from": [{"source": {"principals": [ORDERS]}}],
        "to": [{"operation": {"methods": ["POST"]}}]}]}], req(method="GET"), False),
    ("or-across-rules", [{"rules": [
        {"to": [{"operation": {"methods": ["POST"]}}]},
        {"to": [{"operation": {"paths": ["/items"]}}]}]}], req(), True),
    ("or-across-sources", [{"rules": [{"from": [
        {"source": {"namespaces": ["prod"]}}, {"source": {"ipBlocks": ["10.0.0.7"]}}]}]}],
     req(), True),
    ("X-and-notX-both-hold", [{"rules": [{"to": [{"operation": {
        "paths": ["/items*"], "notPaths": ["/items/secret"]}}]}]}],
     req(path="/items/secret"), False),
]


@pytest.mark.parametrize(("specs", "r", "expected"), [t[1:] for t in TABLE],
                         ids=[t[0] for t in TABLE])  # fmt: skip
def test_table(specs: list[dict], r: RequestAttrs, expected: bool) -> None:
    assert allowed(specs, r) is expected


def test_decision_names_the_policy() -> None:
    deny = ap("no-admin", {"action": "DENY", "rules": [{"to": [{"operation": {
        "paths": ["/admin*"]}}]}]})  # fmt: skip
    allow = ap("from-orders", {"rules": [{"from": [{"source": {"principals": [ORDERS]}}]}]})
    authz = compile_policies([deny, allow], "default", WORKLOAD_LABELS)
    d = authz.check(req(path="/admin"))
    assert d == Decision(False, "default/no-admin", "denied by DENY policy default/no-admin", False)
    d = authz.check(req())
    assert (d.allowed, d.policy) == (True, "default/from-orders")
    d = authz.check(req(principal=None))
    assert (d.allowed, d.policy, d.reason) == (False, "", "no ALLOW policy matched")
    assert compile_policies([], "default", {}).check(req()) == Decision(
        True, "", "no ALLOW policy applies", False
    )
    assert (DENY_STATUS, DENY_BODY) == (403, "RBAC: access denied")


def test_audit_marks_without_changing() -> None:
    audit = ap("audit-writes", {"action": "AUDIT", "rules": [{"to": [{"operation": {
        "methods": ["POST"]}}]}]})  # fmt: skip
    deny = ap("deny-admin", {"action": "DENY", "rules": [{"to": [{"operation": {
        "paths": ["/admin"]}}]}]})  # fmt: skip
    authz = compile_policies([audit, deny], "default", WORKLOAD_LABELS)
    assert authz.check(req(method="POST")) == Decision(
        True, "", "no ALLOW policy applies", True)  # fmt: skip
    assert authz.check(req(method="GET")).audited is False
    d = authz.check(req(method="POST", path="/admin"))
    assert (d.allowed, d.audited) == (False, True)


def test_selection_by_namespace_selector_and_root() -> None:
    policies = [
        ap("mesh", ALLOW_NOTHING, ns="istio-system"),
        ap("other-ns", DENY_ALL, ns="prod"),
        ap("other-app", {**DENY_ALL, "selector": {"matchLabels": {"app": "payment"}}}),
        ap("this-app", {"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}],
                        "selector": {"matchLabels": {"app": "inventory"}}}),  # fmt: skip
    ]
    authz = compile_policies(policies, "default", WORKLOAD_LABELS)
    assert authz.policies == ["default/this-app (ALLOW)", "istio-system/mesh (ALLOW)"]
    assert authz.check(req(method="GET")).allowed
    assert not authz.check(req(method="PUT")).allowed
    # root-namespace policies apply mesh-wide; a custom root namespace moves that
    assert not compile_policies(policies, "prod", {}).check(req()).allowed
    only_mesh = compile_policies([policies[0]], "default", {}, root_namespace="mesh-root")
    assert only_mesh.empty and only_mesh.check(req()).allowed


def test_selector_must_be_a_subset_of_the_labels() -> None:
    p = ap("v2-only", {**DENY_ALL, "selector": {"matchLabels": {"app": "inventory",
                                                                "version": "v2"}}})  # fmt: skip
    assert compile_policies([p], "default", WORKLOAD_LABELS).empty
    assert not compile_policies([p], "default", {"app": "inventory", "version": "v2",
                                                 "x": "y"}).check(req()).allowed  # fmt: skip


def test_dry_run_policies_are_shadowed() -> None:
    p = ap("try-deny", DENY_ALL, annotations={"istio.io/dry-run": "true"})
    authz = compile_policies([p], "default", WORKLOAD_LABELS)
    assert authz.check(req()).allowed
    assert authz.shadow is not None and not authz.shadow.check(req()).allowed
    assert compile_policies([], "default", {}).shadow is None


def test_target_ref_policy_is_skipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(InvalidConfig):  # the validator refuses it ...
        ap("gw", {"targetRefs": [{"kind": "Gateway", "name": "gw"}], "rules": [{}]})
    base = ap("gw", DENY_ALL)  # ... so build one past it, as an old snapshot might carry
    spec = {**base.spec, "targetRef": {"kind": "Gateway", "name": "gw"}}
    res = type(base)(base.api_version, base.kind, base.name, base.namespace, spec, base.labels)
    with caplog.at_level(logging.WARNING, "meshlet.proxy.authz"):
        authz = compile_policies([res], "default", WORKLOAD_LABELS)
    assert authz.empty and authz.check(req()).allowed
    assert any("targetRef" in w for w in authz.warnings)
    assert "targetRef" in caplog.text


def test_custom_is_refused_at_validation() -> None:
    with pytest.raises(InvalidConfig, match="CUSTOM"):
        ap("ext", {"action": "CUSTOM", "rules": [{}]})


# -- fail closed: HTTP-only fields on TCP (2.4), unsupported attributes ------------------------


def test_tcp_deny_ignores_http_fields_widening_the_deny() -> None:
    # The API docs' example: DENY {methods: [POST], ports: ["8080"]} denies all TCP on 8080.
    spec = {"action": "DENY", "rules": [{"to": [{"operation": {"methods": ["POST"],
                                                               "ports": ["8080"]}}]}]}  # fmt: skip
    authz = compile_policies([ap("p", spec)], "default", {}, protocol="tcp")
    assert not authz.check(req(method="", port=8080)).allowed
    assert authz.check(req(method="", port=9090)).allowed
    assert authz.warnings and "widens the DENY" in authz.warnings[0]
    # on HTTP the same policy is exact
    assert allowed([spec], req(method="GET", port=8080))


def test_tcp_allow_drops_rules_with_http_fields() -> None:
    spec = {"rules": [
        {"to": [{"operation": {"paths": ["/items"]}}]},
        {"from": [{"source": {"principals": [ORDERS]}}],
         "when": [{"key": "request.headers[x-a]", "values": ["1"]}]},
        {"from": [{"source": {"namespaces": ["prod"]}}]},
    ]}  # fmt: skip
    authz = compile_policies([ap("p", spec)], "default", {}, protocol="tcp")
    assert not authz.check(req()).allowed  # only the namespaces rule survives
    assert authz.check(req(principal="cluster.local/ns/prod/sa/x")).allowed
    assert len(authz.warnings) == 2


@pytest.mark.parametrize(
    ("rule", "deny_fires"),
    [
        ({"from": [{"source": {"requestPrincipals": ["issuer/*"]}}]}, True),
        ({"from": [{"source": {"notRequestPrincipals": ["*"]}}]}, True),
        ({"when": [{"key": "request.auth.claims[groups]", "values": ["admin"]}]}, True),
        ({"when": [{"key": "destination.ip", "values": ["10.0.0.1"]}]}, True),
        ({"when": [{"key": "connection.sni", "values": ["x.example.com"]}],
          "to": [{"operation": {"ports": ["9999"]}}]}, False),
    ],
)
def test_unsupported_attributes_fail_closed(rule: dict, deny_fires: bool) -> None:
    # ALLOW: the rule never matches; DENY: the condition is ignored (the rest still applies)
    assert not allowed([{"rules": [rule]}], req())
    assert allowed([{"action": "DENY", "rules": [rule]}], req()) is not deny_fires


def test_unknown_when_key_is_a_validation_error() -> None:
    with pytest.raises(InvalidConfig, match="unknown condition key"):
        ap("p", {"rules": [{"when": [{"key": "request.bogus", "values": ["1"]}]}]})


def test_protocol_is_checked() -> None:
    with pytest.raises(ValueError, match="protocol"):
        compile_policies([], "default", {}, protocol="udp")


# -- request attributes -------------------------------------------------------------------------


def test_peer_identity_strips_the_scheme() -> None:
    assert peer_identity("spiffe://cluster.local/ns/default/sa/orders") == (ORDERS, "default")
    assert peer_identity("") == (None, None)
    assert peer_identity("spiffe://td/weird") == ("td/weird", None)
    r = RequestAttrs(source_principal=ORDERS, mtls=True)
    assert r.source_namespace == "default"


def test_merged_header_getter() -> None:
    get = merged_header_getter([("a", "1"), ("b", "2"), ("a", "3")])
    assert (get("a"), get("b"), get("c")) == ("1,3", "2", None)


def test_check_returns_shared_decisions() -> None:
    authz = compile_policies([ap("p", ALLOW_ALL)], "default", {})
    assert authz.check(req()) is authz.check(req(path="/other"))


def test_config_values_never_become_code() -> None:
    # The check is generated code; every config value is bound by name, never pasted in.
    evil = '/x") or True or ("'
    authz = compile_policies([ap("p", {"rules": [{"to": [{"operation": {
        "paths": [evil], "methods": ["GET'] or True or ['"]}}]}]})], "default", {})  # fmt: skip
    assert evil not in authz.source and "True or" not in authz.source
    assert not authz.check(req(path="/items")).allowed
    assert not authz.check(req(path=evil)).allowed  # the method does not match either


def test_request_attrs_from_a_head() -> None:
    from proxy.authz.engine import request_attrs
    from proxy.http1.parser import parse_request_head

    head, _ = parse_request_head(
        b"GET /a/../items?x=1 HTTP/1.1\r\nHost: Inventory:8080\r\nX-A: 1\r\nx-a: 2\r\n\r\n"
    )
    r = request_attrs(head, "/items", peer_spiffe_id="spiffe://" + ORDERS, peer_ip="10.0.0.7",
                      port=8080, tls=True)  # fmt: skip
    assert (r.source_principal, r.source_namespace, r.mtls) == (ORDERS, "default", True)
    assert (r.method, r.host, r.path, r.port, r.headers("x-a")) == (
        "GET", "Inventory:8080", "/items", 8080, "1,2")  # fmt: skip
    plain = request_attrs(head, "/items", peer_spiffe_id="spiffe://" + ORDERS,
                          peer_ip="10.0.0.7", port=8080, tls=False)  # fmt: skip
    assert (plain.source_principal, plain.mtls) == (None, False)
