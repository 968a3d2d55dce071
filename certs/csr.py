"""Certificate signing requests: the sidecar builds one, the CA checks it.

A CSR contributes only its public key. The CA takes the identity from the caller's
authentication and ignores whatever subject or SANs the CSR asks for (Istio's rule).
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from certs.keys import PrivateKey
from certs.spiffe import SpiffeId

MAX_CSR_BYTES = 16 * 1024
MIN_RSA_BITS = 2048
ACCEPTED_CURVES = (ec.SECP256R1, ec.SECP384R1)


class InvalidCsr(ValueError):
    """A CSR the CA will not sign; the message says why."""


def build_csr(key: PrivateKey, identity: SpiffeId) -> bytes:
    """A PEM CSR for ``key`` carrying ``identity`` as its one URI SAN (informational only)."""
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(identity))]),
            critical=True,
        )
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def check_public_key(key: CertificatePublicKeyTypes) -> None:
    """Accept ECDSA P-256/P-384 and RSA >= 2048 bits; raise :class:`InvalidCsr` otherwise."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ACCEPTED_CURVES):
            raise InvalidCsr(f"curve {key.curve.name} is not accepted (use P-256)")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise InvalidCsr(
                f"RSA key of {key.key_size} bits is too small (minimum {MIN_RSA_BITS})"
            )
    else:
        raise InvalidCsr(f"key type {type(key).__name__} is not accepted (use ECDSA P-256)")


def check_csr(csr_pem: bytes | str) -> x509.CertificateSigningRequest:
    """Parse a PEM CSR and check its self-signature and key; return it or raise InvalidCsr."""
    if isinstance(csr_pem, str):
        csr_pem = csr_pem.encode()
    if len(csr_pem) > MAX_CSR_BYTES:
        raise InvalidCsr("CSR is too large")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise InvalidCsr(f"not a PEM CSR: {exc}") from None
    try:
        valid = csr.is_signature_valid
    except Exception as exc:  # unsupported algorithms raise from the backend
        raise InvalidCsr(f"cannot check CSR signature: {exc}") from None
    if not valid:
        raise InvalidCsr("CSR signature is invalid")
    check_public_key(csr.public_key())
    return csr
