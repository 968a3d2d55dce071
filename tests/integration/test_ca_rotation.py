"""Root CA rotation with `meshlet ca rotate / activate / retire` while traffic flows through two
sidecars over mTLS: every sidecar follows each step (trust both roots, renew from the new one,
drop the old one) and not one request fails."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import pytest

from tests.support import join_sidecar, start_app, start_control_plane, wait_until


def _certs(sc) -> dict:
    return json.loads(sc.admin_get("/certs")[1])


@pytest.mark.slow
def test_root_rotation_without_a_failed_request(tmp_path):
    cp = start_control_plane(tmp_path)
    app, port = start_app(tmp_path, "inventory")
    inv = join_sidecar(tmp_path, cp, "inventory", port, state_dir=tmp_path / "inv")
    orders = join_sidecar(tmp_path, cp, "orders", 1)
    sidecars = (inv, orders)
    results: list[int] = []
    stop = threading.Event()

    def call() -> int:
        req = urllib.request.Request(
            f"http://127.0.0.1:{orders.outbound}/items", headers={"Host": "inventory"}
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return -1

    try:
        wait_until(lambda: call() == 200, timeout=20, what="mesh routable")

        def traffic() -> None:
            deadline = time.monotonic() + 120  # bounded in time and count
            while not stop.is_set() and time.monotonic() < deadline and len(results) < 20000:
                results.append(call())
                time.sleep(0.005)

        t = threading.Thread(target=traffic)
        t.start()
        old = json.loads(cp.cli("ca", "status", "-o", "json").stdout)["fingerprints"]
        assert len(old) == 1
        serials = {sc: _certs(sc)["serial"] for sc in sidecars}

        r = cp.cli("ca", "rotate", "--wait", "20", "-o", "json")
        assert r.returncode == 0, r.stderr
        both = json.loads(r.stdout)["fingerprints"]
        assert len(both) == 2
        for sc in sidecars:
            wait_until(
                lambda sc=sc: set(_certs(sc)["trust_bundle_fingerprints"]) == set(both),
                timeout=20,
                what="every sidecar trusts both roots",
            )

        r = cp.cli("ca", "activate", "--wait", "20", "-o", "json")
        assert r.returncode == 0, r.stderr
        for sc in sidecars:
            wait_until(
                lambda sc=sc: _certs(sc)["serial"] != serials[sc],
                timeout=30,
                what="every sidecar renewed from the new root",
            )

        r = cp.cli("ca", "retire", old[0], "--wait", "20", "-o", "json")
        assert r.returncode == 0, r.stderr
        new = [fp for fp in both if fp != old[0]]
        for sc in sidecars:
            wait_until(
                lambda sc=sc: _certs(sc)["trust_bundle_fingerprints"] == new,
                timeout=20,
                what="every sidecar dropped the old root",
            )
        after = len(results)
        # some traffic after the last step: 20 more calls, counted rather than slept for
        wait_until(lambda: len(results) >= after + 20, timeout=20, what="traffic after retire")
        stop.set()
        t.join(10)
        assert len(results) > 50
        assert all(code == 200 for code in results), {c: results.count(c) for c in set(results)}
        # new connections after the rotation still work
        assert call() == 200
    finally:
        stop.set()
        for p in (orders, inv, app, cp):
            p.stop()
