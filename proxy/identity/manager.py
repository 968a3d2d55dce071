"""The sidecar's identity: obtains an X.509-SVID from the control plane, keeps it renewed,
and hands out the SSL contexts built from the current one.

First contact (kubeadm-style discovery): the trust bundle is fetched over an UNVERIFIED
connection, and only the roots whose SubjectPublicKeyInfo sha256 equals the join token's CA
pin are kept. The CSR then goes over a connection verified against those roots alone, to a
server that must present the control plane's SPIFFE ID, with the token as bearer credential.
The bundle in that authenticated answer becomes the trust bundle. Renewals authenticate with
the current certificate (mTLS) and verify the server against the current bundle.

The private key is generated here and never leaves the process (and ``state_dir``, 0600).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509

from certs import keys, tls
from certs.csr import build_csr
from certs.join_token import InvalidToken, JoinToken
from certs.rotation import cert_times, renew_at, rfc3339
from certs.spiffe import SpiffeId
from certs.verify import InvalidSvid, verify_svid

_log = logging.getLogger("meshlet.identity")

KEY_FILE = "key.pem"
CHAIN_FILE = "cert-chain.pem"
BUNDLE_FILE = "root-cert.pem"
REQUEST_TIMEOUT = 10.0


class IdentityError(Exception):
    """Obtaining or checking an identity failed. ``permanent`` errors are not worth retrying
    (bad token, CA pin mismatch, refused by the CA)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True, slots=True)
class _Identity:
    """One certificate with everything built from it; replaced whole, never mutated."""

    chain_pem: bytes
    key_pem: bytes
    bundle_pem: bytes
    leaf: x509.Certificate
    spiffe_id: SpiffeId
    obtained_at: float
    server_ctx: ssl.SSLContext
    client_ctx: ssl.SSLContext


def _build(chain_pem: bytes, key_pem: bytes, bundle_pem: bytes, obtained_at: float) -> _Identity:
    leaf = keys.load_certificates(chain_pem)[0]
    try:
        sid = verify_svid(chain_pem, bundle_pem)
    except InvalidSvid as exc:
        raise IdentityError(f"certificate does not verify against the bundle: {exc}") from None
    if not keys.same_public_key(leaf.public_key(), keys.load_private_key(key_pem).public_key()):
        raise IdentityError("certificate does not match the private key", permanent=True)
    return _Identity(
        chain_pem,
        key_pem,
        bundle_pem,
        leaf,
        sid,
        obtained_at,
        tls.server_context(chain_pem, key_pem, bundle_pem, require_client_cert=True),
        tls.client_context(chain_pem, key_pem, bundle_pem),
    )


class _ControlPlaneConnector(aiohttp.TCPConnector):
    """Refuses, before any request byte is sent, a server that is not the control plane.

    The chain is verified by OpenSSL against the given roots; this adds the SPIFFE ID check
    (any workload's certificate chains to the same roots, and must not be able to pose as the
    control plane and collect join tokens or hand out a bogus bundle).

    Not ``force_close``: aiohttp closes a connection it will not keep with a graceful TLS close
    that nothing awaits, so the socket outlived the request (and was leaked if the event loop
    closed first, a sidecar's last act). Each session makes one request; the connection it
    keeps is closed, and waited for, when the session closes.
    """

    def __init__(self, ssl_context: ssl.SSLContext, trust_domain: str | None) -> None:
        super().__init__(ssl=ssl_context)
        self._trust_domain = trust_domain

    async def _create_connection(self, req: Any, traces: Any, timeout: Any) -> Any:
        proto = await super()._create_connection(req, traces, timeout)
        transport = proto.transport
        peer = tls.peer_spiffe_id(transport.get_extra_info("ssl_object") if transport else None)
        ok = peer is not None and peer.is_control_plane
        if ok and self._trust_domain is not None:
            ok = peer is not None and peer.member_of(self._trust_domain)
        if not ok:
            # Nothing to say to an impostor: abort, and be done with the socket before raising.
            closed = proto.closed
            proto.abort()
            if closed is not None:
                with contextlib.suppress(Exception):
                    await closed
            raise aiohttp.ClientConnectionError(f"server is not the control plane (it is {peer})")
        return proto


class IdentityManager:
    """Keeps the sidecar's certificate valid and its SSL contexts current.

    ``clock`` is wall-clock time (certificate validity is wall-clock); renewal waits are
    computed from it. Contexts are rebuilt on each renewal: connections already established
    keep the context (and certificate) they were made with.
    """

    def __init__(
        self,
        control_plane_url: str | None,
        join_token: str | None,
        service: str,
        namespace: str = "default",
        state_dir: str | os.PathLike[str] | None = None,
        clock: Callable[[], float] = time.time,
        *,
        rng: Callable[[], float] = random.random,
        ttl_seconds: int = 0,
        min_retry: float = 1.0,
        max_retry: float = 60.0,
        bundle_refresh_s: float = 300.0,
    ) -> None:
        # Several replicas may be given (comma-separated): any of them signs; a failure moves
        # the next attempt to the next one.
        self._urls = [u.strip().rstrip("/") for u in (control_plane_url or "").split(",")
                      if u.strip()]
        self._url_index = 0
        self.issued_by: str | None = None  # the control plane that issued the current cert
        self._token = JoinToken.parse(join_token) if join_token else None
        self.service = service
        self.namespace = namespace
        self._state_dir = Path(state_dir) if state_dir is not None else None
        self._clock = clock
        self._rng = rng
        self._ttl = ttl_seconds
        self._min_retry = min_retry
        self._max_retry = max_retry
        # SPIFFE's suggested default refresh when a bundle carries no hint: 5 minutes. This is
        # how a root rotation reaches sidecars well before their next certificate renewal.
        self._bundle_refresh = bundle_refresh_s
        self._bundle_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.last_bundle_error: str | None = None
        self._current: _Identity | None = None
        self._renew_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._static = False
        self._listener_ctx: ssl.SSLContext | None = None
        self.last_renewal_error: str | None = None
        self.renewals = 0
        #: Called with the manager after every new certificate (first one included).
        self.on_change: list[Callable[[IdentityManager], object]] = []

    @property
    def _url(self) -> str | None:
        return self._urls[self._url_index] if self._urls else None

    def _next_url(self) -> None:
        if len(self._urls) > 1:
            self._url_index = (self._url_index + 1) % len(self._urls)
            _log.info("identity: next attempt against %s", self._url)

    # -- static mode ----------------------------------------------------------------------

    @classmethod
    def from_files(
        cls,
        cert: str | os.PathLike[str],
        key: str | os.PathLike[str],
        bundle: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
    ) -> IdentityManager:
        """A fixed identity from PEM files (standalone sidecar): verified now, never renewed."""
        chain_pem = Path(cert).read_bytes()
        ident = _build(chain_pem, Path(key).read_bytes(), Path(bundle).read_bytes(), clock())
        sid = ident.spiffe_id
        self = cls(None, None, sid.service_account or "", sid.namespace or "", clock=clock)
        self._current = ident
        self._static = True
        return self

    # -- public surface -------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._current is not None

    def _cur(self) -> _Identity:
        if self._current is None:
            raise IdentityError("no certificate yet")
        return self._current

    def server_context(self) -> ssl.SSLContext:
        """The inbound mTLS context for the current certificate (client cert required)."""
        return self._cur().server_ctx

    def listener_context(self) -> ssl.SSLContext:
        """One stable context for the inbound listener (asyncio fixes a listener's context at
        start): each handshake is switched to the then-current :meth:`server_context`, so a
        renewal takes effect for new connections without restarting the listener."""
        if self._listener_ctx is None:
            self._listener_ctx = tls.dispatching_server_context(self.server_context)
        return self._listener_ctx

    def client_context(self) -> ssl.SSLContext:
        """The outbound mTLS context for the current certificate."""
        return self._cur().client_ctx

    @property
    def spiffe_id(self) -> SpiffeId | None:
        return self._current.spiffe_id if self._current else None

    @property
    def serial(self) -> str | None:
        return format(self._current.leaf.serial_number, "x") if self._current else None

    @property
    def not_before(self) -> float | None:
        return cert_times(self._current.leaf)[0] if self._current else None

    @property
    def not_after(self) -> float | None:
        return cert_times(self._current.leaf)[1] if self._current else None

    @property
    def trust_bundle_pem(self) -> bytes | None:
        return self._current.bundle_pem if self._current else None

    @property
    def obtained_at(self) -> float | None:
        """When the current certificate arrived (wall clock)."""
        return self._current.obtained_at if self._current else None

    @property
    def bundle_fingerprints(self) -> list[str]:
        if self._current is None:
            return []
        return [keys.cert_fingerprint(c) for c in keys.load_certificates(self._current.bundle_pem)]

    @property
    def next_renewal(self) -> float | None:
        return None if self._static else self._renew_at

    def status(self) -> dict[str, Any]:
        """What the admin ``/certs`` endpoint shows."""
        cur = self._current
        if cur is None:
            return {
                "spiffe_id": None,
                "serial": None,
                "not_before": None,
                "not_after": None,
                "trust_bundle_fingerprints": [],
                "seconds_to_expiry": None,
                "last_renewal_error": self.last_renewal_error,
            }
        nb, na = cert_times(cur.leaf)
        return {
            "spiffe_id": str(cur.spiffe_id),
            "serial": format(cur.leaf.serial_number, "x"),
            "not_before": rfc3339(nb),
            "not_after": rfc3339(na),
            "trust_bundle_fingerprints": self.bundle_fingerprints,
            "seconds_to_expiry": round(na - self._clock(), 3),
            "next_renewal": rfc3339(self._renew_at)
            if self._renew_at and not self._static
            else None,
            "renewals": self.renewals,
            "issued_by": self.issued_by,
            "last_renewal_error": self.last_renewal_error,
            "last_bundle_error": self.last_bundle_error,
        }

    async def start(self) -> None:
        """Obtain the first certificate (or reuse a valid one from ``state_dir``) and start the
        renewal loop. Transient failures are retried with back-off; permanent ones raise."""
        if self._static:
            return
        if self._url is None or (self._token is None and not self._load_state()):
            raise IdentityError("a control plane URL and a join token are needed", permanent=True)
        if self._current is None and not self._load_state():
            attempt = 0
            while True:
                try:
                    await self._first_contact()
                    break
                except IdentityError as exc:
                    if exc.permanent:
                        raise
                    self._note_failure(exc)
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    self._note_failure(exc)
                await asyncio.sleep(self._backoff(attempt))
                attempt += 1
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._renew_loop(), name=f"identity-renewal-{self.service}")
        if self._bundle_refresh > 0:
            self._bundle_task = loop.create_task(
                self._bundle_loop(), name=f"identity-bundle-{self.service}"
            )

    async def close(self) -> None:
        tasks = [t for t in (self._task, self._bundle_task) if t is not None]
        self._task = self._bundle_task = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def renew_now(self) -> None:
        """Renew immediately (operator action, tests); raises on failure."""
        await self._renew()

    async def refresh_bundle(self) -> bool:
        """Fetch the trust bundle from the (verified) control plane and adopt it if it
        changed; return whether it did. If the new bundle no longer trusts our own certificate
        (its root was retired), renew at once instead."""
        cur = self._cur()
        assert self._url is not None
        # No client certificate: the bundle is public, and a certificate from a retired root
        # would make the control plane refuse the handshake. The server is still verified.
        ctx = tls.client_context(None, None, cur.bundle_pem, alpn=tls.HTTP11_ALPN)
        async with (
            aiohttp.ClientSession(
                connector=_ControlPlaneConnector(ctx, cur.spiffe_id.trust_domain),
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
            ) as session,
            session.get(f"{self._url}/v1/trust-bundle") as resp,
        ):
            if resp.status != 200:
                raise IdentityError(f"trust bundle fetch: HTTP {resp.status}")
            bundle = await resp.read()
        if bundle == cur.bundle_pem:
            return False
        try:
            ident = _build(cur.chain_pem, cur.key_pem, bundle, cur.obtained_at)
        except (IdentityError, ValueError) as exc:
            _log.info("new trust bundle does not cover our certificate (%s); renewing", exc)
            self._renew_at = self._clock()
            self._wake.set()
            return False
        self._install(ident, renewed=False)
        return True

    # -- obtaining certificates -----------------------------------------------------------

    def _expected(self, sid: SpiffeId) -> bool:
        return sid.namespace == self.namespace and sid.service_account == self.service

    async def _first_contact(self) -> None:
        assert self._token is not None and self._url is not None
        pin = self._token.ca_pin
        async with (
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=tls.unverified_client_context()),
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
            ) as session,
            session.get(f"{self._url}/v1/trust-bundle") as resp,
        ):
            if resp.status != 200:
                raise IdentityError(f"trust bundle fetch: HTTP {resp.status}")
            unverified = await resp.read()
        try:
            roots = keys.load_certificates(unverified)
        except ValueError:
            raise IdentityError("control plane sent no trust bundle") from None
        pinned = [r for r in roots if keys.spki_sha256(r.public_key()) == pin]
        if not pinned:
            raise IdentityError(
                f"the join token's CA pin matches no root of the control plane at {self._url}: "
                "the token was made by another control plane (or before its CA was replaced); "
                f"create one there with `meshlet token create --service {self.service}`",
                permanent=True,
            )
        ctx = tls.client_context(None, None, keys.certificates_to_pem(pinned), alpn=tls.HTTP11_ALPN)
        await self._certify(ctx, None, {"Authorization": f"Bearer {self._token}"})

    async def _renew(self) -> None:
        cur = self._current
        if cur is None or self._clock() >= cert_times(cur.leaf)[1]:
            # Nothing valid to authenticate with: fall back to the join token, if any.
            if self._token is None:
                raise IdentityError("certificate expired and no join token to start over")
            await self._first_contact()
            return
        ctx = tls.client_context(cur.chain_pem, cur.key_pem, cur.bundle_pem, alpn=tls.HTTP11_ALPN)
        await self._certify(ctx, cur.spiffe_id.trust_domain, {})

    async def _certify(
        self, ctx: ssl.SSLContext, trust_domain: str | None, headers: dict[str, str]
    ) -> None:
        assert self._url is not None
        key = keys.generate_private_key()
        key_pem = keys.private_key_to_pem(key)
        # The CSR's SAN is informational: the CA takes the identity from our credentials.
        td = trust_domain or "cluster.local"
        csr = build_csr(key, SpiffeId.for_workload(td, self.namespace, self.service))
        body: dict[str, Any] = {"csr": csr.decode()}
        if self._ttl > 0:
            body["ttl_seconds"] = self._ttl
        async with (
            aiohttp.ClientSession(
                connector=_ControlPlaneConnector(ctx, trust_domain),
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
            ) as session,
            session.post(f"{self._url}/v1/certify", json=body, headers=headers) as resp,
        ):
            raw = await resp.read()
            if resp.status != 200:
                try:
                    msg = json.loads(raw)["error"]
                except (ValueError, KeyError, TypeError):
                    msg = raw[:200].decode(errors="replace")
                if resp.status == 401 and "Authorization" in headers:
                    raise IdentityError(
                        f"the control plane at {self._url} refused the join token ({msg}): "
                        "create a new one there with "
                        f"`meshlet token create --service {self.service}`",
                        permanent=True,
                    )
                raise IdentityError(
                    f"control plane refused: HTTP {resp.status}: {msg}",
                    permanent=400 <= resp.status < 500,
                )
        try:
            answer = json.loads(raw)
            chain_pem = answer["certificate_chain"].encode()
            bundle_pem = answer["trust_bundle"].encode()
        except (ValueError, KeyError, TypeError, AttributeError):
            raise IdentityError("malformed answer from the control plane") from None
        ident = _build(chain_pem, key_pem, bundle_pem, self._clock())
        if not self._expected(ident.spiffe_id):
            sid = ident.spiffe_id
            raise IdentityError(
                f"the join token belongs to service {sid.service_account!r} (namespace "
                f"{sid.namespace!r}), not {self.service!r}: create one with `meshlet token create "
                f"--service {self.service} --namespace {self.namespace}`, or run this sidecar as "
                f"--service {sid.service_account} (control plane issued {sid})",
                permanent=True,
            )
        if trust_domain is not None and not ident.spiffe_id.member_of(trust_domain):
            raise IdentityError(f"trust domain changed to {ident.spiffe_id.trust_domain}")
        self.issued_by = self._url
        self._install(ident)

    def _install(self, ident: _Identity, *, renewed: bool = True) -> None:
        previous = self._current
        self._current = ident
        nb, na = cert_times(ident.leaf)
        if renewed:
            # Lifetime runs from when we got it, not from the backdated NotBefore (Istio does
            # the same), else short certificates would renew far too early.
            self._renew_at = renew_at(max(nb, min(ident.obtained_at, na)), na, self._rng)
            self.last_renewal_error = None
            if previous is not None:
                self.renewals += 1
            self._wake.set()  # the renewal loop picks up the new schedule
        self._save_state(ident)
        _log.info(
            "identity %s serial %x valid until %s, renewing at %s, %d root(s) trusted",
            ident.spiffe_id,
            ident.leaf.serial_number,
            rfc3339(na),
            rfc3339(self._renew_at or na),
            len(keys.load_certificates(ident.bundle_pem)),
        )
        for cb in list(self.on_change):
            try:
                cb(self)
            except Exception:
                _log.exception("identity on_change callback failed")

    def _note_failure(self, exc: BaseException) -> None:
        self.last_renewal_error = f"{type(exc).__name__}: {exc}"
        _log.warning("identity: %s (%s)", self.last_renewal_error, self._url)
        self._next_url()

    def _backoff(self, attempt: int) -> float:
        # Exponential with "equal jitter": never below half the step, so retries stay spread.
        step = min(self._max_retry, self._min_retry * (2 ** min(attempt, 30)))
        return step / 2 + self._rng() * step / 2

    async def _renew_loop(self) -> None:
        attempt = 0
        while self._task is not None:
            assert self._renew_at is not None
            delay = self._renew_at - self._clock()
            if delay > 0:
                # Sleep until the renewal time, or until something reschedules it. (Not
                # wait_for: on 3.11 it can swallow a cancel that races with the wake-up.)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                self._wake.clear()
                continue
            self._wake.clear()
            try:
                await self._renew()
                attempt = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Keep serving the current certificate; try again soon.
                self._note_failure(exc)
                self._renew_at = self._clock() + self._backoff(attempt)
                attempt += 1

    async def _bundle_loop(self) -> None:
        while self._bundle_task is not None:
            await asyncio.sleep(self._bundle_refresh * (0.9 + 0.2 * self._rng()))
            try:
                await self.refresh_bundle()
                self.last_bundle_error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_bundle_error = f"{type(exc).__name__}: {exc}"
                _log.warning("trust bundle refresh: %s", self.last_bundle_error)
                self._next_url()

    # -- state on disk --------------------------------------------------------------------

    def _save_state(self, ident: _Identity) -> None:
        if self._state_dir is None:
            return
        try:
            keys.make_private_dir(self._state_dir)
            keys.write_private_file(self._state_dir / KEY_FILE, ident.key_pem)
            keys.write_file_atomic(self._state_dir / CHAIN_FILE, ident.chain_pem)
            keys.write_file_atomic(self._state_dir / BUNDLE_FILE, ident.bundle_pem)
        except OSError:
            _log.exception("cannot save identity to %s", self._state_dir)

    def _load_state(self) -> bool:
        """Reuse a certificate saved by a previous run if it still verifies, names this
        service and has not reached its renewal time; renewal then needs no token."""
        if self._state_dir is None or self._current is not None:
            return self._current is not None
        try:
            chain = (self._state_dir / CHAIN_FILE).read_bytes()
            key = (self._state_dir / KEY_FILE).read_bytes()
            bundle = (self._state_dir / BUNDLE_FILE).read_bytes()
        except OSError:
            return False
        # the CA's module, for one constant: imported only when a saved identity is read
        from certs.authority import CLOCK_SKEW_GRACE

        try:
            # Issued at about NotBefore + the CA's skew allowance.
            leaf = keys.load_certificates(chain)[0]
            issued = cert_times(leaf)[0] + CLOCK_SKEW_GRACE
            ident = _build(chain, key, bundle, issued)
        except (IdentityError, ValueError) as exc:
            _log.info("not reusing saved identity: %s", exc)
            return False
        if self._token is not None:
            pins = {keys.spki_sha256(c.public_key()) for c in keys.load_certificates(bundle)}
            if self._token.ca_pin not in pins:
                return False
        if not self._expected(ident.spiffe_id):
            return False
        self._install(ident)
        self.renewals = 0
        if self._renew_at is not None and self._renew_at <= self._clock():
            self._renew_at = self._clock()
        return True


__all__ = ["IdentityError", "IdentityManager", "InvalidToken"]
