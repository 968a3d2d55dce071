"""The fallback's decisions and its bounded stale cache, without sockets; and its validation."""

from __future__ import annotations

import pytest

from control_plane.api.resources import InvalidConfig, load_text
from proxy.resilience.fallback import FallbackPolicy, StaleCache


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_stale_cache_is_bounded_aged_and_respects_no_store():
    clock = Clock()
    c = StaleCache(max_age=5.0, max_entries=2, max_body=10, clock=clock)
    assert c.store("a", "/1", 200, [("content-type", "text/plain"), ("connection", "x")], b"one")
    assert not c.store("a", "/big", 200, [], b"x" * 11)  # over the per-body cap
    assert not c.store("a", "/err", 503, [], b"no")  # only 2xx
    assert not c.store("a", "/p", 200, [("cache-control", "private, max-age=9")], b"p")
    assert not c.store("a", "/c", 200, [("set-cookie", "s=1")], b"c")
    c.store("a", "/2", 200, [], b"two")
    c.store("a", "/3", 200, [], b"three")  # evicts the least recently stored (/1)
    assert c.lookup("a", "/1") is None
    status, headers, body, age = c.lookup("a", "/2")
    assert (status, body, age) == (200, b"two", 0.0)
    clock.t += 5.5
    assert c.lookup("a", "/3") is None  # too old: dropped
    assert not c.entries.get(("a", "/3"))
    # a later no-store answer removes what was kept for that key
    c.store("a", "/2", 200, [], b"two")
    c.store("a", "/2", 200, [("cache-control", "no-store")], b"two")
    assert c.lookup("a", "/2") is None


def test_policy_triggers_methods_and_answers():
    fb = FallbackPolicy.from_spec(
        {"static": {"status": 503, "body": "later"}, "triggers": ["timeout", "circuitOpen"]}
    )
    assert fb.applies("UT", "GET") and fb.applies("UO", "HEAD")
    assert not fb.applies("URX", "GET") and not fb.applies("UT", "POST")
    status, headers, body = fb.answer("GET", "a", "/", "UT")
    assert (status, body) == (503, b"later")
    assert ("x-meshlet-fallback", "static") in headers and ("content-type", "text/plain") in headers
    stale = FallbackPolicy.from_spec({"stale": {"maxAge": "1s"}})
    assert stale.answer("GET", "a", "/", "UF") is None  # nothing kept, no static: the error
    assert stale.caches("GET", {}.get) and not stale.caches("GET", {"authorization": "x"}.get)
    assert not stale.caches("POST", {}.get)


DOC = """
apiVersion: meshlet.dev/v1alpha1
kind: ResiliencePolicy
metadata: {name: p}
spec:
  host: payment
  fallback: %s
"""


@pytest.mark.parametrize(
    "fallback, field",
    [
        ("{}", "spec.fallback"),
        ("{static: {status: 99}}", "spec.fallback.static.status"),
        ("{stale: {maxEntries: 0}}", "spec.fallback.stale.maxEntries"),
        ("{stale: {}, triggers: [sometimes]}", "spec.fallback.triggers[0]"),
        ("{stale: {}, methods: [POST]}", "spec.fallback.methods"),
        ("{static: {headers: {content-length: '3'}}}", "spec.fallback.static.headers.content-length"),
        ("{static: {headers: {x-a: \"a\\nb\"}}}", "spec.fallback.static.headers.x-a"),
        # YAML 1.1 reads a bare `on` as true: one reason the field is called `triggers`
        ("{static: {}, on: [timeout]}", "spec.fallback: key True"),
    ],
)
def test_invalid_fallback_is_refused_with_its_field(fallback, field):
    with pytest.raises(InvalidConfig) as e:
        load_text(DOC % fallback, "p.yaml")
    assert field in str(e.value)


def test_valid_fallback_accepted():
    (r,) = load_text(
        DOC % "{static: {status: 200, body: ok}, stale: {maxAge: 30s}, methods: [GET, POST]}",
        "p.yaml",
    )
    assert r.spec["fallback"]["methods"] == ["GET", "POST"]
