"""A multi-host mesh in network namespaces: unmodified clients reach services by name through
iptables capture and both sidecars, with mTLS; then chaos (a sidecar killed, the control plane
killed, a pod cut off) under steady load, with the requests lost and the recovery time of each.

Pods, in a /24 of their own (see tests/e2e/netns.py): ``pod-cp`` (.2: the control plane, and a
plain non-mesh server on :9000), ``pod-orders`` (.3) and ``pod-inventory`` (.4), each with its
app on 127.0.0.1:8080, ``meshlet iptables`` capture rules and a sidecar running as UID 1337. The
orders pod's hosts file says ``inventory -> <inventory's .4>`` (what the init step writes).
"""

from __future__ import annotations

import json
import signal
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.netns import (
    PROXY_UID,
    Pod,
    TestBed,
    can_run,
    create_token,
    start_app,
    start_control_plane,
    start_mesh_pod,
    start_sidecar,
    wait_ready,
)
from tests.support import PY, Proc, wait_until

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(bool(can_run()), reason=can_run() or "ok"),
]

ORDERS_ID = "spiffe://cluster.local/ns/default/sa/orders"
INVENTORY_ID = "spiffe://cluster.local/ns/default/sa/inventory"

POLICY = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: inventory}
spec:
  host: inventory
  trafficPolicy:
    connectionPool: {tcp: {connectTimeout: 1s}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: inventory}
spec:
  hosts: [inventory]
  http:
  - route: [{destination: {host: inventory}}]
    timeout: 2s
"""

# An unmodified app: an aiohttp client with no proxy settings calling inventory by name, at a
# steady rate, writing one JSON line per request. Bounded by --seconds and by a stop file.
LOADGEN = """
import asyncio, json, os, sys, time
import aiohttp

async def main(url, stop, seconds, every):
    end = time.monotonic() + seconds
    async with aiohttp.ClientSession(trust_env=False) as s:
        while time.monotonic() < end and not os.path.exists(stop):
            t = time.time()
            try:
                async with s.get(url, timeout=aiohttp.ClientTimeout(total=3)) as r:
                    await r.read()
                    rec = {"t": t, "status": r.status,
                           "flags": r.headers.get("x-meshlet-response-flags", "")}
            except Exception as e:
                rec = {"t": t, "status": 0, "flags": type(e).__name__}
            rec["dt"] = time.time() - t
            print(json.dumps(rec), flush=True)
            await asyncio.sleep(max(0.0, every - (time.time() - t)))

asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])))
"""


class Mesh:
    def __init__(self, bed: TestBed) -> None:
        self.bed = bed
        self.cp: Pod = bed.pod("pod-cp")
        self.orders: Pod = bed.pod("pod-orders")
        self.inventory: Pod = bed.pod("pod-inventory")
        self.data = bed.private_dir("cp-data")
        self.url = ""
        self.cp_proc: Proc | None = None
        self.sidecars: dict[str, Proc] = {}
        self.tokens: dict[str, Path] = {}

    def start_inventory_sidecar(self) -> Proc:
        p = start_sidecar(self.bed, self.inventory, "inventory", "v1", self.url,
                          self.tokens["inventory"])
        self.sidecars["inventory"] = p
        return p


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    bed = TestBed({"pod-cp": 2, "pod-orders": 3, "pod-inventory": 4})
    try:
        m = Mesh(bed)
        m.url = start_control_plane(m.cp, m.data)
        m.cp_proc = m.cp.procs[-1]
        # a server outside the mesh, for pass-through
        ext = m.cp.start("ext", PY, "-m", "control_plane.demo.apps", "--name", "external",
                         "--host", m.cp.ip, "--port", "9000")
        ext.wait_for("listening on")
        policy = bed.root / "policy.yaml"
        policy.write_text(POLICY)
        m.cp.meshlet("apply", "-f", str(policy), "--data-dir", str(m.data),
                     "--control-plane", m.url)
        for svc in ("orders", "inventory"):
            m.tokens[svc] = create_token(m.cp, m.url, m.data, svc, bed.root / f"{svc}.token")
        # the init step's DNS answer, written where `ip netns exec` bind-mounts it
        m.orders.meshlet("iptables", "--skip-rules", "--hosts-file", str(m.orders.hosts_file),
                         "--host", f"inventory={m.inventory.ip}", "--host", f"external={m.cp.ip}")
        _, m.sidecars["orders"] = start_mesh_pod(bed, m.orders, "orders", "v1", m.url,
                                                 m.tokens["orders"])
        start_app(m.inventory, "inventory")
        m.inventory.meshlet("iptables")
        m.start_inventory_sidecar()
        wait_ready(m.orders)
        wait_ready(m.inventory)
        # routable once the orders sidecar has inventory's endpoint from the push
        wait_until(lambda: m.orders.curl("http://inventory:8080/ping", timeout=3)[0] == 200,
                   timeout=30, interval=0.2, what="inventory routable from orders")
        yield m
    finally:
        bed.close()


def test_rules_are_installed_in_each_pod(mesh: Mesh) -> None:
    for pod in (mesh.orders, mesh.inventory):
        saved = pod.exec("iptables-save", "-t", "nat").stdout
        assert "-A OUTPUT -j MESHLET_OUTPUT" in saved
        assert "-A MESHLET_OUTPUT -m owner --uid-owner 1337 -j RETURN" in saved
        assert "-A MESHLET_REDIRECT -p tcp -j REDIRECT --to-ports 15001" in saved
    # the control plane's pod is not meshed
    assert "MESHLET" not in mesh.cp.exec("iptables-save", "-t", "nat").stdout
    assert "inventory" in mesh.orders.exec("cat", "/etc/hosts").stdout


def test_unmodified_curl_reaches_inventory_by_name_over_mtls(mesh: Mesh) -> None:
    status, headers, body = mesh.orders.curl("http://inventory:8080/items?x=1")
    assert status == 200, (status, headers, body)
    seen = json.loads(body)
    assert seen["service"] == "inventory"
    assert seen["path"] == "/items"
    # the app sees the caller's identity, forwarded by its sidecar after the mTLS handshake
    assert seen["headers"]["x-forwarded-client-cert"] == f"By={INVENTORY_ID};URI={ORDERS_ID}"
    # the inventory app listens on 127.0.0.1 only: nothing but its sidecar can have reached it
    assert seen["peer"].startswith("127.0.0.1:")
    metrics = mesh.inventory.curl("http://127.0.0.1:15000/metrics")[2]
    dest = [ln for ln in metrics.splitlines()
            if ln.startswith("istio_requests_total{") and 'reporter="destination"' in ln]
    assert dest, metrics[:2000]
    assert any('connection_security_policy="mutual_tls"' in ln and
               f'source_principal="{ORDERS_ID}"' in ln for ln in dest), dest
    src = mesh.orders.curl("http://127.0.0.1:15000/metrics")[2]
    assert any(ln.startswith("istio_requests_total{") and 'reporter="source"' in ln and
               'destination_service="inventory' in ln for ln in src.splitlines())


def test_an_aiohttp_client_with_no_proxy_settings(mesh: Mesh) -> None:
    script = textwrap.dedent("""
        import asyncio, json, aiohttp
        async def main():
            async with aiohttp.ClientSession() as s:
                async with s.get("http://inventory.default.svc.cluster.local:8080/stock") as r:
                    print(json.dumps({"status": r.status, "body": await r.json()}))
        asyncio.run(main())
    """)
    r = mesh.orders.exec(PY, "-c", script, timeout=20)
    out = json.loads(r.stdout)
    assert out["status"] == 200
    assert out["body"]["service"] == "inventory"
    assert out["body"]["headers"]["x-forwarded-client-cert"].endswith(f"URI={ORDERS_ID}")


def test_a_non_mesh_destination_passes_through(mesh: Mesh) -> None:
    status, _, body = mesh.orders.curl(f"http://{mesh.cp.ip}:9000/hello", timeout=5)
    assert status == 200 and json.loads(body)["service"] == "external"


def test_the_sidecars_own_traffic_is_not_captured(mesh: Mesh) -> None:
    # as UID 1337 a call to a mesh address goes out as is: to inventory's app port, which
    # inventory's inbound capture sends to its sidecar (plaintext is accepted in PERMISSIVE)
    r = mesh.orders.exec("setpriv", f"--reuid={PROXY_UID}", f"--regid={PROXY_UID}",
                         "--clear-groups", "curl", "-sS", "-m", "5",
                         f"http://{mesh.inventory.ip}:8080/direct", check=False, timeout=10)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    assert seen["service"] == "inventory"
    assert "x-forwarded-client-cert" not in seen["headers"]  # no mTLS: it bypassed orders' sidecar


class Load:
    """The steady client in the orders pod and what it saw."""

    def __init__(self, mesh: Mesh, seconds: float = 75, every: float = 0.05) -> None:
        self.stop_file = mesh.bed.root / "load.stop"
        script = mesh.bed.root / "loadgen.py"
        script.write_text(LOADGEN)
        self.proc = mesh.orders.start("load", PY, str(script), "http://inventory:8080/load",
                                      str(self.stop_file), str(seconds), str(every))

    def records(self) -> list[dict]:
        out = []
        for ln in self.proc.stdout().splitlines():
            try:
                out.append(json.loads(ln))
            except ValueError:
                pass  # a line being written
        return out

    def since(self, t: float) -> list[dict]:
        return [r for r in self.records() if r["t"] >= t]

    def wait_for(self, pred, t: float, timeout: float) -> dict | None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for r in self.since(t):
                if pred(r):
                    return r
            if self.proc.p.poll() is not None:
                raise RuntimeError(f"load generator exited: {self.proc.stderr()[-2000:]}")
            time.sleep(0.1)
        return None

    def stop(self) -> None:
        self.stop_file.touch()
        wait_until(lambda: self.proc.p.poll() is not None, timeout=10, what="load generator")
        self.proc.stop()


def _fault_report(load: Load, name: str, t_fault: float, t_restore: float,
                  t_ok: float | None) -> dict:
    window = [r for r in load.since(t_fault) if t_ok is None or r["t"] < t_ok]
    lost = [r for r in window if r["status"] != 200]
    return {
        "fault": name,
        "requests": len(window),
        "lost": len(lost),
        "answers": sorted({f"{r['status']} {r['flags']}".strip() for r in lost}),
        "recovery_s": None if t_ok is None else round(t_ok - t_restore, 2),
    }


def test_chaos_under_steady_load(mesh: Mesh, capsys: pytest.CaptureFixture[str]) -> None:
    load = Load(mesh)
    report = []
    ok = lambda r: r["status"] == 200  # noqa: E731
    try:
        assert load.wait_for(ok, time.time() - 1, timeout=15), "no successful request under load"

        # 1. the inventory sidecar dies: orders answers 503 with a flag, fast; a restart heals
        t0 = time.time()
        mesh.sidecars["inventory"].signal(signal.SIGKILL)
        bad = load.wait_for(lambda r: r["status"] != 200, t0, timeout=10)
        assert bad is not None, "killing the inventory sidecar went unnoticed"
        assert bad["status"] in (502, 503, 504) and bad["flags"], bad
        assert bad["dt"] < 3.0
        mesh.sidecars["inventory"].stop()
        t1 = time.time()
        mesh.start_inventory_sidecar()
        good = load.wait_for(lambda r: ok(r), time.time(), timeout=30)
        assert good is not None, "never recovered after the inventory sidecar restarted"
        report.append(_fault_report(load, "inventory sidecar killed", t0, t1, good["t"]))

        # 2. the control plane dies: the data path does not notice; it comes back
        t0 = time.time()
        assert mesh.cp_proc is not None
        mesh.cp_proc.signal(signal.SIGKILL)
        mesh.cp_proc.stop()
        time.sleep(3)  # a window of traffic with no control plane
        t1 = time.time()
        mesh.url = start_control_plane(mesh.cp, mesh.data)
        mesh.cp_proc = mesh.cp.procs[-1]
        lost_cp = [r for r in load.since(t0) if r["t"] < t1 and r["status"] != 200]
        report.append({"fault": "control plane killed (3 s)", "requests":
                       len([r for r in load.since(t0) if r["t"] < t1]), "lost": len(lost_cp),
                       "answers": sorted({f"{r['status']} {r['flags']}" for r in lost_cp}),
                       "recovery_s": 0.0})
        assert not lost_cp, lost_cp
        # both sidecars come back to the new control plane on their own
        def reconnected() -> bool:
            r = mesh.cp.meshlet("proxy-status", "--data-dir", str(mesh.data), "--control-plane",
                                mesh.url, "-o", "json", check=False)
            return r.returncode == 0 and r.stdout.count(mesh.orders.ip) + \
                r.stdout.count(mesh.inventory.ip) >= 2
        wait_until(reconnected, timeout=30, interval=0.5, what="sidecars back on the control plane")

        # 3. the inventory pod is cut off (every packet in dropped): 503/504, bounded; restored
        t0 = time.time()
        mesh.inventory.exec("iptables", "-I", "INPUT", "-i", "eth0", "-j", "DROP")
        try:
            bad = load.wait_for(lambda r: r["status"] != 200, t0, timeout=10)
            assert bad is not None, "cutting the inventory pod off went unnoticed"
            assert bad["status"] in (0, 502, 503, 504), bad
            if bad["status"]:
                assert bad["flags"] and bad["dt"] < 3.0, bad
            time.sleep(1.0)
        finally:
            mesh.inventory.exec("iptables", "-D", "INPUT", "-i", "eth0", "-j", "DROP", check=False)
        t1 = time.time()
        good = load.wait_for(ok, t1, timeout=30)
        assert good is not None, "never recovered after the cut-off ended"
        report.append(_fault_report(load, "inventory pod cut off (DROP)", t0, t1, good["t"]))
        steady = load.since(time.time() - 0.5)
        assert load.wait_for(ok, time.time(), timeout=5)
    finally:
        load.stop()
        with capsys.disabled():
            print("\nchaos report (fault, requests in window, lost, answers, recovery):")
            for row in report:
                print("  " + json.dumps(row))
        (mesh.bed.root.parent / "meshlet-chaos-report.json").write_text(json.dumps(report))
    assert steady is not None
