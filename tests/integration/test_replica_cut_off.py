"""A replica cut off from etcd hands its sidecars over to a replica that still reaches it.

A real 3-member etcd cluster; replica A talks to member 0 only, replica B to members 1 and 2.
Killing member 0 cuts A off from etcd (the cluster keeps its quorum, B keeps working): A must
stop serving its stale config as current, so its sidecars reconnect to B, an apply through B
reaches them, and not one request fails meanwhile. When member 0 returns, A serves again.
B is (re)started just before A is cut off: A knows it from its watch on the replica list.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
import urllib.error
import urllib.request

import pytest

from tests.integration.test_replicas_etcd import VS, Mesh, Replica, call, steady_load
from tests.support import start_app, start_sidecar, wait_until

pytestmark = pytest.mark.slow

# A third of it (2 s) is how long A waits after a failed keep-alive before handing over; the
# sidecars then have the rest to move before etcd expires A's lease and their entries.
LEASE_TTL = "6s"


def peers(mesh: Mesh, rep: Replica) -> list[str]:
    return list(get(mesh, rep.url + "/healthz")[1].get("peers") or [])


def get(mesh: Mesh, url: str) -> tuple[int, dict]:
    ctx = ssl.create_default_context(cafile=str(mesh.a.data_dir / "ca/trust-bundle.pem"))
    try:
        with urllib.request.urlopen(url, timeout=5, context=ctx) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
    except OSError:
        return -1, {}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    work = tmp_path_factory.mktemp("cutoff")
    m = Mesh(work)
    m.etcd.start_all()
    try:
        m.a = Replica("a", work, m.etcd, None, store=m.etcd.endpoint(0), lease_ttl=LEASE_TTL)
        m.a.start()
        b_store = "etcd://" + ",".join(f"127.0.0.1:{p}" for p in m.etcd.client[1:])
        m.b = Replica("b", work, m.etcd, m.a.data_dir / "admin.token", store=b_store,
                      lease_ttl=LEASE_TTL)
        m.b.start()
        m.ab, m.ba = f"{m.a.url},{m.b.url}", f"{m.b.url},{m.a.url}"

        def token(service: str) -> str:
            r = m.cli(m.a.url, "token", "create", "--service", service)
            assert r.returncode == 0, r.stderr
            path = work / f"{service}.token"
            path.write_text(r.stdout.strip())
            return str(path)

        r = m.cli(m.a.url, "apply", "-f", "-", input=VS.format(gen="one"))
        assert r.returncode == 0, r.stderr
        app, port = start_app(work, "inventory")
        m.procs.append(app)
        m.inv = start_sidecar(work, "inventory", port, None, "--control-plane", m.ab,
                              "--token-file", token("inventory"), "--state-dir",
                              str(work / "inv"), name="inventory")
        m.procs.append(m.inv)
        m.orders_a = start_sidecar(work, "orders", 1, None, "--control-plane", m.ab,
                                   "--token-file", token("orders"), "--label", "via=a",
                                   "--state-dir", str(work / "orders-a"), name="orders-a")
        m.procs.append(m.orders_a)
        m.orders_b = start_sidecar(work, "orders", 1, None, "--control-plane", m.ba,
                                   "--token-file", token("orders"), "--label", "via=b",
                                   "--state-dir", str(work / "orders-b"), name="orders-b")
        m.procs.append(m.orders_b)
        for sc in (m.orders_a, m.orders_b):
            wait_until(lambda sc=sc: call(sc) == (200, "one"), timeout=30, interval=0.1,
                       what="mesh routable")
        yield m
    finally:
        for p in reversed(m.procs):
            p.stop()
        for rep in (getattr(m, "a", None), getattr(m, "b", None)):
            if rep is not None:
                rep.stop()
        m.etcd.stop()


def test_replica_cut_off_from_etcd_hands_its_sidecars_over_and_serves_again(mesh):
    a_addr, b_addr = f"127.0.0.1:{mesh.a.port}", f"127.0.0.1:{mesh.b.port}"
    ps = mesh.proxies(mesh.b.url)
    assert ps["inventory"]["replica"] == ps["orders-a"]["replica"] == a_addr
    assert ps["orders-b"]["replica"] == b_addr
    assert get(mesh, mesh.a.url + "/readyz")[0] == 200
    assert get(mesh, mesh.a.url + "/healthz")[1]["etcd_reachable"] is True
    # A hands over only to a replica it knows. B is stopped, A drops it (its lease expires),
    # then B starts again just before A is cut off: A's watch on the replica list tells it at
    # once (a periodic re-read of the list, as before, left a replica started within 5 s of the
    # cut unknown, and A kept its sidecars)
    mesh.b.stop()
    wait_until(lambda: mesh.b.url not in peers(mesh, mesh.a), timeout=30, interval=0.2,
               what="A drops B once B's lease expires")
    results: list[int] = []
    stop = threading.Event()
    t = steady_load(mesh.orders_a, results, stop)
    try:
        wait_until(lambda: len(results) > 20, timeout=20, what="load running")
        mesh.b.start()
        wait_until(lambda: get(mesh, mesh.b.url + "/healthz")[1].get("serving") is True,
                   timeout=30, interval=0.05, what="B has joined the replicas")
        # within a round trip; 2 s is slack for a shared box, well under the old 5 s
        t0 = time.monotonic()
        wait_until(lambda: mesh.b.url in peers(mesh, mesh.a), timeout=10, interval=0.05,
                   what="A knows B")
        assert time.monotonic() - t0 < 2.0, f"A learnt of B {time.monotonic() - t0:.2f}s late"
        mesh.etcd.kill(0)  # A's only etcd endpoint; members 1 and 2 keep the quorum
        wait_until(lambda: get(mesh, mesh.a.url + "/readyz")[0] == 503, timeout=20,
                   interval=0.2, what="A not ready once cut off from etcd")
        health = get(mesh, mesh.a.url + "/healthz")
        assert health[0] == 200  # alive: a liveness probe must not restart it
        assert health[1]["etcd_reachable"] is False and health[1]["serving"] is False
        # new config streams are refused with the reason
        code, body = get(mesh, mesh.a.url + "/v1/stream")
        assert code == 503 and "cannot reach etcd" in body["error"], (code, body)
        # A's sidecars moved to B and hold B's config
        version = mesh.status(mesh.b.url)["snapshot_version"]
        wait_until(lambda: all(p["replica"] == b_addr and p["connected"]
                               and p["acked_version"] == version
                               for p in mesh.proxies(mesh.b.url).values()),
                   timeout=30, interval=0.2, what="every sidecar on B, B's snapshot ACKed")
        r = mesh.apply(mesh.b.url, "two")
        assert r.returncode == 0, r.stderr
        wait_until(lambda: call(mesh.orders_a) == (200, "two"), timeout=10, interval=0.05,
                   what="an apply through B reaches A's former sidecars")
        n = len(results)
        wait_until(lambda: len(results) > n + 20, timeout=20, what="load after the move")
    finally:
        stop.set()
        t.join(30)
    assert len(results) > 50
    assert all(c == 200 for c in results), {c: results.count(c) for c in set(results)}

    # etcd member 0 back: A reaches etcd again and serves config streams again
    mesh.etcd.start(0)
    wait_until(lambda: mesh.etcd.healthy(0), timeout=30, interval=0.1, what="member 0 back")
    wait_until(lambda: get(mesh, mesh.a.url + "/readyz")[0] == 200, timeout=30, interval=0.2,
               what="A ready again")
    assert get(mesh, mesh.a.url + "/healthz")[1]["serving"] is True
    # a sidecar that knows only A joins through it and gets the config applied through B
    r = mesh.cli(mesh.a.url, "token", "create", "--service", "orders")
    assert r.returncode == 0, r.stderr
    (mesh.workdir / "late.token").write_text(r.stdout.strip())
    late = start_sidecar(mesh.workdir, "orders", 1, None, "--control-plane", mesh.a.url,
                         "--token-file", str(mesh.workdir / "late.token"), "--label",
                         "via=late", "--state-dir", str(mesh.workdir / "late"), name="late")
    try:
        wait_until(lambda: call(late) == (200, "two"), timeout=30, interval=0.1,
                   what="a sidecar on A again, with the config applied through B")
        assert mesh.proxies(mesh.a.url)["orders-late"]["replica"] == a_addr
    finally:
        late.stop()
