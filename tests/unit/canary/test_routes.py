"""The config side of a canary: subsets to versions, and the VirtualService weights it writes."""

from __future__ import annotations

import dataclasses

import pytest

from control_plane.api.canary import plan as make_plan
from control_plane.api.resources import load_text
from control_plane.canary import routes

PLAN = make_plan({"host": "orders", "stable": "v1", "canary": "v2",
                  "analysis": {"interval": "2s", "stepWeight": 50, "threshold": 1,
                               "minRequests": 1, "checks": {"successRate": {"min": 99}}}})

DR = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: orders}
spec:
  host: orders.default.svc.cluster.local
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: "2.0", track: canary}}
  - {name: bare, labels: {track: x}}
"""

VS = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop}
spec:
  hosts: [orders, shop.example.com]
  http:
  - name: testers
    match: [{headers: {x-canary: {exact: always}}}]
    route: [{destination: {host: orders, subset: v2}}]
  - name: default
    timeout: 3s
    route:
    - {destination: {host: orders, subset: v1, port: {number: 8080}}, weight: 80}
    - {destination: {host: orders, subset: v2, port: {number: 8080}}, weight: 20}
"""


def test_subset_versions_and_what_is_missing():
    rules = load_text(DR)
    assert routes.subset_versions(PLAN, "default", rules) == ("v1", "2.0")
    bare = make_plan({**_spec(), "canary": "bare"})
    with pytest.raises(ValueError, match="subset 'bare' .* has no version label"):
        routes.subset_versions(bare, "default", rules)
    missing = make_plan({**_spec(), "canary": "v9"})
    with pytest.raises(ValueError, match="has no subset 'v9' \\(the canary\\); subsets: bare, v1, v2"):
        routes.subset_versions(missing, "default", rules)
    with pytest.raises(ValueError, match="no DestinationRule for orders.prod.svc.cluster.local"):
        routes.subset_versions(PLAN, "prod", rules)


def _spec() -> dict:
    return {"host": "orders", "stable": "v1", "canary": "v2",
            "analysis": {"interval": "2s", "stepWeight": 50, "threshold": 1, "minRequests": 1,
                         "checks": {"successRate": {"min": 99}}}}


def test_weights_go_to_the_default_route_only():
    (vs,) = load_text(VS)
    assert routes.find_virtual_service(PLAN, "default", [vs]) is vs
    new = routes.with_weights(PLAN, "default", vs, 35, "ignored")
    testers, default = new.spec["http"]
    assert testers == vs.spec["http"][0]  # a header that pins testers is left alone
    assert default["timeout"] == "3s"
    assert default["route"] == [
        {"destination": {"host": "orders", "subset": "v1", "port": {"number": 8080}}, "weight": 65},
        {"destination": {"host": "orders", "subset": "v2", "port": {"number": 8080}}, "weight": 35},
    ]
    assert vs.spec["http"][1]["route"][0]["weight"] == 80  # the input is not modified


def test_a_virtual_service_is_created_or_given_a_default_route():
    new = routes.with_weights(PLAN, "default", None, 10, "orders-canary")
    assert (new.name, new.spec["hosts"]) == ("orders-canary", ["orders"])
    assert [d["weight"] for d in new.spec["http"][0]["route"]] == [90, 10]
    (vs,) = load_text(VS)
    only_matched = vs.spec["http"][:1]
    vs2 = dataclasses.replace(vs, spec={**vs.spec, "http": only_matched})
    new = routes.with_weights(PLAN, "default", vs2, 10, "x")
    assert len(new.spec["http"]) == 2 and "match" not in new.spec["http"][1]
    named = make_plan({**_spec(), "virtualService": "other"})
    assert routes.find_virtual_service(named, "default", [vs]) is None
