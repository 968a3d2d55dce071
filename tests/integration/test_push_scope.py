"""Push at scale with real processes: a control plane, three joined sidecars and their apps.

A Sidecar resource scopes productpage's sidecar to reviews: a change elsewhere sends it nothing
(its version stays). A delta push changes its traffic. A sidecar restarted from its cache gets a
delta, not the whole snapshot. The control plane's /metrics counts it all, unauthenticated."""

from __future__ import annotations

import re

import aiohttp
import pytest

from tests.integration.test_control_plane import ControlPlaneProcess
from tests.integration.test_control_plane_e2e import (
    DR,
    VS,
    poll,
    start_joined_sidecar,
    wait_versions,
)
from tests.support import READY, Proc, Sidecar, start_app

SIDECAR = """apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: productpage}
spec:
  workloadSelector: {labels: {app: productpage}}
  egress:
  - hosts: ["./reviews.default.svc.cluster.local"]
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
"""
ELSEWHERE = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: payment}}
spec: {{host: payment, trafficPolicy: {{connectionPool: {{tcp: {{maxConnections: {n}}}}}}}}}
"""


async def metrics(cp: ControlPlaneProcess) -> dict[str, float]:
    async with aiohttp.ClientSession() as s, s.get(cp.url + "/metrics",
                                                   ssl=cp.ca_context()) as r:
        assert r.status == 200  # no admin token: a Prometheus scraper has none
        text = await r.text()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(meshlet_[a-z_]+(?:\{[^}]*\})?) ([0-9.e+-]+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


async def proxies(cp: ControlPlaneProcess) -> dict[str, dict]:
    status, body = await cp.call("GET", "/v1/proxies")
    assert status == 200
    return {p["service"] + "-" + p["version"]: p for p in body["proxies"]}


async def apply(cp: ControlPlaneProcess, text: str) -> None:
    status, body = await cp.call("POST", "/v1/resources", json={"files": [
        {"source": "t.yaml", "text": text}]})
    assert status == 200, body


def all_synced(ps: dict[str, dict]) -> bool:
    return all(p["connected"] and p["acked_version"] == p["expected_version"]
               for p in ps.values())


@pytest.mark.slow
async def test_scoped_delta_pushes_between_real_sidecars(tmp_path):
    cp = ControlPlaneProcess(tmp_path / "cp", extra=("--push-debounce", "20ms",
                                                      "--push-debounce-max", "1s")).start()
    procs: list = []
    try:
        app1, port1 = start_app(tmp_path, "reviews", "v1")
        app2, port2 = start_app(tmp_path, "reviews", "v2")
        procs += [app1, app2]
        await apply(cp, SIDECAR + "---\n" + DR)
        status, body = await cp.call("GET", "/v1/resources/sidecars")  # `meshlet get sidecars`
        assert status == 200 and [i["metadata"]["name"] for i in body["items"]] == ["productpage"]
        r1 = await start_joined_sidecar(cp, tmp_path, "reviews", "v1", port1, "reviews-v1")
        procs.append(r1)
        r2 = await start_joined_sidecar(cp, tmp_path, "reviews", "v2", port2, "reviews-v2")
        procs.append(r2)
        pp = await start_joined_sidecar(cp, tmp_path, "productpage", "v1", port1, "productpage")
        procs.append(pp)

        async def three_synced() -> bool:
            ps = await proxies(cp)
            return len(ps) == 3 and all_synced(ps)

        await poll(three_synced, what="3 sidecars synced")
        ps = await proxies(cp)
        # productpage's scoped view is its own version; reviews' sidecars see everything
        assert ps["productpage-v1"]["acked_version"] != ps["reviews-v1"]["acked_version"]
        await wait_versions(pp, {"v1", "v2"})
        # the field it accepts without enforcing is said once in the sidecar's log
        log = pp.proc.stderr()
        assert log.count("spec.outboundTrafficPolicy: accepted but not enforced by meshlet") == 1

        # A change outside productpage's egress hosts: reviews' sidecars get it, productpage
        # is sent nothing and keeps its version.
        before = ps["productpage-v1"]
        await apply(cp, ELSEWHERE.format(n=7))

        async def reviews_moved() -> bool:
            p = (await proxies(cp))["reviews-v1"]
            return p["acked_version"] != ps["reviews-v1"]["acked_version"] and all_synced(
                await proxies(cp))

        await poll(reviews_moved, what="reviews sidecars acked the change")
        after = (await proxies(cp))["productpage-v1"]
        assert after["sent_version"] == before["sent_version"]
        assert after["acked_version"] == before["acked_version"]
        _, dump = pp.admin_get("/config_dump")
        assert b"payment" not in dump

        # A delta push changes traffic.
        m0 = await metrics(cp)
        await apply(cp, VS.format(subset="v2"))
        assert await wait_versions(pp, {"v2"}) < 2.0
        await poll(lambda: _synced(cp), what="ACKs of the route change")
        m1 = await metrics(cp)
        key = 'meshlet_pushes_total{result="ok",type="delta"}'
        assert m1[key] > m0.get(key, 0)
        assert m1["meshlet_proxy_convergence_seconds_count"] > m0.get(
            "meshlet_proxy_convergence_seconds_count", 0)
        assert m1["meshlet_connected_proxies"] == 3

        # productpage restarts from its cache while the route changes: it reconnects with its
        # version and hashes and gets a delta, not the whole snapshot.
        pp.stop()
        procs.remove(pp)
        await apply(cp, VS.format(subset="v1"))
        await poll(lambda: _synced(cp, 2), what="2 sidecars synced")
        full0 = (await metrics(cp)).get('meshlet_pushes_total{result="ok",type="full"}', 0)
        proc = Proc("sidecar-productpage-2", pp.proc.cmd, tmp_path)
        m = proc.wait_for(READY, timeout=30)
        pp = Sidecar(proc, int(m.group(1)), int(m.group(2)), int(m.group(3)))
        procs.append(pp)
        assert await wait_versions(pp, {"v1"}) < 5.0
        await poll(lambda: _synced(cp), what="3 sidecars synced after the restart")
        full1 = (await metrics(cp)).get('meshlet_pushes_total{result="ok",type="full"}', 0)
        assert full1 == full0
    finally:
        for p in procs:
            p.stop()
        cp.stop()


async def _synced(cp: ControlPlaneProcess, n: int = 3) -> bool:
    ps = await proxies(cp)
    return len(ps) == n and all_synced(ps)
