"""InboundRateLimit buckets: total, one per caller identity, overrides, per-route match, kept
across config swaps. A fake clock drives the one-second refill."""

from __future__ import annotations

import pytest

from control_plane.api.resources import load_text
from proxy.resilience import inbound_ratelimit as irl
from proxy.resilience.inbound_ratelimit import compile_limits

ORDERS = "spiffe://cluster.local/ns/default/sa/orders"
PAYMENT = "spiffe://cluster.local/ns/default/sa/payment"
BATCH = "spiffe://cluster.local/ns/jobs/sa/batch"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _limits(spec: str, clock: Clock, labels: dict | None = None, previous=None):
    text = (
        "apiVersion: meshlet.dev/v1alpha1\nkind: InboundRateLimit\n"
        "metadata: {name: inv, namespace: default}\nspec:\n" + spec
    )
    return compile_limits(
        load_text(text), "default", labels or {"app": "inventory"}, previous, clock
    )


def _allowed(limits, principal: str, n: int, method: str = "GET", path: str = "/") -> int:
    return sum(limits.check(method, path, principal) is None for _ in range(n))


def test_total_is_shared_by_every_caller():
    clock = Clock()
    lim = _limits("  total: {requestsPerSecond: 5}\n", clock)
    assert _allowed(lim, ORDERS, 3) == 3
    assert _allowed(lim, PAYMENT, 5) == 2
    assert lim.check("GET", "/", "") == ("default/inv", "total")
    clock.t += 1.0
    assert _allowed(lim, PAYMENT, 10) == 5


def test_each_identity_gets_its_own_bucket():
    clock = Clock()
    lim = _limits("  identity: {requestsPerSecond: 3}\n", clock)
    assert _allowed(lim, ORDERS, 10) == 3
    assert lim.check("GET", "/", ORDERS) == ("default/inv", "identity")
    assert _allowed(lim, PAYMENT, 10) == 3  # orders being throttled does not touch payment
    # callers without an identity share one bucket (no way around the limit by plaintext)
    assert _allowed(lim, "", 10) == 3
    clock.t += 1.0
    assert _allowed(lim, ORDERS, 10) == 3


def test_override_replaces_the_identity_rate_for_named_service_accounts():
    clock = Clock()
    lim = _limits(
        "  total: {requestsPerSecond: 100}\n"
        "  identity: {requestsPerSecond: 2}\n"
        "  overrides:\n"
        "  - requestsPerSecond: 7\n"
        "    clientRefs: [{kind: ServiceAccount, name: orders}, {name: batch, namespace: jobs}]\n",
        clock,
    )
    assert _allowed(lim, ORDERS, 20) == 7
    assert lim.check("GET", "/", ORDERS) == ("default/inv", "override")
    assert _allowed(lim, BATCH, 20) == 7  # its own bucket, not orders'
    assert _allowed(lim, PAYMENT, 20) == 2
    # the override names a ServiceAccount whatever the trust domain
    assert _allowed(lim, "spiffe://other.domain/ns/default/sa/orders", 1) == 0


def test_a_caller_over_its_own_limit_does_not_spend_the_total():
    clock = Clock()
    lim = _limits("  total: {requestsPerSecond: 10}\n  identity: {requestsPerSecond: 4}\n", clock)
    assert _allowed(lim, ORDERS, 50) == 4
    assert _allowed(lim, PAYMENT, 4) == 4
    assert _allowed(lim, "spiffe://cluster.local/ns/default/sa/c", 4) == 2  # total: 10 in all
    counts = lim.policies[0].rejected
    assert counts == {"total": 2, "identity": 46, "override": 0}


def test_match_limits_only_the_matching_route_and_methods():
    clock = Clock()
    lim = _limits(
        "  match:\n"
        "  - {paths: [/api/*, /exact, '*.json'], methods: [POST]}\n"
        "  - {paths: [/admin/*]}\n"
        "  total: {requestsPerSecond: 1}\n",
        clock,
    )
    assert _allowed(lim, ORDERS, 5, "GET", "/api/x") == 5  # method not matched: no limit
    assert _allowed(lim, ORDERS, 5, "GET", "/other") == 5
    assert _allowed(lim, ORDERS, 2, "POST", "/api/x") == 1
    assert _allowed(lim, ORDERS, 1, "POST", "/exact") == 0  # one policy, one bucket
    clock.t += 1.0
    assert _allowed(lim, ORDERS, 2, "POST", "/a/b.json") == 1
    clock.t += 1.0
    assert _allowed(lim, ORDERS, 2, "DELETE", "/admin/users") == 1


def test_selector_picks_the_workload():
    clock = Clock()
    spec = "  selector: {matchLabels: {app: payment}}\n  total: {requestsPerSecond: 1}\n"
    assert _limits(spec, clock) is None
    assert _limits(spec, clock, {"app": "payment", "version": "v1"}) is not None


def test_unchanged_policy_keeps_its_buckets_across_a_swap():
    clock = Clock()
    spec = "  identity: {requestsPerSecond: 2}\n"
    lim = _limits(spec, clock)
    assert _allowed(lim, ORDERS, 5) == 2
    again = _limits(spec, clock, previous=lim)
    assert again.policies[0] is lim.policies[0]
    assert _allowed(again, ORDERS, 5) == 0
    changed = _limits("  identity: {requestsPerSecond: 3}\n", clock, previous=lim)
    assert _allowed(changed, ORDERS, 5) == 3


def test_identity_buckets_are_bounded(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(irl, "MAX_IDENTITIES", 8)
    clock = Clock()
    lim = _limits("  identity: {requestsPerSecond: 1}\n", clock)
    for i in range(100):
        lim.check("GET", "/", f"spiffe://cluster.local/ns/default/sa/c{i}")
    assert len(lim.policies[0].identities) <= 8
