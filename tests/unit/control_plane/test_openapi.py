"""The OpenAPI document is valid YAML and documents every operator route the server has."""

from __future__ import annotations

import re

import yaml

from control_plane.server import OPENAPI, ControlPlane

UNDOCUMENTED = {"/v1/stream", "/v1/certify", "/v1/trust-bundle"}  # in docs/operator-api.md


def test_every_route_is_documented(tmp_path):
    doc = yaml.safe_load(OPENAPI.read_text())
    assert doc["openapi"].startswith("3.")
    cp = ControlPlane(str(tmp_path), plain_http=True)
    try:
        routes = set()
        for route in cp.app().router.routes():
            info = route.resource.get_info() if route.resource else {}
            path = info.get("path") or info.get("formatter")
            if route.method != "HEAD":
                routes.add((path, route.method.lower()))
    finally:
        cp.store.close()
    documented = {(p, m) for p, ops in doc["paths"].items() for m in ops if m != "parameters"}
    for path, method in routes:
        if path in UNDOCUMENTED:
            continue
        norm = re.sub(r"\{(\w+)\}", "{x}", path)
        assert any(re.sub(r"\{(\w+)\}", "{x}", p) == norm and m == method
                   for p, m in documented), (path, method)


async def test_store_failure_is_a_503_with_a_reason(tmp_path):
    import aiohttp

    cp = ControlPlane(str(tmp_path), "127.0.0.1:0", plain_http=True)
    host, port = await cp.start()
    try:
        cp.store._db.close()  # what a vanished or unwritable store looks like to a handler
        async with aiohttp.ClientSession() as s, s.get(
            f"http://{host}:{port}/v1/resources/vs",
            headers={"Authorization": f"Bearer {cp.admin_token}"},
        ) as r:
            assert r.status == 503
            assert (await r.json())["error"].startswith("the store is unavailable: ")
    finally:
        cp.store.close = lambda: None  # already closed
        await cp.stop()
