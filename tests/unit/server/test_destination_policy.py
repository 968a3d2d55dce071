"""What a DestinationRule's trafficPolicy compiles to and how the runtime dials with it:
connectionPool thresholds (Istio's unlimited defaults), ``tls`` per cluster (DR level, port
level, subset, subset port level, in Istio's order), and SSL contexts built once per config."""

from __future__ import annotations

import pytest

from certs import keys
from certs.authority import CertificateAuthority
from control_plane.api.resources import load_text
from proxy.routes.compile import compile_table
from proxy.routes.table import UNLIMITED, PoolSettings
from proxy.server.origination import OriginationError
from proxy.server.runtime import Runtime

SE = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: inventory}
spec:
  hosts: [inventory]
  ports: [{number: 80, name: http}, {number: 90, name: admin}]
  resolution: STATIC
  endpoints:
  - {address: 127.0.0.1, ports: {http: 9, admin: 10}, labels: {version: v1}, serviceAccount: inv}
---
"""


def _clusters(text: str, registry=()):
    table = compile_table(load_text(SE + text), list(registry), "default", {}, "1")
    return {(c.port, c.subset): c for c in table.clusters.values() if c.endpoints}


def test_connection_pool_thresholds_default_to_no_limit():
    c = _clusters("")[(80, "")]
    assert (c.max_connections, c.max_pending, c.max_requests, c.max_retries) == (UNLIMITED,) * 4
    assert c.pool_settings == PoolSettings()


def test_connection_pool_thresholds_compile():
    c = _clusters(
        """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: inventory}
spec:
  host: inventory
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 3}
      http: {http1MaxPendingRequests: 4, http2MaxRequests: 5, maxRetries: 6,
             maxRequestsPerConnection: 7, maxConcurrentStreams: 8}
"""
    )[(80, "")]
    assert (c.max_connections, c.max_pending, c.max_requests, c.max_retries) == (3, 4, 5, 6)
    assert c.pool_settings == PoolSettings(55.0, 7, 3, 4, 5, 8, 0.0, ())


LAYERS = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: inventory}
spec:
  host: inventory
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
    portLevelSettings:
    - port: {number: 90}
      tls: {mode: DISABLE}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy:
      tls: {mode: SIMPLE, sni: inv.example}
      portLevelSettings:
      - port: {number: 90}
        tls: {mode: MUTUAL, clientCertificate: /c.pem, privateKey: /k.pem}
"""


def test_tls_per_port_and_subset_in_istio_order():
    cs = _clusters(LAYERS)
    whole80, whole90 = cs[(80, "")], cs[(90, "")]
    assert whole80.tls_mode == "ISTIO_MUTUAL" and whole80.endpoints[0].tls
    assert whole80.origination.mode == "ISTIO_MUTUAL"
    assert whole90.tls_mode == "DISABLE" and not whole90.endpoints[0].tls
    assert whole90.origination is None
    v1_80, v1_90 = cs[(80, "v1")], cs[(90, "v1")]
    assert v1_80.origination.mode == "SIMPLE" and v1_80.origination.sni == "inv.example"
    assert not v1_80.endpoints[0].tls  # TLS from the rule's files, not mesh mTLS
    assert v1_90.origination.mode == "MUTUAL"
    assert v1_90.origination.client_certificate == "/c.pem"
    assert v1_90.origination.source == "default/inventory"


def test_disable_turns_off_mtls_to_a_mesh_endpoint():
    reg = [{"service": "inventory", "address": "127.0.0.1:15006", "spiffe_id": "spiffe://x"}]
    dr = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: inventory}
spec: {host: inventory, trafficPolicy: {tls: {mode: DISABLE}}}
"""
    auto = [ep for ep in _clusters("", reg)[(80, "")].endpoints if ep.key.endswith("15006")]
    assert auto[0].tls
    off = [ep for ep in _clusters(dr, reg)[(80, "")].endpoints if ep.key.endswith("15006")]
    assert not off[0].tls


def _dr(tls: str) -> str:
    return f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: inventory}}
spec: {{host: inventory, trafficPolicy: {{tls: {tls}}}}}
"""


async def test_contexts_are_built_once_per_config_and_pools_dial_with_them(tmp_path):
    ca = CertificateAuthority.create_self_signed(tmp_path / "ca", "cluster.local")
    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(ca.bundle_pem())
    rt = Runtime("orders", "default", "v1", {"app": "orders"}, 8080)
    text = SE + _dr(f"{{mode: SIMPLE, caCertificates: {bundle}, subjectAltNames: [a.example]}}")
    rt.swap(compile_table(load_text(text), [], "default", {}, "1"))
    (ctxs,) = rt.origination.values()
    cluster = rt.table.clusters["outbound|80||inventory.default.svc.cluster.local"]
    pool = rt.pool(cluster.endpoints[0], cluster)
    assert pool.ssl() is ctxs.h1 and pool.server_hostname == "inventory.default.svc.cluster.local"
    assert pool.verify_peer is not None  # subjectAltNames are checked per new connection
    h2 = rt.pool(cluster.endpoints[0], cluster, h2=True)
    assert h2.ssl() is ctxs.h2
    # the same setting in the next config: the same contexts, not read again
    rt.swap(compile_table(load_text(text), [], "default", {}, "2"))
    assert next(iter(rt.origination.values())) is ctxs
    # ... unless the file was replaced meanwhile (a rotated CA): read again
    ca2 = CertificateAuthority.create_self_signed(tmp_path / "ca2", "cluster.local")
    bundle.write_bytes(ca.bundle_pem() + ca2.bundle_pem())
    rt.swap(compile_table(load_text(text), [], "default", {}, "3"))
    (fresh,) = rt.origination.values()
    assert fresh is not ctxs
    assert pool.ssl() is fresh.h1 and h2.ssl() is fresh.h2  # the pools' next connections
    rt.close()


async def test_unreadable_files_reject_the_config_before_anything_changes(tmp_path):
    rt = Runtime("orders", "default", "v1", {"app": "orders"}, 8080)
    rt.swap(compile_table(load_text(SE + _dr("{mode: ISTIO_MUTUAL}")), [], "default", {}, "1"))
    missing = tmp_path / "nope.pem"
    bad = SE + _dr(f"{{mode: MUTUAL, clientCertificate: {missing}, privateKey: {missing}}}")
    with pytest.raises(
        OriginationError,
        match=f"DestinationRule default/inventory: tls.clientCertificate '{missing}'",
    ):
        rt.swap(compile_table(load_text(bad), [], "default", {}, "2"))
    assert rt.config_version == "1"
    # a key that does not match its certificate
    k1, k2 = keys.generate_private_key(), keys.generate_private_key()
    cert = tmp_path / "c.pem"
    cert.write_bytes(ca_cert(tmp_path, k1))
    key = tmp_path / "k.pem"
    key.write_bytes(keys.private_key_to_pem(k2))
    bad = SE + _dr(f"{{mode: MUTUAL, clientCertificate: {cert}, privateKey: {key}}}")
    with pytest.raises(OriginationError, match="cannot use the certificate files"):
        rt.swap(compile_table(load_text(bad), [], "default", {}, "3"))
    assert rt.config_version == "1"
    rt.close()


def ca_cert(tmp_path, key) -> bytes:
    ca = CertificateAuthority.create_self_signed(tmp_path / "ca2", "cluster.local")
    return ca.sign_serving(key.public_key(), ["x.example"], 3600)


async def test_istio_mutual_without_a_certificate_fails_instead_of_plaintext():
    rt = Runtime("orders", "default", "v1", {"app": "orders"}, 8080)
    rt.swap(compile_table(load_text(SE + _dr("{mode: ISTIO_MUTUAL}")), [], "default", {}, "1"))
    cluster = rt.table.clusters["outbound|80||inventory.default.svc.cluster.local"]
    pool = rt.pool(cluster.endpoints[0], cluster)
    with pytest.raises(ConnectionError, match="no certificate"):
        await pool.acquire(1.0)
    assert pool.active == 0 and pool.open == 0
    rt.close()
