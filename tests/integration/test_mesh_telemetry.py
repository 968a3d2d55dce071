"""Mesh telemetry end to end with real processes: sidecars report over the config stream, the
control plane serves golden metrics (/v1/stats), `meshlet top` and `meshlet tap` read them, and a
tap never shows bodies or secret header values."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
from pathlib import Path

import aiohttp
import pytest

from tests.support import (
    Sidecar,
    env,
    free_port,
    start_app,
    start_control_plane,
    start_sidecar,
    wait_until,
)

CONFIG = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: orders}
spec:
  host: orders
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: orders}
spec:
  hosts: [orders]
  http:
  - name: canary-split
    route:
    - {destination: {host: orders, subset: v1}, weight: 80}
    - {destination: {host: orders, subset: v2}, weight: 20}
"""
SECRETS = ("SECRET-AUTH-7f3a", "SECRET-COOKIE-91bc", "SECRET-BODY-55de", "SECRET-PROXY-AUTH-2e1")


class Mesh:
    """A control plane, orders v1 and v2 behind sidecars, and a frontend sidecar as the caller."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list = []
        self.cp = start_control_plane(tmp)
        cfg = tmp / "orders.yaml"
        cfg.write_text(CONFIG)
        r = self.cp.cli("apply", "-f", str(cfg))
        assert r.returncode == 0, r.stderr
        sidecar_env = env(MESHLET_STATS_INTERVAL="0.2")
        self.sidecars: dict[str, Sidecar] = {}
        for svc, ver in (("orders", "v1"), ("orders", "v2"), ("frontend", "v1")):
            if svc == "frontend":
                app_port = free_port()
            else:
                app, app_port = start_app(tmp, svc, ver)
                self.procs.append(app)
            sc = start_sidecar(
                tmp, svc, app_port, None, "--version", ver, "--control-plane", self.cp.url,
                "--token-file", str(self.cp.token(svc, tmp)), "--state-dir",
                str(tmp / f"state-{svc}-{ver}"), "--no-access-log",
                environ=sidecar_env, name=f"{svc}-{ver}")
            self.procs.append(sc.proc)
            self.sidecars[f"{svc}-{ver}"] = sc
        wait_until(self.synced, 30, 0.1, "every sidecar to acknowledge the config")

    def api(self, path: str, token: str | None = None) -> tuple[int, dict]:
        import urllib.error
        import urllib.request

        ctx = ssl.create_default_context(cafile=str(self.cp.data_dir / "ca" / "trust-bundle.pem"))
        tok = token or (self.cp.data_dir / "admin.token").read_text().strip()
        req = urllib.request.Request(self.cp.url + path, headers={"Authorization": f"Bearer {tok}"})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def synced(self) -> bool:
        _, body = self.api("/v1/proxies")
        ps = body.get("proxies", [])
        return len(ps) == 3 and all(p["acked_version"] == body["snapshot_version"] for p in ps)

    def send(self, n: int, **kw) -> list[int]:
        return asyncio.run(self._send(n, **kw))

    async def _send(self, n: int, method: str = "GET", path: str = "/orders",
                    headers: dict | None = None, body: bytes | None = None) -> list[int]:
        out = []
        port = self.sidecars["frontend-v1"].outbound
        async with aiohttp.ClientSession() as s:
            for _ in range(n):
                async with s.request(method, f"http://127.0.0.1:{port}{path}", data=body,
                                     headers={"Host": "orders", **(headers or {})}) as r:
                    await r.read()
                    out.append(r.status)
        return out

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.cp.stop()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    m = Mesh(tmp_path_factory.mktemp("telemetry"))
    yield m
    m.stop()


def cli(mesh: Mesh, *args: str, timeout: float = 60) -> tuple[int, str, str]:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "control_plane.cli", *args], capture_output=True,
                       text=True, timeout=timeout,
                       env=env(MESHLET_DATA_DIR=str(mesh.cp.data_dir),
                               MESHLET_CONTROL_PLANE=mesh.cp.url))
    return r.returncode, r.stdout, r.stderr


@pytest.mark.slow
def test_sidecar_reports_become_edges_services_and_routes(mesh):
    statuses = mesh.send(50)
    assert statuses == [200] * 50

    def edges() -> list[dict] | None:
        _, body = mesh.api("/v1/stats/edges?window=1m")
        got = [e for e in body["edges"] if e["source"]["workload"] == "frontend"]
        return got if sum(e["requests"] for e in got) >= 50 else None

    got = wait_until(edges, 20, 0.1, "50 frontend -> orders requests in /v1/stats/edges")
    assert sum(e["requests"] for e in got) == 50  # reports are deltas: nothing counted twice
    assert {e["destination"]["version"] for e in got} == {"v1", "v2"}
    for e in got:
        assert e["destination"]["service"] == "orders.default.svc.cluster.local"
        assert e["source"]["version"] == "v1" and e["reporter"] == "source"
        assert e["mtls"] is True and e["success_rate"] == 1.0 and e["rps"] > 0
        assert e["p50_ms"] is not None and 0 < e["p50_ms"] <= e["p99_ms"]
    code, body = mesh.api("/v1/stats/services")
    assert code == 200
    assert {(s["name"], s["version"]) for s in body["services"]} >= {("orders", "v1"),
                                                                       ("orders", "v2")}
    code, body = mesh.api("/v1/stats/routes?window=10m")
    (split,) = [r for r in body["routes"] if r["route"] == "canary-split"]
    assert split["requests"] == 50 and split["virtual_service"] == "default/orders"
    assert [(d["subset"], d["weight"]) for d in split["destinations"]] == [("v1", 80), ("v2", 20)]
    code, body = mesh.api("/v1/stats/local")
    assert code == 200 and body["width"] == 10 and body["edges"]
    assert mesh.api("/v1/stats/edges?window=5m")[0] == 400
    assert mesh.api("/v1/stats/edges", token="wrong")[0] == 401
    # the read-only token reads stats (and nothing it could change the mesh with)
    ro = (mesh.cp.data_dir / "readonly.token").read_text().strip()
    assert mesh.api("/v1/stats/edges", token=ro)[0] == 200
    assert mesh.api("/v1/resources", token=ro)[0] == 401

    code, out, err = cli(mesh, "top", "edges", "--once")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["SOURCE", "DESTINATION", "RPS", "SUCCESS", "P50", "P99", "MTLS", "TCP"]
    assert any(ln.split()[:2] == ["frontend/v1", "orders/v1"] and ln.split()[6:] == ["yes", "-"]
               for ln in lines[1:]), out
    code, out, err = cli(mesh, "top", "routes", "--once", "--window", "10m")
    assert code == 0, err
    row = next(ln for ln in out.splitlines() if " canary-split " in ln)
    assert row.split()[0] == "orders" and row.split()[-1] == "orders/v1:80,orders/v2:20", out
    code, out, err = cli(mesh, "top", "services", "--once", "-o", "json")
    assert code == 0, err
    assert json.loads(out)["services"]
    code, out, err = cli(mesh, "token", "create", "--read-only")
    assert code == 0 and out.strip() == ro


def tap_while_sending(mesh: Mesh, args: list[str], send) -> tuple[int, str, str]:
    """Run `meshlet tap` and send requests until it ends (bounded in count and time)."""
    result: list = []
    t = threading.Thread(target=lambda: result.append(cli(mesh, "tap", *args)))
    t.start()
    deadline = time.monotonic() + 40
    sent = 0
    while t.is_alive() and time.monotonic() < deadline and sent < 400:
        send()
        sent += 1
        time.sleep(0.05)  # pacing the load, not waiting for state
    t.join(60)
    assert result, "tap did not finish"
    return result[0]


@pytest.mark.slow
def test_tap_streams_requests_without_bodies_or_secret_headers(mesh):
    headers = {"Authorization": f"Bearer {SECRETS[0]}", "Cookie": f"session={SECRETS[1]}",
               "Proxy-Authorization": f"Basic {SECRETS[3]}", "x-request-marker": "tap-test"}

    def send() -> None:
        mesh.send(1, method="POST", path="/echo/tapped?token=q", headers=headers,
                  body=SECRETS[2].encode())
        mesh.send(1, path="/orders")  # filtered out by --path-prefix

    code, out, err = tap_while_sending(
        mesh, ["orders", "--path-prefix", "/echo", "--method", "POST", "--max", "3",
               "--duration", "30s"], send)
    assert code == 0, err
    events = [ln for ln in out.splitlines() if not ln.startswith("#")]
    assert len(events) == 3, out
    for ln in events:
        assert ln.startswith("in  POST orders/echo/tapped :status=200 ")  # no query string
        assert ":status=" in ln and "latency=" in ln and "route=" in ln
        assert "spiffe://cluster.local/ns/default/sa/frontend" in ln
    assert out.startswith("# tapping orders.default on 2 sidecar(s)")
    for secret in (*SECRETS, "token=q"):
        assert secret not in out and secret not in err
    # -o json: only the summary fields, never a header or a body
    code, out, err = tap_while_sending(mesh, ["orders", "--max", "2", "-o", "json"], send)
    assert code == 0, err
    rows = [json.loads(ln) for ln in out.splitlines()]
    assert len(rows) == 2 and all(r["method"] in ("GET", "POST") for r in rows)
    assert all(set(r) <= {"ts", "direction", "workload", "method", "authority", "path", "status",
                          "flags", "latency_ms", "route", "upstream", "upstream_cluster", "source",
                          "destination", "mtls"} for r in rows)
    for secret in SECRETS:
        assert secret not in out


@pytest.mark.slow
def test_tap_of_an_unknown_service_is_a_clear_error(mesh):
    code, out, err = cli(mesh, "tap", "nosuch", "--duration", "2s")
    assert code == 1 and "no connected sidecar serves nosuch.default" in err


@pytest.mark.slow
def test_top_refreshes_until_interrupted(mesh, tmp_path):
    import signal
    import subprocess
    import sys

    mesh.send(5)
    out = tmp_path / "top.out"
    with open(out, "wb") as f:
        p = subprocess.Popen(
            [sys.executable, "-m", "control_plane.cli", "top", "services", "--interval", "0.3"],
            stdout=f, stderr=subprocess.STDOUT,
            env=env(MESHLET_DATA_DIR=str(mesh.cp.data_dir), MESHLET_CONTROL_PLANE=mesh.cp.url))
        try:
            wait_until(lambda: out.read_text().count("SERVICE ") >= 3, 30, 0.1,
                       "three refreshes of meshlet top")
        finally:
            p.send_signal(signal.SIGINT)
            try:
                code = p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()  # reaped here, not left running into the next test
                p.wait(10)
                raise
    assert code == 0, out.read_text()
    assert "\x1b[2J" not in out.read_text()  # not a terminal: tables one after the other
