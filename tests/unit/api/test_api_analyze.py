"""Cross-resource analysis and the ``meshlet analyze`` command."""

from __future__ import annotations

import json
import os
import textwrap

import pytest

from control_plane.api.analyze import Finding, analyze
from control_plane.api.resources import from_dict
from control_plane.cli.main import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
EXAMPLES = os.path.join(ROOT, "configs", "examples")

NET = "networking.istio.io/v1"


def res(kind, name, spec, ns="default", api=NET, labels=None, index=1):
    meta = {"name": name, "namespace": ns}
    if labels:
        meta["labels"] = labels
    return from_dict(
        {"apiVersion": api, "kind": kind, "metadata": meta, "spec": spec}, "x.yaml", index
    )


def vs(http, hosts=("reviews",), name="reviews", ns="default"):
    return res("VirtualService", name, {"hosts": list(hosts), "http": http}, ns=ns)


def dr(host="reviews", subsets=("v1", "v2"), name="reviews", ns="default", **extra):
    spec = {"host": host, "subsets": [{"name": s, "labels": {"version": s}} for s in subsets]}
    spec.update(extra)
    return res("DestinationRule", name, spec, ns=ns)


def se(hosts=("reviews.default.svc.cluster.local",), name="reviews", ns="default", endpoints=()):
    spec = {
        "hosts": list(hosts),
        "ports": [{"number": 80, "name": "http"}],
        "resolution": "STATIC" if endpoints else "NONE",
    }
    if endpoints:
        spec["endpoints"] = [{"address": "10.0.0.1", "labels": lb} for lb in endpoints]
    return res("ServiceEntry", name, spec, ns=ns)


def we(app, name=None, ns="default", **labels):
    return res(
        "WorkloadEntry",
        name or app,
        {"address": "10.0.0.2", "labels": {"app": app, **labels}},
        ns=ns,
    )


def route(*dests):
    return {
        "route": [{"destination": d, **({"weight": w} if w is not None else {})} for d, w in dests]
    }


def only(findings, field_suffix="") -> Finding:
    match = [f for f in findings if f.field.endswith(field_suffix)]
    assert len(match) == 1, [str(f) for f in findings]
    return match[0]


def test_clean_config_has_no_findings():
    rs = [vs([route(({"host": "reviews", "subset": "v1"}, None))]), dr(), se()]
    assert analyze(rs) == []


@pytest.mark.parametrize(
    "host,dr_host,dr_ns",
    [
        ("reviews", "reviews", "default"),
        ("reviews", "reviews.default.svc.cluster.local", "other"),
        ("reviews.default", "reviews", "default"),
        ("reviews.default.svc.cluster.local", "reviews.default", "default"),
    ],
)
def test_subset_lookup_by_host_forms(host, dr_host, dr_ns):
    rs = [vs([route(({"host": host, "subset": "v2"}, None))]), dr(dr_host, ns=dr_ns), se()]
    assert analyze(rs) == []


def test_subset_not_defined_is_an_error():
    rs = [vs([route(({"host": "reviews", "subset": "v3"}, None))]), dr(), se()]
    f = only(analyze(rs))
    assert f.level == "error"
    assert f.field == "spec.http[0].route[0].destination.subset"
    assert str(f) == (
        "Error [spec.http[0].route[0].destination.subset] x.yaml#1 VirtualService "
        'default/reviews: subset "v3" not defined in any DestinationRule for '
        "reviews.default.svc.cluster.local"
    )


def test_subset_of_a_dr_in_another_namespace_for_another_host_does_not_count():
    rs = [vs([route(({"host": "reviews", "subset": "v1"}, None))]), dr(ns="other"), se()]
    f = only(analyze(rs), "subset")
    assert "reviews.default.svc.cluster.local" in f.message


def test_mirror_subset_checked():
    rule = route(({"host": "reviews", "subset": "v1"}, None))
    rule["mirror"] = {"host": "reviews", "subset": "shadow"}
    f = only(analyze([vs([rule]), dr(), se()]))
    assert f.field == "spec.http[0].mirror.subset"


def test_unknown_route_host_is_a_warning():
    rs = [vs([route(({"host": "ratings"}, None))])]
    f = only(analyze(rs))
    assert f.level == "warning"
    assert f.field == "spec.http[0].route[0].destination.host"
    assert "ratings.default.svc.cluster.local" in f.message
    assert analyze(rs, services=["ratings.default.svc.cluster.local"]) == []
    assert analyze(rs + [we("ratings")]) == []
    assert analyze(rs + [se(["*.default.svc.cluster.local"], name="wild")]) == []


def test_weights_summing_to_zero():
    # Validation rejects this; analyze also reports it for resources built in code.
    from control_plane.api.resources import Resource

    spec = {
        "hosts": ["reviews"],
        "http": [route(({"host": "reviews"}, 0), ({"host": "reviews"}, 0))],
    }
    r = Resource(NET, "VirtualService", "reviews", "default", spec, {}, "y.yaml#1")
    f = only(analyze([r, se()]))
    assert f.level == "error" and f.field == "spec.http[0].route"


@pytest.mark.parametrize(
    "timeout,per_try,attempts,expect",
    [
        ("1s", "200ms", 3, None),  # 4 x 200ms fits
        ("1s", "300ms", 3, "spec.http[0].retries"),  # 4 x 300ms > 1s
        ("1s", "1s", 2, "spec.http[0].retries.perTryTimeout"),
        ("0s", "1s", 5, None),  # no route timeout
    ],
)
def test_retries_versus_timeout(timeout, per_try, attempts, expect):
    rule = route(({"host": "reviews"}, None))
    rule.update(timeout=timeout, retries={"attempts": attempts, "perTryTimeout": per_try})
    findings = analyze([vs([rule]), se()])
    if expect is None:
        assert findings == []
    else:
        f = only(findings)
        assert (f.level, f.field) == ("warning", expect)


def test_retry_budget_ratio_above_one():
    rp = res(
        "ResiliencePolicy",
        "reviews",
        {"host": "reviews", "retryBudget": {"retryRatio": 1.5}},
        api="meshlet.dev/v1alpha1",
    )
    f = only(analyze([rp, se()]))
    assert (f.level, f.field) == ("warning", "spec.retryBudget.retryRatio")


def test_duplicates():
    a = vs([route(({"host": "reviews"}, None))])
    b = res("VirtualService", "reviews", a.spec, index=4)
    findings = analyze([a, b, se()])
    f = only(findings, "metadata.name")
    assert f.level == "error" and f.source == "x.yaml#4"
    assert "already defined in x.yaml#1" in f.message


def test_two_virtual_services_for_one_host_warns():
    a = vs([route(({"host": "reviews"}, None))])
    b = vs(
        [route(({"host": "reviews"}, None))],
        hosts=["reviews.default.svc.cluster.local"],
        name="reviews-2",
    )
    f = only(analyze([a, b, se()]))
    assert (f.level, f.name, f.field) == ("warning", "reviews-2", "spec.hosts[0]")


def test_two_mesh_configs():
    m1 = res("MeshConfig", "a", {}, api="meshlet.dev/v1alpha1")
    m2 = res("MeshConfig", "b", {}, api="meshlet.dev/v1alpha1")
    f = only(analyze([m1, m2]))
    assert f.level == "error" and f.name == "b"


def test_subset_selecting_no_endpoint():
    rs = [dr(), se(endpoints=[{"version": "v1"}])]
    f = only(analyze(rs))
    assert (f.level, f.field) == ("warning", "spec.subsets[1].labels")


def test_authorization_policy_selector_matching_nothing():
    ap = res(
        "AuthorizationPolicy",
        "a",
        {"selector": {"matchLabels": {"app": "payment"}}},
        api="security.istio.io/v1",
    )
    f = only(analyze([ap]))
    assert (f.level, f.field) == ("warning", "spec.selector.matchLabels")
    assert analyze([ap, we("payment")]) == []
    assert len(analyze([ap, we("payment", ns="other")])) == 1
    assert analyze([ap], workloads=[("default", {"app": "payment"})]) == []


def pa(name, mode, selector=None, ns="default"):
    spec = {"mtls": {"mode": mode}}
    if selector:
        spec["selector"] = {"matchLabels": selector}
    return res("PeerAuthentication", name, spec, ns=ns, api="security.istio.io/v1")


def test_conflicting_namespace_wide_peer_authentications():
    f = only(analyze([pa("a", "STRICT"), pa("b", "PERMISSIVE")]))
    assert (f.level, f.name) == ("error", "b")
    f = only(analyze([pa("a", "STRICT"), pa("b", "STRICT")]))
    assert f.level == "warning"
    assert analyze([pa("a", "STRICT"), pa("b", "DISABLE", ns="other")]) == []


def test_conflicting_selector_peer_authentications():
    w = we("payment", version="v1")
    f = only(
        analyze([w, pa("a", "STRICT", {"app": "payment"}), pa("b", "DISABLE", {"app": "payment"})])
    )
    assert (f.level, f.field) == ("error", "spec.selector")
    f = only(
        analyze([w, pa("a", "STRICT", {"app": "payment"}), pa("b", "DISABLE", {"version": "v1"})])
    )
    assert (f.level, f.name) == ("warning", "b")


def test_plaintext_destination_rule_against_strict_namespace():
    d = dr(trafficPolicy={"tls": {"mode": "DISABLE"}})
    f = only(analyze([d, se(), pa("default", "STRICT")]))
    assert f.field == "spec.trafficPolicy.tls.mode"


# -- the command ------------------------------------------------------------------------------


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text).lstrip())
    return str(p)


BROKEN = """
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: reviews}
    spec:
      hosts: [reviews]
      http:
      - route:
        - destination: {host: reviews, subset: v3}
    ---
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: reviews}
    spec:
      host: reviews
      subsets: [{name: v1, labels: {version: v1}}]
    ---
    apiVersion: networking.istio.io/v1
    kind: ServiceEntry
    metadata: {name: reviews}
    spec:
      hosts: [reviews.default.svc.cluster.local]
      ports: [{number: 80, name: http}]
"""


def test_cli_examples_are_clean(capsys):
    assert main(["analyze", "-f", EXAMPLES]) == 0
    out = capsys.readouterr().out
    assert out.startswith("No validation issues found when analyzing")


def test_cli_reports_analysis_error(tmp_path, capsys):
    path = write(tmp_path, "x.yaml", BROKEN)
    assert main(["analyze", "-f", path]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"Error [spec.http[0].route[0].destination.subset] {path}#1 VirtualService "
        'default/reviews: subset "v3" not defined in any DestinationRule for '
        "reviews.default.svc.cluster.local"
    ]


def test_cli_reports_validation_errors_with_file_and_document(tmp_path, capsys):
    path = write(
        tmp_path, "bad.yaml", BROKEN.replace("subset: v3}", "subset: v1}\n          weight: -1")
    )
    path2 = write(tmp_path, "bad2.yaml", "kind: Nope\nmetadata: {name: x}\n")
    assert main(["analyze", "-f", path, "-f", path2]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (
        f"Error [spec.http[0].route[0].weight] {path}#1 VirtualService default/reviews: "
        "must be an integer >= 0"
    )
    assert out[1].startswith(f"Error [kind] {path2}#1 Nope default/x: unknown kind 'Nope'")


def test_cli_warnings_exit_zero_and_json(tmp_path, capsys):
    write(tmp_path, "w.yaml", BROKEN.replace("subset: v3", "subset: v1"))
    path_w = write(
        tmp_path,
        "w2.yaml",
        """
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: ratings}
        spec:
          hosts: [ratings]
          http:
          - route:
            - destination: {host: ratings}
              weight: 50
            - destination: {host: reviews}
              weight: 20
    """,
    )
    assert main(["analyze", "-f", str(tmp_path), "-o", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["errors"] == 0 and data["resources"] == 4
    fields = sorted((f["source"], f["field"], f["level"]) for f in data["findings"])
    assert fields == [
        (f"{path_w}#1", "spec.http[0].route", "warning"),
        (f"{path_w}#1", "spec.http[0].route[0].destination.host", "warning"),
    ]


def test_cli_missing_path(tmp_path, capsys):
    assert main(["analyze", "-f", str(tmp_path / "nope.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_cli_stdin(monkeypatch, capsys):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(textwrap.dedent(BROKEN)))
    assert main(["analyze", "-f", "-"]) == 1
    assert "<stdin>#1 VirtualService default/reviews" in capsys.readouterr().out


def test_rules_after_a_catch_all_are_unreachable():
    dest = ({"host": "reviews"}, None)
    catch_all = {**route(dest), "match": [{"uri": {"prefix": "/"}}]}
    specific = {**route(dest), "match": [{"uri": {"prefix": "/api"}}]}
    findings = analyze([vs([specific, catch_all, specific, route(dest)]), se()])
    assert [(f.level, f.field) for f in findings] == [
        ("warning", "spec.http[2]"),
        ("warning", "spec.http[3]"),
    ]
    assert "spec.http[1] before it matches every request" in findings[0].message
    header_only = {**route(dest), "match": [{"uri": {"prefix": "/"}, "headers": {"x": {}}}]}
    assert analyze([vs([header_only, specific]), se()]) == []


def test_gateways_without_mesh():
    r = res(
        "VirtualService",
        "r",
        {
            "hosts": ["reviews"],
            "gateways": ["ingress"],
            "http": [route(({"host": "reviews"}, None))],
        },
    )
    f = only(analyze([r, se()]))
    assert (f.level, f.field) == ("warning", "spec.gateways")


def test_destination_port_not_declared_by_service_entry():
    f = only(analyze([vs([route(({"host": "reviews", "port": {"number": 9090}}, None))]), se()]))
    assert (f.level, f.field) == ("warning", "spec.http[0].route[0].destination.port.number")
    assert "declares 80" in f.message
    assert analyze([vs([route(({"host": "reviews", "port": {"number": 80}}, None))]), se()]) == []


def test_retries_without_any_timeout():
    rule = {**route(({"host": "reviews"}, None)), "retries": {"attempts": 2}}
    f = only(analyze([vs([rule]), se()]))
    assert (f.level, f.field) == ("warning", "spec.http[0].retries")
    assert analyze([vs([{**rule, "timeout": "2s"}]), se()]) == []


def _canary(name="reviews", stable="v1", canary="v2", host="reviews"):
    return res("Canary", name, {
        "host": host, "stable": stable, "canary": canary,
        "analysis": {"interval": "10s", "stepWeight": 10, "threshold": 2, "minRequests": 10,
                     "checks": {"successRate": {"min": 99}}}}, api="meshlet.dev/v1alpha1")


def test_canary_subsets_come_from_the_destination_rule():
    assert analyze([dr(), _canary()]) == []
    f = only(analyze([dr(subsets=("v1",)), _canary()]))
    assert (f.level, f.field) == ("error", "spec.canary")
    assert f.message == ("subset 'v2' is not defined by the DestinationRule for "
                         "reviews.default.svc.cluster.local (subsets: v1)")
    bare = res("DestinationRule", "reviews", {"host": "reviews", "subsets": [
        {"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"track": "x"}}]})
    assert "has no version label" in only(analyze([bare, _canary()])).message
    f = only(analyze([_canary()]))
    assert (f.field, f.message.split(":")[0]) == (
        "spec.host", "no DestinationRule for reviews.default.svc.cluster.local")


def test_two_canaries_on_one_host_are_a_warning():
    f = only(analyze([dr(), _canary(), _canary(name="again")]))
    assert (f.level, f.name) == ("warning", "again")
    assert "Canary default/reviews also rolls out reviews.default.svc.cluster.local" in f.message
