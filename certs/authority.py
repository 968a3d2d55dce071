"""The certificate authority: its root (self-signed or plugged in), signing X.509-SVIDs, the
trust bundle, and additive root rotation.

On-disk layout under ``<data_dir>/ca/`` (keys 0600, directory 0700):

``signer-key.pem``   the key that signs leaves
``signer-cert.pem``  its certificate (the root itself, or a plugged-in intermediate)
``signer-chain.pem`` intermediates between the signer and its root (empty for a self-signed root)
``trust-bundle.pem`` every root currently trusted; during a rotation, the old and the new one
``pending-root-key.pem`` the key of a root added to the bundle but not signing yet (if any)
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs import keys
from certs.csr import check_csr
from certs.keys import PrivateKey
from certs.spiffe import SpiffeId

#: Leaf NotBefore is backdated by this much to absorb clock skew (Istio's ClockSkewGracePeriod).
CLOCK_SKEW_GRACE = 120
DEFAULT_LEAF_TTL = 24 * 3600
MAX_LEAF_TTL = 90 * 24 * 3600
ROOT_TTL = 3650 * 24 * 3600

_SIGNER_KEY = "signer-key.pem"
_SIGNER_CERT = "signer-cert.pem"
_SIGNER_CHAIN = "signer-chain.pem"
_BUNDLE = "trust-bundle.pem"
_PENDING_KEY = "pending-root-key.pem"


class CAError(Exception):
    """The CA cannot do what was asked (bad TTL, expired signer, unknown root...)."""


def random_serial() -> int:
    """A random positive 128-bit serial from ``secrets`` (RFC 5280 allows up to 20 octets)."""
    return secrets.randbits(128) or 1


def _hash_for(key: PrivateKey) -> hashes.SHA256 | hashes.SHA384:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


def _is_self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, Exception):
        return False
    return True


def build_root(
    key: PrivateKey, trust_domain: str, now: float, ttl_seconds: int = ROOT_TTL
) -> x509.Certificate:
    """A self-signed root: CA:true pathlen 0 (it signs leaves directly), keyCertSign + cRLSign."""
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    # The SKI in the CN keeps successive roots' names distinct, so chain building never
    # confuses the old root with the new one during a rotation.
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshlet"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, f"meshlet root CA {ski.digest[:4].hex()}"),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(random_serial())
        .not_valid_before(_utc(now - CLOCK_SKEW_GRACE))
        .not_valid_after(_utc(now + ttl_seconds))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, _hash_for(key))
    )


def _leaf_key_usage(public_key: CertificatePublicKeyTypes) -> x509.KeyUsage:
    # digitalSignature is all an ECDSA key does in TLS (ECDHE + signatures). keyEncipherment only
    # means something for RSA key transport, so it is set for RSA keys only (Istio sets it always).
    # keyAgreement (static ECDH) is never used by TLS 1.2 ECDHE or TLS 1.3, so it is left off.
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


class CertificateAuthority:
    """Signs X.509-SVIDs for the trust domain and owns the trust bundle.

    Build one with :meth:`load_or_create` (self-signed root on first start) or
    :meth:`import_plugged` (a user-supplied root and intermediate, Istio's ``cacerts`` files).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        trust_domain: str,
        signer_key: PrivateKey,
        signer_cert: x509.Certificate,
        signer_chain: Sequence[x509.Certificate],
        roots: Sequence[x509.Certificate],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.trust_domain = SpiffeId.for_trust_domain(trust_domain.lower()).trust_domain
        self._dir = Path(data_dir) / "ca"
        self._key = signer_key
        self._cert = signer_cert
        self._chain = list(signer_chain)
        self._roots = list(roots)
        self._clock = clock
        #: Bumped whenever the signer or the bundle changes, so holders of derived state
        #: (the control plane's serving context) know to rebuild it.
        self.generation = 0
        self._pending_key: PrivateKey | None = None
        if not keys.same_public_key(signer_key.public_key(), signer_cert.public_key()):
            raise CAError("signer key does not match signer certificate")
        if not self._roots:
            raise CAError("trust bundle is empty")
        if self._signing_root() is None:
            raise CAError("no root in the trust bundle issued the signer chain")

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def load_or_create(
        cls,
        data_dir: str | os.PathLike[str],
        trust_domain: str = "cluster.local",
        *,
        clock: Callable[[], float] = time.time,
    ) -> CertificateAuthority:
        """Load the CA from ``data_dir/ca``; create a self-signed root there if there is none."""
        ca_dir = Path(data_dir) / "ca"
        if (ca_dir / _SIGNER_KEY).exists():
            return cls.load(data_dir, trust_domain, clock=clock)
        return cls.create_self_signed(data_dir, trust_domain, clock=clock)

    @classmethod
    def create_self_signed(
        cls,
        data_dir: str | os.PathLike[str],
        trust_domain: str = "cluster.local",
        *,
        clock: Callable[[], float] = time.time,
        root_ttl_seconds: int = ROOT_TTL,
    ) -> CertificateAuthority:
        key = keys.generate_private_key()
        root = build_root(key, trust_domain, clock(), root_ttl_seconds)
        ca = cls(data_dir, trust_domain, key, root, [], [root], clock=clock)
        ca._save()
        return ca

    @classmethod
    def load(
        cls,
        data_dir: str | os.PathLike[str],
        trust_domain: str = "cluster.local",
        *,
        clock: Callable[[], float] = time.time,
    ) -> CertificateAuthority:
        ca_dir = Path(data_dir) / "ca"
        key = keys.load_private_key((ca_dir / _SIGNER_KEY).read_bytes())
        cert = keys.load_certificates((ca_dir / _SIGNER_CERT).read_bytes())[0]
        chain_path = ca_dir / _SIGNER_CHAIN
        chain_pem = chain_path.read_bytes() if chain_path.exists() else b""
        chain = x509.load_pem_x509_certificates(chain_pem) if chain_pem.strip() else []
        roots = keys.load_certificates((ca_dir / _BUNDLE).read_bytes())
        ca = cls(data_dir, trust_domain, key, cert, chain, roots, clock=clock)
        pending = ca_dir / _PENDING_KEY
        if pending.exists():
            ca._pending_key = keys.load_private_key(pending.read_bytes())
        return ca

    @classmethod
    def import_plugged(
        cls,
        data_dir: str | os.PathLike[str],
        *,
        ca_cert: bytes,
        ca_key: bytes,
        root_cert: bytes,
        cert_chain: bytes = b"",
        trust_domain: str = "cluster.local",
        clock: Callable[[], float] = time.time,
    ) -> CertificateAuthority:
        """Use a user-supplied intermediate (``ca_cert`` + ``ca_key``) under ``root_cert``.

        The file contents follow Istio's ``cacerts`` secret: ``ca-cert.pem``, ``ca-key.pem``,
        ``root-cert.pem`` (one or more roots) and ``cert-chain.pem`` (intermediate → root; the
        signer itself and the roots are dropped from it here).
        """
        signer = keys.load_certificates(ca_cert)[0]
        bc = signer.extensions.get_extension_for_class(x509.BasicConstraints).value
        if not bc.ca:
            raise CAError("ca-cert.pem is not a CA certificate")
        roots = keys.load_certificates(root_cert)
        root_fps = {keys.cert_fingerprint(r) for r in roots}
        extra = x509.load_pem_x509_certificates(cert_chain) if cert_chain.strip() else []
        chain = [
            c
            for c in extra
            if keys.cert_fingerprint(c) not in root_fps
            and keys.cert_fingerprint(c) != keys.cert_fingerprint(signer)
        ]
        ca = cls(
            data_dir, trust_domain, keys.load_private_key(ca_key), signer, chain, roots, clock=clock
        )
        ca._save()
        return ca

    def reload(self) -> None:
        """Re-read the CA from its directory, in place: another control-plane replica changed
        it (a rotation step), and everything holding this object (the serving context, the CA
        endpoints, join tokens' pin) must follow without being rebuilt."""
        fresh = type(self).load(self._dir.parent, self.trust_domain, clock=self._clock)
        self._key, self._cert, self._chain = fresh._key, fresh._cert, fresh._chain
        self._roots, self._pending_key = fresh._roots, fresh._pending_key
        self.generation += 1

    def _save(self) -> None:
        keys.make_private_dir(self._dir)
        # Bundle first: a crash mid-rotation then leaves a bundle that already trusts the new
        # root, never a signer whose root is not yet distributed.
        keys.write_file_atomic(self._dir / _BUNDLE, keys.certificates_to_pem(self._roots))
        keys.write_file_atomic(self._dir / _SIGNER_CHAIN, keys.certificates_to_pem(self._chain))
        keys.write_private_file(self._dir / _SIGNER_KEY, keys.private_key_to_pem(self._key))
        keys.write_file_atomic(self._dir / _SIGNER_CERT, keys.certificates_to_pem([self._cert]))

    # -- trust bundle ----------------------------------------------------------------------

    @property
    def is_self_signed(self) -> bool:
        return not self._chain and _is_self_signed(self._cert)

    @property
    def signer_certificate(self) -> x509.Certificate:
        return self._cert

    @property
    def roots(self) -> list[x509.Certificate]:
        return list(self._roots)

    def bundle_pem(self) -> bytes:
        """Every trusted root, PEM, oldest first."""
        return keys.certificates_to_pem(self._roots)

    def root_fingerprints(self) -> list[str]:
        """sha256 of each root's DER, hex, in bundle order."""
        return [keys.cert_fingerprint(r) for r in self._roots]

    def _signing_root(self) -> x509.Certificate | None:
        top = self._chain[-1] if self._chain else self._cert
        for root in self._roots:
            if root.subject != top.issuer:
                continue
            try:
                top.verify_directly_issued_by(root)
            except Exception:
                continue
            return root
        return None

    def signing_root(self) -> x509.Certificate:
        """The root the current signer chains to."""
        root = self._signing_root()
        assert root is not None  # checked in __init__ and after every change
        return root

    def root_pin(self) -> str:
        """sha256 of the signing root's SubjectPublicKeyInfo, hex: what join tokens pin."""
        return keys.spki_sha256(self.signing_root().public_key())

    def rotate_root(self, root_ttl_seconds: int = ROOT_TTL, *, activate: bool = True) -> str:
        """Create a new root and add it to the bundle; the old root stays. Returns the new
        root's fingerprint.

        ``activate=True`` (default) signs with the new root from now on. Safer is two steps,
        the documented pattern (research §1.6): ``rotate_root(activate=False)`` only publishes
        the new root; once every sidecar has fetched the bundle holding both roots,
        :meth:`activate_root` switches signing. A peer that sees a leaf (or a control plane
        serving certificate) from a root it does not hold yet refuses the handshake.

        Only for a self-signed CA: a plugged-in CA is rotated by importing new files.
        """
        if not self.is_self_signed:
            raise CAError("root rotation is for a self-signed CA; import new cacerts instead")
        if self._pending_key is not None:
            raise CAError("a new root is already pending; activate it first")
        key = keys.generate_private_key()
        root = build_root(key, self.trust_domain, self._clock(), root_ttl_seconds)
        self._roots.append(root)
        self._pending_key = key
        keys.write_private_file(self._dir / _PENDING_KEY, keys.private_key_to_pem(key))
        self._save()
        self.generation += 1
        if activate:
            self.activate_root()
        return keys.cert_fingerprint(root)

    def pending_root(self) -> x509.Certificate | None:
        """The root published by ``rotate_root(activate=False)`` and not signing yet."""
        if self._pending_key is None:
            return None
        for root in self._roots:
            if keys.same_public_key(root.public_key(), self._pending_key.public_key()):
                return root
        return None

    def activate_root(self) -> str:
        """Start signing with the pending root; return its fingerprint."""
        root = self.pending_root()
        if root is None or self._pending_key is None:
            raise CAError("no pending root to activate")
        self._key, self._cert, self._chain = self._pending_key, root, []
        self._pending_key = None
        self._save()
        (self._dir / _PENDING_KEY).unlink(missing_ok=True)
        self.generation += 1
        return keys.cert_fingerprint(root)

    def retire_root(self, fingerprint: str) -> None:
        """Drop a root from the bundle. The root the CA signs with cannot be retired."""
        fingerprint = fingerprint.lower().replace(":", "")
        if fingerprint == keys.cert_fingerprint(self.signing_root()):
            raise CAError("cannot retire the root the CA currently signs with")
        pending = self.pending_root()
        if pending is not None and fingerprint == keys.cert_fingerprint(pending):
            raise CAError("cannot retire the pending root; activate it first")
        remaining = [r for r in self._roots if keys.cert_fingerprint(r) != fingerprint]
        if len(remaining) == len(self._roots):
            raise CAError(f"no root with fingerprint {fingerprint} in the bundle")
        self._roots = remaining
        self._save()
        self.generation += 1

    # -- signing ---------------------------------------------------------------------------

    def _validity(self, ttl_seconds: int, max_ttl: int) -> tuple[dt.datetime, dt.datetime]:
        if ttl_seconds <= 0:
            ttl_seconds = DEFAULT_LEAF_TTL
        if ttl_seconds > max_ttl:
            raise CAError(f"requested TTL {ttl_seconds}s exceeds the maximum {max_ttl}s")
        now = self._clock()
        signer_end = self._cert.not_valid_after_utc
        for c in self._chain:
            signer_end = min(signer_end, c.not_valid_after_utc)
        if signer_end.timestamp() <= now:
            raise CAError("the signing certificate has expired")
        not_before = _utc(now - CLOCK_SKEW_GRACE)
        # Never outlive the signer (Istio clamps the same way).
        not_after = min(_utc(now + ttl_seconds), signer_end)
        return not_before, not_after

    def _issue(
        self,
        public_key: CertificatePublicKeyTypes,
        sans: list[x509.GeneralName],
        ttl_seconds: int,
        max_ttl: int,
    ) -> bytes:
        not_before, not_after = self._validity(ttl_seconds, max_ttl)
        signer_ski = self._cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self._cert.subject)
            .public_key(public_key)
            .serial_number(random_serial())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            # The subject is empty, so the SAN must be critical (RFC 5280 §4.1.2.6).
            .add_extension(x509.SubjectAlternativeName(sans), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_leaf_key_usage(public_key), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(signer_ski.value),
                critical=False,
            )
            .sign(self._key, _hash_for(self._key))
        )
        return keys.certificates_to_pem([cert, *self._issuer_chain()])

    def _issuer_chain(self) -> list[x509.Certificate]:
        """What follows a leaf on the wire: the signer (unless it is a root) and the
        intermediates above it. Roots are never sent; peers hold them in the bundle."""
        root_fps = set(self.root_fingerprints())
        return [c for c in [self._cert, *self._chain] if keys.cert_fingerprint(c) not in root_fps]

    def sign(
        self, csr_pem: bytes, identity: SpiffeId, ttl_seconds: int = DEFAULT_LEAF_TTL
    ) -> bytes:
        """Issue an X.509-SVID for ``identity`` over the CSR's public key.

        The CSR's requested subject and SANs are ignored: the caller has authenticated
        ``identity``. Returns PEM: the leaf first, then the intermediates up to (not including)
        the root. ``ttl_seconds <= 0`` means 24 h; above 90 days is refused.
        """
        if identity.is_root:
            raise CAError("a workload SPIFFE ID needs a path")
        if identity.trust_domain != self.trust_domain:
            raise CAError(f"{identity} is not in trust domain {self.trust_domain}")
        csr = check_csr(csr_pem)
        return self._issue(
            csr.public_key(),
            [x509.UniformResourceIdentifier(str(identity))],
            ttl_seconds,
            MAX_LEAF_TTL,
        )

    def sign_serving(
        self,
        public_key: CertificatePublicKeyTypes,
        hosts: Iterable[str],
        ttl_seconds: int,
        identity: SpiffeId | None = None,
    ) -> bytes:
        """A server certificate for the control plane itself: DNS/IP SANs for ``hosts`` and,
        optionally, a SPIFFE ID. Same profile as a workload leaf otherwise."""
        sans: list[x509.GeneralName] = []
        if identity is not None:
            sans.append(x509.UniformResourceIdentifier(str(identity)))
        for host in dict.fromkeys(hosts):
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        return self._issue(public_key, sans, ttl_seconds, ROOT_TTL)
