"""Chaos probes of one route against a real control plane and sidecars: traffic on the
``canary-split`` route of orders (half of it failing) is what ``success_rate`` and
``request_rate`` with ``route=`` report, read from the control plane's per-route stats."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from control_plane.chaos import metrics, probes
from tests.integration.test_mesh_telemetry import Mesh
from tests.support import wait_until

WINDOW = 10.0
ROUTE = "canary-split"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    m = Mesh(tmp_path_factory.mktemp("chaos-route"))
    yield m
    m.stop()


@pytest.fixture()
def configuration(mesh: Mesh, tmp_path: Path) -> dict:
    """The experiment's configuration: a mesh.json naming only the control plane, as the
    actions use it (its admin token and CA come from its data dir)."""
    state = tmp_path / "mesh.json"
    state.write_text(json.dumps({"control_plane": {"url": mesh.cp.url,
                                                   "data_dir": str(mesh.cp.data_dir)}}))
    return {"meshlet_mesh": str(state)}


def route_requests(mesh: Mesh) -> int:
    _, body = mesh.api("/v1/stats/routes?window=10m")
    return sum(r["requests"] for r in body["routes"] if r["route"] == ROUTE)


def during_probe(mesh: Mesh, probe: Callable[[], float], monkeypatch, ok: int, failed: int
                 ) -> float:
    """Run ``probe`` in a thread; once it made its first read, send ``ok`` good and ``failed``
    failing calls on the route and wait until the control plane has them, all before its
    second read ``WINDOW`` seconds later."""
    real = metrics.route_window
    first_read = threading.Event()

    def spy(service: str, route: str, seconds: float, read: Callable[[], dict]):
        def read_and_tell() -> dict:
            out = read()
            first_read.set()
            return out
        return real(service, route, seconds, read_and_tell)

    monkeypatch.setattr(metrics, "route_window", spy)
    result: list[float] = []
    before = route_requests(mesh)
    t = threading.Thread(target=lambda: result.append(probe()))
    t.start()
    assert first_read.wait(10), "the probe did not read the control plane"
    started = time.monotonic()
    assert mesh.send(ok) == [200] * ok
    assert mesh.send(failed, path="/status/500") == [500] * failed
    wait_until(lambda: route_requests(mesh) - before >= ok + failed, WINDOW, 0.1,
               f"{ok + failed} calls on {ROUTE} in the control plane's stats")
    assert time.monotonic() - started < WINDOW, "the calls came too late for the window"
    assert t.is_alive()
    t.join(WINDOW + 20)
    assert result, "the probe did not finish"
    return result[0]


@pytest.mark.slow
def test_route_success_rate_and_request_rate(mesh, configuration, monkeypatch):
    sr = during_probe(
        mesh, lambda: probes.success_rate("orders", WINDOW, configuration=configuration,
                                          route=ROUTE),
        monkeypatch, ok=30, failed=10)
    assert sr == pytest.approx(0.75)
    rate = during_probe(
        mesh, lambda: probes.request_rate("orders", WINDOW, configuration=configuration,
                                          route=ROUTE),
        monkeypatch, ok=40, failed=0)
    # 40 calls over the probe's window: its two reads are WINDOW s apart, plus their latency
    assert rate == pytest.approx(40 / WINDOW, rel=0.1)


@pytest.mark.slow
def test_route_slo_and_an_unknown_route(mesh, configuration, monkeypatch):
    ok = during_probe(
        mesh, lambda: probes.slo("orders", min_success_rate=0.99, max_p99_ms=5000,
                                 window=WINDOW, configuration=configuration, route=ROUTE),
        monkeypatch, ok=20, failed=0)
    assert ok is True
    # traffic on the route does not count for another route of the same service
    other = during_probe(
        mesh, lambda: probes.request_rate("orders", WINDOW, configuration=configuration,
                                          route="orders.1"),
        monkeypatch, ok=10, failed=0)
    assert other == 0.0
    with pytest.raises(ValueError, match="Prometheus"):
        probes.success_rate("orders", 1.0, prometheus_url="http://127.0.0.1:9",
                            configuration=configuration, route=ROUTE)
