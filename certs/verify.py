"""Verifying X.509-SVIDs: RFC 5280 path validation against a trust bundle (cryptography's
verifier) plus the SPIFFE validator checklist, and reading the SPIFFE ID out of a certificate."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from certs import keys
from certs.spiffe import InvalidSpiffeId, SpiffeId

#: A leaf chain never needs more than root → intermediate → leaf (plus some headroom).
MAX_CHAIN_DEPTH = 4


class InvalidSvid(ValueError):
    """A certificate that is not a valid X.509-SVID, or whose chain does not verify."""


def _uri_sans(san: x509.SubjectAlternativeName) -> list[str]:
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def spiffe_id_from_cert(cert: x509.Certificate) -> SpiffeId:
    """The SPIFFE ID of a leaf SVID, after the leaf checks of X509-SVID §5.2.

    Rejects: more or fewer than one URI SAN, a non-``spiffe`` URI, an ID without a path, a CA
    certificate, and a leaf allowed to sign certificates or CRLs.
    """
    exts = cert.extensions
    try:
        san = exts.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise InvalidSvid("certificate has no subjectAltName") from None
    uris = _uri_sans(san)
    if len(uris) != 1:
        raise InvalidSvid(f"an SVID has exactly one URI SAN, this one has {len(uris)}")
    try:
        sid = SpiffeId.parse(uris[0])
    except InvalidSpiffeId as exc:
        raise InvalidSvid(f"URI SAN is not a SPIFFE ID: {exc}") from None
    if sid.is_root:
        raise InvalidSvid("a leaf SPIFFE ID must have a path")
    try:
        if exts.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise InvalidSvid("a CA certificate cannot be used as a workload SVID")
    except x509.ExtensionNotFound:
        pass
    try:
        ku = exts.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise InvalidSvid("an SVID must carry keyUsage") from None
    if not ku.digital_signature:
        raise InvalidSvid("an SVID's keyUsage must include digitalSignature")
    if ku.key_cert_sign or ku.crl_sign:
        raise InvalidSvid("an SVID must not have keyCertSign or cRLSign")
    return sid


def spiffe_id_from_der(der: bytes) -> SpiffeId:
    """The SPIFFE ID of a DER leaf certificate (as ``getpeercert(binary_form=True)`` gives)."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise InvalidSvid(f"not a DER certificate: {exc}") from None
    return spiffe_id_from_cert(cert)


def _check_key_usage(policy: object, cert: x509.Certificate, ku: x509.KeyUsage | None) -> None:
    assert ku is not None
    if not ku.digital_signature:
        raise ValueError("keyUsage lacks digitalSignature")
    if ku.key_cert_sign or ku.crl_sign:
        raise ValueError("keyUsage has keyCertSign or cRLSign")


def _check_san(
    policy: object, cert: x509.Certificate, san: x509.SubjectAlternativeName | None
) -> None:
    assert san is not None
    if len(_uri_sans(san)) != 1:
        raise ValueError("an SVID has exactly one URI SAN")


def _ee_policy() -> ExtensionPolicy:
    # WebPKI's leaf rules (cA must not be asserted, ...) plus the SVID ones. keyUsage must be
    # present and critical; SAN criticality is not enforced because an SVID with a non-empty
    # subject may carry a non-critical SAN.
    return (
        ExtensionPolicy.webpki_defaults_ee()
        .require_present(x509.KeyUsage, Criticality.CRITICAL, _check_key_usage)
        .require_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, _check_san)
    )


def _as_certs(data: bytes | Sequence[x509.Certificate]) -> list[x509.Certificate]:
    if isinstance(data, bytes | str):
        raw = data.encode() if isinstance(data, str) else data
        try:
            return keys.load_certificates(raw)
        except ValueError as exc:
            raise InvalidSvid(str(exc)) from None
    return list(data)


def verify_svid(
    chain: bytes | Sequence[x509.Certificate],
    bundle: bytes | Sequence[x509.Certificate],
    *,
    trust_domain: str | None = None,
    at: dt.datetime | None = None,
) -> SpiffeId:
    """Verify a leaf chain (leaf first, then intermediates) against the bundle's roots.

    Path validation (signatures, validity periods at ``at`` or now, CA constraints, EKU
    clientAuth) is done by ``cryptography.x509.verification``; the SVID checks on top. If
    ``trust_domain`` is given, the ID must belong to it (the bundle is that domain's).
    Returns the leaf's SPIFFE ID or raises :class:`InvalidSvid`.
    """
    certs = _as_certs(chain)
    roots = _as_certs(bundle)
    if not roots:
        raise InvalidSvid("the trust bundle is empty")
    leaf, intermediates = certs[0], certs[1:]
    sid = spiffe_id_from_cert(leaf)
    if trust_domain is not None and not sid.member_of(trust_domain):
        raise InvalidSvid(f"{sid} is not in trust domain {trust_domain}")
    builder = (
        PolicyBuilder()
        .store(Store(roots))
        .time(at or dt.datetime.now(dt.UTC))
        .max_chain_depth(MAX_CHAIN_DEPTH)
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=_ee_policy())
    )
    try:
        # The client verifier checks the chain without demanding a DNS name: SVIDs have none.
        builder.build_client_verifier().verify(leaf, intermediates)
    except VerificationError as exc:
        raise InvalidSvid(f"chain does not verify: {exc}") from None
    return sid
