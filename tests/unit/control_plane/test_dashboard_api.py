"""The dashboard's login and session, read-only access, stats from peer replicas merged, and
reports tied to the sidecar that sent them (in-process control planes on loopback)."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from control_plane.registry import Registration
from control_plane.server import ControlPlane
from control_plane.telemetry import TelemetryHub


def report(src: str, n: int) -> dict:
    return {"edges": [{"reporter": "source", "source": src, "source_namespace": "default",
                       "source_version": "v1", "destination": "orders.default.svc.cluster.local",
                       "destination_version": "v1", "requests": n, "failures": 0, "mtls": n,
                       "sum_ms": n * 2.0, "buckets": [0, 0, n]}],
            "routes": []}


async def started(tmp, name: str) -> tuple[ControlPlane, str]:
    cp = ControlPlane(str(tmp / name), "127.0.0.1:0", plain_http=True)
    host, port = await cp.start()
    return cp, f"http://{host}:{port}"


async def test_login_sets_a_strict_session_cookie_that_only_reads(tmp_path):
    cp, url = await started(tmp_path, "cp")
    try:
        ro = (tmp_path / "cp" / "readonly.token").read_text().strip()
        assert ro and ro != cp.admin_token
        async with aiohttp.ClientSession() as s:
            async with s.get(url + "/ui/") as r:
                assert r.status == 200 and 'action="/ui/login"' in await r.text()
            async with s.post(url + "/ui/login", data={"token": "nope"},
                              allow_redirects=False) as r:
                assert r.status == 302 and r.headers["Location"] == "/ui/?error=1"
                assert "Set-Cookie" not in r.headers
            async with s.post(url + "/ui/login", data={"token": ro},
                              allow_redirects=False) as r:
                assert r.status == 302
                cookie = r.headers["Set-Cookie"]
            attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")}
            assert {"httponly", "secure", "samesite"} <= attrs and "SameSite=Strict" in cookie
            session = {"Cookie": cookie.split(";")[0]}
            async with s.get(url + "/ui/", headers=session) as r:
                page = await r.text()
                assert "cytoscape.min.js" in page and "Content-Security-Policy" in r.headers
            for path in ("/v1/stats/edges", "/v1/stats/routes", "/v1/proxies", "/v1/analyze"):
                async with s.get(url + path, headers=session) as r:
                    assert r.status == 200, path
                async with s.get(url + path) as r:
                    assert r.status == 401, path
            # a session (or the read-only token) never writes
            for headers in (session, {"Authorization": f"Bearer {ro}"}):
                async with s.post(url + "/v1/resources", data="kind: x", headers=headers) as r:
                    assert r.status == 401
                async with s.get(url + "/v1/resources", headers=headers) as r:
                    assert r.status == 401
            async with s.get(url + "/ui/vendor/cytoscape.min.js") as r:
                assert r.status == 200 and len(await r.read()) > 100_000
            async with s.get(url + "/ui/vendor/..%2Fdashboard.py") as r:
                assert r.status == 404
            async with s.post(url + "/ui/logout", headers=session, allow_redirects=False) as r:
                assert r.status == 302
            async with s.get(url + "/v1/stats/edges", headers=session) as r:
                assert r.status == 401
    finally:
        await cp.stop()


async def test_a_replica_serves_its_peers_windows_merged(tmp_path):
    a, url_a = await started(tmp_path, "a")
    b, url_b = await started(tmp_path, "b")
    try:
        a.telemetry.stats.ingest(report("frontend", 30))
        b.telemetry.stats.ingest(report("frontend", 12))
        b.telemetry.stats.ingest(report("checkout", 5))
        a.telemetry.peers = [url_b]
        a.telemetry.peer_token = b.admin_token
        hdr = {"Authorization": f"Bearer {a.admin_token}"}
        async with aiohttp.ClientSession() as s:
            async with s.get(url_a + "/v1/stats/edges", headers=hdr) as r:
                merged = {e["source"]["workload"]: e["requests"] for e in (await r.json())["edges"]}
            async with s.get(url_a + "/v1/stats/edges?scope=local", headers=hdr) as r:
                local = {e["source"]["workload"]: e["requests"] for e in (await r.json())["edges"]}
        assert merged == {"frontend": 42, "checkout": 5}
        assert local == {"frontend": 30}
        await b.stop()
        # a peer that is down: the view is what can be seen, not an error (once the view
        # computed a moment ago, served again for up to VIEW_CACHE_S, is recomputed)
        deadline = time.monotonic() + 10
        async with aiohttp.ClientSession() as s:
            while True:
                async with s.get(url_a + "/v1/stats/edges", headers=hdr) as r:
                    assert r.status == 200
                    got = {e["source"]["workload"]: e["requests"]
                           for e in (await r.json())["edges"]}
                if got == {"frontend": 30} or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
        assert got == {"frontend": 30}
    finally:
        await a.stop()


def test_reports_speak_only_for_the_sidecar_that_sent_them():
    reg = Registration(node_id="n", service="orders", namespace="shop", version="v2")
    got = TelemetryHub._own(reg, {"edges": [
        {"reporter": "source", "source": "admin-ui", "source_namespace": "kube-system",
         "destination": "payment.shop.svc.cluster.local"},
        {"reporter": "destination", "source": "unknown",
         "destination": "payment.shop.svc.cluster.local"},  # not its own service: dropped
        {"reporter": "destination", "source": "unknown",
         "destination": "orders.shop.svc.cluster.local"},
    ]})
    assert [(e["reporter"], e["source"], e.get("source_namespace"), e["destination"])
            for e in got["edges"]] == [
        ("source", "orders", "shop", "payment.shop.svc.cluster.local"),
        ("destination", "unknown", None, "orders.shop.svc.cluster.local"),
    ]
    assert got["edges"][0]["source_version"] == "v2"


class _WS:
    """The sidecar end of a config stream, as far as the hub can see it: messages it was sent."""

    closed = False

    def __init__(self) -> None:
        self.sent: list[dict] = []

    async def send_str(self, text: str) -> None:
        import json

        self.sent.append(json.loads(text))


async def test_a_sidecar_that_connects_during_a_tap_joins_it(tmp_path):
    from types import SimpleNamespace

    from control_plane.telemetry import TapSession

    streams = {}
    hub = TelemetryHub(SimpleNamespace(streams=streams), None, lambda r: True)
    session = TapSession("tap-1", "orders", "default", {"type": "tap", "id": "tap-1",
                                                         "expires_in": 30})
    session.nodes = {"orders-v1"}
    hub.taps["tap-1"] = session
    late = Registration(node_id="orders-v3", service="orders", namespace="default", version="v3")
    other = Registration(node_id="pay", service="payment", namespace="default")
    for reg in (late, other):
        streams[reg.node_id] = SimpleNamespace(reg=reg, ws=_WS())
    hub.on_message(late, {"type": "stats", "edges": [], "routes": []})
    hub.on_message(other, {"type": "stats", "edges": [], "routes": []})
    hub.on_message(late, {"type": "stats", "edges": 5})  # malformed: dropped, no exception
    deadline = time.monotonic() + 5
    while not streams["orders-v3"].ws.sent and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    (msg,) = streams["orders-v3"].ws.sent
    assert msg["type"] == "tap" and msg["id"] == "tap-1" and 0 < msg["expires_in"] <= 30
    assert streams["pay"].ws.sent == [] and session.nodes == {"orders-v1", "orders-v3"}
    # its events are relayed; another service's events for the same id are not
    hub.on_message(late, {"type": "tap_events", "id": "tap-1", "events": [{"path": "/a"}],
                          "dropped": 2})
    hub.on_message(other, {"type": "tap_events", "id": "tap-1", "events": [{"path": "/b"}]})
    assert session.queue.qsize() == 1 and session.dropped == 2


def test_every_dashboard_file_is_package_data():
    """A wheel without these would serve a dashboard with no page or no graph library."""
    import fnmatch
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["control_plane"]
    ui = root / "control_plane" / "ui"
    files = [p.relative_to(root / "control_plane").as_posix() for p in ui.rglob("*")
             if p.is_file()]
    assert {"ui/index.html", "ui/login.html", "ui/app.js", "ui/vendor/cytoscape.min.js",
            "ui/vendor/cytoscape.LICENSE"} <= set(files)
    for f in files:
        assert any(fnmatch.fnmatch(f, g) and f.count("/") == g.count("/") for g in globs), f
