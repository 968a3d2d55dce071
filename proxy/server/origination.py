"""TLS the sidecar originates because a DestinationRule says so (``trafficPolicy.tls``).

SIMPLE and MUTUAL name certificate files: they are read and turned into SSL contexts when a
config is applied (a missing or unreadable file rejects the config, naming the rule), never per
connection; applying a config again re-reads the files that changed on disk.
``subjectAltNames`` are checked on each new connection's certificate (DNS, URI or IP SANs);
without them, the server's name is checked against ``sni`` (or the service host), as Istio
verifies the certificate at the client. ISTIO_MUTUAL reuses the sidecar's own mesh identity
(see ``Runtime.pool``) and checks the peer's SPIFFE ID.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from proxy.routes.table import UpstreamTLS


class OriginationError(ValueError):
    """A DestinationRule's TLS settings cannot be used (names the rule and the file)."""


class Contexts:
    """The HTTP/1.1 and HTTP/2 client contexts of one DestinationRule TLS setting."""

    __slots__ = ("h1", "h2", "stamp")

    def __init__(self, spec: UpstreamTLS, check_hostname: bool) -> None:
        from certs import tls

        self.stamp = stamp(spec)

        def read(field: str, path: str) -> bytes | None:
            if not path:
                return None
            try:
                return Path(path).read_bytes()
            except OSError as exc:
                raise OriginationError(
                    f"DestinationRule {spec.source}: tls.{field} {path!r}: {exc.strerror}"
                ) from exc

        ca = read("caCertificates", spec.ca_certificates)
        chain = read("clientCertificate", spec.client_certificate)
        key = read("privateKey", spec.private_key)
        if spec.ca_crl:
            read("caCrl", spec.ca_crl)
        try:
            self.h1, self.h2 = (
                tls.origination_context(
                    ca,
                    chain,
                    key,
                    alpn=alpn,
                    verify=not spec.insecure_skip_verify,
                    check_hostname=check_hostname,
                    crl_path=spec.ca_crl,
                )
                for alpn in (("http/1.1",), ("h2",))
            )
        except (ssl.SSLError, ValueError) as exc:
            raise OriginationError(
                f"DestinationRule {spec.source}: tls: cannot use the certificate files: {exc}"
            ) from exc


def build(table: Any, known: dict[UpstreamTLS, Contexts]) -> dict[UpstreamTLS, Contexts]:
    """The contexts every SIMPLE/MUTUAL setting of ``table`` needs (reusing ``known`` ones).

    Raises :class:`OriginationError` before anything is swapped in."""
    out: dict[UpstreamTLS, Contexts] = {}
    for c in table.clusters.values():
        o = c.origination
        if o is None or o.mode == "ISTIO_MUTUAL" or o in out:
            continue
        ctxs = known.get(o)
        if ctxs is None or ctxs.stamp != stamp(o):  # new, or its files changed on disk
            ctxs = Contexts(o, check_hostname=not o.subject_alt_names)
        out[o] = ctxs
    return out


def stamp(spec: UpstreamTLS) -> tuple[tuple[str, int, int], ...]:
    """(path, mtime, size) of each file a setting names: a config applied again (SIGHUP, a
    push) after the files were replaced reads them again."""
    out = []
    for path in (spec.ca_certificates, spec.client_certificate, spec.private_key, spec.ca_crl):
        if path:
            try:
                st = Path(path).stat()
                out.append((path, st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((path, -1, -1))
    return tuple(out)


def server_name(spec: UpstreamTLS, service: str) -> str:
    """The SNI sent (and, without subjectAltNames, the name verified): ``sni`` or the host."""
    return spec.sni or service


def san_verifier(names: tuple[str, ...]) -> Callable[[Any], bool]:
    """True when the server's certificate carries one of ``names`` as a DNS, URI or IP SAN."""
    wanted = frozenset(names)

    def verify(sslobj: Any) -> bool:
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        return bool(der) and not wanted.isdisjoint(_sans(der))

    return verify


def _sans(der: bytes) -> set[str]:
    from cryptography import x509

    try:
        ext = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
    except (x509.ExtensionNotFound, ValueError):
        return set()
    out: set[str] = set()
    for kind in (x509.DNSName, x509.UniformResourceIdentifier):
        out.update(ext.value.get_values_for_type(kind))
    out.update(str(ipaddress.ip_address(a)) for a in ext.value.get_values_for_type(x509.IPAddress))
    return out
