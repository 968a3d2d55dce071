"""End to end with real processes: a control plane, sidecars that join it with join tokens, and
sample apps. Config changes are observed in traffic, not only in config dumps."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from tests.integration.test_control_plane import ControlPlaneProcess
from tests.support import PY, READY, Proc, Sidecar, start_app, wait_until

DR = """apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
"""
VS = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - route: [{{destination: {{host: reviews, subset: {subset}}}}}]
"""


async def token(cp: ControlPlaneProcess, service: str, tmp: Path) -> str:
    status, body = await cp.call("POST", "/v1/tokens", json={"service": service})
    assert status == 200, body
    path = tmp / f"{service}.token"
    path.write_text(body["token"] + "\n")
    return str(path)


async def start_joined_sidecar(cp: ControlPlaneProcess, tmp: Path, service: str, version: str,
                               app_port: int, name: str) -> Sidecar:
    cmd = [PY, "-m", "control_plane.cli", "sidecar", "--service", service, "--version", version,
           "--app-port", str(app_port), "--control-plane", cp.url,
           "--token-file", await token(cp, service, tmp), "--state-dir", str(tmp / name),
           "--outbound", "0", "--inbound", "0", "--admin", "0", "--inbound-bind", "127.0.0.1",
           "--no-access-log"]
    proc = Proc(f"sidecar-{name}", cmd, tmp)
    m = proc.wait_for(READY, timeout=30)
    return Sidecar(proc, int(m.group(1)), int(m.group(2)), int(m.group(3)))


async def versions(sc: Sidecar, n: int = 6) -> list[str]:
    """The versions of reviews that answer ``n`` calls through ``sc``'s outbound port."""
    out = []
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            async with s.get(f"http://127.0.0.1:{sc.outbound}/x",
                             headers={"Host": "reviews"}) as r:
                body = await r.read()
                out.append(json.loads(body)["version"] if r.status == 200 else str(r.status))
    return out


async def wait_versions(sc: Sidecar, want: set[str], timeout: float = 10.0) -> float:
    """Seconds until every call through ``sc`` lands on ``want`` versions (and all of them)."""
    t0 = time.monotonic()
    while True:
        got = await versions(sc)
        if set(got) == want:
            return time.monotonic() - t0
        assert time.monotonic() - t0 < timeout, f"still {got}, want {want}"


async def synced(cp: ControlPlaneProcess, n: int) -> bool:
    _, body = await cp.call("GET", "/v1/proxies")
    ps = body["proxies"]
    return len(ps) == n and all(p["connected"] and p["acked_version"] == body["snapshot_version"]
                                for p in ps)


async def poll(pred, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not await pred():
        assert time.monotonic() < deadline, f"timed out: {what}"
        await asyncio.sleep(0.05)


async def cli(capsys, *argv: str) -> tuple[int, str, str]:
    from control_plane.cli.main import main

    capsys.readouterr()
    code = await asyncio.to_thread(main, list(argv))  # the CLI runs its own event loop
    out, err = capsys.readouterr()
    return code, out, err


async def cli_reads_real_sidecars(cp: ControlPlaneProcess, capsys) -> None:
    conn = ("--data-dir", str(cp.data_dir))
    code, out, err = await cli(capsys, "proxy-status", *conn)
    assert code == 0, err
    rows = out.splitlines()[1:4]
    assert all(r.endswith("SYNCED") for r in rows), out
    assert sorted(r.split()[1] for r in rows) == ["productpage.default", "reviews.default",
                                                  "reviews.default"]
    code, out, err = await cli(capsys, "proxy-config", "routes", "productpage", *conn)
    assert code == 0, err
    assert any(line.split()[:1] == ["reviews.default.svc.cluster.local"]
               and "default/reviews" in line for line in out.splitlines()), out
    code, out, err = await cli(capsys, "proxy-config", "endpoints", "productpage", *conn)
    assert code == 0 and out.count("HEALTHY") >= 2, out
    code, out, err = await cli(capsys, "proxy-config", "clusters", "productpage", *conn)
    assert code == 0 and out.startswith("CLUSTER"), out
    code, out, err = await cli(capsys, "proxy-config", "certs", "productpage", *conn)
    assert code == 0 and "spiffe://cluster.local/ns/default/sa/productpage" in out, out
    code, out, err = await cli(capsys, "check", *conn)
    assert code == 0, out


@pytest.mark.slow
async def test_push_routes_live_traffic_and_survives_control_plane_outage(tmp_path, capsys):
    cp = ControlPlaneProcess(tmp_path / "cp").start()
    procs: list = []
    try:
        app1, port1 = start_app(tmp_path, "reviews", "v1")
        app2, port2 = start_app(tmp_path, "reviews", "v2")
        procs += [app1, app2]
        r1 = await start_joined_sidecar(cp, tmp_path, "reviews", "v1", port1, "reviews-v1")
        procs.append(r1)
        r2 = await start_joined_sidecar(cp, tmp_path, "reviews", "v2", port2, "reviews-v2")
        procs.append(r2)
        pp = await start_joined_sidecar(cp, tmp_path, "productpage", "v1", port1, "productpage")
        procs.append(pp)
        await poll(lambda: synced(cp, 3), what="3 sidecars registered and synced")
        # Endpoints come from the registry: both versions answer before any routing config.
        await wait_versions(pp, {"v1", "v2"})

        # apply: every call moves to v2 on both client sidecars, within a second.
        status, body = await cp.call("POST", "/v1/resources", json={"files": [
            {"source": "reviews.yaml", "text": DR + "---\n" + VS.format(subset="v2")}]})
        assert status == 200, body
        for client in (pp, r1):
            assert await wait_versions(client, {"v2"}) < 1.0
        # update
        status, _ = await cp.call("POST", "/v1/resources", json={"files": [
            {"source": "reviews.yaml", "text": VS.format(subset="v1")}]})
        for client in (pp, r1):
            assert await wait_versions(client, {"v1"}) < 1.0
        await poll(lambda: synced(cp, 3), what="ACKs")
        await cli_reads_real_sidecars(cp, capsys)

        # The control plane dies: sidecars keep routing on the last config.
        cp.stop(signal.SIGKILL)
        assert set(await versions(pp, 10)) == {"v1"}
        # A sidecar restarted while the control plane is down starts from its cache.
        pp.stop()
        procs.remove(pp)
        cmd = pp.proc.cmd
        proc = Proc("sidecar-productpage-2", cmd, tmp_path)
        m = proc.wait_for(READY, timeout=30)
        pp = Sidecar(proc, int(m.group(1)), int(m.group(2)), int(m.group(3)))
        procs.append(pp)
        wait_until(lambda: pp.admin_get("/healthz/ready")[0] == 200, what="ready from cache")
        assert "started from the cached config" in pp.proc.stderr()
        assert set(await versions(pp, 10)) == {"v1"}

        # The control plane comes back on the same port with every resource: everyone resyncs.
        cp.start()
        status, body = await cp.call("GET", "/v1/resources/vs")
        assert status == 200 and [i["metadata"]["name"] for i in body["items"]] == ["reviews"]
        await poll(lambda: synced(cp, 3), timeout=60, what="resync after restart")

        # delete: back to both versions.
        status, _ = await cp.call("DELETE", "/v1/resources/vs/default/reviews")
        assert status == 200
        await wait_versions(pp, {"v1", "v2"})
    finally:
        for p in reversed(procs):
            p.stop()
        if cp.proc is not None:
            cp.stop()
