"""DestinationRule ``trafficPolicy.tls`` through real standalone sidecars, with certificates
made by the project's own CA (``certs/``) and handed over as files (``--cert/--key/--ca``):
ISTIO_MUTUAL to a STRICT and to a PERMISSIVE peer, a wrong peer identity, DISABLE to a STRICT
peer, SIMPLE and MUTUAL to a TLS server that is not a sidecar, and an unreadable file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import aiohttp
import pytest

from certs import keys
from certs.authority import CertificateAuthority
from certs.csr import build_csr
from certs.spiffe import SpiffeId
from tests.support import Proc, start_app, start_sidecar, wait_until

pytestmark = pytest.mark.slow

TD = "cluster.local"
STRICT = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default}
spec: {mtls: {mode: STRICT}}
"""
PERMISSIVE = STRICT.replace("STRICT", "PERMISSIVE")

# A TLS server that is not a sidecar: answers with the client certificate's URI SANs, if any.
TLS_APP = """
import json, ssl, sys
from aiohttp import web
from cryptography import x509

cert, key, ca, port_file = sys.argv[1:5]
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)
ctx.load_verify_locations(ca)
ctx.verify_mode = ssl.CERT_OPTIONAL
seen = {}

def on_sni(sslobj, name, _ctx):
    seen[id(sslobj)] = name  # the name the client asked for (its SNI)

ctx.sni_callback = on_sni

async def handle(request):
    sslobj = request.transport.get_extra_info("ssl_object")
    der = sslobj.getpeercert(binary_form=True)
    sans = []
    if der:
        ext = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
            x509.SubjectAlternativeName)
        sans = ext.value.get_values_for_type(x509.UniformResourceIdentifier)
    return web.json_response({"client": sans, "sni": seen.get(id(sslobj))})

async def main():
    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    open(port_file, "w").write(str(port))
    import asyncio
    await asyncio.Event().wait()

import asyncio
asyncio.run(main())
"""


def _leaf(ca: CertificateAuthority, d: Path, sa: str) -> tuple[str, str]:
    key = keys.generate_private_key()
    sid = SpiffeId.for_workload(TD, "default", sa)
    chain = ca.sign(build_csr(key, sid), sid, 3600)
    (d / f"{sa}.pem").write_bytes(chain)
    (d / f"{sa}.key").write_bytes(keys.private_key_to_pem(key))
    return str(d / f"{sa}.pem"), str(d / f"{sa}.key")


def _client_config(strict: int, permissive: int, tls_app: int, files: dict[str, str]) -> str:
    def se(host: str, port: int, sa: str = "inventory") -> str:
        return f"""---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {host}}}
spec:
  hosts: [{host}]
  ports: [{{number: 80, name: http}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1, ports: {{http: {port}}}, serviceAccount: {sa}}}]
"""

    def dr(host: str, tls: str) -> str:
        return f"""---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {host}}}
spec:
  host: {host}
  trafficPolicy: {{tls: {tls}}}
"""

    f = files
    return "".join(
        [
            se("strict-mutual", strict),
            dr("strict-mutual", "{mode: ISTIO_MUTUAL}"),
            se("strict-auto", strict),
            se("permissive-mutual", permissive),
            dr("permissive-mutual", "{mode: ISTIO_MUTUAL}"),
            se("permissive-auto", permissive),
            se("wrong-identity", strict, sa="payments"),
            dr("wrong-identity", "{mode: ISTIO_MUTUAL}"),
            se("strict-san", strict, sa="payments"),
            dr(
                "strict-san",
                "{mode: ISTIO_MUTUAL, subjectAltNames: "
                "[spiffe://cluster.local/ns/default/sa/inventory]}",
            ),
            se("strict-plain", strict),
            dr("strict-plain", "{mode: DISABLE}"),
            se("ext-simple", tls_app),
            dr("ext-simple", f"{{mode: SIMPLE, caCertificates: {f['ca']}, sni: secure.example}}"),
            se("ext-san", tls_app),
            dr(
                "ext-san",
                f"{{mode: SIMPLE, caCertificates: {f['ca']}, subjectAltNames: [other.example]}}",
            ),
            se("ext-mutual", tls_app),
            dr(
                "ext-mutual",
                f"{{mode: MUTUAL, caCertificates: {f['ca']}, sni: secure.example, "
                f"clientCertificate: {f['client_cert']}, privateKey: {f['client_key']}}}",
            ),
            se("ext-unverified", tls_app),
            dr("ext-unverified", "{mode: SIMPLE, insecureSkipVerify: true}"),
            se("ext-system-roots", tls_app),
            dr("ext-system-roots", "{mode: SIMPLE, sni: secure.example}"),
        ]
    )


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("origination")
    ca = CertificateAuthority.create_self_signed(work / "ca", TD)
    bundle = work / "bundle.pem"
    bundle.write_bytes(ca.bundle_pem())
    inv_cert, inv_key = _leaf(ca, work, "inventory")
    cl_cert, cl_key = _leaf(ca, work, "orders")
    # the external server's certificate: a DNS name, from the same CA
    skey = keys.generate_private_key()
    (work / "server.pem").write_bytes(ca.sign_serving(skey.public_key(), ["secure.example"], 3600))
    (work / "server.key").write_bytes(keys.private_key_to_pem(skey))
    (work / "tls_app.py").write_text(TLS_APP)
    port_file = work / "tls_app.port"
    tls_app = Proc(
        "tls-app",
        [
            sys.executable,
            str(work / "tls_app.py"),
            str(work / "server.pem"),
            str(work / "server.key"),
            str(bundle),
            str(port_file),
        ],
        work,
    )
    procs: list = [tls_app]
    try:
        wait_until(lambda: port_file.exists() and port_file.read_text(), what="tls app")
        app, pa = start_app(work, "inventory")
        procs.append(app)
        ident = ["--cert", inv_cert, "--key", inv_key, "--ca", str(bundle)]
        strict = start_sidecar(work, "inventory", pa, STRICT, *ident, name="inv-strict")
        procs.append(strict)
        permissive = start_sidecar(work, "inventory", pa, PERMISSIVE, *ident, name="inv-perm")
        procs.append(permissive)
        files = {"ca": str(bundle), "client_cert": cl_cert, "client_key": cl_key}
        cfg = work / "orders.yaml"
        cfg.write_text(
            _client_config(strict.inbound, permissive.inbound, int(port_file.read_text()), files)
        )
        client = start_sidecar(
            work, "orders", 1, cfg, "--cert", cl_cert, "--key", cl_key, "--ca", str(bundle)
        )
        procs.append(client)
        yield {
            "client": client,
            "strict": strict,
            "permissive": permissive,
            "work": work,
            "files": files,
        }
    finally:
        for p in reversed(procs):
            p.stop()


async def _get(mesh, host: str, path: str = "/"):
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{mesh['client'].outbound}{path}", headers={"Host": host}) as r,
    ):
        return r.status, dict(r.headers), await r.read()


def _inbound_series(sc, **labels: str) -> float:
    text = sc.admin_get("/metrics")[1].decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("istio_requests_total{") and 'reporter="destination"' in line:
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


ORDERS = "spiffe://cluster.local/ns/default/sa/orders"


async def test_istio_mutual_to_a_strict_peer(mesh):
    before = _inbound_series(
        mesh["strict"], source_principal=ORDERS, connection_security_policy="mutual_tls"
    )
    status, _, _ = await _get(mesh, "strict-mutual")
    assert status == 200
    after = _inbound_series(
        mesh["strict"], source_principal=ORDERS, connection_security_policy="mutual_tls"
    )
    assert after == before + 1


async def test_no_tls_setting_is_plaintext_to_a_serviceentry_endpoint(mesh):
    """Without a DestinationRule tls (auto), a ServiceEntry endpoint is dialled in plaintext,
    so a STRICT peer refuses it: the case the DestinationRule is there for."""
    status, headers, _ = await _get(mesh, "strict-auto")
    assert (status, headers["x-meshlet-response-flags"]) == (503, "UC")


async def test_istio_mutual_to_a_permissive_peer_is_verified_mtls(mesh):
    sc = mesh["permissive"]
    mtls = dict(source_principal=ORDERS, connection_security_policy="mutual_tls")
    before = _inbound_series(sc, **mtls)
    plain_before = _inbound_series(sc, connection_security_policy="none")
    status, _, _ = await _get(mesh, "permissive-mutual")
    assert status == 200
    assert _inbound_series(sc, **mtls) == before + 1
    assert _inbound_series(sc, connection_security_policy="none") == plain_before
    # and the same endpoint without the rule is plaintext (PERMISSIVE accepts it)
    status, _, _ = await _get(mesh, "permissive-auto")
    assert status == 200
    assert _inbound_series(sc, connection_security_policy="none") == plain_before + 1


async def test_istio_mutual_refuses_a_peer_with_another_identity(mesh):
    """The ServiceEntry says the endpoint runs as ``payments``; it presents ``inventory``."""
    status, headers, _ = await _get(mesh, "wrong-identity")
    # a connect failure, retried by the default policy (connect-failure), then given up
    assert (status, headers["x-meshlet-response-flags"]) == (503, "UF,URX")


async def test_istio_mutual_subject_alt_names_name_the_accepted_identities(mesh):
    """With subjectAltNames the rule, not the ServiceEntry's serviceAccount, says who the
    peer may be (Istio uses them instead of the service's accounts)."""
    status, _, _ = await _get(mesh, "strict-san")
    assert status == 200


async def test_disable_to_a_strict_peer_fails(mesh):
    status, headers, _ = await _get(mesh, "strict-plain")
    assert (status, headers["x-meshlet-response-flags"]) == (503, "UC")


async def test_simple_tls_verifies_the_server_name(mesh):
    status, _, body = await _get(mesh, "ext-simple")
    assert status == 200
    assert json.loads(body) == {"client": [], "sni": "secure.example"}


async def test_simple_tls_with_subject_alt_names_refuses_another_name(mesh):
    status, headers, _ = await _get(mesh, "ext-san")
    assert (status, headers["x-meshlet-response-flags"]) == (503, "UF,URX")


async def test_simple_tls_against_the_system_roots_refuses_a_private_ca(mesh):
    status, headers, _ = await _get(mesh, "ext-system-roots")
    assert (status, headers["x-meshlet-response-flags"]) == (503, "UF,URX")


async def test_insecure_skip_verify(mesh):
    status, _, body = await _get(mesh, "ext-unverified")
    assert status == 200 and json.loads(body)["client"] == []


async def test_mutual_tls_presents_the_rule_s_client_certificate(mesh):
    status, _, body = await _get(mesh, "ext-mutual")
    assert status == 200
    assert json.loads(body) == {"client": [ORDERS], "sni": "secure.example"}


# a rule whose CA file does not exist
UNREADABLE_CA = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext}
spec:
  hosts: [ext]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {http: 9}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ext}
spec:
  host: ext
  trafficPolicy: {tls: {mode: SIMPLE, caCertificates: /nonexistent/ca.pem}}
"""


def test_an_unreadable_certificate_file_rejects_the_config(mesh, tmp_path):
    with pytest.raises(RuntimeError) as err:
        start_sidecar(tmp_path, "orders", 1, UNREADABLE_CA)
    assert "DestinationRule default/ext: tls.caCertificates '/nonexistent/ca.pem'" in str(err.value)


def test_a_reload_with_an_unreadable_file_changes_nothing(mesh, tmp_path):
    """SIGHUP with a rule naming a missing file is refused whole: the PeerAuthentication that
    came with it is not applied either."""
    import signal

    files = mesh["files"]
    cfg = tmp_path / "inv.yaml"
    cfg.write_text(PERMISSIVE)
    sc = start_sidecar(
        tmp_path, "inventory", 1, cfg, "--cert", files["client_cert"], "--key",
        files["client_key"], "--ca", files["ca"], name="reload",
    )  # fmt: skip
    try:
        assert json.loads(sc.admin_get("/certs")[1])["mtls_mode"] == "PERMISSIVE"
        cfg.write_text(STRICT + "---" + UNREADABLE_CA)
        sc.proc.signal(signal.SIGHUP)
        sc.proc.wait_for(r"config reload refused.*\n.*tls.caCertificates '/nonexistent/ca.pem'")
        assert json.loads(sc.admin_get("/certs")[1])["mtls_mode"] == "PERMISSIVE"
    finally:
        sc.stop()
