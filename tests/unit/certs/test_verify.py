"""SVID validation: the X509-SVID §5.2 checklist on top of RFC 5280 path validation."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certs import keys
from certs.authority import CertificateAuthority
from certs.spiffe import SpiffeId
from certs.verify import InvalidSvid, spiffe_id_from_cert, spiffe_id_from_der, verify_svid

TD = "cluster.local"


def _custom(ca: CertificateAuthority, sans, ttl=600) -> bytes:
    # The CA's internal issuer lets the tests mint leaves the public API refuses to make.
    key = keys.generate_private_key()
    return ca._issue(key.public_key(), sans, ttl, 10**9)


def test_valid_leaf(ca, issue):
    chain, _ = issue("orders")
    sid = verify_svid(chain, ca.bundle_pem(), trust_domain=TD)
    assert sid == SpiffeId.for_workload(TD, "default", "orders")
    der = keys.load_certificates(chain)[0].public_bytes(serialization.Encoding.DER)
    assert spiffe_id_from_der(der) == sid


def test_two_uri_sans_rejected(ca):
    chain = _custom(
        ca,
        [
            x509.UniformResourceIdentifier("spiffe://cluster.local/ns/a/sa/b"),
            x509.UniformResourceIdentifier("spiffe://cluster.local/ns/a/sa/c"),
        ],
    )
    with pytest.raises(InvalidSvid, match="exactly one URI SAN"):
        verify_svid(chain, ca.bundle_pem())
    with pytest.raises(InvalidSvid):
        spiffe_id_from_cert(keys.load_certificates(chain)[0])


def test_no_uri_san_rejected(ca):
    chain = _custom(ca, [x509.DNSName("orders.default.svc")])
    with pytest.raises(InvalidSvid, match="has 0"):
        verify_svid(chain, ca.bundle_pem())


def test_dns_san_besides_the_uri_is_fine(ca):
    chain = _custom(
        ca,
        [x509.UniformResourceIdentifier("spiffe://cluster.local/ns/a/sa/b"), x509.DNSName("b")],
    )
    assert verify_svid(chain, ca.bundle_pem()).service_account == "b"


@pytest.mark.parametrize(
    ("uri", "match"),
    [
        ("https://cluster.local/ns/a/sa/b", "not a SPIFFE ID"),
        ("spiffe://cluster.local", "path"),
        ("spiffe://cluster.local/a//b", "not a SPIFFE ID"),
    ],
)
def test_bad_ids_rejected(ca, uri, match):
    chain = _custom(ca, [x509.UniformResourceIdentifier(uri)])
    with pytest.raises(InvalidSvid, match=match):
        verify_svid(chain, ca.bundle_pem())


def test_ca_certificate_as_leaf_rejected(ca):
    with pytest.raises(InvalidSvid):
        verify_svid([ca.signing_root()], ca.bundle_pem())


def test_wrong_trust_domain_rejected(ca, issue):
    chain, _ = issue()
    with pytest.raises(InvalidSvid, match="trust domain"):
        verify_svid(chain, ca.bundle_pem(), trust_domain="example.org")


def test_untrusted_root_rejected(ca, issue, tmp_path):
    chain, _ = issue()
    other = CertificateAuthority.create_self_signed(tmp_path / "other", TD)
    with pytest.raises(InvalidSvid, match="does not verify"):
        verify_svid(chain, other.bundle_pem())


def test_expired_and_not_yet_valid_rejected(ca, issue):
    chain, _ = issue(ttl=60)
    now = dt.datetime.now(dt.UTC)
    assert verify_svid(chain, ca.bundle_pem(), at=now)
    with pytest.raises(InvalidSvid, match="does not verify"):
        verify_svid(chain, ca.bundle_pem(), at=now + dt.timedelta(seconds=120))
    with pytest.raises(InvalidSvid, match="does not verify"):
        verify_svid(chain, ca.bundle_pem(), at=now - dt.timedelta(seconds=300))


def test_empty_bundle_and_garbage(ca, issue):
    chain, _ = issue()
    with pytest.raises(InvalidSvid):
        verify_svid(chain, [])
    with pytest.raises(InvalidSvid):
        verify_svid(b"not pem", ca.bundle_pem())
    with pytest.raises(InvalidSvid):
        spiffe_id_from_der(b"\x30\x03\x02\x01\x00")
