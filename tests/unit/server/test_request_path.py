"""The request path's decisions without sockets: route policies compiled with the config into
immutable objects (and the live state kept across swaps), route choice, header rewriting,
inbound admission, and the per-request attempt machine built from a shared policy."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any

import pytest

from control_plane.api.resources import load_text
from proxy.authz.engine import compile_policies
from proxy.inbound.admit import admit, normalise, upstream_headers
from proxy.outbound import route as outbound_route
from proxy.resilience.inbound_ratelimit import compile_limits
from proxy.routes.compile import compile_table
from proxy.server.policy import INBOUND_POLICY, RoutePolicy
from proxy.server.runtime import Runtime
from proxy.transport.exchange import Exchange, Side, scan
from proxy.transport.tries import attempts_for
from tests.unit.twins import load_linked_build


@pytest.fixture(autouse=True, scope="module", params=["twin", "compiled"])
def build(request: pytest.FixtureRequest) -> Any:
    """Every test runs against both builds of the exchange and the tries: the names this module
    uses are the twins', then the compiled modules' (module-scoped: set once per build)."""
    global Exchange, Side, scan, attempts_for
    saved = Exchange, Side, scan, attempts_for
    twin = request.param == "twin"
    ex_mod = load_linked_build("proxy.transport", "exchange", twin=twin)
    tries_mod = load_linked_build("proxy.transport", "tries", twin=twin)
    Exchange, Side, scan = ex_mod.Exchange, ex_mod.Side, ex_mod.scan
    attempts_for = tries_mod.attempts_for
    yield request.param
    Exchange, Side, scan, attempts_for = saved

SE = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: inventory}
spec:
  hosts: [inventory]
  ports: [{number: 80, name: http}, {number: 90, name: admin}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.1, ports: {http: 9, admin: 10}, labels: {version: v1}}
  - {address: 127.0.0.2, ports: {http: 9, admin: 10}, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: inventory}
spec:
  host: inventory
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
"""

VS = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: inventory}
spec:
  hosts: [inventory]
  http:
  - name: direct
    match: [{uri: {exact: /health}}]
    directResponse: {status: 204}
  - name: rewritten
    match: [{uri: {prefix: /old}}]
    rewrite: {uri: /new, authority: inventory.internal}
    headers:
      request: {set: {x-route: r}}
    route:
    - destination: {host: inventory, subset: v1}
      headers: {request: {add: {x-dest: d}}, response: {set: {x-served-by: v1}}}
  - name: split
    timeout: 2s
    retries: {attempts: 2, retryOn: 5xx}
    fault: {abort: {httpStatus: 503, percentage: {value: 0}}}
    route:
    - {destination: {host: inventory, subset: v1}, weight: 50}
    - {destination: {host: inventory, subset: v2}, weight: 50}
---
apiVersion: meshlet.dev/v1alpha1
kind: ResiliencePolicy
metadata: {name: inventory}
spec:
  host: inventory
  circuitBreaker: {failureRateThreshold: 50, slidingWindowSize: 4, minimumNumberOfCalls: 4}
"""


def _runtime(text: str = SE + VS, version: str = "1") -> Runtime:
    rt = Runtime("orders", "default", "v1", {"app": "orders"}, 8080)
    rt.swap(compile_table(load_text(text), [], "default", rt.labels, version))
    return rt


def _head(target: str = "/", method: str = "GET", host: str = "inventory",
          headers: list[tuple[str, str]] | None = None) -> Any:
    """A parsed request head as the HTTP/1.1 parser hands it to the stacks (its fields)."""
    path, _, query = target.partition("?")
    hs = [("host", host), *(headers or [])]
    return SimpleNamespace(
        method=method, target=target, path=path, query=query, host=host, headers=hs,
        version=11, chunked=False, content_length=-1, upgrade="", expect_continue=False,
        connection="", get=lambda name, d=None: next((v for n, v in hs if n == name), d),
    )


def _route(rt: Runtime, head: Any, draw: float = 0.0, dst: Any = None) -> tuple:
    return outbound_route.choose(rt.table, rt.plans, head, dst, lambda: draw)


def _split_policy(rt: Runtime) -> RoutePolicy:
    kind, _, route, _, policy = _route(rt, _head("/x"))
    assert kind == outbound_route.FORWARD and route.name == "split"
    return policy


# -- compiled at config time, immutable ----------------------------------------------------------
def test_every_route_destination_is_compiled_when_the_config_is_swapped_in():
    rt = _runtime()
    split = [r for r in rt.table.hosts["inventory"].routes if r.name == "split"][0]
    for d in split.destinations:
        plan = rt.plans[id(d)]
        p80 = plan.for_port(80)
        assert p80 is not None and p80.cluster.subset == d.subset
        assert p80.timeout == 2.0 and p80.retry.attempts == 2 and p80.fault is not None
        assert plan.for_port(90).cluster.port == 90  # a per-port cluster for the same subset
    # the destination's live state exists before any request (nothing is built lazily)
    services = [d.service for d in rt.policies.dests.values()]
    assert services == ["inventory.default.svc.cluster.local"]


def test_compiled_policies_are_immutable():
    rt = _runtime()
    policy = _split_policy(rt)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.timeout = 99.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.retry = INBOUND_POLICY.retry  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        INBOUND_POLICY.timeout = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        rt.plans[0] = None  # type: ignore[index]
    plan = next(iter(rt.plans.values()))
    with pytest.raises(TypeError):
        plan.by_port[80] = None  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.default = None  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.retry.attempts = 5  # type: ignore[misc]
    assert not hasattr(policy, "__dict__")


def _exchange(rt: Runtime, policy: RoutePolicy, headers: list[tuple[str, str]], start: float):
    side = Side(rt, "outbound", outbound=True)
    head = _head("/x", headers=headers)
    down = SimpleNamespace(peer=("127.0.0.1", 5000), body=None)
    ex = Exchange(side, down, head, start)
    scan(head.headers, ex)
    ex.policy = policy
    ex.cluster = policy.cluster.name
    return ex


def test_a_request_deadline_never_leaks_into_the_next_request_on_the_route():
    rt = _runtime()
    policy = _split_policy(rt)
    before = [getattr(policy, f.name) for f in dataclasses.fields(policy)]
    # the first caller brings a short deadline and its own retry overrides
    first = attempts_for(_exchange(rt, policy, [
        ("x-envoy-expected-rq-timeout-ms", "100"), ("x-envoy-max-retries", "0"),
    ], 1000.0))
    assert first.deadline == pytest.approx(1000.1)
    assert first.retry.attempts == 0
    # the second caller on the same route gets the route's own timeout and retries
    second = attempts_for(_exchange(rt, policy, [], 2000.0))
    assert second.deadline == pytest.approx(2002.0)
    assert second.retry.attempts == 2
    assert second.retry is policy.retry
    after = [getattr(policy, f.name) for f in dataclasses.fields(policy)]
    assert all(a is b for a, b in zip(after, before, strict=True))
    # the same route still resolves to the very same compiled object
    assert _split_policy(rt) is policy


def test_live_state_survives_a_swap_and_the_policy_is_rebuilt():
    rt = _runtime()
    old = _split_policy(rt)
    breaker = old.dest.breaker
    assert breaker is not None
    rt.swap(compile_table(load_text(SE + VS.replace("timeout: 2s", "timeout: 3s")), [],
                          "default", rt.labels, "2"))
    new = _split_policy(rt)
    assert new is not old and new.timeout == 3.0 and old.timeout == 2.0
    assert new.dest is old.dest and new.dest.breaker is breaker  # same ResiliencePolicy: kept
    assert new.retry is old.retry and new.fault is old.fault  # equal specs: one frozen object
    wider = VS.replace("slidingWindowSize: 4", "slidingWindowSize: 6")
    rt.swap(compile_table(load_text(SE + wider), [], "default", rt.labels, "3"))
    assert _split_policy(rt).dest is not old.dest  # a changed policy starts afresh


def test_telemetry_attached_after_the_first_config_still_watches_its_destinations():
    rt = _runtime()
    seen: list[Any] = []
    rt.policies.on_new_destination = seen.append
    assert [d.service for d in seen] == ["inventory.default.svc.cluster.local"]


# -- route choice ----------------------------------------------------------------------------------
def test_route_choice_answers_locally_without_a_route_or_cluster():
    rt = _runtime()
    assert _route(rt, _head("/", host="nowhere"))[:2] == (outbound_route.NO_ROUTE, "nowhere")
    kind, service, route, _, _ = _route(rt, _head("/health"))
    assert (kind, route.direct_response[0]) == (outbound_route.DIRECT, 204)
    assert service == "inventory.default.svc.cluster.local"
    # a destination whose cluster has no compiled policy (a table built without its plans)
    kind = outbound_route.choose(rt.table, {}, _head("/x"), None, lambda: 0.0)[0]
    assert kind == outbound_route.NO_CLUSTER


def test_route_choice_splits_by_weight_and_port():
    rt = _runtime()
    low = _route(rt, _head("/x"), draw=0.1)[4]
    high = _route(rt, _head("/x"), draw=0.9)[4]
    assert (low.cluster.subset, high.cluster.subset) == ("v1", "v2")
    assert _route(rt, _head("/x", host="inventory:90"), draw=0.1)[4].cluster.port == 90


def test_a_captured_request_for_an_unknown_address_passes_through():
    rt = _runtime()
    kind, dst, *_ = _route(rt, _head("/", host="203.0.113.9"), dst=("203.0.113.9", 80))
    assert (kind, dst) == (outbound_route.PASSTHROUGH, ("203.0.113.9", 80))
    # the same Host, dialled at a mesh endpoint's address, is routed to that service
    kind, service, *_ = _route(rt, _head("/x", host="127.0.0.1:9"), dst=("127.0.0.1", 9))
    assert (kind, service) == (outbound_route.FORWARD, "inventory.default.svc.cluster.local")


def test_rewrite_applies_uri_authority_and_both_levels_of_header_ops():
    rt = _runtime()
    head = _head("/old/items?q=1", headers=[("accept", "*/*")])
    kind, _, route, block, policy = _route(rt, head)
    assert route.name == "rewritten"
    target, headers = outbound_route.rewrite(route, block, policy, head)
    assert target == "/new/items?q=1"
    assert ("host", "inventory.internal") in headers
    assert ("x-route", "r") in headers and ("x-dest", "d") in headers
    assert policy.response_ops is not None and _split_policy(rt).response_ops is None
    # the head itself is untouched (a retry or a mirror reads it again)
    assert head.headers == [("host", "inventory"), ("accept", "*/*")]


# -- inbound admission -----------------------------------------------------------------------------
def test_normalise_forwards_what_is_authorized():
    assert normalise(_head("/a/../b/./c?x=1")) == ("/b/c?x=1", "/b/c", False)
    assert normalise(_head("/plain")) == ("/plain", "/plain", False)
    assert normalise(_head("*", method="OPTIONS")) == ("*", "*", False)
    assert normalise(_head("/%2e%2e/%00")) is None  # cannot be normalised: 400 DPE
    absolute = _head("http://inventory/x/../y")
    absolute.path = "/x/../y"
    assert normalise(absolute) == ("/y", "/y", True)


AUTHZ = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-orders, namespace: default}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/default/sa/orders]}}]
"""
ORDERS = "spiffe://cluster.local/ns/default/sa/orders"
OTHER = "spiffe://cluster.local/ns/default/sa/other"


def test_admission_authorizes_then_rate_limits():
    authz = compile_policies(load_text(AUTHZ), "default", {"app": "inventory"})
    limits = compile_limits(load_text(
        "apiVersion: meshlet.dev/v1alpha1\nkind: InboundRateLimit\n"
        "metadata: {name: inv, namespace: default}\nspec:\n  total: {requestsPerSecond: 1}\n"
    ), "default", {"app": "inventory"}, None)
    head = _head("/")

    def decide(principal: str) -> Any:
        return admit(head, "/", principal, "10.0.0.1", True, 8080, authz, limits)

    denied = decide(OTHER)
    assert denied is not None and denied[:3] == (403, "RBAC", "RBAC: access denied")
    assert denied[4] is None  # not a rate-limit refusal: nothing to count
    assert decide(ORDERS) is None  # allowed, and spends the one permit
    refused = decide(ORDERS)
    assert refused is not None and refused[:2] == (429, "RL")
    assert refused[3:] == ("default/inv", ("default/inv", "total"))
    assert decide(OTHER)[0] == 403  # a denied call is refused before it could spend anything
    assert admit(head, "/", "", "10.0.0.1", False, 8080, None, None) is None


def test_upstream_headers_drop_spoofed_sidecar_headers_and_take_the_absolute_authority():
    forged = [("x-forwarded-client-cert", "forged"), ("a", "1")]
    head = _head("http://inventory/x", headers=forged)
    head.host = "inventory"
    out = upstream_headers(head, spoofed=True, absolute=True)
    assert out[0] == ("host", "inventory") and ("a", "1") in out
    assert all(n != "x-forwarded-client-cert" for n, _ in out)
    assert upstream_headers(head, spoofed=False, absolute=False) is head.headers


# -- the two sides -------------------------------------------------------------------------------
def test_only_the_outbound_side_honours_the_callers_retry_overrides():
    rt = _runtime()
    policy = _split_policy(rt)
    headers = [("x-envoy-max-retries", "0")]
    out = _exchange(rt, policy, headers, 0.0)
    inb = _exchange(rt, policy, headers, 0.0)
    inb.side = Side(rt, "inbound", outbound=False)
    assert attempts_for(out).retry.attempts == 0
    assert attempts_for(inb).retry is policy.retry  # a remote peer cannot change our retries


REQUEST_PATH = ("proxy/transport", "proxy/inbound", "proxy/outbound")


def _request_path_sources() -> list[tuple[str, str]]:
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[3]
    found = [
        (str(p.relative_to(root)), p.read_text())
        for pkg in REQUEST_PATH
        for p in sorted((root / pkg).glob("*.py"))
    ]
    assert len(found) >= 10, found
    return found


def test_no_direction_string_is_compared_on_the_request_path():
    import ast

    for path, src in _request_path_sources():
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.Compare):
                consts = [c.value for c in ast.walk(node) if isinstance(c, ast.Constant)]
                assert not {"inbound", "outbound"} & set(consts), f"{path}:{node.lineno}"


def test_no_function_on_the_request_path_is_over_80_lines():
    import ast

    for path, src in _request_path_sources():
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                assert n <= 80, f"{path}:{node.lineno} {node.name} is {n} lines"


def test_only_a_route_that_changes_the_request_is_rewritten():
    rt = _runtime()
    assert _route(rt, _head("/old/x"))[4].rewrites
    assert not _split_policy(rt).rewrites  # the request goes upstream as it came
