"""Canary validation: every field checked, every mistake named by file, document and field."""

from __future__ import annotations

import copy

import pytest
import yaml

from control_plane.api.canary import plan, step_weights
from control_plane.api.resources import InvalidConfig, load_text
from control_plane.store import canonical_kind

HEAD = {"apiVersion": "meshlet.dev/v1alpha1", "kind": "Canary",
        "metadata": {"name": "orders", "namespace": "default"}}
SPEC = {
    "host": "orders", "stable": "v1", "canary": "v2", "virtualService": "orders",
    "analysis": {
        "interval": "2s", "stepWeight": 25, "maxWeight": 60, "threshold": 2, "minRequests": 20,
        "checks": {"successRate": {"min": 99}, "latencyP99": {"max": "500ms"}},
        "webhooks": [{"name": "gate", "type": "confirm-rollout", "url": "http://127.0.0.1:9/x",
                      "timeout": "2s", "metadata": {"team": "orders"}}],
    },
}


def _doc(spec: dict) -> str:
    return yaml.safe_dump({**HEAD, "spec": spec}, sort_keys=False)


def test_full_spec_is_valid_and_planned():
    (res,) = load_text(_doc(SPEC))
    assert res.kind == "Canary" and res.spec == SPEC
    assert canonical_kind("canaries") == canonical_kind("can") == "Canary"
    p = plan(res.spec)
    assert p.steps == (25, 50, 60)  # maxWeight is the last step though not a multiple
    assert (p.interval_s, p.threshold, p.min_requests) == (2.0, 2, 20)
    assert (p.success_min, p.p99_max_ms, p.webhooks[0].timeout_s) == (99.0, 500.0, 2.0)


def test_step_weights():
    assert step_weights({"stepWeight": 20}) == (20, 40, 60, 80, 100)
    assert step_weights({"stepWeight": 30, "maxWeight": 90}) == (30, 60, 90)
    assert step_weights({"stepWeights": [5, 10, 50]}) == (5, 10, 50)


def _with(path: str, value):
    spec = copy.deepcopy(SPEC)
    *parents, last = path.split(".")
    node = spec
    for p in parents:
        node = node[p]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return spec


CASES = [
    (_with("host", None), "spec.host", "is required"),
    (_with("analysis", None), "spec.analysis", "is required"),
    (_with("canary", "v1"), "spec.canary", "also the stable subset"),
    (_with("stable", "V1"), "spec.stable", "not a valid name"),
    (_with("analysis.interval", 2), "spec.analysis.interval", "duration string"),
    (_with("analysis.interval", "10ms"), "spec.analysis.interval", "at least"),
    (_with("analysis.threshold", 0), "spec.analysis.threshold", "between 1 and 100"),
    (_with("analysis.minRequests", 0), "spec.analysis.minRequests", ">= 1"),
    (_with("analysis.stepWeight", 101), "spec.analysis.stepWeight", "between 1 and 100"),
    (_with("analysis.stepWeight", 70), "spec.analysis.stepWeight", "more than maxWeight"),
    (_with("analysis.stepWeights", [10, 20]), "spec.analysis", "exactly one of"),
    ({**_with("analysis.stepWeight", None), "analysis": {
        **{k: v for k, v in SPEC["analysis"].items() if k not in ("stepWeight", "maxWeight")},
        "stepWeights": [10, 10]}}, "spec.analysis.stepWeights[1]", "only increase"),
    ({**SPEC, "analysis": {
        **{k: v for k, v in SPEC["analysis"].items() if k != "stepWeight"},
        "stepWeights": [10, 30]}}, "spec.analysis.maxWeight", "not the last of stepWeights"),
    (_with("analysis.checks", {}), "spec.analysis.checks", "at least one of"),
    (_with("analysis.checks", {"successRate": {}}), "spec.analysis.checks.successRate",
     "at least one of"),
    (_with("analysis.checks", {"successRate": {"min": 101}}),
     "spec.analysis.checks.successRate.min", "between 0 and 100"),
    (_with("analysis.checks", {"latencyP99": {"max": 500}}),
     "spec.analysis.checks.latencyP99.max", "duration string"),
    (_with("analysis.checks", {"latencyP99": {"maxRatioToStable": 0.5}}),
     "spec.analysis.checks.latencyP99.maxRatioToStable", ">= 1"),
    (_with("analysis.checks", {"requestDuration": {"max": "1s"}}),
     "spec.analysis.checks.requestDuration", "unknown field"),
    (_with("analysis.maxWeight", 100) | {"analysis": {
        **SPEC["analysis"], "maxWeight": 100,
        "checks": {"successRate": {"maxDropFromStable": 1}}}},
     "spec.analysis.maxWeight", "relative to stable needs stable traffic"),
    (_with("analysis.webhooks", [{"name": "a", "type": "pre-rollout", "url": "http://x/"}]),
     "spec.analysis.webhooks[0].type", "must be one of confirm-rollout, confirm-promotion"),
    (_with("analysis.webhooks", [{"name": "a", "type": "confirm-rollout", "url": "ftp://x/"}]),
     "spec.analysis.webhooks[0].url", "http:// or https://"),
    (_with("analysis.webhooks", [{"name": "a", "type": "confirm-rollout", "url": "http://x/"},
                                 {"name": "a", "type": "confirm-promotion", "url": "http://x/"}]),
     "spec.analysis.webhooks[1].name", "also the name of spec.analysis.webhooks[0]"),
    (_with("analysis.webhooks", [{"name": "a", "type": "confirm-rollout", "url": "http://x/",
                                  "timeout": "2m"}]),
     "spec.analysis.webhooks[0].timeout", "at most"),
    ({**SPEC, "provider": "prometheus"}, "spec.provider", "unknown field"),
]


@pytest.mark.parametrize("spec,field,reason", CASES, ids=[c[1] for c in CASES])
def test_invalid(spec, field, reason):
    with pytest.raises(InvalidConfig) as exc:
        load_text(_doc(spec), "configs/canary.yaml")
    hits = [e for e in exc.value.errors if e.field == field]
    assert hits, [str(e) for e in exc.value.errors]
    assert reason in hits[0].reason, str(hits[0])
    assert str(hits[0]).startswith("configs/canary.yaml: document 1 (Canary default/orders)")
