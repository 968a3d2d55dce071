"""The CA: X.509-SVID profile (checked with cryptography and openssl), TTL rules, storage,
plugged-in intermediates and additive root rotation."""

from __future__ import annotations

import datetime as dt
import os
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs import keys
from certs.authority import (
    CLOCK_SKEW_GRACE,
    MAX_LEAF_TTL,
    CAError,
    CertificateAuthority,
)
from certs.csr import build_csr
from certs.spiffe import SpiffeId
from certs.verify import InvalidSvid, verify_svid

TD = "cluster.local"
ORDERS = SpiffeId.for_workload(TD, "default", "orders")


def _leaf(pem: bytes) -> x509.Certificate:
    return keys.load_certificates(pem)[0]


def _sign(ca, sid=ORDERS, ttl=600, csr_sid=None):
    key = keys.generate_private_key()
    return ca.sign(build_csr(key, csr_sid or sid), sid, ttl), key


def test_leaf_profile(ca):
    now = dt.datetime.now(dt.UTC)
    chain, key = _sign(ca)
    leaf = _leaf(chain)
    ext = leaf.extensions
    san = ext.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical  # the subject is empty
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [str(ORDERS)]
    assert len(list(san.value)) == 1
    assert leaf.subject == x509.Name([])
    bc = ext.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca is False
    ku = ext.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature
    assert not ku.value.key_cert_sign and not ku.value.crl_sign
    assert not ku.value.key_encipherment  # ECDSA key: nothing to encipher
    eku = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    ski = ext.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    root_ski = ca.signing_root().extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert aki.key_identifier == root_ski.value.digest
    # Backdated by the skew allowance (2 min), no more.
    backdate = (now - leaf.not_valid_before_utc).total_seconds()
    assert CLOCK_SKEW_GRACE - 5 <= backdate <= CLOCK_SKEW_GRACE + 1
    lifetime = (leaf.not_valid_after_utc - now).total_seconds()
    assert 595 <= lifetime <= 601
    assert 0 < leaf.serial_number < 2**128
    assert isinstance(leaf.signature_hash_algorithm, hashes.SHA256)
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)


def test_leaf_profile_with_openssl(ca, tmp_path):
    chain, _ = _sign(ca)
    path = tmp_path / "leaf.pem"
    path.write_bytes(chain)
    text = subprocess.run(
        ["openssl", "x509", "-in", str(path), "-noout", "-text"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    lines = [line.strip() for line in text.splitlines()]
    assert "X509v3 Subject Alternative Name: critical" in lines
    san_line = lines[lines.index("X509v3 Subject Alternative Name: critical") + 1]
    assert san_line == f"URI:{ORDERS}"
    assert lines[lines.index("X509v3 Basic Constraints: critical") + 1] == "CA:FALSE"
    assert lines[lines.index("X509v3 Key Usage: critical") + 1] == "Digital Signature"
    eku = lines[lines.index("X509v3 Extended Key Usage:") + 1]
    assert eku == "TLS Web Server Authentication, TLS Web Client Authentication"
    assert "X509v3 Subject Key Identifier:" in lines
    assert "X509v3 Authority Key Identifier:" in lines
    # openssl agrees the chain verifies for both TLS purposes.
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(ca.bundle_pem())
    for purpose in ("sslclient", "sslserver"):
        out = subprocess.run(
            [
                "openssl",
                "verify",
                "-x509_strict",
                "-purpose",
                purpose,
                "-CAfile",
                str(bundle),
                str(path),
            ],
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stdout + out.stderr


def test_root_profile(ca):
    root = ca.signing_root()
    assert ca.is_self_signed
    bc = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = root.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature
    life = root.not_valid_after_utc - root.not_valid_before_utc
    assert dt.timedelta(days=3649) < life < dt.timedelta(days=3651)
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)
    assert root.public_key().curve.name == "secp256r1"


def test_ca_ignores_csr_identity(ca):
    chain, _ = _sign(ca, sid=ORDERS, csr_sid=SpiffeId.for_workload(TD, "kube-system", "admin"))
    assert verify_svid(chain, ca.bundle_pem()) == ORDERS


def test_ttl_rules(ca):
    chain, _ = _sign(ca, ttl=0)
    leaf = _leaf(chain)
    life = (leaf.not_valid_after_utc - leaf.not_valid_before_utc).total_seconds()
    assert life == pytest.approx(24 * 3600 + CLOCK_SKEW_GRACE, abs=2)
    with pytest.raises(CAError, match="exceeds"):
        _sign(ca, ttl=MAX_LEAF_TTL + 1)


def test_leaf_never_outlives_signer(tmp_path):
    ca = CertificateAuthority.create_self_signed(tmp_path, TD, root_ttl_seconds=3600)
    leaf = _leaf(_sign(ca, ttl=86400)[0])
    assert leaf.not_valid_after_utc == ca.signing_root().not_valid_after_utc


def test_expired_signer_refuses(tmp_path):
    t = [1_000_000_000.0]
    ca = CertificateAuthority.create_self_signed(
        tmp_path, TD, clock=lambda: t[0], root_ttl_seconds=100
    )
    t[0] += 200
    with pytest.raises(CAError, match="expired"):
        _sign(ca)


def test_sign_refuses_foreign_trust_domain_and_root_ids(ca):
    with pytest.raises(CAError, match="trust domain"):
        _sign(ca, sid=SpiffeId.for_workload("other.org", "default", "x"))
    with pytest.raises(CAError, match="path"):
        _sign(ca, sid=SpiffeId.for_trust_domain(TD))


def test_serials_are_random_and_distinct(ca):
    serials = {_leaf(_sign(ca)[0]).serial_number for _ in range(20)}
    assert len(serials) == 20
    assert max(serials).bit_length() > 100  # not a counter


def test_storage_modes_and_reload(tmp_path):
    ca = CertificateAuthority.load_or_create(tmp_path, TD)
    ca_dir = tmp_path / "ca"
    assert (os.stat(ca_dir).st_mode & 0o777) == 0o700
    assert (os.stat(ca_dir / "signer-key.pem").st_mode & 0o777) == 0o600
    again = CertificateAuthority.load_or_create(tmp_path, TD)
    assert again.root_fingerprints() == ca.root_fingerprints()
    assert again.root_pin() == ca.root_pin()
    chain, _ = _sign(again)
    assert verify_svid(chain, ca.bundle_pem()) == ORDERS


def test_root_rotation_is_additive(ca, tmp_path):
    old_fp = ca.root_fingerprints()[0]
    old_leaf, _ = _sign(ca)
    old_pin = ca.root_pin()
    new_fp = ca.rotate_root()
    assert ca.root_fingerprints() == [old_fp, new_fp]
    assert ca.root_pin() != old_pin
    new_leaf, _ = _sign(ca)
    assert _leaf(new_leaf).issuer != _leaf(old_leaf).issuer
    bundle = ca.bundle_pem()
    # Both generations verify against the bundle holding both roots ...
    assert verify_svid(old_leaf, bundle) == ORDERS
    assert verify_svid(new_leaf, bundle) == ORDERS
    # ... and the rotation survives a restart.
    reloaded = CertificateAuthority.load(tmp_path / "cp", TD)
    assert reloaded.root_fingerprints() == [old_fp, new_fp]
    # The active root cannot be retired; the old one can, and then its leaves fail.
    with pytest.raises(CAError, match="currently signs"):
        ca.retire_root(new_fp)
    ca.retire_root(old_fp)
    assert ca.root_fingerprints() == [new_fp]
    with pytest.raises(InvalidSvid):
        verify_svid(old_leaf, ca.bundle_pem())
    assert verify_svid(new_leaf, ca.bundle_pem()) == ORDERS
    with pytest.raises(CAError, match="no root"):
        ca.retire_root(old_fp)


def _plugged_files():
    """A user's offline root and an intermediate under it (pathlen 0), built by hand."""
    now = dt.datetime.now(dt.UTC)
    root_key = ec.generate_private_key(ec.SECP384R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Example Root")])
    root_ski = x509.SubjectKeyIdentifier.from_public_key(root_key.public_key())
    ca_ku = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
    root = (
        x509.CertificateBuilder()
        .subject_name(root_name)
        .issuer_name(root_name)
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(ca_ku, critical=True)
        .add_extension(root_ski, critical=False)
        .sign(root_key, hashes.SHA384())
    )
    int_key = keys.generate_private_key()
    int_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Example Mesh Intermediate")])
    inter = (
        x509.CertificateBuilder()
        .subject_name(int_name)
        .issuer_name(root_name)
        .public_key(int_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(ca_ku, critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(int_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_ski),
            critical=False,
        )
        .sign(root_key, hashes.SHA384())
    )
    return root, inter, int_key


def test_plugged_in_intermediate(tmp_path):
    root, inter, int_key = _plugged_files()
    ca = CertificateAuthority.import_plugged(
        tmp_path,
        ca_cert=keys.certificates_to_pem([inter]),
        ca_key=keys.private_key_to_pem(int_key),
        root_cert=keys.certificates_to_pem([root]),
        cert_chain=keys.certificates_to_pem([inter, root]),
        trust_domain=TD,
    )
    assert not ca.is_self_signed
    assert ca.root_fingerprints() == [keys.cert_fingerprint(root)]
    assert ca.root_pin() == keys.spki_sha256(root.public_key())
    chain, _ = _sign(ca)
    certs = keys.load_certificates(chain)
    assert [c.subject for c in certs] == [x509.Name([]), inter.subject]  # leaf + intermediate
    assert verify_svid(chain, ca.bundle_pem()) == ORDERS
    # Without the intermediate in the chain, the leaf does not verify against the root.
    with pytest.raises(InvalidSvid):
        verify_svid(certs[:1], ca.bundle_pem())
    reloaded = CertificateAuthority.load(tmp_path, TD)
    assert verify_svid(_sign(reloaded)[0], reloaded.bundle_pem()) == ORDERS
    with pytest.raises(CAError, match="self-signed"):
        ca.rotate_root()


def test_mismatched_key_is_refused(tmp_path):
    root, inter, _ = _plugged_files()
    with pytest.raises(CAError, match="does not match"):
        CertificateAuthority.import_plugged(
            tmp_path,
            ca_cert=keys.certificates_to_pem([inter]),
            ca_key=keys.private_key_to_pem(keys.generate_private_key()),
            root_cert=keys.certificates_to_pem([root]),
        )


def test_serving_certificate_has_dns_and_ip(ca):
    import ipaddress

    key = keys.generate_private_key()
    cp = SpiffeId.for_control_plane(TD)
    leaf = _leaf(
        ca.sign_serving(key.public_key(), ["localhost", "127.0.0.1", "cp.example"], 60, cp)
    )
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "cp.example"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [str(cp)]


def test_two_phase_rotation(ca, tmp_path):
    old_fp = ca.root_fingerprints()[0]
    gen = ca.generation
    new_fp = ca.rotate_root(activate=False)
    assert ca.generation > gen
    assert ca.root_fingerprints() == [old_fp, new_fp]
    assert keys.cert_fingerprint(ca.signing_root()) == old_fp  # still signing with the old
    assert keys.cert_fingerprint(ca.pending_root()) == new_fp
    assert (os.stat(tmp_path / "cp" / "ca" / "pending-root-key.pem").st_mode & 0o777) == 0o600
    with pytest.raises(CAError, match="pending"):
        ca.retire_root(new_fp)
    with pytest.raises(CAError, match="already pending"):
        ca.rotate_root(activate=False)
    # The pending key survives a restart.
    reloaded = CertificateAuthority.load(tmp_path / "cp", TD)
    assert keys.cert_fingerprint(reloaded.pending_root()) == new_fp
    assert reloaded.activate_root() == new_fp
    assert keys.cert_fingerprint(reloaded.signing_root()) == new_fp
    assert reloaded.pending_root() is None
    assert not (tmp_path / "cp" / "ca" / "pending-root-key.pem").exists()
    leaf = _leaf(_sign(reloaded)[0])
    assert leaf.issuer == reloaded.signing_root().subject
    with pytest.raises(CAError, match="no pending"):
        reloaded.activate_root()
