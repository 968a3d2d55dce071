"""SSL contexts from certs/tls.py doing real mTLS on loopback."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from certs import tls
from certs.authority import CertificateAuthority
from certs.spiffe import SpiffeId

TD = "cluster.local"


class Server:
    """A TLS echo-ish server recording the client's SPIFFE ID for each connection."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.peers: list[SpiffeId | None] = []
        self.port = 0

    async def _handle(self, reader, writer):
        ssl_object = writer.get_extra_info("ssl_object")
        self.peers.append(tls.peer_spiffe_id(ssl_object))
        writer.write(ssl_object.selected_alpn_protocol().encode() if ssl_object else b"-")
        try:
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.ctx)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()


async def _connect(port: int, ctx: ssl.SSLContext):
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    ssl_object = writer.get_extra_info("ssl_object")
    data = await reader.read()
    writer.close()
    return ssl_object, data


async def _refused(port: int, ctx: ssl.SSLContext) -> None:
    """The server refuses the client. Under TLS 1.2 the handshake itself fails; under TLS 1.3
    the client finishes first and the server's alert arrives afterwards, which asyncio turns
    into an EOF before any application byte."""
    try:
        _, data = await _connect(port, ctx)
    except (ssl.SSLError, ConnectionError):
        return
    assert data == b""


def _tls12(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


async def test_mtls_both_ends_see_spiffe_ids(ca, issue):
    server_chain, server_key = issue("inventory")
    client_chain, client_key = issue("orders")
    bundle = ca.bundle_pem()
    async with Server(tls.server_context(server_chain, server_key, bundle)) as srv:
        ssl_object, data = await _connect(
            srv.port, tls.client_context(client_chain, client_key, bundle)
        )
        assert tls.peer_spiffe_id(ssl_object) == SpiffeId.for_workload(TD, "default", "inventory")
        assert ssl_object.version() == "TLSv1.3"
        assert data == b"h2"  # ALPN h2 preferred
        assert srv.peers == [SpiffeId.for_workload(TD, "default", "orders")]


async def test_tls12_uses_ecdhe_aead(ca, issue):
    chain, key = issue("inventory")
    cchain, ckey = issue("orders")
    async with Server(tls.server_context(chain, key, ca.bundle_pem())) as srv:
        ctx = tls.client_context(cchain, ckey, ca.bundle_pem(), alpn=tls.HTTP11_ALPN)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ssl_object, data = await _connect(srv.port, ctx)
        assert ssl_object.version() == "TLSv1.2"
        assert ssl_object.cipher()[0] in tls.TLS12_CIPHERS.split(":")
        assert ssl_object.cipher()[0].startswith("ECDHE-ECDSA-")
        assert data == b"http/1.1"


async def test_client_with_untrusted_cert_is_refused(ca, issue, tmp_path):
    chain, key = issue("inventory")
    rogue = CertificateAuthority.create_self_signed(tmp_path / "rogue", TD)
    rchain, rkey = issue("orders", authority=rogue)
    # The rogue client trusts the real root, so only the server's check can fail.
    async with Server(tls.server_context(chain, key, ca.bundle_pem())) as srv:
        await _refused(srv.port, tls.client_context(rchain, rkey, ca.bundle_pem()))
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await _connect(srv.port, _tls12(tls.client_context(rchain, rkey, ca.bundle_pem())))
        assert srv.peers == []
    # Optional client certificates: a certificate, if sent, must still verify.
    optional = tls.server_context(chain, key, ca.bundle_pem(), require_client_cert=False)
    async with Server(optional) as srv:
        await _refused(srv.port, tls.client_context(rchain, rkey, ca.bundle_pem()))
        assert srv.peers == []


async def test_client_without_cert(ca, issue):
    chain, key = issue("inventory")
    bundle = ca.bundle_pem()
    async with Server(tls.server_context(chain, key, bundle)) as srv:
        await _refused(srv.port, tls.client_context(None, None, bundle))
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await _connect(srv.port, _tls12(tls.client_context(None, None, bundle)))
        assert srv.peers == []
    async with Server(tls.server_context(chain, key, bundle, require_client_cert=False)) as srv:
        ssl_object, _ = await _connect(srv.port, tls.client_context(None, None, bundle))
        assert tls.peer_spiffe_id(ssl_object) is not None
        assert srv.peers == [None]  # connected, but unauthenticated


async def test_client_refuses_untrusted_server(ca, issue, tmp_path):
    rogue = CertificateAuthority.create_self_signed(tmp_path / "rogue", TD)
    rchain, rkey = issue("inventory", authority=rogue)
    cchain, ckey = issue("orders")
    async with Server(tls.server_context(rchain, rkey, rogue.bundle_pem())) as srv:
        with pytest.raises(ssl.SSLCertVerificationError):
            await _connect(srv.port, tls.client_context(cchain, ckey, ca.bundle_pem()))


async def _s_client(port: int, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "openssl",
        "s_client",
        "-connect",
        f"127.0.0.1:{port}",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode(errors="replace")


async def test_openssl_tls11_refused_tls12_and_13_accepted(ca, issue, tmp_path):
    chain, key = issue("inventory")
    cchain, ckey = issue("orders")
    (tmp_path / "c.pem").write_bytes(cchain)
    (tmp_path / "c.key").write_bytes(ckey)
    (tmp_path / "root.pem").write_bytes(ca.bundle_pem())
    creds = ["-cert", str(tmp_path / "c.pem"), "-key", str(tmp_path / "c.key")]
    creds += ["-CAfile", str(tmp_path / "root.pem"), "-verify_return_error"]
    async with Server(tls.server_context(chain, key, ca.bundle_pem())) as srv:
        # SECLEVEL=0 so the client really offers TLS 1.1 and the refusal is the server's.
        rc, out = await _s_client(srv.port, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0", *creds)
        assert rc != 0
        assert "Cipher is (NONE)" in out, out  # no handshake completed
        assert srv.peers == []
        rc, out = await _s_client(srv.port, "-tls1_2", *creds)
        assert rc == 0, out
        assert "Protocol  : TLSv1.2" in out or "TLSv1.2" in out
        rc, out = await _s_client(srv.port, "-tls1_3", "-alpn", "h2", *creds)
        assert rc == 0, out
        assert "TLSv1.3" in out and "ALPN protocol: h2" in out
        assert srv.peers.count(SpiffeId.for_workload(TD, "default", "orders")) == 2


async def test_openssl_without_client_cert_fails_strict(ca, issue, tmp_path):
    chain, key = issue("inventory")
    (tmp_path / "root.pem").write_bytes(ca.bundle_pem())
    async with Server(tls.server_context(chain, key, ca.bundle_pem())) as srv:
        # -ign_eof: wait for the server's verdict (under TLS 1.3 it comes after the client's
        # side of the handshake is done).
        rc, out = await _s_client(srv.port, "-CAfile", str(tmp_path / "root.pem"), "-ign_eof")
        assert rc != 0, out
        assert srv.peers == []


def test_key_material_is_not_left_on_disk(ca, issue, monkeypatch, tmp_path):
    made = []
    real = tls._private_tmpdir

    def spy():
        d = real()
        made.append(d)
        return d

    monkeypatch.setattr(tls, "_private_tmpdir", spy)
    chain, key = issue("orders")
    tls.server_context(chain, key, ca.bundle_pem())
    import os

    assert made and not any(os.path.exists(d) for d in made)


async def test_dispatching_context_switches_certificate_and_bundle(ca, issue, tmp_path):
    other = CertificateAuthority.create_self_signed(tmp_path / "other", TD)
    first = tls.server_context(*issue("s1"), ca.bundle_pem())
    second = tls.server_context(*issue("s2", authority=other), other.bundle_pem())
    current = [first]
    listener = tls.dispatching_server_context(lambda: current[0])
    a_client = tls.client_context(*issue("c"), ca.bundle_pem())
    b_client = tls.client_context(*issue("c", authority=other), other.bundle_pem())
    async with Server(listener) as srv:
        ssl_object, data = await _connect(srv.port, a_client)
        assert tls.peer_spiffe_id(ssl_object).service_account == "s1"
        assert data == b"h2"
        await _refused(srv.port, b_client)  # not in the first bundle
        current[0] = second
        ssl_object, _ = await _connect(srv.port, b_client)
        assert tls.peer_spiffe_id(ssl_object).service_account == "s2"
        await _refused(srv.port, a_client)  # the switched-to bundle is the one used
        # still a client certificate required, still TLS >= 1.2
        await _refused(srv.port, tls.client_context(None, None, other.bundle_pem()))
        rc, out = await _s_client(srv.port, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
        assert rc != 0 and "Cipher is (NONE)" in out
        assert [p.trust_domain if p else None for p in srv.peers] == [TD, TD]
