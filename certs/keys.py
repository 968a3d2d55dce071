"""Key material: ECDSA P-256 generation, PEM in and out, private files written atomically."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PublicKeyTypes,
)

PrivateKey = CertificateIssuerPrivateKeyTypes


def generate_private_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 key (Linkerd's choice; cheaper than RSA in Python's ssl)."""
    return ec.generate_private_key(ec.SECP256R1())


def private_key_to_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(pem: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"unsupported private key type {type(key).__name__}")
    return key


def public_key_to_pem(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def spki_sha256(key: PublicKeyTypes) -> str:
    """sha256 of the DER SubjectPublicKeyInfo, lowercase hex (kubeadm's CA pin)."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def cert_fingerprint(cert: x509.Certificate) -> str:
    """sha256 of the DER certificate, lowercase hex."""
    return cert.fingerprint(hashes.SHA256()).hex()


def load_certificates(pem: bytes) -> list[x509.Certificate]:
    """Every certificate in a PEM blob, in order; raise if there is none."""
    certs = x509.load_pem_x509_certificates(pem)
    if not certs:
        raise ValueError("no certificate in PEM data")
    return certs


def certificates_to_pem(certs: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def same_public_key(a: PublicKeyTypes, b: PublicKeyTypes) -> bool:
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    return a.public_bytes(serialization.Encoding.DER, fmt) == b.public_bytes(
        serialization.Encoding.DER, fmt
    )


def write_file_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so readers see the old or the new file, never a torn one.

    The temporary file gets ``mode`` before any byte is written, so a private key is never
    readable by others, not even for a moment.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_private_file(path: str | os.PathLike[str], data: bytes) -> None:
    """Atomically write a file holding a key or a secret, mode 0600."""
    write_file_atomic(path, data, 0o600)


def make_private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents) if needed and make it 0700."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    os.chmod(p, 0o700)
    return p
