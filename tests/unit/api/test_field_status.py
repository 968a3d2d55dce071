"""The field-status table (control_plane/api/field_status.py) describes every field of every
kind exactly, docs/istio-compatibility.md is what the generator makes of it, and validation,
``meshlet analyze`` and the sidecar's loader warn for exactly the fields it marks unenforced."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from control_plane.api import compat_doc, field_status, networking
from control_plane.api.field_status import ENFORCED, REFUSED, STATUS, WARNED, problems
from control_plane.api.resources import SCHEMAS, from_dict, load_text_with_warnings
from control_plane.api.schema import integer, obj, string
from control_plane.cli.main import main

GOLDEN = Path(__file__).with_name("golden")


def test_every_field_of_every_kind_has_exactly_one_status():
    assert problems(SCHEMAS) == []


def test_statuses_are_the_three_known_ones():
    assert {st.status for table in STATUS.values() for st in table.values()} == {
        ENFORCED,
        REFUSED,
        WARNED,
    }
    for name, table in STATUS.items():
        for field, st in table.items():
            if st.status != ENFORCED:
                assert st.note, f"{name}.{field}: a warned or refused field says why"
            assert st.warn_if is None or st.status == ENFORCED


def test_a_field_added_to_a_schema_without_a_status_fails():
    vs = networking.VIRTUAL_SERVICE.shape  # type: ignore[attr-defined]
    grown = obj(
        {**vs.fields, "newField": integer()}, unsupported=vs.unsupported, name="VirtualService"
    )
    assert problems({**SCHEMAS, "VirtualService": grown}) == [
        "VirtualService.newField: no status in field_status.STATUS"
    ]


def test_a_new_kind_or_message_without_statuses_fails():
    kind = obj({"limit": obj({"rps": integer()}, name="Limit")}, name="RateLimitPolicy")
    assert problems({**SCHEMAS, "RateLimitPolicy": kind}) == [
        "RateLimitPolicy: message 'RateLimitPolicy' has no entry in STATUS",
        "RateLimitPolicy: message 'Limit' has no entry in STATUS",
    ]
    unnamed = obj({"x": obj({"y": string()})}, name="Other")
    STATUS["Other"] = {"x": field_status.E()}
    try:
        assert problems({**SCHEMAS, "Other": unnamed}) == [
            "Other: an obj() with fields ['y'] has no name"
        ]
    finally:
        del STATUS["Other"]


def test_a_stale_or_inconsistent_status_fails():
    STATUS["HTTPRoute"]["gone"] = field_status.E()
    try:
        assert problems(SCHEMAS) == ["HTTPRoute.gone: in STATUS but not a field of the schema"]
    finally:
        del STATUS["HTTPRoute"]["gone"]
    saved = STATUS["HTTPRoute"]["redirect"]
    STATUS["HTTPRoute"]["redirect"] = field_status.W("x")
    try:
        assert problems(SCHEMAS) == [
            "HTTPRoute.redirect: refused by the schema, not in STATUS as refused"
        ]
    finally:
        STATUS["HTTPRoute"]["redirect"] = saved


def test_committed_doc_is_the_generated_one():
    committed = compat_doc.DOC.read_text(encoding="utf-8")
    assert committed == compat_doc.render(), (
        "docs/istio-compatibility.md is stale: run python -m control_plane.api.compat_doc"
    )
    assert compat_doc.main(["--check"]) == 0


def test_doc_check_fails_on_a_stale_doc(tmp_path, capsys):
    stale = tmp_path / "doc.md"
    stale.write_text(compat_doc.render().replace("| `corsPolicy` | accepted", "| `corsPolicy` | x"))
    assert compat_doc.main(["--check", "--output", str(stale)]) == 1
    assert "out of date" in capsys.readouterr().out


def test_doc_lists_each_kind_and_the_issue_19_fields():
    text = compat_doc.render()
    for kind in SCHEMAS:
        assert f"\n## {kind}\n" in text
    assert (
        "| `maxConnections` | enforced | per endpoint; overflow answers 503 UO (enforced since issue 19) |"
        in text
    )
    assert "| `corsPolicy` | accepted with a warning |" in text
    assert "| `tcp` | enforced |" in text  # issue 14: opaque TCP
    assert "| `credentialName` | refused |" in text
    assert "| `redirect` | refused |" in text
    assert "](" not in text  # no links, inside the repository or out


VS = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  exportTo: ["."]
  tcp: [{match: [{port: 5432, gateways: [mesh]}], route: [{destination: {host: reviews}}]}]
  http:
  - match: [{uri: {prefix: /a}, port: 9080, statPrefix: a}, {uri: {prefix: /b}}]
    corsPolicy: {allowOrigins: [{exact: "https://x"}], allowMethods: [GET]}
    retries: {attempts: 2, retryIgnorePreviousHosts: false, retryRemoteLocalities: true}
    route: [{destination: {host: reviews}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {simple: PASSTHROUGH}
    connectionPool: {tcp: {maxConnections: 1, tcpKeepalive: {time: 10s}}, http: {useClientProtocol: true}}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}, {number: 9443, name: tls, protocol: TLS}, {number: 53, name: dns, protocol: UDP}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.1, weight: 3, network: n1}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews}
spec:
  rules:
  - from: [{source: {requestPrincipals: ["*"]}}]
    when: [{key: "request.auth.claims[iss]", values: [x]}, {key: source.ip, values: [10.0.0.0/8]}]
"""


def test_validation_warns_for_each_unenforced_field_with_its_path():
    _, warns = load_text_with_warnings(VS, "f.yaml")
    got = [(w.document, w.field) for w in warns if "not enforced" in w.reason]
    assert got == [
        (1, "spec.exportTo"),
        (1, "spec.tcp[0].match[0].gateways"),
        (1, "spec.http[0].match[0].port"),
        (1, "spec.http[0].match[0].statPrefix"),
        (1, "spec.http[0].corsPolicy"),  # once for the whole subtree
        (1, "spec.http[0].retries.retryIgnorePreviousHosts"),
        (1, "spec.http[0].retries.retryRemoteLocalities"),
        (2, "spec.trafficPolicy.loadBalancer.simple"),
        (2, "spec.trafficPolicy.connectionPool.http.useClientProtocol"),
        (2, "spec.subsets[0].trafficPolicy.loadBalancer.consistentHash"),
        (3, "spec.ports[2].protocol"),
        (3, "spec.endpoints[0].weight"),
        (3, "spec.endpoints[0].network"),
        (4, "spec.rules[0].from[0].source.requestPrincipals"),
        (4, "spec.rules[0].when[0].key"),
    ]


@pytest.mark.parametrize(
    "doc",
    [
        {"http": [{"route": [{"destination": {"host": "a"}}]}]},
        {
            "http": [
                {
                    "retries": {"attempts": 1, "retryIgnorePreviousHosts": True},
                    "route": [{"destination": {"host": "a"}}],
                }
            ]
        },
    ],
)
def test_enforced_fields_and_values_do_not_warn(doc):
    res = from_dict(
        {
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "a"},
            "spec": {"hosts": ["a"], **doc},
        }
    )
    assert field_status.unenforced(SCHEMAS["VirtualService"], res.spec) == []


@pytest.mark.parametrize(
    ("route", "field", "reason"),
    [
        ({"redirect": {"uri": "/b"}}, "spec.http[0].redirect", "redirect is not supported"),
        ({"delegate": {"name": "x"}}, "spec.http[0].delegate", "delegate is not supported"),
        (
            {"directResponse": {"status": 200, "body": {"bytes": "eA=="}}},
            "spec.http[0].directResponse.body.bytes",
            "body.bytes is not supported",
        ),
        (
            {
                "route": [{"destination": {"host": "a"}}],
                "mirrors": [{"destination": {"host": "b"}}, {"destination": {"host": "c"}}],
            },
            "spec.http[0].mirrors",
            "at most 1",
        ),
    ],
)
def test_fields_meshlet_cannot_honour_are_refused(route, field, reason):
    from control_plane.api.resources import InvalidConfig

    doc = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "a"},
        "spec": {"hosts": ["a"], "http": [route]},
    }
    with pytest.raises(InvalidConfig) as exc:
        from_dict(doc, "f.yaml")
    assert any(e.field == field and reason in e.reason for e in exc.value.errors), exc.value.errors


def test_analyze_golden_output(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("mesh.yaml").write_text(VS)
    assert main(["analyze", "-f", "mesh.yaml"]) == 0  # warnings only
    out = capsys.readouterr().out
    golden = GOLDEN / "analyze_unenforced.txt"
    if __import__("os").environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(out)
    assert out == golden.read_text()


def test_analyze_json_names_file_document_and_field(tmp_path, capsys):
    path = tmp_path / "mesh.yaml"
    path.write_text(textwrap.dedent(VS))
    assert main(["analyze", "-f", str(path), "-o", "json"]) == 0
    import json

    found = json.loads(capsys.readouterr().out)["findings"]
    cors = [f for f in found if f["field"] == "spec.http[0].corsPolicy"]
    assert cors == [
        {
            "level": "warning",
            "source": f"{path}#1",
            "kind": "VirtualService",
            "name": "reviews",
            "field": "spec.http[0].corsPolicy",
            "message": "accepted but not enforced by meshlet: "
            + STATUS["HTTPRoute"]["corsPolicy"].note,
            "namespace": "default",
        }
    ]
