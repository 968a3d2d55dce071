"""A draining sidecar leaves the mesh when its drain starts, not when it exits: the control plane
drops it from the registry and its peers' configs at once (as Kubernetes takes a terminating
pod out of its endpoints), while the request it still serves completes.

Real processes: a control plane, the ``inventory`` app (its ``/delay`` holds a request) with a
joined sidecar, and a joined ``orders`` client sidecar that calls it."""

from __future__ import annotations

import json
import signal
import threading
import urllib.request

import pytest

from tests.support import (
    join_sidecar,
    start_app,
    start_control_plane,
    stopped_at_end,
    wait_until,
)

pytestmark = pytest.mark.slow


def endpoints(sidecar, service: str = "inventory") -> list:
    clusters = json.loads(sidecar.admin_get("/clusters")[1])["clusters"]
    return [ep for c in clusters if c["service"].startswith(service)
            for ep in c.get("endpoints", [])]


def registered(cp) -> set[str]:
    r = cp.cli("proxy-status", "-o", "json")
    assert r.returncode == 0, r.stderr
    return {p["service"] for p in json.loads(r.stdout)["proxies"]}


def test_drain_deregisters_at_once_and_in_flight_request_completes(tmp_path):
    with stopped_at_end() as started:
        cp = start_control_plane(tmp_path)
        started.append(cp)
        app, port = start_app(tmp_path, "inventory")
        started.append(app)
        inv = join_sidecar(tmp_path, cp, "inventory", port, "--drain-timeout", "30")
        started.append(inv)
        orders = join_sidecar(tmp_path, cp, "orders", 1)
        started.append(orders)
        wait_until(lambda: endpoints(orders) and registered(cp) >= {"inventory", "orders"},
                   timeout=30, interval=0.2, what="orders knows inventory's endpoint")

        result: dict[str, object] = {}

        def slow_call() -> None:
            req = urllib.request.Request(f"http://127.0.0.1:{orders.outbound}/delay?ms=8000",
                                         headers={"Host": "inventory"})
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    result["status"] = r.status
            except Exception as e:  # noqa: BLE001 - reported by the assertion below
                result["error"] = repr(e)

        t = threading.Thread(target=slow_call)
        t.start()
        try:
            wait_until(lambda: delaying(port) > 0, timeout=10, interval=0.05,
                       what="the slow request held by the app")
            inv.proc.signal(signal.SIGTERM)
            # while the request is still held by the app, inventory is gone from the registry
            # and from orders' view of the mesh
            wait_until(lambda: "inventory" not in registered(cp) or not t.is_alive(),
                       timeout=20, interval=0.1, what="inventory deregistered")
            assert t.is_alive(), "inventory was deregistered only after its drain"
            wait_until(lambda: not endpoints(orders) or not t.is_alive(), timeout=20,
                       interval=0.1, what="orders' config without inventory's endpoint")
            assert t.is_alive(), "orders still had inventory's endpoint when the drain ended"
        finally:
            t.join(60)
        assert result == {"status": 200}, result
        assert inv.proc.p.wait(30) == 0


def delaying(app_port: int) -> int:
    """``/delay`` calls the app holds now."""
    with urllib.request.urlopen(f"http://127.0.0.1:{app_port}/stats", timeout=5) as r:
        return int(json.loads(r.read())["delaying"])
