"""A standalone sidecar warns about each accepted-but-not-enforced field of its config file, once
per config version (not per request, not again for an unchanged reload), naming the file, the
document, the resource and the field path; and MeshConfig ``tracing.sampling`` is applied."""

from __future__ import annotations

import json
import signal

import aiohttp

from tests.support import start_app, start_sidecar, static_service_entry, wait_until

VS = """
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: inventory}
spec:
  hosts: [inventory]
  http:
  - match: [{uri: {prefix: /}, port: 8080}]
    corsPolicy: {allowOrigins: [{exact: "https://a.example"}]}
    route: [{destination: {host: inventory}}]
"""

MESH = """
---
apiVersion: meshlet.dev/v1alpha1
kind: MeshConfig
metadata: {{name: mesh}}
spec:
  tracing: {{sampling: {pct}}}
"""

EXPORT = """
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: inventory}
spec:
  host: inventory
  exportTo: ["."]
"""


def _warnings(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if " WARNING " in ln and "not enforced" in ln]


def _sampled(seen: dict) -> bool:
    """The sampled bit of the trace flags the app received (W3C traceparent)."""
    return bool(int(seen["headers"]["traceparent"].rsplit("-", 1)[1], 16) & 1)


async def _get(port: int) -> dict:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{port}/echo", headers={"Host": "inventory"}) as r,
    ):
        assert r.status == 200
        return await r.json()


async def test_sidecar_warns_once_per_version_for_each_unenforced_field(tmp_path):
    app, port = start_app(tmp_path, "inventory")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(static_service_entry("inventory", port) + VS + MESH.format(pct=0))
    sc = start_sidecar(tmp_path, "orders", port, cfg)
    try:
        first = _warnings(sc.proc.stderr())
        where = f"{cfg}#2 VirtualService default/inventory"
        assert len(first) == 2, first
        assert f"{where}: spec.http[0].match[0].port: accepted but not enforced" in first[0]
        assert f"{where}: spec.http[0].corsPolicy: accepted but not enforced" in first[1]
        # MeshConfig tracing.sampling 0: a request without a decision is not sampled
        seen = await _get(sc.outbound)
        assert not _sampled(seen)
        for _ in range(5):
            await _get(sc.outbound)
        v1 = json.loads(sc.admin_get("/config_dump")[1])["version"]

        # unchanged file reloaded: same version, no new warning
        sc.proc.signal(signal.SIGHUP)
        wait_until(lambda: sc.proc.stderr().count("config reloaded") == 1, what="reload")
        assert _warnings(sc.proc.stderr()) == first

        # a new version warns again, for each field it has
        cfg.write_text(static_service_entry("inventory", port) + VS + MESH.format(pct=100) + EXPORT)
        sc.proc.signal(signal.SIGHUP)
        wait_until(
            lambda: json.loads(sc.admin_get("/config_dump")[1])["version"] != v1, what="reload"
        )
        new = _warnings(sc.proc.stderr())[len(first) :]
        assert len(new) == 3, new
        assert f"{cfg}#4 DestinationRule default/inventory: spec.exportTo:" in new[2]
        seen = await _get(sc.outbound)
        assert _sampled(seen)
    finally:
        sc.stop()
        app.stop()
