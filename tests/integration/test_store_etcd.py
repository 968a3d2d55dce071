"""The etcd store, lease, election and client against a real etcd member (and one with client
TLS and etcd auth): the same semantics as the SQLite store, replicas seeing each other's
changes through the watch, optimistic concurrency, quick clear errors when etcd is gone."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from control_plane.api.resources import load_text
from control_plane.etcd.client import EtcdClient, EtcdError, parse_endpoints, prefix_end
from control_plane.etcd.election import Election
from control_plane.etcd.lease import LeaseKeeper
from control_plane.store import StoreLimit, StoreUnavailable
from control_plane.store.etcd import EtcdStore
from tests.support import Proc, etcd_healthy, free_port, wait_until

# etcd comes from tests/run.sh (apt etcd-server); without it these tests fail, never skip.

VS = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: %s}
"""
DR = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews%s}
spec:
  host: reviews
"""


def start_etcd(workdir: Path, name: str, *tls: str, scheme: str = "http") -> tuple[Proc, str]:
    client, peer = free_port(), free_port()
    url = f"{scheme}://127.0.0.1:{client}"
    proc = Proc(f"etcd-{name}", [
        "etcd", "--name", name, "--data-dir", str(workdir / f"etcd-{name}"),
        "--listen-client-urls", url, "--advertise-client-urls", url,
        "--listen-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
        "--initial-cluster", f"{name}=http://127.0.0.1:{peer}", "--log-level", "warn", *tls,
    ], workdir)
    return proc, url


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    work = tmp_path_factory.mktemp("etcd")
    proc, url = start_etcd(work, "single")
    try:
        wait_until(lambda: etcd_healthy(url), timeout=30, interval=0.1, what="etcd healthy")
        yield url
    finally:
        proc.stop()


_prefixes = iter(range(10**6))


def prefix() -> str:
    """A fresh key prefix per test: the tests share one etcd."""
    return f"/t{next(_prefixes)}-{time.monotonic_ns()}/"


@contextlib.asynccontextmanager
async def two_replicas(etcd: str) -> AsyncIterator[tuple[EtcdStore, EtcdStore]]:
    """Two started stores on one fresh prefix, each with its own client (two control-plane
    replicas); both closed, with their clients, at the end."""
    p = prefix()
    a, b = EtcdStore(EtcdClient([etcd]), p), EtcdStore(EtcdClient([etcd]), p)
    try:
        await a.start()
        await b.start()
        yield a, b
    finally:
        a.close()
        b.close()
        await a.client.close()
        await b.client.close()


async def test_same_semantics_as_sqlite_and_replicas_see_each_other(etcd):
    async with two_replicas(etcd) as (a, b):
        assert a.revision == 0 and a.get() == []
        seen: list[int] = []
        b.add_listener(seen.append)
        rev1, ch = await a.apply_async(load_text(VS % "v1" + "---" + DR % "", "a.yaml"))
        assert [c.action for c in ch] == ["created", "created"]
        rev, ch = await a.apply_async(load_text(VS % "v1", "a.yaml"))
        assert rev == rev1 and [c.action for c in ch] == ["unchanged"]
        rev2, ch = await a.apply_async(load_text(VS % "v2", "a.yaml"))
        assert rev2 > rev1 and [c.action for c in ch] == ["configured"]
        [vs] = a.get("VirtualService")  # read-your-writes on the replica that wrote
        assert vs.revision == rev2
        assert vs.resource.spec["http"][0]["route"][0]["destination"]["subset"] == "v2"
        # replica B learns through its watch, listeners called with the mesh revision
        await asyncio.wait_for(_until(lambda: b.revision == rev2), 5)
        assert seen[-1] == rev2 and seen == sorted(seen)
        assert [sr.resource.key for sr in b.get()] == [sr.resource.key for sr in a.get()]
        # deletes bump the revision too (monotonic although the max key revision drops)
        rev3, ch = await b.delete_async([("VirtualService", "default", "reviews"),
                                         ("VirtualService", "default", "nope")])
        assert rev3 > rev2 and [c.action for c in ch] == ["deleted", "not-found"]
        rev, ch = await b.delete_async([("VirtualService", "default", "nope")])
        assert rev == rev3 and ch[0].action == "not-found"
        await asyncio.wait_for(_until(lambda: a.revision == rev3), 5)
        assert a.get("VirtualService") == []
        # a new replica loads the same state
        c = EtcdStore(EtcdClient([etcd]), a.prefix.decode())
        await c.start()
        assert c.snapshot()[0] == rev3
        assert [sr.resource.key for sr in c.get()] == [("DestinationRule", "default", "reviews")]
        c.close()
        await c.client.close()


async def _until(cond) -> None:  # type: ignore[no-untyped-def]
    while not cond():
        await asyncio.sleep(0.01)


async def test_concurrent_applies_through_two_replicas_are_serialized(etcd):
    async with two_replicas(etcd) as (a, b):
        results = await asyncio.gather(*(
            (a if i % 2 else b).apply_async(load_text(DR % f"-{i}", "x.yaml")) for i in range(8)
        ))
        revs = sorted(r for r, _ in results)
        assert len(set(revs)) == 8  # each change its own revision, none lost
        assert all(ch[0].action == "created" for _, ch in results)
        await asyncio.wait_for(_until(lambda: a.revision == b.revision == revs[-1]), 5)
        assert len(a.get("DestinationRule")) == len(b.get("DestinationRule")) == 8


def _service_entries(n: int, endpoints: int) -> str:
    return "".join(
        f"apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: se{i}}}\n"
        f"spec:\n  hosts: [svc{i}.example.com]\n  ports: [{{number: 80, name: http, protocol: "
        f"HTTP}}]\n  resolution: STATIC\n  endpoints:\n"
        + "".join(f"  - {{address: 10.{i % 250}.{j // 250}.{j % 250 + 1}}}\n"
                  for j in range(endpoints))
        + "---\n" for i in range(n))


async def test_a_large_apply_reaches_the_other_replica(etcd):
    """127 resources (etcd's default --max-txn-ops is 128: r/rev is the 128th) of about 1 MB
    in one apply: read in several txns, committed in one, and one watch message to the other
    replica far over aiohttp's line limit (128 KiB before 3.10, 512 KiB since)."""
    async with two_replicas(etcd) as (a, b):
        rev, changes = await a.apply_async(load_text(_service_entries(127, 160), "big.yaml"))
        assert len(changes) == 127 and {c.action for c in changes} == {"created"}
        await asyncio.wait_for(_until(lambda: b.revision == rev), 10)
        assert len(b.get("ServiceEntry")) == 127
        # one more is more than one etcd txn takes: refused whole, named, nothing written
        with pytest.raises(StoreLimit, match="touches 128 resources"):
            await a.apply_async(load_text(_service_entries(128, 1), "bigger.yaml"))
        assert a.revision == rev
        assert (await a.client.get(a.prefix + b"r/res/ServiceEntry/default/se0")) is not None


async def test_a_watch_behind_a_compaction_reloads(etcd):
    async with two_replicas(etcd) as (a, b):
        assert a._watch_task is not None
        a._watch_task.cancel()  # A is cut off while B changes things and etcd compacts
        rev, _ = await b.apply_async(load_text(DR % "-1", "x.yaml"))
        rev, _ = await b.apply_async(load_text(DR % "-2", "x.yaml"))
        await b.client.call("kv/compaction", {"revision": str(rev), "physical": True})
        a._watch_task = asyncio.get_running_loop().create_task(a._watch_loop())
        await asyncio.wait_for(_until(lambda: a.revision == rev), 5)
        assert len(a.get("DestinationRule")) == 2


async def test_unreachable_etcd_is_a_quick_clear_error():
    client = EtcdClient([f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"],
                        timeout=10.0)
    store = EtcdStore(client)
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailable, match="etcd is unavailable"):
        await store.apply_async(load_text(DR % "", "x.yaml"))
    assert time.monotonic() - t0 < 2  # refused connections: no waiting for the timeout
    assert not await store.writable_async()
    await client.close()


async def test_leader_election_one_leader_and_takeover(etcd):
    key = prefix().encode() + b"leader"
    c1, c2 = EtcdClient([etcd]), EtcdClient([etcd])
    l1, l2 = LeaseKeeper(c1, 2), LeaseKeeper(c2, 2)
    await l1.start()
    await l2.start()
    e1, e2 = Election(c1, key, "one", l1, 0.2), Election(c2, key, "two", l2, 0.2)
    ran: list[str] = []

    def job(name: str):  # type: ignore[no-untyped-def]
        async def run() -> None:
            ran.append(name)
            await asyncio.Event().wait()
        return run

    e1.on_leader(job("one"))
    e2.on_leader(job("two"))
    try:
        e1.start()
        await asyncio.wait_for(_until(lambda: e1.is_leader), 5)
        e2.start()
        await asyncio.sleep(0.6)  # several campaign rounds of e2
        assert e1.is_leader and not e2.is_leader and e2.leader == "one"
        assert ran == ["one"]
        # the leader dies: it campaigns no more and its lease ends (revoked here, as a
        # SIGKILLed one's expires): two takes over
        assert e1._task is not None
        e1._task.cancel()
        await l1.stop(revoke=True)
        await asyncio.wait_for(_until(lambda: e2.is_leader), 5)
        assert ran == ["one", "two"]
        # a leader stopping gracefully resigns at once: a newcomer leads at its first campaign
        c3 = EtcdClient([etcd])
        l3 = LeaseKeeper(c3, 30)
        await l3.start()
        e3 = Election(c3, key, "three", l3, 0.2)
        await e2.stop()
        assert await e3.campaign()
        await l3.stop(revoke=True)
        await c3.close()
    finally:
        await e1.stop()
        await e2.stop()
        await l2.stop()
        await c1.close()
        await c2.close()


async def test_a_lost_lease_is_granted_again_and_its_keys_rewritten(etcd):
    """After an etcd outage longer than the TTL the lease is gone: the keeper grants a new one
    and the registry writes its sidecars' entries again (here the lease is revoked by hand)."""
    from control_plane.registry import Registration
    from control_plane.registry_etcd import SharedRegistry

    p = prefix()
    client = EtcdClient([etcd])
    lease = LeaseKeeper(client, 2)
    await lease.start()
    reg = SharedRegistry(client, lease, "r#1", "127.0.0.1:1", p)
    await reg.start()
    try:
        reg.register(Registration("n1", "orders", address="10.0.0.1:15006"))
        key = f"{p}reg/n1/r#1".encode()
        await asyncio.wait_for(_retry_until(lambda: client.get(key)), 5)
        first = lease.id
        await client.lease_revoke(first)  # etcd forgot it: the entry went with it
        assert await client.get(key) is None
        kv = await asyncio.wait_for(_retry_until(lambda: client.get(key)), 10)
        assert lease.id != first and kv.lease == lease.id
        assert await client.get(f"{p}replicas/r#1".encode()) is not None
    finally:
        await reg.stop()
        await lease.stop(revoke=True)
        await client.close()


async def _retry_until(fn):  # type: ignore[no-untyped-def]
    while True:
        v = await fn()
        if v:
            return v
        await asyncio.sleep(0.05)


def test_prefix_end_and_endpoints():
    assert prefix_end(b"/meshlet/") == b"/meshlet0"
    assert prefix_end(b"a\xff") == b"b"
    assert parse_endpoints("etcd://a:2379,b:2379") == ["http://a:2379", "http://b:2379"]
    assert parse_endpoints("etcds://a:2379") == ["https://a:2379"]
    for bad in ("a:2379", "etcd://a", "etcd://a:x", "redis://a:1"):
        with pytest.raises(ValueError):
            parse_endpoints(bad)


@pytest.mark.slow
async def test_client_tls_and_etcd_auth(tmp_path):
    """etcd with --client-cert-auth and auth enabled, a user whose role covers only the
    mesh's prefix: the store works with the flags' TLS and credentials, and a wrong password
    or a missing client certificate is a clear error."""
    import trustme

    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client_cert = ca.issue_cert("meshlet-control-plane")
    for name, blob in (("ca.pem", ca.cert_pem), ("server.pem", server.cert_chain_pems[0]),
                       ("server-key.pem", server.private_key_pem),
                       ("client.pem", client_cert.cert_chain_pems[0]),
                       ("client-key.pem", client_cert.private_key_pem)):
        blob.write_to_path(str(tmp_path / name))
    proc, url = start_etcd(
        tmp_path, "tls", "--cert-file", str(tmp_path / "server.pem"),
        "--key-file", str(tmp_path / "server-key.pem"),
        "--trusted-ca-file", str(tmp_path / "ca.pem"), "--client-cert-auth", scheme="https")
    ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    ctx.load_cert_chain(str(tmp_path / "client.pem"), str(tmp_path / "client-key.pem"))
    try:
        admin = EtcdClient([url], ssl_context=ctx, timeout=2)
        await asyncio.wait_for(_retry(lambda: admin.range(b"x")), 30)
        from control_plane.etcd.client import b64

        # users and roles over the gateway, as `etcdctl user/role add` would
        await admin.call("auth/user/add", {"name": "root", "password": "rootpw"})
        await admin.call("auth/role/add", {"name": "root"})
        await admin.call("auth/user/grant", {"user": "root", "role": "root"})
        await admin.call("auth/user/add", {"name": "meshlet", "password": "s3cret"})
        await admin.call("auth/role/add", {"name": "mesh"})
        await admin.call("auth/role/grant", {"name": "mesh", "perm": {
            "permType": "READWRITE", "key": b64("/meshlet/"),
            "range_end": b64(prefix_end(b"/meshlet/"))}})
        await admin.call("auth/user/grant", {"user": "meshlet", "role": "mesh"})
        await admin.call("auth/enable", {})
        await admin.close()

        good = EtcdClient([url], ssl_context=ctx, user="meshlet", password="s3cret")
        store = EtcdStore(good)
        await store.start()
        rev, ch = await store.apply_async(load_text(DR % "", "x.yaml"))
        assert ch[0].action == "created" and rev > 0
        with pytest.raises(EtcdError, match="permission denied"):
            await good.put(b"/elsewhere", b"x")  # the role covers the mesh's prefix only
        store.close()
        await good.close()

        wrong = EtcdClient([url], ssl_context=ctx, user="meshlet", password="nope")
        with pytest.raises(EtcdError, match="refused user 'meshlet'"):
            await wrong.range(b"/meshlet/")
        await wrong.close()

        anon = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))  # no client cert
        nocert = EtcdClient([url], ssl_context=anon, user="meshlet", password="s3cret",
                            timeout=1)
        with pytest.raises(StoreUnavailable):
            await nocert.range(b"/meshlet/")
        await nocert.close()
    finally:
        proc.stop()


async def _retry(fn):  # type: ignore[no-untyped-def]
    while True:
        try:
            return await fn()
        except StoreUnavailable:
            await asyncio.sleep(0.1)
