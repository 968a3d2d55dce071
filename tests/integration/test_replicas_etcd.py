"""Control-plane replicas on a real 3-member etcd cluster, with real sidecars and apps.

One cluster, two replicas (A, B) and three sidecars are shared by the tests of this module, in
order; each test leaves them as it found them (a killed replica or etcd member is restarted).

* ``inventory`` (app + sidecar, --control-plane A,B: connected to A, certificates from A);
* ``orders-a`` (client sidecar, A,B: connected to A);
* ``orders-b`` (client sidecar, B,A: joined through B with a token created through A).

The MeshConfig (12 s certificates, so renewals happen during the module) is written to etcd
through the etcd store itself before any replica starts: replicas read the lifetime at start.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support import (
    PY,
    ROOT,
    EtcdCluster,
    Proc,
    env,
    free_port,
    start_app,
    start_sidecar,
    wait_until,
)

# etcd comes from tests/run.sh (apt etcd-server); without it these tests fail, never skip.
pytestmark = pytest.mark.slow

LEASE_TTL = "3s"
VS = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: inventory, namespace: default}}
spec:
  hosts: [inventory]
  http:
  - headers: {{response: {{set: {{x-generation: "{gen}"}}}}}}
    route:
    - destination: {{host: inventory}}
"""


class Replica:
    def __init__(self, name: str, workdir: Path, etcd: EtcdCluster, token_file: Path | None,
                 store: str | None = None, lease_ttl: str = LEASE_TTL) -> None:
        self.name = name
        self.store = store  # default: every member of the cluster
        self.lease_ttl = lease_ttl
        self.workdir = workdir
        self.data_dir = workdir / f"cp-{name}"
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.etcd = etcd
        self.token_file = token_file
        self.proc: Proc | None = None

    def start(self) -> None:
        addr = self.data_dir / "listen.addr"
        addr.unlink(missing_ok=True)
        cmd = [PY, "-m", "control_plane.cli", "control-plane", "--data-dir", str(self.data_dir),
               "--listen", f"127.0.0.1:{self.port}", "--store",
               self.store or self.etcd.endpoints, "--lease-ttl", self.lease_ttl,
               "--grace-period", "2s"]
        if self.token_file is not None:
            cmd += ["--admin-token-file", str(self.token_file)]
        self.proc = Proc(f"cp-{self.name}-{time.monotonic_ns()}", cmd, self.workdir)
        proc = self.proc
        wait_until(lambda: addr.exists() or proc.p.poll() is not None, timeout=30,
                   what=f"replica {self.name}")
        if proc.p.poll() is not None:
            raise RuntimeError(proc.stderr())

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.signal(signal.SIGKILL)
        self.proc.p.wait(10)
        self.proc.stop()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


class Mesh:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.etcd = EtcdCluster(workdir)
        self.a: Replica
        self.b: Replica
        self.procs: list = []

    def cli(self, urls: str, *args: str, input: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PY, "-m", "control_plane.cli", *args], capture_output=True, text=True, input=input,
            env=env(MESHLET_DATA_DIR=str(self.a.data_dir), MESHLET_CONTROL_PLANE=urls),
            cwd=str(ROOT), timeout=timeout,
        )

    def apply(self, urls: str, gen: str) -> subprocess.CompletedProcess[str]:
        return self.cli(urls, "apply", "-f", "-", input=VS.format(gen=gen))

    def proxies(self, url: str) -> dict[str, dict]:
        r = self.cli(url, "proxy-status", "-o", "json")
        assert r.returncode == 0, r.stderr
        return {p["service"] + ("-" + p["labels"].get("via", "") if p["labels"].get("via")
                                else ""): p for p in json.loads(r.stdout)["proxies"]}

    def status(self, url: str) -> dict:
        return self.api(url, "/v1/status")

    def api(self, url: str, path: str) -> dict:
        req = urllib.request.Request(
            url + path,
            headers={"Authorization": "Bearer " + (self.a.data_dir / "admin.token").read_text()
                     .strip()})
        import ssl

        ctx = ssl.create_default_context(cafile=str(self.a.data_dir / "ca/trust-bundle.pem"))
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            return json.loads(r.read())


def seed_mesh_config(endpoints: str) -> None:
    """The MeshConfig, written with the etcd store itself before any replica reads it."""
    from control_plane.api.resources import load_text
    from control_plane.etcd.client import EtcdClient, parse_endpoints
    from control_plane.store.etcd import EtcdStore

    async def go() -> None:
        client = EtcdClient(parse_endpoints(endpoints))
        try:
            store = EtcdStore(client)
            await store.start()
            await store.apply_async(load_text(
                "apiVersion: meshlet.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: mesh, "
                "namespace: default}\nspec: {certificateLifetime: 12s}\n", "seed"))
            store.close()
        finally:
            await client.close()

    asyncio.run(go())


def registry_keys(etcd: EtcdCluster) -> list[str]:
    """The registry's raw keys in etcd (``reg/<node>/<replica id>``), read over the gateway."""
    import base64

    for port in etcd.client:
        body = json.dumps({"key": base64.b64encode(b"/meshlet/reg/").decode(),
                           "range_end": base64.b64encode(b"/meshlet/reg0").decode(),
                           "keys_only": True}).encode()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v3/kv/range", body,
                                        timeout=5) as r:
                kvs = json.loads(r.read()).get("kvs", [])
        except OSError:
            continue
        return [base64.b64decode(kv["key"]).decode() for kv in kvs]
    raise AssertionError("no etcd member answered")


def call(sidecar, timeout: float = 5) -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{sidecar.outbound}/items",
                                 headers={"Host": "inventory"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            return r.status, r.headers.get("x-generation", "")
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return -1, ""


def applies(sc) -> float:
    """Snapshots this sidecar applied (meshlet_config_applies_total{result="ack"})."""
    import re

    text = sc.admin_get("/metrics")[1].decode()
    m = re.search(r'^meshlet_config_applies_total\{result="ack"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def certs(sc) -> dict:
    return json.loads(sc.admin_get("/certs")[1])


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    work = tmp_path_factory.mktemp("replicas")
    m = Mesh(work)
    m.etcd.start_all()
    try:
        seed_mesh_config(m.etcd.endpoints)
        m.a = Replica("a", work, m.etcd, None)
        m.a.start()
        m.b = Replica("b", work, m.etcd, m.a.data_dir / "admin.token")
        m.b.start()
        ab, ba = f"{m.a.url},{m.b.url}", f"{m.b.url},{m.a.url}"
        m.ab, m.ba = ab, ba

        def token(service: str) -> Path:
            r = m.cli(m.a.url, "token", "create", "--service", service)  # through A
            assert r.returncode == 0, r.stderr
            path = work / f"{service}.token"
            path.write_text(r.stdout.strip())
            return path

        app, port = start_app(work, "inventory")
        m.procs.append(app)
        m.inv = start_sidecar(work, "inventory", port, None, "--control-plane", ab,
                              "--token-file", str(token("inventory")), "--state-dir",
                              str(work / "inv"), name="inventory")
        m.procs.append(m.inv)
        m.orders_a = start_sidecar(work, "orders", 1, None, "--control-plane", ab,
                                   "--token-file", str(token("orders")), "--label", "via=a",
                                   "--state-dir", str(work / "orders-a"), name="orders-a")
        m.procs.append(m.orders_a)
        # joins through B with a token created through A
        m.orders_b = start_sidecar(work, "orders", 1, None, "--control-plane", ba,
                                   "--token-file", str(token("orders")), "--label", "via=b",
                                   "--state-dir", str(work / "orders-b"), name="orders-b")
        m.procs.append(m.orders_b)
        for sc in (m.orders_a, m.orders_b):
            wait_until(lambda sc=sc: call(sc)[0] == 200, timeout=30, interval=0.1,
                       what="mesh routable")
        yield m
    finally:
        for p in reversed(m.procs):
            p.stop()
        for r in (getattr(m, "a", None), getattr(m, "b", None)):
            if r is not None:
                r.stop()
        m.etcd.stop()


def test_apply_through_a_reaches_sidecars_of_b_within_a_second(mesh):
    ps = mesh.proxies(mesh.b.url)  # the registry in etcd: every sidecar, from either replica
    assert set(ps) == set(mesh.proxies(mesh.a.url)) == {"inventory", "orders-a", "orders-b"}
    assert ps["orders-b"]["replica"] == f"127.0.0.1:{mesh.b.port}"
    assert ps["orders-a"]["replica"] == f"127.0.0.1:{mesh.a.port}"
    assert ps["inventory"]["replica"] == f"127.0.0.1:{mesh.a.port}"
    r = mesh.apply(mesh.a.url, "one")
    assert r.returncode == 0, r.stderr
    applied = time.monotonic()
    wait_until(lambda: call(mesh.orders_b) == (200, "one"), timeout=10, interval=0.01,
               what="the apply through A in traffic at B's sidecar")
    took = time.monotonic() - applied
    assert took < 1.0
    # and both replicas show every sidecar SYNCED on the same version
    version = mesh.status(mesh.b.url)["snapshot_version"]
    assert version == mesh.status(mesh.a.url)["snapshot_version"]
    assert mesh.status(mesh.b.url)["store_watching"] is True
    wait_until(lambda: all(p["acked_version"] == version
                           for p in mesh.proxies(mesh.a.url).values()),
               timeout=10, interval=0.1, what="every sidecar ACKed, seen from A")
    # `meshlet check` against a replica: store writable (etcd), every sidecar synced
    r = mesh.cli(mesh.b.url, "check", "--min-cert-validity", "1s")
    assert r.returncode == 0, r.stdout + r.stderr


def test_stats_views_merge_every_replica_listed_in_etcd(mesh):
    """orders-b reports its calls to B; A's mesh-wide views include them, A having found B under
    replicas/ in etcd (no MESHLET_STATS_PEERS is set)."""
    for _ in range(7):
        assert call(mesh.orders_b)[0] == 200

    def calls(url: str, scope: str) -> int:
        body = mesh.api(url, f"/v1/stats/edges?window=10m&scope={scope}")
        return sum(e["requests"] for e in body["edges"]
                   if e["reporter"] == "source" and e["source"]["workload"] == "orders"
                   and e["destination"]["name"] == "inventory")

    def merged() -> bool:
        a, b = calls(mesh.a.url, "local"), calls(mesh.b.url, "local")
        return b >= 7 and calls(mesh.a.url, "mesh") == a + b == calls(mesh.b.url, "mesh")

    # sidecars report every 5 s; each replica's merged view is cached 1 s
    wait_until(merged, timeout=30, interval=0.5, what="A's and B's windows merged on both")


def test_join_through_b_renewal_on_either_replica_and_ca_rotation_once(mesh):
    # orders-b got its first certificate from B with a token created through A
    assert certs(mesh.orders_b)["issued_by"] == mesh.b.url
    # 12 s certificates: each renews against its own replica (A for inventory, B for orders-b)
    for sc, url in ((mesh.inv, mesh.a.url), (mesh.orders_b, mesh.b.url)):
        wait_until(lambda sc=sc, url=url: certs(sc)["renewals"] >= 1
                   and certs(sc)["issued_by"] == url, timeout=20, interval=0.2,
                   what=f"{sc.proc.name} renewed against {url}")
    # Rotation steps are a singleton job: the leader runs them, whichever replica is asked.
    # The same step asked of both replicas at once runs once: one 200, one 409.
    leader = mesh.status(mesh.b.url)["leader"]
    assert leader == mesh.status(mesh.a.url)["leader"] == mesh.status(mesh.a.url)["replica"]
    results: dict[str, subprocess.CompletedProcess[str]] = {}
    threads = [threading.Thread(target=lambda u=u: results.__setitem__(
        u, mesh.cli(u, "ca", "rotate", "-o", "json"))) for u in (mesh.a.url, mesh.b.url)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    codes = sorted(r.returncode for r in results.values())
    assert codes == [0, 1], {u: (r.returncode, r.stderr) for u, r in results.items()}
    winner = next(r for r in results.values() if r.returncode == 0)
    assert json.loads(winner.stdout)["performedBy"] == leader
    loser = next(r for r in results.values() if r.returncode != 0)
    assert "a new root is already pending" in loser.stderr, loser.stderr
    sa, sb = mesh.status(mesh.a.url)["ca"], mesh.status(mesh.b.url)["ca"]
    assert len(sa["roots"]) == 2 and sa == sb  # one new root, the same on both replicas
    # every sidecar, on either replica, follows: it trusts both roots
    for sc in (mesh.inv, mesh.orders_a, mesh.orders_b):
        wait_until(lambda sc=sc: len(certs(sc)["trust_bundle_fingerprints"]) == 2,
                   timeout=20, interval=0.2, what=f"{sc.proc.name} trusts both roots")
    # activate through B: sidecars renew from the new root, traffic keeps flowing
    r = mesh.cli(mesh.b.url, "ca", "activate", "-o", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["performedBy"] == leader  # B forwarded it to A, the leader
    new_root = json.loads(r.stdout)["signingRoot"]
    assert mesh.status(mesh.a.url)["ca"] == mesh.status(mesh.b.url)["ca"]
    wait_until(lambda: json.loads(mesh.cli(mesh.a.url, "ca", "status", "-o", "json").stdout)
               .get("signingRoot") == new_root, timeout=10, what="A signs with the new root")
    for sc in (mesh.orders_a, mesh.orders_b):
        assert call(sc)[0] == 200


def steady_load(sidecar, results: list[int], stop: threading.Event) -> threading.Thread:
    """A bounded loop of requests (3,000 at most) until ``stop``."""

    def load() -> None:
        for _ in range(3000):
            if stop.is_set():
                return
            results.append(call(sidecar)[0])
            time.sleep(0.005)

    t = threading.Thread(target=load)
    t.start()
    return t


def test_replica_killed_under_load_sidecars_move_without_a_failed_request(mesh):
    results: list[int] = []
    stop = threading.Event()
    t = steady_load(mesh.orders_a, results, stop)
    try:
        wait_until(lambda: len(results) > 20, timeout=20, what="load running")
        applied_before = {sc.proc.name: applies(sc) for sc in (mesh.inv, mesh.orders_a)}
        assert all(applied_before.values())
        mesh.a.kill()
        b_addr = f"127.0.0.1:{mesh.b.port}"
        version = mesh.status(mesh.b.url)["snapshot_version"]
        wait_until(lambda: all(p["replica"] == b_addr and p["connected"]
                               and p["acked_version"] == version
                               for p in mesh.proxies(mesh.b.url).values()),
                   timeout=30, interval=0.2, what="every sidecar on B, B's snapshot ACKed")
        # they resumed from the version they had ACKed: B's identical snapshot was ACKed, not
        # applied again
        assert {sc.proc.name: applies(sc) for sc in (mesh.inv, mesh.orders_a)} == applied_before
        # A's lease expired with it: no entry of A is left in the registry
        a_addr = f"127.0.0.1:{mesh.a.port}#"
        wait_until(lambda: not any(a_addr in k for k in registry_keys(mesh.etcd)),
                   timeout=15, interval=0.2, what="A's registry entries gone with its lease")
        assert len(registry_keys(mesh.etcd)) == 3
        r = mesh.apply(mesh.b.url, "two")
        assert r.returncode == 0, r.stderr
        wait_until(lambda: call(mesh.orders_a) == (200, "two"), timeout=10, interval=0.05,
                   what="an apply through B reaches A's former sidecars")
        # the CLI given both URLs skips the dead one
        r = mesh.cli(mesh.ab, "get", "vs")
        assert r.returncode == 0, r.stderr
        # renewals of A's former sidecars now go to B
        wait_until(lambda: certs(mesh.inv)["issued_by"] == mesh.b.url, timeout=20,
                   interval=0.2, what="inventory renewed against B")
        # a sidecar started now with A first in its list joins through B (first certificate,
        # config stream), with a token created through B
        r = mesh.cli(mesh.b.url, "token", "create", "--service", "orders")
        assert r.returncode == 0, r.stderr
        (mesh.workdir / "late.token").write_text(r.stdout.strip())
        late = start_sidecar(mesh.workdir, "orders", 1, None, "--control-plane", mesh.ab,
                             "--token-file", str(mesh.workdir / "late.token"), "--label",
                             "via=late", "--state-dir", str(mesh.workdir / "late"), name="late")
        try:
            wait_until(lambda: call(late) == (200, "two"), timeout=30, interval=0.1,
                       what="late sidecar routable through B")
            assert certs(late)["issued_by"] == mesh.b.url
        finally:
            late.stop()
    finally:
        stop.set()
        t.join(30)
    assert len(results) > 50
    assert all(c == 200 for c in results), {c: results.count(c) for c in set(results)}
    mesh.a.start()  # back for the next test, on the same address


def test_etcd_member_loss_and_total_outage(mesh):
    before = mesh.cli(mesh.b.url, "get", "vs", "-o", "json")
    assert before.returncode == 0
    # one member of three down: quorum holds, applies go on
    mesh.etcd.kill(0)
    r = mesh.apply(mesh.a.url, "three")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: call(mesh.orders_b) == (200, "three"), timeout=10, interval=0.05,
               what="apply with one etcd member down")
    # all of etcd down: sidecars keep serving, apply answers a clear error quickly
    mesh.etcd.kill(1)
    mesh.etcd.kill(2)
    t0 = time.monotonic()
    r = mesh.apply(mesh.b.url, "four")
    took = time.monotonic() - t0
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "etcd is unavailable" in r.stderr and "nothing was changed" in r.stderr, r.stderr
    assert took < 4, took  # members that refuse connections: no waiting for a timeout
    for _ in range(50):
        assert call(mesh.orders_a) == (200, "three")
        assert call(mesh.orders_b) == (200, "three")
    wait_until(lambda: mesh.status(mesh.b.url)["store_watching"] is False, timeout=10,
               interval=0.1, what="B reports its view of etcd may be behind")
    # etcd returns: everything resumes, nothing applied is lost
    for i in range(3):
        mesh.etcd.start(i)
    for i in range(3):
        wait_until(lambda i=i: mesh.etcd.healthy(i), timeout=30, interval=0.1,
                   what=f"etcd member {i} back")
    after = json.loads(mesh.cli(mesh.a.url, "get", "vs", "-o", "json").stdout)
    gens = [i["spec"]["http"][0]["headers"]["response"]["set"]["x-generation"]
            for i in after["items"]]
    assert gens == ["three"]
    wait_until(lambda: mesh.apply(mesh.b.url, "five").returncode == 0, timeout=20,
               interval=0.5, what="apply after etcd returned")
    wait_until(lambda: mesh.status(mesh.b.url)["store_watching"] is True, timeout=10,
               interval=0.1, what="B watching etcd again")
    for sc in (mesh.orders_a, mesh.orders_b):
        wait_until(lambda sc=sc: call(sc) == (200, "five"), timeout=15, interval=0.05,
                   what=f"{sc.proc.name} follows after the outage")
    wait_until(lambda: len(mesh.proxies(mesh.a.url)) == 3, timeout=15, interval=0.2,
               what="the registry complete again")


def test_replica_stopped_gracefully_under_load(mesh):
    """SIGTERM (a rolling update): the stopping replica keeps its sidecars' registry entries
    until its lease expires, so other replicas never push a snapshot without their endpoints
    while they reconnect; not one request fails."""
    addr = {r: f"127.0.0.1:{r.port}" for r in (mesh.a, mesh.b)}

    def holders() -> set[str]:
        return {p["replica"] for p in mesh.proxies(mesh.a.url).values() if p["connected"]}

    # The SIGKILL test moved every sidecar to B. But after the total etcd outage, the replica
    # that saw etcd return a second later than the other may have handed its sidecars over
    # (control_plane/etcd/handover.py): so wait for the registry to settle and stop whichever
    # replica holds the sidecars.
    wait_until(lambda: len(mesh.proxies(mesh.a.url)) == 3 and len(holders()) == 1, timeout=30,
               interval=0.2, what="every sidecar connected to one replica")
    (held,) = holders()
    stopping = mesh.a if addr[mesh.a] == held else mesh.b
    other = mesh.b if stopping is mesh.a else mesh.a
    results: list[int] = []
    stop = threading.Event()
    t = steady_load(mesh.orders_a, results, stop)
    try:
        wait_until(lambda: len(results) > 20, timeout=20, what="load running")
        assert stopping.proc is not None
        assert stopping.proc.stop() == 0
        wait_until(lambda: all(p["replica"] == addr[other] and p["connected"]
                               for p in mesh.proxies(other.url).values()),
                   timeout=30, interval=0.2, what=f"every sidecar on {other.name}")
        n = len(results)
        wait_until(lambda: len(results) > n + 50, timeout=20, what="load after the move")
    finally:
        stop.set()
        t.join(30)
    assert all(c == 200 for c in results), {c: results.count(c) for c in set(results)}
    stopping.start()
