"""The sidecar's IdentityManager against a real control-plane CA over HTTPS: join with a
pinned token, renew over mTLS, keep serving through failures, mTLS between two sidecars."""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from certs import keys, tls
from certs.authority import CertificateAuthority
from certs.join_token import JoinToken
from certs.spiffe import SpiffeId
from control_plane.ca.service import serving_certificate, serving_context, setup_routes
from control_plane.ca.tokens import TokenStore
from proxy.identity import IdentityError, IdentityManager
from tests.support import sockets_connected_to

TD = "cluster.local"


@dataclass
class ControlPlane:
    ca: CertificateAuthority
    tokens: TokenStore
    url: str
    runner: web.AppRunner
    requests: list[str]


async def _start_cp(tmp_path, lifetime_s: int, ssl_context=None, ca=None) -> ControlPlane:
    ca = ca or CertificateAuthority.create_self_signed(tmp_path / "cp", TD)
    tokens = TokenStore(tmp_path / "cp", ca.root_pin)
    requests: list[str] = []

    @web.middleware
    async def record(request, handler):
        if "Authorization" in request.headers:
            auth = "token"
        elif tls.peer_spiffe_id(request.transport.get_extra_info("ssl_object")):
            auth = "cert"
        else:
            auth = "anon"
        requests.append(f"{request.method} {request.path} {auth}")
        return await handler(request)

    app = web.Application(middlewares=[record])
    setup_routes(app, ca, tokens, TD, lifetime_s)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context or serving_context(ca))
    await site.start()
    port = runner.addresses[0][1]
    return ControlPlane(ca, tokens, f"https://127.0.0.1:{port}", runner, requests)


@pytest.fixture
async def cp(tmp_path):
    cp = await _start_cp(tmp_path, lifetime_s=4)
    yield cp
    await cp.runner.cleanup()
    cp.tokens.close()


@pytest.fixture
async def long_cp(tmp_path):
    """A control plane whose certificates last an hour: no renewal unless a test asks."""
    cp = await _start_cp(tmp_path, lifetime_s=3600)
    yield cp
    await cp.runner.cleanup()
    cp.tokens.close()


def _manager(cp: ControlPlane, service: str) -> IdentityManager:
    """A sidecar's identity manager for ``service`` with a join token from ``cp``."""
    return IdentityManager(cp.url, cp.tokens.create(service), service, "default", None)


async def _poll(cond, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_join_and_renew_over_mtls(cp, tmp_path):
    # The token expires before the first renewal: renewals must authenticate with the cert.
    token = cp.tokens.create("orders", "default", ttl=2)
    mgr = IdentityManager(cp.url, token, "orders", "default", tmp_path / "sidecar")
    changes: list[str] = []
    mgr.on_change.append(lambda m: changes.append(m.serial))
    await mgr.start()
    try:
        assert mgr.spiffe_id == SpiffeId.for_workload(TD, "default", "orders")
        first = mgr.serial
        first_ctx = mgr.server_context()
        assert mgr.bundle_fingerprints == cp.ca.root_fingerprints()
        st = mgr.status()
        assert st["spiffe_id"] == "spiffe://cluster.local/ns/default/sa/orders"
        assert st["serial"] == first and st["last_renewal_error"] is None
        assert 0 < st["seconds_to_expiry"] <= 4
        assert set(st) >= {
            "spiffe_id",
            "serial",
            "not_before",
            "not_after",
            "trust_bundle_fingerprints",
            "seconds_to_expiry",
            "last_renewal_error",
        }
        # renews at half of a 4 s lifetime, twice
        await _poll(lambda: mgr.renewals >= 2)
        assert mgr.serial != first
        assert mgr.server_context() is not first_ctx  # rebuilt; old connections keep theirs
        assert mgr.last_renewal_error is None
        assert cp.requests[:2] == ["GET /v1/trust-bundle anon", "POST /v1/certify token"]
        assert cp.requests[2:4] == ["POST /v1/certify cert", "POST /v1/certify cert"]
        assert len(set(changes)) == len(changes) >= 3
        # state on disk, key private
        state = tmp_path / "sidecar"
        assert (os.stat(state / "key.pem").st_mode & 0o777) == 0o600
        assert (os.stat(state).st_mode & 0o777) == 0o700
    finally:
        await mgr.close()


async def test_wrong_pin_is_refused(cp, tmp_path):
    real = JoinToken.parse(cp.tokens.create("orders"))
    forged = str(JoinToken(real.token_id, real.secret, "ab" * 32))
    mgr = IdentityManager(cp.url, forged, "orders", "default", tmp_path / "s")
    with pytest.raises(IdentityError, match="CA pin") as exc:
        await mgr.start()
    assert exc.value.permanent
    # The token was never sent: only the (public) bundle was fetched.
    assert cp.requests == ["GET /v1/trust-bundle anon"]


async def test_unknown_token_is_refused(cp, tmp_path):
    real = JoinToken.parse(cp.tokens.create("orders"))
    bad = str(JoinToken("0" * 16, real.secret, real.ca_pin))
    mgr = IdentityManager(cp.url, bad, "orders", "default", tmp_path / "s")
    with pytest.raises(IdentityError, match=r"refused the join token \(unknown join token\): "
                       "create a new one there with `meshlet token create --service orders`") as exc:
        await mgr.start()
    assert exc.value.permanent


async def test_token_for_another_service_is_refused(cp, tmp_path):
    token = cp.tokens.create("payment")
    mgr = IdentityManager(cp.url, token, "orders", "default", tmp_path / "s")
    with pytest.raises(IdentityError, match="the join token belongs to service 'payment' "
                       r"\(namespace 'default'\), not 'orders'.*issued "
                       "spiffe://cluster.local/ns/default/sa/payment"):
        await mgr.start()


async def test_impostor_with_workload_certificate_gets_no_token(tmp_path):
    # A server whose certificate chains to the pinned root but is a workload's, not the
    # control plane's: the manager must not send it the join token.
    ca = CertificateAuthority.create_self_signed(tmp_path / "cp", TD)
    key = keys.generate_private_key()
    chain = ca.sign_serving(
        key.public_key(), ["127.0.0.1"], 600, SpiffeId.for_workload(TD, "default", "evil")
    )
    ctx = tls.server_context(
        chain, keys.private_key_to_pem(key), ca.bundle_pem(), False, alpn=tls.HTTP11_ALPN
    )
    impostor = await _start_cp(tmp_path, 4, ssl_context=ctx, ca=ca)
    try:
        token = impostor.tokens.create("orders")
        mgr = IdentityManager(impostor.url, token, "orders", "default", None, min_retry=0.05)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(mgr.start(), 1.0)
        assert "not the control plane" in (mgr.last_renewal_error or "")
        assert all(r.startswith("GET /v1/trust-bundle") for r in impostor.requests)
    finally:
        await impostor.runner.cleanup()
        impostor.tokens.close()


async def test_no_connection_outlives_its_request(tmp_path):
    """Each request to the control plane has closed its socket when it returns, also when the
    server is refused: a socket still closing when the event loop closes (a sidecar's last act)
    is leaked. aiohttp's ``force_close`` left each one closing in the background."""
    cp = await _start_cp(tmp_path, lifetime_s=3600)
    port = int(cp.url.rsplit(":", 1)[1])
    mgr = _manager(cp, "orders")
    try:
        await mgr.start()  # the trust bundle, unverified, then certify with the join token
        assert sockets_connected_to(port) == []
        await mgr.renew_now()  # over mTLS
        assert sockets_connected_to(port) == []
        cp.ca.rotate_root(activate=False)
        assert await mgr.refresh_bundle()
        assert sockets_connected_to(port) == []
    finally:
        await mgr.close()
        await cp.runner.cleanup()
        cp.tokens.close()

    ca = CertificateAuthority.create_self_signed(tmp_path / "evil", TD)
    key = keys.generate_private_key()
    chain = ca.sign_serving(
        key.public_key(), ["127.0.0.1"], 600, SpiffeId.for_workload(TD, "default", "evil")
    )
    ctx = tls.server_context(
        chain, keys.private_key_to_pem(key), ca.bundle_pem(), False, alpn=tls.HTTP11_ALPN
    )
    impostor = await _start_cp(tmp_path / "evil", 4, ssl_context=ctx, ca=ca)
    port = int(impostor.url.rsplit(":", 1)[1])
    try:
        mgr = IdentityManager(impostor.url, impostor.tokens.create("orders"), "orders")
        with pytest.raises(aiohttp.ClientError, match="not the control plane"):
            await mgr.renew_now()
        assert sockets_connected_to(port) == []
    finally:
        await impostor.runner.cleanup()
        impostor.tokens.close()


@pytest.mark.slow
async def test_waits_for_control_plane_then_keeps_cert_through_outage(tmp_path):
    # Start the sidecar before the control plane exists: it retries until it can join.
    ca = CertificateAuthority.create_self_signed(tmp_path / "cp", TD)
    probe = await _start_cp(tmp_path, 4, ca=ca)
    url = probe.url
    port = int(url.rsplit(":", 1)[1])
    token = probe.tokens.create("orders", ttl=600)
    await probe.runner.cleanup()
    probe.tokens.close()

    mgr = IdentityManager(url, token, "orders", "default", None, min_retry=0.05, max_retry=0.2)
    starting = asyncio.ensure_future(mgr.start())
    await _poll(lambda: mgr.last_renewal_error is not None)
    assert not mgr.ready
    app = web.Application()
    tokens = TokenStore(tmp_path / "cp", ca.root_pin)
    setup_routes(app, ca, tokens, TD, 4)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=serving_context(ca)).start()
    try:
        await asyncio.wait_for(starting, 10)
        assert mgr.ready
        serial = mgr.serial
    finally:
        await runner.cleanup()
        tokens.close()
    try:
        # Control plane gone: renewal fails, the current certificate stays in service.
        await _poll(lambda: mgr.last_renewal_error is not None, timeout=10)
        assert mgr.serial == serial
        assert mgr.server_context() is not None
        assert mgr.status()["last_renewal_error"]
    finally:
        await mgr.close()


async def test_restart_reuses_saved_identity_without_token(cp, tmp_path):
    state = tmp_path / "sidecar"
    long_cp = await _start_cp(tmp_path / "long", lifetime_s=3600)
    try:
        token = long_cp.tokens.create("orders", ttl=600)
        mgr = IdentityManager(long_cp.url, token, "orders", "default", state)
        await mgr.start()
        serial = mgr.serial
        await mgr.close()
        again = IdentityManager(long_cp.url, None, "orders", "default", state)
        await again.start()
        assert again.serial == serial
        assert again.renewals == 0
        await again.renew_now()  # over mTLS with the reloaded certificate
        assert again.serial != serial
        await again.close()
    finally:
        await long_cp.runner.cleanup()
        long_cp.tokens.close()


async def test_two_sidecars_mtls(long_cp):
    cp = long_cp
    a = _manager(cp, "orders")
    b = _manager(cp, "inventory")
    await a.start()
    await b.start()
    seen: list[SpiffeId | None] = []

    async def handle(reader, writer):
        seen.append(tls.peer_spiffe_id(writer.get_extra_info("ssl_object")))
        writer.write(b"ok")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=b.server_context())
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=a.client_context())
    peer = tls.peer_spiffe_id(writer.get_extra_info("ssl_object"))
    assert await reader.read() == b"ok"
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    assert peer == b.spiffe_id
    assert seen == [a.spiffe_id]
    await a.close()
    await b.close()


async def test_from_files_static_mode(tmp_path):
    ca = CertificateAuthority.create_self_signed(tmp_path / "cp", TD)
    key = keys.generate_private_key()
    from certs.csr import build_csr

    sid = SpiffeId.for_workload(TD, "default", "orders")
    (tmp_path / "cert.pem").write_bytes(ca.sign(build_csr(key, sid), sid, 600))
    (tmp_path / "key.pem").write_bytes(keys.private_key_to_pem(key))
    (tmp_path / "root.pem").write_bytes(ca.bundle_pem())
    mgr = IdentityManager.from_files(
        tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "root.pem"
    )
    await mgr.start()  # nothing to do
    assert mgr.spiffe_id == sid and mgr.ready
    assert isinstance(mgr.server_context(), ssl.SSLContext)
    assert mgr.status()["next_renewal"] is None
    other = CertificateAuthority.create_self_signed(tmp_path / "other", TD)
    (tmp_path / "root.pem").write_bytes(other.bundle_pem())
    with pytest.raises(IdentityError, match="does not verify"):
        IdentityManager.from_files(
            tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "root.pem"
        )


async def test_two_phase_root_rotation_reaches_the_sidecar(long_cp):
    cp = long_cp
    mgr = _manager(cp, "orders")
    peer = _manager(cp, "payment")
    stale = _manager(cp, "stale")
    await mgr.start()
    await peer.start()
    await stale.start()
    old_fp = cp.ca.root_fingerprints()[0]
    old_issuer = keys.load_certificates(mgr._cur().chain_pem)[0].issuer
    serial = mgr.serial
    # 1. publish the new root; sidecars pick up the two-root bundle without renewing.
    new_fp = cp.ca.rotate_root(activate=False)
    assert await mgr.refresh_bundle()
    assert await peer.refresh_bundle()
    assert await stale.refresh_bundle()
    assert mgr.bundle_fingerprints == [old_fp, new_fp]
    assert mgr.serial == serial
    assert not await mgr.refresh_bundle()  # unchanged now
    # 2. switch signing: the control plane's serving certificate and new leaves come from
    #    the new root, and a sidecar holding both roots renews fine.
    cp.ca.activate_root()
    await mgr.renew_now()
    assert keys.load_certificates(mgr._cur().chain_pem)[0].issuer != old_issuer
    # old-root leaf (peer) and new-root leaf (mgr) talk mTLS both ways
    for server, client in ((mgr, peer), (peer, mgr)):
        srv = await asyncio.start_server(_ok, "127.0.0.1", 0, ssl=server.server_context())
        port = srv.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client.client_context()
        )
        assert tls.peer_spiffe_id(writer.get_extra_info("ssl_object")) == server.spiffe_id
        assert await reader.read() == b"ok"
        writer.close()
        await writer.wait_closed()
        srv.close()
        await srv.wait_closed()
    # 3. every leaf renewed from the new root, retire the old one.
    await peer.renew_now()
    cp.ca.retire_root(old_fp)
    assert await mgr.refresh_bundle()
    assert mgr.bundle_fingerprints == [new_fp]
    await mgr.renew_now()
    # A sidecar that missed the renewal window still holds an old-root leaf: the new
    # bundle does not cover it, so it tries to renew at once, is refused (the control
    # plane no longer trusts the old root), keeps its certificate and reports the failure.
    stale_serial = stale.serial
    assert not await stale.refresh_bundle()
    await _poll(lambda: stale.last_renewal_error is not None, timeout=10)
    assert stale.serial == stale_serial
    await stale.close()
    await mgr.close()
    await peer.close()


async def _ok(reader, writer):
    writer.write(b"ok")
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def test_activation_before_distribution_fails_safe(long_cp):
    # The failure mode two-phase rotation avoids: the sidecar does not trust the control
    # plane's new certificate yet, so renewal fails and the current certificate stays.
    cp = long_cp
    mgr = _manager(cp, "orders")
    await mgr.start()
    serial = mgr.serial
    cp.ca.rotate_root()  # publish and activate at once
    with pytest.raises(Exception, match="certificate verify failed"):
        await mgr.renew_now()
    assert mgr.serial == serial and mgr.ready
    await mgr.close()


async def test_listener_context_follows_renewals(long_cp):
    cp = long_cp
    a = _manager(cp, "orders")
    b = _manager(cp, "inventory")
    await a.start()
    await b.start()
    srv = await asyncio.start_server(_ok, "127.0.0.1", 0, ssl=b.listener_context())
    port = srv.sockets[0].getsockname()[1]
    serials = []
    for _ in range(2):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=a.client_context()
        )
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        from cryptography import x509

        serials.append(format(x509.load_der_x509_certificate(der).serial_number, "x"))
        assert await reader.read() == b"ok"
        writer.close()
        await writer.wait_closed()
        await b.renew_now()
    assert serials[0] != serials[1]
    assert serials[1] != b.serial  # b renewed once more after the second connection
    srv.close()
    await srv.wait_closed()
    await a.close()
    await b.close()


def test_serving_certificate_is_not_a_workload(tmp_path):
    ca = CertificateAuthority.create_self_signed(tmp_path, TD)
    chain, _ = serving_certificate(ca)
    from certs.verify import verify_svid

    sid = verify_svid(chain, ca.bundle_pem())
    assert sid.is_control_plane and sid.namespace is None
