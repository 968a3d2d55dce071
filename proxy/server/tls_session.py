"""TLS session resumption between sidecars: the outbound session cache and the inbound policy.

Outbound (client side)
----------------------
``loop.create_connection`` cannot pass ``session=`` to the handshake. Both uvloop's SSLProtocol
(Cython) and asyncio's (``asyncio.sslproto``) use the SSL context they are given for exactly
one thing: ``context.wrap_bio(incoming, outgoing, server_side=..., server_hostname=...)`` when
the handshake starts (checked in both sources; ``tests/unit/server/test_tls_session.py`` runs
resumption on both loops). So a connection that should resume gets a tiny stand-in,
:class:`_SessionOffer`, whose ``wrap_bio`` calls the real context's ``wrap_bio`` with
``session=`` added. Everything else (the transport, its buffers, its bulk-data path) is the
loop's own, unchanged: resuming costs the data path nothing. That is why this was chosen over
asyncio's pure-Python ``SSLProtocol`` run under uvloop (measured on one core, client and
server in one process: the same ~100 MiB/s for bulk data, which the crypto dominates, but
~10.5k small request/response round trips/s against uvloop's ~15.8k) and over a transport of
our own on ``ssl.SSLObject`` + ``MemoryBIO`` (Python per read and write as well, more code).

TLS 1.3 tickets arrive after the handshake, with the first bytes the client reads, so a
connection's session is taken (:meth:`SessionCache.remember`) once its first response has been
read, not at connect time. One cache per endpoint pool: a session is only offered to the
address it came from. A session is bound to the ``SSLContext`` that made it (Python refuses it
on another), so the cache empties itself when the pool's context changes (certificate renewal,
bundle change). The caller still verifies the peer's SPIFFE ID on every connection, resumed or
not: ``getpeercert`` returns the certificate recorded in the session.

Inbound (server side)
---------------------
A resumed session skips chain verification: the server trusts what it verified when it issued
the ticket. The tickets are stateful (``certs/session_cache.py``): each is an id into the
*session context's* own bounded session cache (the context the connection was created from,
not one switched to by an SNI callback), which makes a resumption about three times cheaper
than decoding a stateless ticket with OpenSSL 3.0. (Where the cache cannot be set up the
context falls back to stateless tickets, whose keys the context holds: the policy below is the
same for both.) Meshlet's policy, in :class:`TicketingServerContexts`:

* every accepted TLS connection is created from the context of the current identity, built
  with tickets on; a new certificate or a new trust bundle is a new context, hence an empty
  session cache (new ticket keys): a ticket issued before the change does not resume after it,
  and the client falls back to a full handshake verified against the current bundle. A ticket
  can therefore only resume under the very bundle its chain was verified against (Envoy gets
  the same from rotating ticket keys; we rotate by rebuilding the context);
* the context is also rebuilt every ``rotate_after`` seconds (default one hour), which bounds
  how long a chain of resumptions can go without a full verification (OpenSSL resets a
  session's age each time it issues a fresh ticket on a resumed connection; the cached
  sessions themselves expire after an hour);
* on a resumed connection the listener re-checks in Python that the peer's certificate is
  within its validity period now (:func:`resumed_peer_valid`): a session must not outlive the
  certificate it authenticated. Cheap: only resumed connections pay, and ``getpeercert()``
  parses in C.

Resumption is offered to mesh peers only because the caller opts in: contexts made with
``certs.tls.server_context(..., session_tickets=True)``; the control plane's and the admin's
contexts keep ``num_tickets = 0``.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import Callable
from typing import Any

from proxy.telemetry.metrics import UPSTREAM_TLS_HANDSHAKES

#: How long one set of inbound ticket keys (one server context) lives at most.
TICKET_KEY_ROTATION_S = 3600.0

#: ``MESHLET_TLS_RESUMPTION=off`` turns resumption off on both sides (no tickets issued, no
#: sessions offered): an escape hatch, and the benchmark's no-resumption baseline.
RESUMPTION = os.environ.get("MESHLET_TLS_RESUMPTION", "on").strip().lower() not in (
    "off",
    "0",
    "false",
    "no",
)


class _SessionOffer:
    """Stands in for an ``SSLContext`` in ``create_connection(ssl=...)``: the loop's
    SSLProtocol only ever calls ``wrap_bio``, which this forwards with ``session=`` added."""

    __slots__ = ("context", "session")

    def __init__(self, context: ssl.SSLContext, session: ssl.SSLSession) -> None:
        self.context = context
        self.session = session

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        return self.context.wrap_bio(
            incoming,
            outgoing,
            server_side=server_side,
            server_hostname=server_hostname,
            session=self.session,
        )


class SessionCache:
    """The last resumable TLS session of one endpoint, for the context that made it."""

    __slots__ = ("context", "session")

    def __init__(self) -> None:
        self.context: ssl.SSLContext | None = None
        self.session: ssl.SSLSession | None = None

    def offer(self, context: ssl.SSLContext) -> ssl.SSLSession | None:
        """The session to offer on a new connection made with ``context`` (None: none, or it
        belongs to a previous context and is dropped)."""
        if context is not self.context:
            self.context = context
            self.session = None
        return self.session

    def remember(self, ssl_object: Any) -> bool:
        """Keep ``ssl_object``'s session if it carries a ticket (TLS 1.3 tickets arrive with
        the first bytes read after the handshake: call this after the first response). Returns
        whether a session was taken."""
        if ssl_object is None:
            return False
        try:
            session = ssl_object.session
        except (AttributeError, ValueError):
            return False
        if session is None or not session.has_ticket:
            return False
        ctx = ssl_object.context
        if self.context is not ctx:
            # the pool's context changed while this connection was open: the session is stale
            return False
        self.session = session
        return True

    def forget(self) -> None:
        """Drop the session (a failed or refused connection must not be resumed)."""
        self.session = None


async def open_connection(
    loop: asyncio.AbstractEventLoop,
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    host: str,
    port: int,
    context: ssl.SSLContext,
    cache: SessionCache | None,
    *,
    server_hostname: str = "",
) -> tuple[asyncio.Transport, Any]:
    """``loop.create_connection`` over TLS offering ``cache``'s session, counting the handshake
    as resumed or full (``meshlet_upstream_tls_handshakes_total``). The caller verifies the
    peer's identity afterwards, exactly as for a full handshake, and calls
    ``cache.remember(ssl_object)`` once the first response has been read (or ``cache.forget()``
    if it refuses the peer)."""
    session = cache.offer(context) if cache is not None and RESUMPTION else None
    ssl_arg: Any = context if session is None else _SessionOffer(context, session)
    try:
        transport, proto = await loop.create_connection(
            protocol_factory, host, port, ssl=ssl_arg, server_hostname=server_hostname
        )
    except BaseException:
        if cache is not None and session is not None:
            cache.forget()  # never offer a session twice to a handshake that failed with it
        raise
    sslobj = transport.get_extra_info("ssl_object")
    UPSTREAM_TLS_HANDSHAKES.count(bool(sslobj is not None and sslobj.session_reused))
    return transport, proto  # type: ignore[return-value]


# --------------------------------------------------------------------------------- inbound


def resumed_peer_valid(ssl_object: Any, now: float | None = None) -> bool:
    """For a resumed inbound session: is the peer's certificate (recorded in the session when
    its chain was verified) still within its validity period? Full handshakes need no check:
    OpenSSL has just verified the chain, validity included."""
    try:
        cert = ssl_object.getpeercert()
    except (ValueError, AttributeError):
        return False
    if not cert:
        return False
    t = time.time() if now is None else now
    try:
        return (
            ssl.cert_time_to_seconds(cert["notBefore"])
            <= t
            < ssl.cert_time_to_seconds(cert["notAfter"])
        )
    except (KeyError, ValueError):
        return False


class TicketingServerContexts:
    """The inbound server context to create each accepted TLS connection from.

    ``build(identity)`` makes a server context with session tickets for an identity object
    (whatever ``current()`` returns; a new object means a new certificate or bundle). The
    context, and with it the ticket keys, is rebuilt when the identity changes and at least
    every ``rotate_after`` seconds. See the module docstring for why.
    """

    __slots__ = ("_current", "_build", "_rotate_after", "_clock", "_ident", "_ctx", "_born")

    def __init__(
        self,
        current: Callable[[], object],
        build: Callable[[Any], ssl.SSLContext],
        *,
        rotate_after: float = TICKET_KEY_ROTATION_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._current = current
        self._build = build
        self._rotate_after = rotate_after
        self._clock = clock
        self._ident: object = None
        self._ctx: ssl.SSLContext | None = None
        self._born = 0.0

    def __call__(self) -> ssl.SSLContext:
        ident = self._current()
        ctx = self._ctx
        now = self._clock()
        if ctx is None or ident is not self._ident or now - self._born > self._rotate_after:
            ctx = self._ctx = self._build(ident)
            self._ident = ident
            self._born = now
        return ctx
