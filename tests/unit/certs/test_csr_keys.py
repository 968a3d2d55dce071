"""CSRs (building, checking) and key files."""

from __future__ import annotations

import hashlib
import os
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certs import keys
from certs.csr import InvalidCsr, build_csr, check_csr
from certs.spiffe import SpiffeId

SID = SpiffeId.for_workload("cluster.local", "default", "orders")


def test_build_csr_carries_one_uri_san():
    key = keys.generate_private_key()
    csr = check_csr(build_csr(key, SID))
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [str(SID)]
    assert keys.same_public_key(csr.public_key(), key.public_key())


def test_tampered_csr_signature_rejected():
    key = keys.generate_private_key()
    der = bytearray(
        x509.load_pem_x509_csr(build_csr(key, SID)).public_bytes(serialization.Encoding.DER)
    )
    der[-5] ^= 0x01  # flip a bit in the signature
    pem = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(InvalidCsr, match="signature"):
        check_csr(pem)


def _csr_for(key) -> bytes:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )


def test_weak_keys_rejected():
    with pytest.raises(InvalidCsr, match="too small"):
        check_csr(_csr_for(rsa.generate_private_key(65537, 1024)))
    with pytest.raises(InvalidCsr, match="curve"):
        check_csr(_csr_for(ec.generate_private_key(ec.SECP521R1())))
    check_csr(_csr_for(rsa.generate_private_key(65537, 2048)))  # accepted
    check_csr(_csr_for(ec.generate_private_key(ec.SECP384R1())))


def test_garbage_and_oversized_rejected():
    with pytest.raises(InvalidCsr, match="not a PEM CSR"):
        check_csr(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")
    with pytest.raises(InvalidCsr, match="too large"):
        check_csr(b"x" * 20000)


def test_key_pem_roundtrip_and_curve():
    key = keys.generate_private_key()
    assert key.curve.name == "secp256r1"
    again = keys.load_private_key(keys.private_key_to_pem(key))
    assert keys.same_public_key(again.public_key(), key.public_key())


def test_private_file_is_0600_and_atomic(tmp_path):
    path = tmp_path / "sub" / "key.pem"
    keys.write_private_file(path, b"one")
    assert (os.stat(path).st_mode & 0o777) == 0o600
    keys.write_private_file(path, b"two")
    assert path.read_bytes() == b"two"
    assert (os.stat(path).st_mode & 0o777) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["key.pem"]  # no temp left behind


def test_spki_pin_matches_openssl(ca, tmp_path):
    # kubeadm's recipe: openssl x509 -pubkey | openssl pkey -pubin -outform der | sha256sum
    root_pem = tmp_path / "root.pem"
    root_pem.write_bytes(ca.bundle_pem())
    pub = subprocess.run(
        ["openssl", "x509", "-in", str(root_pem), "-noout", "-pubkey"],
        check=True,
        capture_output=True,
    ).stdout
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-outform", "der"], input=pub, check=True, capture_output=True
    ).stdout
    assert ca.root_pin() == hashlib.sha256(der).hexdigest()
    fp = subprocess.run(
        ["openssl", "x509", "-in", str(root_pem), "-noout", "-fingerprint", "-sha256"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert ca.root_fingerprints()[0] == fp.split("=", 1)[1].strip().replace(":", "").lower()
