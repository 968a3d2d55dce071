"""Loading and validating resources: examples, invalid documents, multi-document files, paths."""

from __future__ import annotations

import io
import json
import os
import textwrap

import pytest

from control_plane.api.resources import (
    KINDS,
    ConfigError,
    InvalidConfig,
    Resource,
    from_dict,
    load_path,
    load_path_with_warnings,
    load_text,
    load_text_with_warnings,
    validate_with_warnings,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
EXAMPLES = os.path.join(ROOT, "configs", "examples")


def test_every_kind_has_a_valid_example():
    resources, warnings = load_path_with_warnings(EXAMPLES)
    assert {r.kind for r in resources} == set(KINDS)
    assert warnings == []
    for r in resources:
        assert r.source.startswith(EXAMPLES) and "#" in r.source


def test_round_trip_through_dict_and_json():
    for r in load_path(EXAMPLES):
        again = from_dict(json.loads(json.dumps(r.to_dict())), source="x.yaml", index=1)
        assert again.key == r.key
        assert again.spec == r.spec
        assert again.labels == r.labels
        assert again.api_version == r.api_version


def test_defaults_and_key():
    r = from_dict(
        {
            "apiVersion": "networking.istio.io/v1alpha3",
            "kind": "DestinationRule",
            "metadata": {"name": "reviews"},
            "spec": {"host": "reviews"},
        }
    )
    assert r.namespace == "default"
    assert r.labels == {}
    assert r.key == ("DestinationRule", "default", "reviews")
    assert r.to_dict()["metadata"] == {"name": "reviews", "namespace": "default"}


@pytest.mark.parametrize("api_version", sorted(KINDS["VirtualService"]))
def test_all_networking_versions_accepted(api_version):
    doc = {
        "apiVersion": api_version,
        "kind": "VirtualService",
        "metadata": {"name": "r"},
        "spec": {"hosts": ["r"]},
    }
    assert from_dict(doc).api_version == api_version


def test_resource_is_frozen():
    r = Resource("meshlet.dev/v1alpha1", "MeshConfig", "m", "default", {}, {})
    with pytest.raises(AttributeError):
        r.name = "x"  # type: ignore[misc]
    same = Resource("meshlet.dev/v1alpha1", "MeshConfig", "m", "default", {}, {})
    assert r == same and len({r, same}) == 1


def _doc(text: str) -> str:
    return textwrap.dedent(text).strip() + "\n"


GOOD_VS = _doc(
    """
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: reviews}
    spec:
      hosts: [reviews]
      http:
      - route:
        - destination: {host: reviews, subset: v1}
    """
)


def test_multi_document_one_invalid_lists_it_with_file_and_document():
    bad = _doc(
        """
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: reviews, namespace: default}
        spec:
          hosts: [reviews]
          http:
          - route:
            - destination: {host: reviews, subset: v1}
              weight: 50
            - destination: {host: reviews, subset: v2}
              weight: -1
        """
    )
    text = GOOD_VS + "---\n" + bad + "---\n" + GOOD_VS.replace("reviews}", "other}")
    with pytest.raises(InvalidConfig) as exc:
        load_text(text, "configs/x.yaml")
    errors = exc.value.errors
    assert len(errors) == 1
    e = errors[0]
    assert (e.source, e.document, e.kind, e.name, e.field) == (
        "configs/x.yaml",
        2,
        "VirtualService",
        "reviews",
        "spec.http[0].route[1].weight",
    )
    assert str(exc.value) == (
        "configs/x.yaml: document 2 (VirtualService default/reviews): "
        "spec.http[0].route[1].weight: must be an integer >= 0"
    )


def test_every_error_of_every_document_is_reported():
    text = _doc(
        """
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata: {name: a}
        spec: {hosts: [], gatways: [mesh]}
        ---
        apiVersion: networking.istio.io/v1
        kind: Gateway
        metadata: {name: b}
        """
    )
    with pytest.raises(InvalidConfig) as exc:
        load_text(text, "f.yaml")
    lines = str(exc.value).splitlines()
    assert lines == [
        "f.yaml: document 1 (VirtualService default/a): spec.hosts: must not be empty",
        'f.yaml: document 1 (VirtualService default/a): spec.gatways: unknown field "gatways"'
        ' (did you mean "gateways"?)',
        "f.yaml: document 2 (Gateway default/b): kind: unknown kind 'Gateway'; supported: "
        + ", ".join(KINDS),
    ]


def test_empty_documents_are_skipped_but_counted():
    text = "---\n# only a comment\n---\n" + GOOD_VS + "---\n"
    [r] = load_text(text, "f.yaml")
    assert r.source == "f.yaml#2"


def test_yaml_syntax_error_names_document_and_line():
    with pytest.raises(InvalidConfig) as exc:
        load_text(GOOD_VS + "---\nkind: [unclosed\n", "f.yaml")
    [e] = exc.value.errors
    assert e.document == 2
    assert "invalid YAML at line" in e.reason


def test_duplicate_yaml_keys_rejected():
    with pytest.raises(InvalidConfig, match="duplicate key 'spec'"):
        load_text(GOOD_VS + "spec: {}\n", "f.yaml")


def test_document_not_a_mapping():
    with pytest.raises(InvalidConfig, match="document 1 \\(unknown kind\\): document must be"):
        load_text("- a\n- b\n", "f.yaml")


def test_warnings_do_not_fail_and_are_returned():
    text = GOOD_VS.replace(
        "    - destination: {host: reviews, subset: v1}\n",
        "    - destination: {host: reviews, subset: v1}\n"
        "      weight: 30\n"
        "    - destination: {host: reviews, subset: v2}\n"
        "      weight: 30\n",
    )
    resources, warnings = load_text_with_warnings(text, "f.yaml")
    assert len(resources) == 1
    [w] = warnings
    assert w.level == "warning"
    assert w.field == "spec.http[0].route"
    assert "sum to 60" in w.reason
    r, w2 = validate_with_warnings(resources[0].to_dict(), "f.yaml", 1)
    assert [x.reason for x in w2] == [w.reason]


def test_load_path_directory_recursive_sorted(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.yml").write_text(GOOD_VS.replace("reviews}", "zeta}"))
    (tmp_path / "a.yaml").write_text(GOOD_VS)
    (tmp_path / "notes.txt").write_text("not yaml: [")
    (tmp_path / ".hidden.yaml").write_text("not yaml: [")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.yaml").write_text("not yaml: [")
    resources = load_path(str(tmp_path))
    assert [r.name for r in resources] == ["reviews", "zeta"]
    assert resources[1].source == str(tmp_path / "b" / "z.yml") + "#1"


def test_load_path_directory_collects_errors_from_every_file(tmp_path):
    (tmp_path / "a.yaml").write_text(GOOD_VS.replace("hosts: [reviews]", "hosts: 3"))
    (tmp_path / "b.yaml").write_text(GOOD_VS.replace("subset: v1", "subset: V_1, port: 9"))
    with pytest.raises(InvalidConfig) as exc:
        load_path(str(tmp_path))
    fields = [(os.path.basename(e.source), e.field) for e in exc.value.errors]
    assert fields == [
        ("a.yaml", "spec.hosts"),
        ("b.yaml", "spec.http[0].route[0].destination.port"),
    ]


def test_load_path_file_and_missing(tmp_path):
    p = tmp_path / "vs.yaml"
    p.write_text(GOOD_VS)
    assert [r.name for r in load_path(str(p))] == ["reviews"]
    with pytest.raises(InvalidConfig, match="no such file"):
        load_path(str(tmp_path / "missing.yaml"))


def test_load_path_stdin(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(GOOD_VS))
    [r] = load_path("-")
    assert r.source == "<stdin>#1"


def test_config_error_str_forms():
    e = ConfigError("f.yaml", 0, "", "", "", "no such file or directory")
    assert str(e) == "f.yaml: no such file or directory"
    e = ConfigError("f.yaml", 3, "MeshConfig", "", "metadata.name", "is required")
    assert str(e) == "f.yaml: document 3 (MeshConfig): metadata.name: is required"


def test_port_level_mtls_int_keys_normalized_to_strings():
    text = _doc(
        """
        apiVersion: security.istio.io/v1beta1
        kind: PeerAuthentication
        metadata: {name: p}
        spec:
          selector: {matchLabels: {app: a}}
          portLevelMtls:
            8080: {mode: DISABLE}
        """
    )
    [r] = load_text(text)
    assert r.spec["portLevelMtls"] == {"8080": {"mode": "DISABLE"}}


def test_null_fields_are_dropped():
    text = GOOD_VS.replace("  http:", "  gateways:\n  http:").replace(
        "subset: v1}", "subset: v1}\n      weight:"
    )
    [r] = load_text(text)
    assert "gateways" not in r.spec
    assert r.spec["http"][0]["route"][0] == {"destination": {"host": "reviews", "subset": "v1"}}


@pytest.mark.parametrize(
    "pattern,reason",
    [
        ("/a(?=b)", "look-ahead/look-behind"),
        ("(?<!a)b", "look-ahead/look-behind"),
        ("(a)\\1", "back-reference"),
        ("(?P<n>a)(?P=n)", "back-reference"),
        ("(?>a)", "atomic group"),
        ("a++", "possessive quantifier"),
        ("a*+", "possessive quantifier"),
        ("a\\Z", "\\Z"),
        ("(?x)a b", "inline flag"),
        ("[[:alpha:]]", "invalid regex"),
        ("(", "invalid regex"),
    ],
)
def test_regex_outside_re2_rejected(pattern, reason):
    from control_plane.api.schema import check_regex

    message = check_regex(pattern)
    assert message is not None and reason in message


@pytest.mark.parametrize(
    "pattern", ["(?i)/api/.*", "[*+]", "\\\\1", "(?P<v>v[0-9]+)", "^/a/(.*)$", "\\A/x$", "a{2,3}?"]
)
def test_regex_re2_compatible_accepted(pattern):
    from control_plane.api.schema import check_regex

    assert check_regex(pattern) is None


def test_yaml_booleans_and_numbers_get_a_quoting_hint():
    text = GOOD_VS.replace(
        "  - route:", "  - match: [{headers: {x-debug: {exact: yes}}}]\n    route:"
    ).replace("metadata: {name: reviews}", "metadata: {name: reviews, labels: {version: 1.10}}")
    with pytest.raises(InvalidConfig) as exc:
        load_text(text, "f.yaml")
    reasons = {e.field: e.reason for e in exc.value.errors}
    assert "YAML reads an unquoted yes/no" in reasons["spec.http[0].match[0].headers.x-debug.exact"]
    assert reasons["metadata.labels.version"] == 'label value must be a string (quote it: "1.1")'
