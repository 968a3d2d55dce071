"""A control plane and two sidecars that join it with join tokens: mTLS between them with
SPIFFE identities, config pushed by `meshlet apply`, PeerAuthentication STRICT refusing plaintext
and certificate-less TLS, and sidecars that keep serving (and restart from their cache) while the
control plane is down."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess

import aiohttp
import pytest

from tests.support import join_sidecar, start_app, start_control_plane, start_sidecar, wait_until


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("mtls")
    cp = start_control_plane(work)
    inv_app, inv_port = start_app(work, "inventory")
    inv = join_sidecar(work, cp, "inventory", inv_port, "--version", "v1", state_dir=work / "inv")
    orders = join_sidecar(work, cp, "orders", 1)
    m = {
        "cp": cp,
        "inv": inv,
        "orders": orders,
        "work": work,
        "inv_app": inv_app,
        "inv_port": inv_port,
    }
    yield m
    for p in (m["orders"], m["inv"], inv_app, m["cp"]):
        p.stop()


async def _get(port: int, path: str, host: str = "inventory") -> tuple[int, dict, bytes]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{port}{path}", headers={"Host": host}) as r,
    ):
        return r.status, dict(r.headers), await r.read()


async def _wait_routable(mesh) -> None:
    async def ok() -> bool:
        return (await _get(mesh["orders"].outbound, "/items"))[0] == 200

    for _ in range(200):
        if await ok():
            return
        import asyncio

        await asyncio.sleep(0.05)
    raise AssertionError("inventory never became routable through the mesh")


async def test_call_over_mtls_with_spiffe_identities(mesh):
    await _wait_routable(mesh)
    status, headers, body = await _get(mesh["orders"].outbound, "/items")
    seen = json.loads(body)["headers"]
    assert seen["x-forwarded-client-cert"] == (
        "By=spiffe://cluster.local/ns/default/sa/inventory;URI=spiffe://cluster.local/ns/default/sa/orders"
    )
    certs = json.loads(mesh["inv"].admin_get("/certs")[1])
    assert certs["spiffe_id"] == "spiffe://cluster.local/ns/default/sa/inventory"
    text = mesh["inv"].admin_get("/metrics")[1].decode()
    line = next(
        x
        for x in text.splitlines()
        if x.startswith("istio_requests_total{") and 'reporter="destination"' in x
    )
    assert 'connection_security_policy="mutual_tls"' in line
    assert 'source_principal="spiffe://cluster.local/ns/default/sa/orders"' in line


async def test_apply_pushes_config_within_a_second(mesh):
    await _wait_routable(mesh)
    vs = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: inventory}
spec:
  hosts: [inventory]
  http:
  - match: [{uri: {prefix: /teapot}}]
    directResponse: {status: 418, body: {string: short and stout}}
  - route: [{destination: {host: inventory}}]
"""
    r = mesh["cp"].cli("apply", "-f", "-", input=vs)
    assert r.returncode == 0, r.stderr
    assert "virtualservice.networking.istio.io/inventory" in r.stdout

    async def teapot() -> bool:
        return (await _get(mesh["orders"].outbound, "/teapot"))[0] == 418

    import asyncio
    import time

    t0 = time.monotonic()
    while not await teapot():
        assert time.monotonic() - t0 < 3, "config not applied in time"
        await asyncio.sleep(0.02)
    ps = mesh["cp"].cli("proxy-status")
    assert ps.returncode == 0 and "orders" in ps.stdout and "SYNCED" in ps.stdout, ps.stdout


def _plaintext_refused(port: int) -> bool:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(b"GET /items HTTP/1.1\r\nHost: inventory\r\n\r\n")
        data = s.recv(100)
        return data == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    finally:
        s.close()


def _tls_without_cert_refused(port: int) -> bool:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            ctx.wrap_socket(raw) as s,
        ):
            s.sendall(b"GET /items HTTP/1.1\r\nHost: inventory\r\n\r\n")
            return s.recv(100) == b""
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError, OSError):
        return True


async def test_peer_authentication_strict(mesh):
    await _wait_routable(mesh)
    inbound = mesh["inv"].inbound
    # PERMISSIVE (the default): plaintext is accepted on the same port
    s = socket.create_connection(("127.0.0.1", inbound), timeout=5)
    s.sendall(b"GET /items HTTP/1.1\r\nHost: inventory\r\nConnection: close\r\n\r\n")
    assert s.recv(12).startswith(b"HTTP/1.1 200")
    s.close()
    pa = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec: {mtls: {mode: STRICT}}
"""
    assert mesh["cp"].cli("apply", "-f", "-", input=pa).returncode == 0
    wait_until(
        lambda: json.loads(mesh["inv"].admin_get("/certs")[1]).get("mtls_mode") == "STRICT",
        what="STRICT in force",
    )
    assert _plaintext_refused(inbound)
    assert _tls_without_cert_refused(inbound)
    # openssl as an independent TLS client: no client certificate, handshake refused
    p = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{inbound}", "-tls1_3"],
        input=b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        capture_output=True,
        timeout=20,
    )
    assert b"HTTP/1.1" not in p.stdout
    # TLS 1.1 is refused outright
    p = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{inbound}", "-tls1_1"],
        input=b"",
        capture_output=True,
        timeout=20,
    )
    assert p.returncode != 0
    # the mesh path (mTLS) still works
    assert (await _get(mesh["orders"].outbound, "/items"))[0] == 200
    assert mesh["cp"].cli("delete", "peerauthentication", "default").returncode == 0


async def test_sidecars_survive_control_plane_outage(mesh):
    await _wait_routable(mesh)
    mesh["cp"].stop()
    assert (await _get(mesh["orders"].outbound, "/items"))[0] == 200
    # a sidecar restarted while the control plane is down starts from its cached config
    mesh["orders"].stop()
    cp_url = mesh["cp"].url
    work = mesh["work"]
    mesh["orders"] = start_sidecar(
        work,
        "orders",
        1,
        None,
        "--control-plane",
        cp_url,
        "--token-file",
        str(work / "orders.default.token"),
        "--state-dir",
        str(work / "orders"),
        name="orders2",
    )
    assert (await _get(mesh["orders"].outbound, "/items"))[0] == 200
    # the control plane comes back on the same data dir and port: sidecars reconnect
    from tests.support import Proc

    data = mesh["cp"].data_dir
    host_port = cp_url.split("//", 1)[1]
    mesh["cp"].proc = Proc(
        "control-plane-2",
        [
            "python",
            "-m",
            "control_plane.cli",
            "control-plane",
            "--data-dir",
            str(data),
            "--listen",
            host_port,
        ],
        work,
    )
    wait_until(
        lambda: (
            "SYNCED" in mesh["cp"].cli("proxy-status").stdout
            and mesh["cp"].cli("proxy-status").stdout.count("SYNCED") >= 2
        ),
        timeout=60,
        what="reconnect",
    )


def _raw_get(port: int, target: str) -> bytes:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(f"GET {target} HTTP/1.1\r\nHost: inventory\r\nConnection: close\r\n\r\n".encode())
    out = b""
    while True:
        c = s.recv(65536)
        if not c:
            break
        out += c
    s.close()
    return out


async def test_authorization_policy_and_path_normalization(mesh):
    await _wait_routable(mesh)
    ap = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: inventory-readers, namespace: default}
spec:
  selector: {matchLabels: {app: inventory}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/orders"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/items", "/items/*"]}}]
"""
    assert mesh["cp"].cli("apply", "-f", "-", input=ap).returncode == 0
    out = mesh["orders"].outbound
    wait_until(lambda: _raw_get(out, "/admin").startswith(b"HTTP/1.1 403"), what="policy in force")
    assert _raw_get(out, "/items/42").startswith(b"HTTP/1.1 200")
    denied = _raw_get(out, "/admin")
    assert b"RBAC: access denied" in denied and b"x-meshlet-response-flags: RBAC" in denied
    # bypass attempts: what is authorized is what is forwarded
    assert _raw_get(out, "/items/../admin").startswith(b"HTTP/1.1 403")
    assert _raw_get(out, "/items/%2e%2e/admin").startswith(b"HTTP/1.1 403")
    # RFC 3986 dot removal then slash merging (Envoy's order): this is /items/admin, allowed,
    # and it is exactly the path the app receives
    merged = _raw_get(out, "/items//..//admin")
    assert merged.startswith(b"HTTP/1.1 200")
    assert json.loads(merged.split(b"\r\n\r\n", 1)[1])["path"] == "/items/admin"
    assert _raw_get(out, "/items%2F..%2Fadmin").startswith(b"HTTP/1.1 400")
    assert _raw_get(out, "/items/..;/admin").split(b"\r\n", 1)[0] in (
        b"HTTP/1.1 400 Bad Request",
        b"HTTP/1.1 403 Forbidden",
    )
    # absolute-form targets are normalized the same way and forwarded in origin-form
    assert _raw_get(out, "http://inventory//items/../admin").startswith(b"HTTP/1.1 403")
    # the app sees the normalized path
    body = _raw_get(out, "/items/./a//b").split(b"\r\n\r\n", 1)[1]
    assert json.loads(body)["path"] == "/items/a/b"
    # no peer identity (plaintext straight to the inbound port): the principal rule cannot match
    direct = _raw_get(mesh["inv"].inbound, "/items")
    assert direct.startswith(b"HTTP/1.1 403")
    assert mesh["cp"].cli("delete", "authorizationpolicy", "inventory-readers").returncode == 0
    wait_until(lambda: _raw_get(out, "/admin").startswith(b"HTTP/1.1 200"), what="policy removed")


async def test_explain_outbound_and_inbound(mesh):
    await _wait_routable(mesh)
    # by node id: the orders sidecar restarted by an earlier test stays registered under its old
    # address for the grace period (the control plane restores registrations across a restart)
    node = f"orders.default@127.0.0.1:{mesh['orders'].inbound}"
    r = mesh["cp"].cli("proxy-config", "explain", node, "--host", "inventory:8080",
                       "--path", "/items?x=1", "-o", "json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["virtual_host"]["service"] == "inventory.default.svc.cluster.local"
    dest = data["destinations"][0]
    assert dest["endpoints"][0]["mtls"] is True
    assert dest["endpoints"][0]["identity"] == "spiffe://cluster.local/ns/default/sa/inventory"
    assert "retries" in dest["policy"] and "retry_budget" in dest["policy"]
    status, body = mesh["orders"].admin_get("/explain?host=nowhere&path=/")
    assert json.loads(body)["decision"].startswith("404 NR")
    # a captured request for an address outside the mesh, asked through the CLI
    r = mesh["cp"].cli("proxy-config", "explain", node, "--host", "203.0.113.9",
                       "--original-dst", "203.0.113.9:80", "-o", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["decision"].startswith("passthrough")
    status, body = mesh["inv"].admin_get(
        "/explain?direction=inbound&path=/a/../b&principal=spiffe://cluster.local/ns/default/sa/orders")
    data = json.loads(body)
    assert data["normalized_path"] == "/b" and data["authorization"]["allowed"] is True
