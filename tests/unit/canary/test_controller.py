"""The controller's I/O shell on a real SQLite store and status table; the metrics source (the
mesh telemetry, tested on its own) is scripted, and the clock is a variable."""

from __future__ import annotations

import asyncio

import pytest

from control_plane.api.resources import load_text
from control_plane.canary.controller import CanaryController
from control_plane.canary.metrics import NB, Totals
from control_plane.canary.status_store import SqliteStatusStore
from control_plane.store import Store

CONFIG = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: orders}
spec:
  host: orders
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: meshlet.dev/v1alpha1
kind: Canary
metadata: {name: orders}
spec:
  host: orders
  stable: v1
  canary: v2
  analysis:
    interval: 2s
    stepWeights: [50]
    threshold: 1
    minRequests: 10
    checks: {successRate: {min: 99}}
"""
HOST = "orders.default.svc.cluster.local"


class Scripted:
    """Running totals per version, changed by the test; ``refresh`` counts the reads."""

    def __init__(self) -> None:
        self.now: dict[str, tuple[int, int]] = {"v1": (0, 0), "v2": (0, 0)}
        self.reads = 0

    async def refresh(self) -> None:
        self.reads += 1
        self.seen = dict(self.now)

    def totals(self, host: str, version: str) -> Totals:
        assert host == HOST
        req, fail = self.seen.get(version, (0, 0))
        return Totals(req, fail, (0,) * 3 + (req,) + (0,) * (NB - 4))


@pytest.fixture
def setup(tmp_path):
    store = Store(str(tmp_path / "store.db"))
    asyncio.run(store.apply_async(load_text(CONFIG)))
    clock = [1000.0]
    source = Scripted()
    ctl = CanaryController(store, SqliteStatusStore(store.path), source, clock=lambda: clock[0])
    yield store, ctl, source, clock
    store.close()


def _weights(store) -> dict[str, int]:
    (vs,) = store.get("VirtualService")
    return {d["destination"]["subset"]: d["weight"] for d in vs.resource.spec["http"][0]["route"]}


def test_what_was_served_before_the_rollout_does_not_count(setup):
    store, ctl, source, clock = setup
    source.now = {"v1": (500, 0), "v2": (40, 40)}  # v2 failed a lot, before the canary existed

    async def run() -> dict:
        await ctl.tick()  # initialized: a VirtualService is created, all on v1
        assert _weights(store) == {"v1": 100, "v2": 0}
        clock[0] += 0.2
        await ctl.tick()  # first step
        assert _weights(store) == {"v1": 50, "v2": 50}
        clock[0] += 2.0
        source.now = {"v1": (600, 0), "v2": (140, 40)}  # since the step: 100 good requests
        await ctl.tick()  # promoted
        clock[0] += 0.2
        await ctl.tick()
        return ctl.statuses.get("default", "orders")

    status = asyncio.run(run())
    assert status["phase"] == "Succeeded", status["reason"]
    assert _weights(store) == {"v1": 0, "v2": 100}
    checks = [e for e in status["events"] if e["decision"] == "promoted"][0]
    assert checks["canary"] == {"requests": 100, "failures": 0, "successRate": 100.0,
                                "p99Ms": pytest.approx(9.95, abs=0.1)}


def test_restart_resumes_and_a_new_spec_starts_again(setup, tmp_path):
    store, ctl, source, clock = setup

    async def first() -> None:
        await ctl.tick()
        clock[0] += 0.2
        await ctl.tick()

    asyncio.run(first())
    # a new controller on the same files: the status is read back, not started again
    again = CanaryController(store, SqliteStatusStore(store.path), Scripted(),
                             clock=lambda: clock[0])
    view = again.view("default", "orders")
    assert (view["status"]["phase"], view["status"]["weight"]) == ("Progressing", 50)
    # a changed spec is a new rollout
    text = CONFIG.replace("stepWeights: [50]", "stepWeights: [10, 50]")
    asyncio.run(store.apply_async(load_text(text)))
    assert again.view("default", "orders")["status"]["phase"] == ""
    # a deleted Canary's status goes with it
    asyncio.run(store.delete_async([("Canary", "default", "orders")]))
    asyncio.run(again.tick())
    assert again.statuses.get("default", "orders") is None


def test_a_missing_subset_is_reported_once(setup):
    store, ctl, source, clock = setup
    asyncio.run(store.apply_async(load_text(CONFIG.replace("canary: v2", "canary: v9"))))

    async def ticks() -> None:
        for _ in range(3):
            await ctl.tick()
            clock[0] += 0.2

    asyncio.run(ticks())
    status = ctl.statuses.get("default", "orders")
    assert status["reason"].startswith("cannot start: DestinationRule default/orders has no "
                                       "subset 'v9' (the canary)")
    assert [e["decision"] for e in status["events"]] == ["blocked"]
    assert store.get("VirtualService") == []  # nothing was routed


def test_webhooks_are_asked_over_http_and_hold_with_their_words(setup):
    """Flagger's protocol against a real HTTP server: a 503 with a body holds the rollout with
    that body as the reason; a 2xx lets it go on; the POST describes the canary."""
    from aiohttp import web

    store, ctl, source, clock = setup
    answers = [web.Response(status=503, text="change freeze until 18:00"), web.Response()]
    seen: list[dict] = []

    async def run() -> dict:
        async def hook(request: web.Request) -> web.Response:
            seen.append(await request.json())
            return answers.pop(0)

        app = web.Application()
        app.router.add_post("/confirm", hook)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        text = CONFIG.replace(
            "checks: {successRate: {min: 99}}",
            "checks: {successRate: {min: 99}}\n    webhooks: [{name: freeze, type: "
            f"confirm-rollout, url: 'http://127.0.0.1:{port}/confirm', metadata: {{a: b}}}}]")
        await store.apply_async(load_text(text))
        try:
            await ctl.tick()  # initialized
            clock[0] += 0.2
            await ctl.tick()  # asks: 503
            held = ctl.statuses.get("default", "orders")
            assert held["reason"] == ("held at 0% by confirm-rollout webhook: freeze answered "
                                      "503: change freeze until 18:00")
            assert (held["phase"], held["weight"]) == ("Initializing", 0)
            clock[0] += 0.2
            await ctl.tick()  # not asked again before an interval
            assert len(seen) == 1
            clock[0] += 2.0
            await ctl.tick()  # asks again: 200
            return ctl.statuses.get("default", "orders")
        finally:
            await runner.cleanup()

    status = asyncio.run(run())
    assert (status["phase"], status["weight"], status["lastDecision"]) == \
        ("Progressing", 50, "advanced")
    assert seen[0] == {"name": "orders", "namespace": "default", "phase": "Initializing",
                       "weight": 0, "type": "confirm-rollout", "metadata": {"a": "b"}}
    text = ctl.metrics_text()
    assert 'meshlet_canary_decisions_total{canary="default/orders",decision="held"} 1' in text
    assert 'meshlet_canary_weight{canary="default/orders"} 50' in text
