"""Route matching (``find``), weighted picks and URI rewrites, on tables compiled from real
VirtualService documents, for both builds. Semantics are Istio's HTTPMatchRequest: rules in
order, first match wins; match blocks ORed, conditions inside one ANDed; regexes match whole."""

from __future__ import annotations

import pytest

from control_plane.api.resources import load_text
from proxy.routes.compile import compile_table

HEAD = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews]
  ports: [{number: 9080, name: http}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.1, labels: {version: v1}}, {address: 10.0.0.2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
"""


def table(rules: str, extra: str = "", **kw):
    return compile_table(load_text(HEAD + rules + extra, "t.yaml"), **kw)


def hit(m, t, path="/", *, host="reviews", query="", method="GET", authority="reviews",
        scheme="http", headers=()):  # fmt: skip
    """``None`` (no service), ``"-"`` (no rule) or the name of the route that matched."""
    res = m.find(t, host, path, query, method, authority, scheme, list(headers))
    if res is None:
        return None
    return "-" if res[1] is None else res[1].name


RULES = """\
  - name: exact
    match: [{uri: {exact: /exact}}]
    route: [{destination: {host: reviews, subset: v1}}]
  - name: regex
    match: [{uri: {regex: "/r[0-9]+"}}]
    route: [{destination: {host: reviews, subset: v1}}]
  - name: either
    match: [{uri: {prefix: /a}, method: {exact: POST}}, {headers: {x-b: {exact: "1"}}}]
    route: [{destination: {host: reviews, subset: v1}}]
  - name: prefix
    match: [{uri: {prefix: /p}}]
    route: [{destination: {host: reviews, subset: v2}}]
"""


@pytest.mark.parametrize(
    ("path", "method", "headers", "want"),
    [
        ("/exact", "GET", (), "exact"),
        ("/exactly", "GET", (), "-"),  # exact is exact
        ("/r12", "GET", (), "regex"),
        ("/r12x", "GET", (), "-"),  # a regex matches the whole path (RE2 full match)
        ("/x/r1", "GET", (), "-"),
        ("/a/b", "POST", (), "either"),  # first block: both conditions
        ("/a/b", "GET", (), "-"),  # ... AND
        ("/zzz", "GET", (("x-b", "1"),), "either"),  # second block: ORed
        ("/p/q", "GET", (), "prefix"),
        ("/pexact", "GET", (), "prefix"),
        ("/", "GET", (), "-"),
    ],
)
def test_first_matching_rule_wins(m, path, method, headers, want):
    assert hit(m, table(RULES), path, method=method, headers=headers) == want


def test_unknown_host_and_known_host_without_a_match(m):
    t = table(RULES)
    assert hit(m, t, "/exact", host="ratings") is None
    res = m.find(t, "reviews", "/nope", "", "GET", "reviews", "http", [])
    assert res is not None and res[0].service == "reviews.default.svc.cluster.local"
    assert res[1:] == (None, None)


def test_every_alias_of_the_host_finds_the_routes(m):
    t = table(RULES)
    for host in ("reviews", "reviews.default", "reviews.default.svc.cluster.local"):
        assert hit(m, t, "/exact", host=host) == "exact"


def test_matched_block_is_returned(m):
    t = table(RULES)
    res = m.find(t, "reviews", "/q", "", "GET", "reviews", "http", [("x-b", "1")])
    assert res[1].name == "either" and res[2] is res[1].matches[1]


def test_a_route_without_match_matches_everything(m):
    t = table("  - route: [{destination: {host: reviews}}]\n")
    res = m.find(t, "reviews", "/anything", "q=1", "DELETE", "x", "http", [])
    assert res[1].name == "reviews.0" and res[2] is None


def test_uri_matches_the_path_without_the_query(m):
    t = table("  - match: [{uri: {exact: /a}}]\n    route: [{destination: {host: reviews}}]\n")
    assert hit(m, t, "/a", query="x=/b") == "reviews.0"


IGNORE_CASE = """\
  - name: exact
    match: [{uri: {exact: /Api}, ignoreUriCase: true}]
    route: [{destination: {host: reviews}}]
  - name: regex
    match: [{uri: {regex: "/V[0-9]/.*"}, ignoreUriCase: true}]
    route: [{destination: {host: reviews}}]
  - name: prefix
    match: [{uri: {prefix: /Case}}]
    route: [{destination: {host: reviews}}]
"""


@pytest.mark.parametrize(
    ("path", "want"),
    [("/api", "exact"), ("/API", "exact"), ("/v1/x", "regex"), ("/V2/Y", "regex"),
     ("/Case/x", "prefix"), ("/case/x", "-")],
)  # fmt: skip
def test_ignore_uri_case(m, path, want):
    assert hit(m, table(IGNORE_CASE), path) == want


HEADERS = """\
  - name: present
    match: [{headers: {x-present: {}}}]
    route: [{destination: {host: reviews}}]
  - name: joined
    match: [{headers: {x-multi: {exact: "a,b"}}}]
    route: [{destination: {host: reviews}}]
  - name: prefix-and-regex
    match: [{headers: {x-p: {prefix: ab}, x-r: {regex: "[0-9]+"}}}]
    route: [{destination: {host: reviews}}]
  - name: without
    match: [{uri: {prefix: /w}, withoutHeaders: {x-deny: {exact: "1"}}}]
    route: [{destination: {host: reviews}}]
  - name: without-present
    match: [{uri: {prefix: /n}, withoutHeaders: {x-any: {}}}]
    route: [{destination: {host: reviews}}]
"""


@pytest.mark.parametrize(
    ("path", "headers", "want"),
    [
        ("/", (("x-present", ""),), "present"),
        ("/", (("x-multi", "a"), ("x-multi", "b")), "joined"),  # repeated: joined with ","
        ("/", (("x-multi", "a"),), "-"),
        ("/", (("x-p", "abc"), ("x-r", "42")), "prefix-and-regex"),
        ("/", (("x-p", "abc"), ("x-r", "42a")), "-"),
        ("/", (("x-p", "abc"),), "-"),  # a missing header does not match
        ("/w", (), "without"),  # withoutHeaders: absent
        ("/w", (("x-deny", "2"),), "without"),  # ... or not matching
        ("/w", (("x-deny", "1"),), "-"),
        ("/n", (), "without-present"),
        ("/n", (("x-any", "v"),), "-"),
    ],
)
def test_header_matches(m, path, headers, want):
    assert hit(m, table(HEADERS), path, headers=headers) == want


QUERY = """\
  - name: exact
    match: [{queryParams: {v: {exact: "1"}}}]
    route: [{destination: {host: reviews}}]
  - name: present
    match: [{queryParams: {debug: {}}}]
    route: [{destination: {host: reviews}}]
  - name: regex
    match: [{queryParams: {q: {regex: "a b"}}}]
    route: [{destination: {host: reviews}}]
"""


@pytest.mark.parametrize(
    ("query", "want"),
    [
        ("v=1", "exact"),
        ("x=2&v=1", "exact"),
        ("v=2&v=1", "-"),  # the first occurrence decides
        ("v=1&v=2", "exact"),
        ("%76=1", "exact"),  # names and values are percent-decoded
        ("debug", "present"),
        ("debug=", "present"),
        ("q=a+b", "regex"),  # '+' is a space in a query
        ("q=a%20b", "regex"),
        ("", "-"),
        ("&&", "-"),
    ],
)
def test_query_param_matches(m, query, want):
    assert hit(m, table(QUERY), "/", query=query) == want


SCHEME_AUTH = """\
  - name: auth
    match: [{authority: {prefix: "reviews:"}}]
    route: [{destination: {host: reviews}}]
  - name: https
    match: [{scheme: {exact: https}}]
    route: [{destination: {host: reviews}}]
"""


def test_authority_and_scheme(m):
    t = table(SCHEME_AUTH)
    assert hit(m, t, authority="reviews:9080") == "auth"
    assert hit(m, t, authority="reviews") == "-"
    assert hit(m, t, authority="reviews", scheme="https") == "https"


def test_source_labels_and_gateways_are_resolved_at_config_time(m):
    rules = """\
  - name: for-v2
    match: [{sourceLabels: {version: v2}}]
    route: [{destination: {host: reviews}}]
  - name: gateway-only
    match: [{gateways: [ingress]}]
    route: [{destination: {host: reviews}}]
  - name: mesh
    match: [{gateways: [mesh, ingress]}]
    route: [{destination: {host: reviews}}]
"""
    assert hit(m, table(rules, labels={"version": "v2"})) == "for-v2"
    assert hit(m, table(rules, labels={"version": "v1"})) == "mesh"


GATEWAY_VS = """\
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: edge}
spec:
  hosts: [ratings]
  gateways: [ingress]
  http:
  - directResponse: {status: 418}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings}
spec:
  hosts: [ratings]
  ports: [{number: 9080, name: http}]
  resolution: STATIC
  endpoints: [{address: 10.0.0.3}]
"""


def test_a_virtual_service_for_gateways_only_does_not_reach_sidecars(m):
    t = table("  - route: [{destination: {host: reviews}}]\n", GATEWAY_VS)
    # ratings keeps its default route: the ingress-only VirtualService is not applied
    assert hit(m, t, host="ratings") == "default"
    with_mesh = GATEWAY_VS.replace("gateways: [ingress]", "gateways: [ingress, mesh]")
    t = table("  - route: [{destination: {host: reviews}}]\n", with_mesh)
    assert hit(m, t, host="ratings") == "edge.0"


def test_dns_round_robin_dials_the_hosts_and_unspecified_balances_round_robin():
    se = """\
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext}
spec:
  hosts: [api.example.com]
  ports: [{number: 80, name: http}]
  resolution: DNS_ROUND_ROBIN
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ext}
spec:
  host: api.example.com
  trafficPolicy: {loadBalancer: {simple: UNSPECIFIED}}
"""
    t = table("  - route: [{destination: {host: reviews}}]\n", se)
    c = t.clusters["outbound|80||api.example.com"]
    assert [(e.address, e.port) for e in c.endpoints] == [("api.example.com", 80)]
    assert c.lb == "ROUND_ROBIN"


def test_weighted_pick_follows_cumulative_weights(m):
    t = table(
        "  - route: [{destination: {host: reviews, subset: v1}, weight: 25},"
        " {destination: {host: reviews, subset: v2}, weight: 75}]\n"
    )
    route = t.hosts["reviews"].routes[0]
    picks = [m.pick_destination(route, i / 100).subset for i in range(100)]
    assert picks.count("v1") == 25 and picks.count("v2") == 75
    assert m.pick_destination(route, 0.0).subset == "v1"
    assert m.pick_destination(route, 0.9999).subset == "v2"


def test_single_destination_gets_everything_whatever_its_weight(m):
    t = table("  - route: [{destination: {host: reviews, subset: v2}, weight: 0}]\n")
    route = t.hosts["reviews"].routes[0]
    assert m.pick_destination(route, 0.5).subset == "v2"


REWRITES = """\
  - name: prefix
    match: [{uri: {prefix: /old}}]
    rewrite: {uri: /new}
    route: [{destination: {host: reviews}}]
  - name: slash
    match: [{uri: {prefix: /s/}}]
    rewrite: {uri: /}
    route: [{destination: {host: reviews}}]
  - name: exact
    match: [{uri: {exact: /e}}]
    rewrite: {uri: /replaced}
    route: [{destination: {host: reviews}}]
  - name: regex
    match: [{uri: {prefix: /v}}]
    rewrite: {uriRegexRewrite: {match: "^/v([0-9])/(.*)", rewrite: "/api/\\\\2?v=\\\\1"}}
    route: [{destination: {host: reviews}}]
"""


@pytest.mark.parametrize(
    ("path", "want"),
    [
        ("/old/x", "/new/x"),  # the matched prefix is replaced
        ("/old", "/new"),
        ("/s/a/b", "/a/b"),  # no doubled slash
        ("/e", "/replaced"),
        ("/v2/items", "/api/items?v=2"),
    ],
)
def test_rewrite_path(m, path, want):
    t = table(REWRITES)
    _, route, block = m.find(t, "reviews", path, "", "GET", "reviews", "http", [])
    assert m.rewrite_path(route, block, path) == want
