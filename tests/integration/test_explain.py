"""``/explain`` agrees with what a real request through a real sidecar gets: a header-matched
route (and the default one), an inbound request an AuthorizationPolicy denies (and one it
lets through), and PeerAuthentication STRICT resetting a plaintext caller while an mTLS caller
is served. The captured-request cases (a Host that is an IP, PASSTHROUGH) need iptables in a
network namespace: tests/e2e/test_explain_capture.py."""

from __future__ import annotations

import json
import socket
import ssl
import urllib.parse
from pathlib import Path

import pytest

from certs import keys
from certs.authority import CertificateAuthority
from certs.csr import build_csr
from certs.spiffe import SpiffeId
from tests.support import start_app, start_sidecar

pytestmark = pytest.mark.slow

TD = "cluster.local"
ORDERS_ID = "spiffe://cluster.local/ns/default/sa/orders"

ROUTED = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: inventory}}
spec:
  hosts: [inventory]
  ports: [{{number: 80, name: http}}]
  resolution: STATIC
  endpoints:
  - {{address: 127.0.0.1, ports: {{http: {v1}}}, labels: {{version: v1}}}}
  - {{address: 127.0.0.1, ports: {{http: {v2}}}, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: inventory}}
spec:
  host: inventory
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: inventory}}
spec:
  hosts: [inventory]
  http:
  - name: blue-tenant
    match: [{{headers: {{x-tenant: {{exact: blue}}}}}}]
    route: [{{destination: {{host: inventory, subset: v2}}}}]
  - name: default
    route: [{{destination: {{host: inventory, subset: v1}}}}]
"""

DENY_ADMIN = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: default}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin", "/admin/*"]}}]
"""

STRICT = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec: {mtls: {mode: STRICT}}
"""


def _leaf(ca: CertificateAuthority, d: Path, sa: str) -> tuple[str, str]:
    key = keys.generate_private_key()
    sid = SpiffeId.for_workload(TD, "default", sa)
    (d / f"{sa}.pem").write_bytes(ca.sign(build_csr(key, sid), sid, 3600))
    (d / f"{sa}.key").write_bytes(keys.private_key_to_pem(key))
    return str(d / f"{sa}.pem"), str(d / f"{sa}.key")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("explain")
    ca = CertificateAuthority.create_self_signed(work / "ca", TD)
    bundle = work / "bundle.pem"
    bundle.write_bytes(ca.bundle_pem())
    inv_cert, inv_key = _leaf(ca, work, "inventory")
    cl_cert, cl_key = _leaf(ca, work, "orders")
    procs: list = []
    try:
        v1, p1 = start_app(work, "inventory", "v1")
        procs.append(v1)
        v2, p2 = start_app(work, "inventory", "v2")
        procs.append(v2)
        orders = start_sidecar(work, "orders", 1, ROUTED.format(v1=p1, v2=p2))
        procs.append(orders)
        authz = start_sidecar(work, "inventory", p1, DENY_ADMIN, name="inv-authz")
        procs.append(authz)
        ident = ["--cert", inv_cert, "--key", inv_key, "--ca", str(bundle)]
        strict = start_sidecar(work, "inventory", p1, STRICT, *ident, name="inv-strict")
        procs.append(strict)
        client = ssl.create_default_context(cafile=str(bundle))
        client.check_hostname = False  # a workload certificate names a SPIFFE ID, no DNS name
        client.load_cert_chain(cl_cert, cl_key)
        yield {"orders": orders, "authz": authz, "strict": strict, "client_tls": client}
    finally:
        for p in reversed(procs):
            p.stop()


def _explain(sidecar, **query: str) -> dict:
    status, body = sidecar.admin_get("/explain?" + urllib.parse.urlencode(query))
    assert status == 200, body
    return json.loads(body)


def _request(port: int, target: str, headers: str = "", tls: ssl.SSLContext | None = None) -> bytes:
    """One HTTP/1.1 request on a new connection; everything the sidecar sent back ("" when
    it reset or closed the connection without an answer)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    s = tls.wrap_socket(raw) if tls is not None else raw
    out = b""
    try:
        s.sendall(
            f"GET {target} HTTP/1.1\r\nHost: inventory\r\n{headers}Connection: close\r\n\r\n".encode()
        )
        while chunk := s.recv(65536):
            out += chunk
    except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
        pass
    finally:
        s.close()
    return out


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _body(answer: bytes) -> dict:
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])


def test_a_header_matched_route_is_explained_as_it_is_routed(mesh):
    orders = mesh["orders"]
    for tenant, rule, subset in (("blue", "blue-tenant", "v2"), ("", "default", "v1")):
        query = {"host": "inventory", "path": "/items"}
        header = ""
        if tenant:
            query["h.x-tenant"] = tenant
            header = f"x-tenant: {tenant}\r\n"
        data = _explain(orders, **query)
        assert data["route"]["name"] == rule
        (dest,) = data["destinations"]
        assert (dest["subset"], dest["share"]) == (subset, 1.0)
        assert "decision" not in dest and "retries" in dest["policy"]
        answer = _request(orders.outbound, "/items", header)
        assert _status(answer) == 200, answer
        assert _body(answer)["version"] == subset
        (endpoint,) = dest["endpoints"]
        assert endpoint["labels"]["version"] == subset


def test_an_inbound_request_an_authorization_policy_denies(mesh):
    authz = mesh["authz"]
    denied = _explain(authz, direction="inbound", path="/admin/users")
    assert denied["decision"].startswith("403 RBAC")
    assert denied["authorization"]["allowed"] is False
    assert denied["authorization"]["policy"] == "default/no-admin"
    assert _status(_request(authz.inbound, "/admin/users")) == 403
    # a path that normalises into the denied one is denied on both sides as well
    sneaky = _explain(authz, direction="inbound", path="/public/../admin")
    assert sneaky["normalized_path"] == "/admin" and sneaky["decision"].startswith("403 RBAC")
    assert _status(_request(authz.inbound, "/public/../admin")) == 403
    allowed = _explain(authz, direction="inbound", path="/items")
    assert allowed["decision"].startswith("forward to 127.0.0.1:")
    assert _status(_request(authz.inbound, "/items")) == 200


def test_peer_authentication_strict_refuses_a_caller_without_mtls(mesh):
    strict = mesh["strict"]
    plain = _explain(strict, direction="inbound", path="/items")
    assert plain["mtls_mode"] == "STRICT"
    assert plain["peer_authentication"] == {"mode": "STRICT", "enforced": True, "allowed": False}
    assert plain["decision"].startswith("refused: PeerAuthentication STRICT")
    assert _request(strict.inbound, "/items") == b""  # reset at accept, no HTTP answer
    # the same request over mTLS with a workload certificate is served, on both sides
    mutual = _explain(strict, direction="inbound", path="/items", principal=ORDERS_ID)
    assert mutual["peer_authentication"]["allowed"] is True
    assert mutual["decision"].startswith("forward to")
    answer = _request(strict.inbound, "/items", tls=mesh["client_tls"])
    assert _status(answer) == 200, answer
    assert _body(answer)["headers"]["x-forwarded-client-cert"].endswith("URI=" + ORDERS_ID)
