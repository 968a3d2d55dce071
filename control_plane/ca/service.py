"""The CA's HTTPS endpoints on the control plane: ``POST /v1/certify`` (sign a workload CSR)
and ``GET /v1/trust-bundle``, plus the control plane's own serving certificate.

The identity in an issued certificate always comes from the caller's authentication: a join
token on first contact, or the client certificate presented in the TLS handshake on renewal.
The CSR contributes only its public key.
"""

from __future__ import annotations

import inspect
import ipaddress
import json
import logging
import ssl
import time
from collections.abc import Callable, Iterable

from aiohttp import web

from certs import keys, tls
from certs.authority import CAError, CertificateAuthority
from certs.csr import InvalidCsr
from certs.join_token import InvalidToken
from certs.rotation import cert_times, rfc3339
from certs.spiffe import SpiffeId
from control_plane.ca.tokens import TokenStore

_log = logging.getLogger("meshlet.ca")

#: The control plane's serving certificate; it is re-issued on every start.
SERVING_CERT_TTL = 365 * 24 * 3600
MAX_BODY = 64 * 1024
PEM_CONTENT_TYPE = "application/x-pem-file"


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class CAService:
    """Request handlers bound to one CA, token store and trust domain."""

    def __init__(
        self,
        ca: CertificateAuthority,
        tokens: TokenStore,
        trust_domain: str,
        lifetime_s: int,
    ) -> None:
        self.ca = ca
        self.tokens = tokens
        self.trust_domain = trust_domain.lower()
        self.lifetime_s = lifetime_s

    async def _authenticate(self, request: web.Request) -> SpiffeId | web.Response:
        auth = request.headers.get("Authorization")
        if auth is not None:
            scheme, _, credential = auth.partition(" ")
            if scheme.lower() != "bearer" or not credential.strip():
                return _error(401, "Authorization must be 'Bearer <join token>'")
            try:
                found = self.tokens.verify(credential.strip())
                if inspect.isawaitable(found):  # the etcd token store (replicas)
                    found = await found
                service, namespace = found
            except InvalidToken as exc:
                return _error(401, str(exc))
            return SpiffeId.for_workload(self.trust_domain, namespace, service)
        # Renewal: the certificate the caller presented in the handshake. OpenSSL has already
        # verified its chain against the bundle (the server requests, but does not require, one).
        transport = request.transport
        peer = tls.peer_spiffe_id(transport.get_extra_info("ssl_object") if transport else None)
        if peer is None:
            return _error(401, "a join token or a client certificate is required")
        if not peer.member_of(self.trust_domain) or peer.namespace is None:
            return _error(403, f"{peer} may not obtain a workload certificate")
        return peer

    async def certify(self, request: web.Request) -> web.Response:
        identity = await self._authenticate(request)
        if isinstance(identity, web.Response):
            return identity
        if request.content_length is not None and request.content_length > MAX_BODY:
            return _error(413, "request body too large")
        try:
            body = json.loads(await request.read())
            csr_pem = body["csr"]
            ttl = int(body.get("ttl_seconds", 0) or 0)
            if not isinstance(csr_pem, str):
                raise TypeError("csr must be a string")
        except (ValueError, KeyError, TypeError) as exc:
            return _error(400, f'body must be JSON {{"csr": PEM}}: {exc}')
        # The mesh's lifetime is the ceiling; a caller may ask for less.
        ttl = min(ttl, self.lifetime_s) if ttl > 0 else self.lifetime_s
        try:
            chain = self.ca.sign(csr_pem.encode(), identity, ttl)
        except InvalidCsr as exc:
            return _error(400, f"invalid CSR: {exc}")
        except CAError as exc:
            _log.error("cannot sign for %s: %s", identity, exc)
            return _error(503, str(exc))
        leaf = keys.load_certificates(chain)[0]
        _log.info("issued %s serial %x", identity, leaf.serial_number)
        return web.json_response(
            {
                "certificate_chain": chain.decode(),
                "trust_bundle": self.ca.bundle_pem().decode(),
                "spiffe_id": str(identity),
                "not_after": rfc3339(cert_times(leaf)[1]),
                "serial": format(leaf.serial_number, "x"),
            }
        )

    async def trust_bundle(self, request: web.Request) -> web.Response:
        return web.Response(body=self.ca.bundle_pem(), content_type=PEM_CONTENT_TYPE)


def setup_routes(
    app: web.Application,
    ca: CertificateAuthority,
    tokens: TokenStore,
    trust_domain: str,
    lifetime_s: int,
) -> CAService:
    """Add ``POST /v1/certify`` and ``GET /v1/trust-bundle`` to ``app``.

    The app must be served with :func:`serving_context` (or any context from ``certs.tls``
    with ``require_client_cert=False``) so that renewals can authenticate with their
    certificate.
    """
    service = CAService(ca, tokens, trust_domain, lifetime_s)
    app.router.add_post("/v1/certify", service.certify)
    app.router.add_get("/v1/trust-bundle", service.trust_bundle)
    return service


def serving_certificate(
    ca: CertificateAuthority,
    hosts: Iterable[str] = (),
    ttl_seconds: int = SERVING_CERT_TTL,
) -> tuple[bytes, bytes]:
    """(chain PEM, key PEM) for the control plane's HTTPS listener, signed by the CA.

    SANs: ``localhost``, ``127.0.0.1``, ``::1``, every host in ``hosts``, and the control
    plane's SPIFFE ID, which sidecars check so that no workload can pose as the control plane.
    """
    names = ["localhost", "127.0.0.1", "::1"]
    for host in hosts:
        host = host.strip("[]")
        if host and host not in ("0.0.0.0", "::"):
            names.append(str(ipaddress.ip_address(host)) if _is_ip(host) else host.lower())
    key = keys.generate_private_key()
    chain = ca.sign_serving(
        key.public_key(), names, ttl_seconds, SpiffeId.for_control_plane(ca.trust_domain)
    )
    return chain, keys.private_key_to_pem(key)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class ServingTLS:
    """The control plane's listener TLS: one stable SSLContext (give it to the listener) whose
    certificate and trust bundle follow the CA.

    The serving certificate is re-issued, and client certificates are checked against the new
    bundle, for every handshake after a root rotation or retirement, and once the certificate
    is past half its life. Client certificates are requested (renewals) but not required
    (join-token callers and the CLI have none). HTTP/1.1 ALPN only (aiohttp).
    """

    def __init__(
        self,
        ca: CertificateAuthority,
        hosts: Iterable[str] = (),
        ttl_seconds: int = SERVING_CERT_TTL,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ca = ca
        self.hosts = list(hosts)
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._inner: ssl.SSLContext | None = None
        self._generation = -1
        self._refresh_at = 0.0
        self.context = tls.dispatching_server_context(
            self.current, require_client_cert=False, alpn=tls.HTTP11_ALPN
        )

    def current(self) -> ssl.SSLContext:
        if (
            self._inner is None
            or self._generation != self.ca.generation
            or self._clock() >= self._refresh_at
        ):
            self.reload()
        assert self._inner is not None
        return self._inner

    def reload(self) -> None:
        chain, key = serving_certificate(self.ca, self.hosts, self.ttl_seconds)
        self._inner = tls.server_context(
            chain, key, self.ca.bundle_pem(), require_client_cert=False, alpn=tls.HTTP11_ALPN
        )
        self._generation = self.ca.generation
        nb, na = cert_times(keys.load_certificates(chain)[0])
        self._refresh_at = (self._clock() + na) / 2


def serving_context(ca: CertificateAuthority, hosts: Iterable[str] = ()) -> ssl.SSLContext:
    """The SSLContext for the control plane's HTTPS listener (see :class:`ServingTLS`)."""
    return ServingTLS(ca, hosts).context
