"""The CA's HTTPS endpoints over real TLS: token and client-certificate authentication,
identity from the credentials only, error answers."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from certs import keys, tls
from certs.authority import CertificateAuthority
from certs.csr import build_csr
from certs.spiffe import SpiffeId
from certs.verify import verify_svid
from control_plane.ca.service import serving_certificate, serving_context, setup_routes
from control_plane.ca.tokens import TokenStore

TD = "cluster.local"


@dataclass
class ControlPlane:
    ca: CertificateAuthority
    tokens: TokenStore
    url: str


@pytest.fixture
async def cp(tmp_path):
    ca = CertificateAuthority.create_self_signed(tmp_path, TD)
    tokens = TokenStore(tmp_path, ca.root_pin)
    app = web.Application()
    setup_routes(app, ca, tokens, TD, lifetime_s=3600)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=serving_context(ca))
    await site.start()
    port = runner.addresses[0][1]
    yield ControlPlane(ca, tokens, f"https://127.0.0.1:{port}")
    await runner.cleanup()
    tokens.close()


def _csr(sa: str = "orders", ns: str = "default"):
    key = keys.generate_private_key()
    return key, build_csr(key, SpiffeId.for_workload(TD, ns, sa)).decode()


async def _post(cp: ControlPlane, ctx: ssl.SSLContext, body, headers=None):
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s,
        s.post(f"{cp.url}/v1/certify", json=body, headers=headers or {}) as r,
    ):
        return r.status, await r.json(content_type=None)


def _anon(cp: ControlPlane) -> ssl.SSLContext:
    return tls.client_context(None, None, cp.ca.bundle_pem(), alpn=tls.HTTP11_ALPN)


async def test_token_first_contact_ignores_csr_identity(cp):
    token = cp.tokens.create("orders", "shop", 600)
    key, csr = _csr("admin", "kube-system")  # asks for someone else
    status, body = await _post(cp, _anon(cp), {"csr": csr}, {"Authorization": f"Bearer {token}"})
    assert status == 200, body
    expected = SpiffeId.for_workload(TD, "shop", "orders")
    assert body["spiffe_id"] == str(expected)
    chain = body["certificate_chain"].encode()
    assert verify_svid(chain, body["trust_bundle"].encode()) == expected
    leaf = keys.load_certificates(chain)[0]
    assert keys.same_public_key(leaf.public_key(), key.public_key())
    assert body["trust_bundle"].encode() == cp.ca.bundle_pem()
    assert body["not_after"].endswith("Z")


async def test_renewal_with_client_certificate(cp):
    token = cp.tokens.create("orders", "default", 600)
    key, csr = _csr()
    _, first = await _post(cp, _anon(cp), {"csr": csr}, {"Authorization": f"Bearer {token}"})
    cp.tokens.revoke(token.split(".")[1])  # from now on only the certificate can authenticate
    ctx = tls.client_context(
        first["certificate_chain"].encode(),
        keys.private_key_to_pem(key),
        cp.ca.bundle_pem(),
        alpn=tls.HTTP11_ALPN,
    )
    key2, csr2 = _csr("payment")  # the CSR's SAN is ignored on renewal too
    status, body = await _post(cp, ctx, {"csr": csr2, "ttl_seconds": 60})
    assert status == 200, body
    assert body["spiffe_id"] == str(SpiffeId.for_workload(TD, "default", "orders"))
    assert body["serial"] != first["serial"]
    leaf = keys.load_certificates(body["certificate_chain"].encode())[0]
    life = (leaf.not_valid_after_utc - leaf.not_valid_before_utc).total_seconds()
    assert life == pytest.approx(60 + 120, abs=2)  # a caller may ask for less


async def test_untrusted_client_certificate_is_refused(cp, tmp_path):
    rogue = CertificateAuthority.create_self_signed(tmp_path / "rogue", TD)
    key = keys.generate_private_key()
    sid = SpiffeId.for_workload(TD, "default", "orders")
    chain = rogue.sign(build_csr(key, sid), sid, 600)
    ctx = tls.client_context(
        chain, keys.private_key_to_pem(key), cp.ca.bundle_pem(), alpn=tls.HTTP11_ALPN
    )
    _, csr = _csr()
    with pytest.raises(aiohttp.ClientError):
        await _post(cp, ctx, {"csr": csr})


async def test_control_plane_certificate_cannot_renew_as_workload(cp):
    chain, key = serving_certificate(cp.ca)
    ctx = tls.client_context(chain, key, cp.ca.bundle_pem(), alpn=tls.HTTP11_ALPN)
    _, csr = _csr()
    status, body = await _post(cp, ctx, {"csr": csr})
    assert status == 403, body


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Basic abc"}, 401),
        ({"Authorization": "Bearer meshlet1.nope"}, 401),
    ],
)
async def test_unauthenticated(cp, headers, status):
    _, csr = _csr()
    got, body = await _post(cp, _anon(cp), {"csr": csr}, headers)
    assert got == status
    assert "error" in body


async def test_bad_requests(cp):
    token = cp.tokens.create("orders", "default", 600)
    auth = {"Authorization": f"Bearer {token}"}
    assert (await _post(cp, _anon(cp), {"nocsr": 1}, auth))[0] == 400
    assert (await _post(cp, _anon(cp), {"csr": "garbage"}, auth))[0] == 400
    assert (await _post(cp, _anon(cp), {"csr": 5}, auth))[0] == 400


async def test_trust_bundle_endpoint(cp):
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=_anon(cp))) as s,
        s.get(f"{cp.url}/v1/trust-bundle") as r,
    ):
        assert r.status == 200
        assert r.content_type == "application/x-pem-file"
        assert await r.read() == cp.ca.bundle_pem()


async def test_serving_certificate_identity(cp):
    chain, _ = serving_certificate(cp.ca, ["cp.example", "0.0.0.0", "10.1.2.3"])
    assert verify_svid(chain, cp.ca.bundle_pem()) == SpiffeId.for_control_plane(TD)
    from cryptography import x509

    san = keys.load_certificates(chain)[0].extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert san.value.get_values_for_type(x509.DNSName) == ["localhost", "cp.example"]
    assert [str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)] == [
        "127.0.0.1",
        "::1",
        "10.1.2.3",
    ]
