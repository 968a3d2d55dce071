"""InboundRateLimit validation: every mistake named by file, document and field."""

from __future__ import annotations

import pytest
import yaml

from control_plane.api.resources import InvalidConfig, load_text
from control_plane.store import canonical_kind

HEAD = {"apiVersion": "meshlet.dev/v1alpha1", "kind": "InboundRateLimit",
        "metadata": {"name": "inv", "namespace": "default"}}


def _doc(spec: dict) -> str:
    return yaml.safe_dump({**HEAD, "spec": spec}, sort_keys=False)


def test_full_spec_is_valid():
    spec = {
        "selector": {"matchLabels": {"app": "inventory"}},
        "match": [{"paths": ["/api/*", "*.json", "/exact", "*"], "methods": ["GET"]}],
        "total": {"requestsPerSecond": 100},
        "identity": {"requestsPerSecond": 10},
        "overrides": [
            {"requestsPerSecond": 50,
             "clientRefs": [{"kind": "ServiceAccount", "name": "orders"},
                            {"name": "batch", "namespace": "jobs"}]},
        ],
    }
    (res,) = load_text(_doc(spec))
    assert res.kind == "InboundRateLimit" and res.spec == spec
    assert canonical_kind("irl") == canonical_kind("inboundratelimits") == "InboundRateLimit"


CASES = [
    ({}, "spec", "at least one of"),
    ({"total": {}}, "spec.total.requestsPerSecond", "is required"),
    ({"total": {"requestsPerSecond": 0}}, "spec.total.requestsPerSecond", ">= 1"),
    ({"total": {"requestsPerSecond": "10"}}, "spec.total.requestsPerSecond", "integer"),
    ({"total": {"requestsPerSecond": 5}, "identity": {"requestsPerSecond": 6}},
     "spec.identity.requestsPerSecond", "more than total"),
    ({"total": {"requestsPerSecond": 5},
      "overrides": [{"requestsPerSecond": 9, "clientRefs": [{"name": "a"}]}]},
     "spec.overrides[0].requestsPerSecond", "more than total"),
    ({"overrides": [{"requestsPerSecond": 1, "clientRefs": [{"name": "a"}]},
                    {"requestsPerSecond": 2, "clientRefs": [{"name": "a"}]}]},
     "spec.overrides[1].clientRefs[0]", "already in spec.overrides[0].clientRefs[0]"),
    ({"overrides": [{"requestsPerSecond": 1}]}, "spec.overrides[0].clientRefs", "is required"),
    ({"overrides": [{"requestsPerSecond": 1, "clientRefs": [{"kind": "User", "name": "a"}]}]},
     "spec.overrides[0].clientRefs[0].kind", "ServiceAccount"),
    ({"overrides": [{"requestsPerSecond": 1, "clientRefs": [{"name": "Bad_Name"}]}]},
     "spec.overrides[0].clientRefs[0].name", "not a valid name"),
    ({"identity": {"requestsPerSecond": 1}, "match": [{}]}, "spec.match[0]", "at least one of"),
    ({"identity": {"requestsPerSecond": 1}, "match": [{"paths": ["a/b"]}]},
     "spec.match[0].paths[0]", 'must start with "/"'),
    ({"identity": {"requestsPerSecond": 1}, "match": [{"paths": ["/a*b"]}]},
     "spec.match[0].paths[0]", "may only start or end"),
    ({"identity": {"requestsPerSecond": 1}, "targetRef": {"kind": "Server", "name": "x"}},
     "spec.targetRef", "use selector"),
    ({"identity": {"requestsPerSecond": 1}, "burst": 5}, "spec.burst", "unknown field"),
    ({"identity": {"requestsPerSecond": 1}, "selector": {"labels": {}}},
     "spec.selector.labels", "unknown field"),
]


@pytest.mark.parametrize("spec,field,reason", CASES, ids=[c[1] for c in CASES])
def test_invalid(spec, field, reason):
    with pytest.raises(InvalidConfig) as exc:
        load_text(_doc(spec), "configs/limits.yaml")
    hits = [e for e in exc.value.errors if e.field == field]
    assert hits, [str(e) for e in exc.value.errors]
    assert reason in hits[0].reason, str(hits[0])
    assert str(hits[0]).startswith("configs/limits.yaml: document 1 (InboundRateLimit default/inv)")
