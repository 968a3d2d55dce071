"""Workload certificates with a 10 s lifetime renew by themselves under continuous traffic
between two sidecars: the serials change and not one request fails."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import pytest

from tests.support import (
    Proc,
    join_sidecar,
    start_app,
    start_control_plane,
    wait_until,
)

MESH = """
apiVersion: meshlet.dev/v1alpha1
kind: MeshConfig
metadata: {name: mesh, namespace: default}
spec: {certificateLifetime: 10s}
"""


@pytest.mark.slow
def test_short_lived_certificates_rotate_without_a_failed_request(tmp_path):
    cp = start_control_plane(tmp_path)
    assert cp.cli("apply", "-f", "-", input=MESH).returncode == 0
    # the CA reads the certificate lifetime at start: restart it on the same store
    host_port = cp.url.split("//", 1)[1]
    cp.proc.stop()
    cp.proc = Proc("control-plane-2", ["python", "-m", "control_plane.cli", "control-plane",
                                        "--data-dir", str(cp.data_dir), "--listen", host_port], tmp_path)
    wait_until(lambda: cp.cli("proxy-status").returncode == 0, timeout=20, what="control plane back")
    app, port = start_app(tmp_path, "inventory")
    inv = join_sidecar(tmp_path, cp, "inventory", port, state_dir=tmp_path / "inv")
    orders = join_sidecar(tmp_path, cp, "orders", 1)
    results: list[int] = []
    stop = threading.Event()

    def call() -> int:
        req = urllib.request.Request(f"http://127.0.0.1:{orders.outbound}/items",
                                     headers={"Host": "inventory", "Connection": "close"})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return -1

    try:
        wait_until(lambda: call() == 200, timeout=20, what="mesh routable")
        first = {sc.proc.name: json.loads(sc.admin_get("/certs")[1]) for sc in (inv, orders)}
        for c in first.values():
            assert c["seconds_to_expiry"] <= 12  # the 10 s lifetime from the MeshConfig
        t = threading.Thread(target=lambda: [results.append(call()) or time.sleep(0.01)
                                             for _ in range(2000) if not stop.is_set()])
        t.start()
        seen: dict[str, set[str]] = {name: {c["serial"]} for name, c in first.items()}
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline and not all(len(v) >= 3 for v in seen.values()):
            for sc in (inv, orders):
                seen[sc.proc.name].add(json.loads(sc.admin_get("/certs")[1])["serial"])
            time.sleep(0.2)
        stop.set()
        t.join(15)
        assert all(len(v) >= 3 for v in seen.values()), seen  # renewed at least twice each
        assert len(results) > 100
        assert all(code == 200 for code in results), {c: results.count(c) for c in set(results)}
    finally:
        stop.set()
        for p in (orders, inv, app, cp):
            p.stop()
