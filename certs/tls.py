"""The one place that builds ``ssl.SSLContext`` objects for meshlet.

Hostname checking is off everywhere: mesh peers are named by SPIFFE IDs (URI SANs), which
Python's ``ssl`` cannot match. OpenSSL still verifies the chain against the trust bundle; the
caller then reads the peer's identity with :func:`peer_spiffe_id` and authorizes it.
"""

from __future__ import annotations

import os
import shutil
import ssl
import tempfile
from collections.abc import Callable, Sequence

from certs import session_cache
from certs.spiffe import SpiffeId
from certs.verify import InvalidSvid, spiffe_id_from_der

#: TLS 1.2 suites: the ECDHE half of Istio's inbound list (research §1.8); forward secrecy only.
#: TLS 1.3 suites are OpenSSL's defaults (all AEAD, all ephemeral).
TLS12_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
    ]
)
MESH_ALPN: tuple[str, ...] = ("h2", "http/1.1")
#: For aiohttp endpoints (control plane API, admin), which speak HTTP/1.1 only.
HTTP11_ALPN: tuple[str, ...] = ("http/1.1",)


def _private_tmpdir() -> str:
    # Prefer a tmpfs so the key never touches a disk, as Linkerd keeps its key on an emptyDir.
    shm = "/dev/shm"
    base = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
    return tempfile.mkdtemp(prefix="meshlet-tls-", dir=base)  # mkdtemp makes it 0700


def _load_cert_chain(ctx: ssl.SSLContext, chain_pem: bytes, key_pem: bytes) -> None:
    """``ssl`` loads certificates and keys only from files: write them to a private directory
    (0700, files 0600), load, and delete them straight away."""
    d = _private_tmpdir()
    try:
        chain_path, key_path = os.path.join(d, "chain.pem"), os.path.join(d, "key.pem")
        for path, data in ((chain_path, chain_pem), (key_path, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        ctx.load_cert_chain(chain_path, key_path)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _base(protocol: int, alpn: Sequence[str] | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED  # TLS 1.3 whenever both sides can
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def _load_bundle(ctx: ssl.SSLContext, bundle_pem: bytes) -> None:
    ctx.load_verify_locations(cadata=bundle_pem.decode("ascii"))
    # Strict RFC 5280 checks (AKI present, CA basicConstraints critical, ...). Partial chains
    # stay off: only the bundle's roots are anchors.
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT


def server_context(
    chain_pem: bytes,
    key_pem: bytes,
    bundle_pem: bytes,
    require_client_cert: bool = True,
    *,
    alpn: Sequence[str] | None = MESH_ALPN,
    session_tickets: bool = False,
) -> ssl.SSLContext:
    """A server context presenting ``chain_pem`` and verifying clients against ``bundle_pem``.

    ``require_client_cert=True`` (inbound mTLS, STRICT): a client without a valid certificate
    fails the handshake. ``False``: a certificate is requested and, if sent, must verify, but
    a client may connect without one (the control plane's API: join-token callers have none).

    ``session_tickets=True`` issues one TLS 1.3 ticket per connection so peers can resume,
    stateful where possible (sessions kept in the context's own bounded cache, see
    ``certs/session_cache.py``: a resumption then decodes nothing and costs about a third).
    Only for a caller that handles what a resumed session skips (chain verification against
    the current bundle): each connection must be created from this very context, so the
    sessions (and ticket keys) it holds die with it when the certificate or bundle changes,
    and a resumed peer's certificate must be re-checked for expiry. The sidecar's inbound
    listener does both (``proxy/server/tls_session.py``); nothing else should turn this on.
    """
    ctx = _server_base(require_client_cert, alpn)
    if session_tickets:
        ctx.num_tickets = 1
        session_cache.enable(ctx)
    _load_cert_chain(ctx, chain_pem, key_pem)
    _load_bundle(ctx, bundle_pem)
    return ctx


def _server_base(require_client_cert: bool, alpn: Sequence[str] | None) -> ssl.SSLContext:
    ctx = _base(ssl.PROTOCOL_TLS_SERVER, alpn)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    # No resumption tickets by default: a resumed session skips verifying the client against
    # the current bundle. server_context(session_tickets=True) opts in, for a caller that
    # handles that (see its docstring); a dispatching context never does, because tickets are
    # keyed on it (OpenSSL's session context), so they would survive certificate and bundle
    # changes made by switching to another context.
    ctx.num_tickets = 0
    return ctx


def dispatching_server_context(
    current: Callable[[], ssl.SSLContext],
    require_client_cert: bool = True,
    *,
    alpn: Sequence[str] | None = MESH_ALPN,
) -> ssl.SSLContext:
    """A server context for a long-lived listener whose certificate and trust bundle change.

    ``asyncio`` and ``aiohttp`` fix a listener's SSLContext when it starts. This one holds no
    certificate: at each ClientHello its SNI callback switches the handshake to ``current()``
    (a :func:`server_context`), so new connections get the current certificate and are checked
    against the current bundle, while established ones keep theirs. OpenSSL takes the
    certificate, the trust store and ALPN from the switched-to context, but the verify mode,
    protocol versions and ciphers from this one, so those are set the same here; pass the
    same ``require_client_cert`` and ``alpn`` as the contexts ``current`` returns.
    """
    ctx = _server_base(require_client_cert, alpn)

    def _switch(ssl_object: ssl.SSLObject, server_name: str | None, _: object) -> int | None:
        try:
            ssl_object.context = current()
        except Exception:
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        return None

    ctx.sni_callback = _switch  # type: ignore[assignment]
    return ctx


def client_context(
    chain_pem: bytes | None,
    key_pem: bytes | None,
    bundle_pem: bytes,
    *,
    alpn: Sequence[str] | None = MESH_ALPN,
) -> ssl.SSLContext:
    """A client context verifying the server against ``bundle_pem`` and, when ``chain_pem`` and
    ``key_pem`` are given, presenting them as the client certificate."""
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT, alpn)
    ctx.check_hostname = False  # identity is the SPIFFE ID, checked by the caller
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load_bundle(ctx, bundle_pem)
    if chain_pem is not None and key_pem is not None:
        _load_cert_chain(ctx, chain_pem, key_pem)
    return ctx


def origination_context(
    ca_pem: bytes | None,
    chain_pem: bytes | None,
    key_pem: bytes | None,
    *,
    alpn: Sequence[str] | None,
    verify: bool = True,
    check_hostname: bool = False,
    crl_path: str = "",
) -> ssl.SSLContext:
    """A client context for TLS the sidecar originates to a non-mesh server (DestinationRule
    ``tls.mode`` SIMPLE or MUTUAL): the server is verified against ``ca_pem`` (the system's
    roots when None), unless ``verify`` is False (``insecureSkipVerify``); ``chain_pem`` and
    ``key_pem``, when given, are the client certificate. No X509_STRICT here: the server's
    chain comes from any CA, not from meshlet's."""
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT, alpn)
    ctx.check_hostname = verify and check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
    if verify:
        if ca_pem is not None:
            ctx.load_verify_locations(cadata=ca_pem.decode("ascii"))
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if crl_path:
            ctx.load_verify_locations(cafile=crl_path)
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    if chain_pem is not None and key_pem is not None:
        _load_cert_chain(ctx, chain_pem, key_pem)
    return ctx


def unverified_client_context(*, alpn: Sequence[str] | None = HTTP11_ALPN) -> ssl.SSLContext:
    """A client context that does NOT verify the server.

    For one purpose only: fetching the control plane's trust bundle before any trust exists,
    as kubeadm fetches cluster-info. Whatever it returns is worthless until checked against the
    join token's CA pin.
    """
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT, alpn)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


#: SPIFFE ID (or None: not an SVID) by the exact DER bytes of a peer certificate. A peer
#: presents the same certificate on every connection until it renews, and parsing it (with the
#: SVID checks) was ~5 % of the CPU of an inbound full handshake; the answer is a pure function
#: of the bytes, so it is kept. Bounded: cleared when full (a mesh has few peers per sidecar).
_PEER_IDS: dict[bytes, SpiffeId | None] = {}
_PEER_IDS_MAX = 512


def peer_spiffe_id(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> SpiffeId | None:
    """The SPIFFE ID of the verified peer, or None if it sent no certificate or its certificate
    is not a valid SVID (treat both as unauthenticated).

    Only meaningful on a context from this module: OpenSSL has already verified the chain
    against the bundle when ``getpeercert`` returns anything (on a resumed session: when the
    session was made; the caller's resumption policy covers that).
    """
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    try:
        return _PEER_IDS[der]
    except KeyError:
        pass
    try:
        sid: SpiffeId | None = spiffe_id_from_der(der)
    except InvalidSvid:
        sid = None
    if len(_PEER_IDS) >= _PEER_IDS_MAX:
        _PEER_IDS.clear()
    _PEER_IDS[der] = sid
    return sid
