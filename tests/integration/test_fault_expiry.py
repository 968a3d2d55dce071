"""Faults that expire (``meshlet.dev/expires-at``): the sidecar drops an expired fault on time
by itself, with the control plane gone; the control plane deletes it from its store; an
expiring VirtualService is an overlay whose header-matched fault singles out test traffic while
other requests keep the host's regular routes."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from control_plane.api.expiry import format_expires_at
from tests.support import join_sidecar, start_app, start_control_plane, wait_until

OVERLAY = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: {name}
  annotations: {{meshlet.dev/expires-at: "{at}"}}
spec:
  hosts: [reviews]
  http:
  - match: [{{headers: {{x-chaos: {{exact: "1"}}}}}}]
    fault: {{abort: {{httpStatus: 503, percentage: {{value: 100}}}}}}
    route: [{{destination: {{host: reviews}}}}]
"""


async def _get(port: int, chaos: bool) -> tuple[int, str]:
    headers = {"Host": "reviews", **({"x-chaos": "1"} if chaos else {})}
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{port}/x", headers=headers) as r,
    ):
        await r.read()
        return r.status, r.headers.get("x-meshlet-response-flags", "-")


async def _until(port: int, chaos: bool, want: tuple[int, str], timeout: float) -> float:
    t0 = time.monotonic()
    while (got := await _get(port, chaos)) != want:
        assert time.monotonic() - t0 < timeout, f"still {got}, want {want}"
        await asyncio.sleep(0.1)
    return time.monotonic() - t0


@pytest.mark.slow
async def test_injected_fault_expires_in_the_sidecar_and_in_the_store(tmp_path):
    cp = start_control_plane(tmp_path)
    app, pa = start_app(tmp_path, "reviews")
    procs = [app]
    try:
        sidecars = {}
        for svc, port in (("reviews", pa), ("orders", pa)):
            sc = join_sidecar(tmp_path, cp, svc, port, "--no-access-log",
                              state_dir=tmp_path / f"state-{svc}")
            procs.append(sc)
            sidecars[svc] = sc
        out = sidecars["orders"].outbound
        await _until(out, False, (200, "-"), 30)

        # 1. control plane up: the fault hits only the marked requests, then goes away from the
        # sidecar and from the store
        at = time.time() + 4
        r = cp.cli("apply", "-f", "-", input=OVERLAY.format(name="chaos-a", at=format_expires_at(at)))
        assert r.returncode == 0, r.stderr
        await _until(out, True, (503, "FI"), 20)
        assert await _get(out, False) == (200, "-")  # regular traffic keeps its route
        await _until(out, True, (200, "-"), 20)
        assert time.time() >= at
        wait_until(
            lambda: "chaos-a" not in cp.cli("get", "virtualservice").stdout,
            timeout=20, what="the control plane to delete the expired VirtualService",
        )

        # 2. the control plane dies while a fault is in place: the sidecar still ends it on time
        at = time.time() + 4
        r = cp.cli("apply", "-f", "-", input=OVERLAY.format(name="chaos-b", at=format_expires_at(at)))
        assert r.returncode == 0, r.stderr
        await _until(out, True, (503, "FI"), 20)
        cp.stop()
        await _until(out, True, (200, "-"), 20)
        assert time.time() >= at
    finally:
        for p in reversed(procs):
            p.stop()
        cp.stop()


def test_expires_at_must_be_rfc3339_with_a_zone():
    from control_plane.api.resources import InvalidConfig, load_text

    for bad, why in (("tomorrow", "RFC 3339"), ("2026-12-06T10:00:00", "time zone")):
        with pytest.raises(InvalidConfig) as e:
            load_text(OVERLAY.format(name="x", at=bad), "vs.yaml")
        assert "metadata.annotations.meshlet.dev/expires-at" in str(e.value)
        assert why in str(e.value)


@pytest.mark.slow
def test_chaos_actions_inject_a_header_scoped_delay_and_remove_it(tmp_path, monkeypatch):
    """control_plane.chaos.actions against a real control plane: a delay only for marked
    requests, listed as a chaos fault, removed by the rollback action."""
    import urllib.error
    import urllib.request

    from control_plane.chaos import actions

    cp = start_control_plane(tmp_path)
    app, pa = start_app(tmp_path, "reviews")
    procs = [app]
    try:
        for svc in ("reviews", "orders"):
            procs.append(join_sidecar(tmp_path, cp, svc, pa, "--no-access-log",
                                      state_dir=tmp_path / f"state-{svc}"))
        out = procs[-1].outbound
        monkeypatch.setenv("MESHLET_CONTROL_PLANE", cp.url)
        monkeypatch.setenv("MESHLET_DATA_DIR", str(cp.data_dir))
        monkeypatch.delenv("MESHLET_MESH", raising=False)

        def get(marked: bool) -> tuple[float, int, str]:
            req = urllib.request.Request(
                f"http://127.0.0.1:{out}/x",
                headers={"Host": "reviews", **({"x-user": "chaos-test"} if marked else {})},
            )
            t0 = time.monotonic()
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    r.read()
                    return time.monotonic() - t0, r.status, r.headers.get(
                        "x-meshlet-response-flags", "-")
            except urllib.error.HTTPError as e:  # not routed yet
                return time.monotonic() - t0, e.code, e.headers.get("x-meshlet-response-flags")

        wait_until(lambda: get(False)[1] == 200, timeout=30, what="the mesh")
        got = actions.inject_delay(
            "reviews", delay="700ms", header={"x-user": "chaos-test"}, expires_in="2m"
        )
        assert got["virtualservice"] == "default/chaos-reviews"
        assert actions.list_faults() == ["default/chaos-reviews"]
        # a delayed request is proxied as usual (DI is in the access log and metrics only)
        wait_until(lambda: get(True)[0] >= 0.7, timeout=20, what="the delay in effect")
        took, status, _ = get(True)
        assert status == 200 and took >= 0.7
        took, status, flags = get(False)
        assert (status, flags) == (200, "-") and took < 0.7  # unmarked traffic untouched
        assert actions.remove_all_faults() == 1
        assert actions.list_faults() == []
        wait_until(lambda: get(True)[0] < 0.7, timeout=20, what="the delay removed")
    finally:
        for p in reversed(procs):
            p.stop()
        cp.stop()
