"""Stateful TLS 1.3 resumption for a server context: sessions kept in OpenSSL's own cache.

Why not the default (stateless) tickets: OpenSSL encrypts the whole session, the peer's
certificate included, into the ticket, and on resumption decrypts and *decodes* it again. With
the OpenSSL 3.0 that Python's ``ssl`` links here, decoding goes through the provider/decoder
machinery and costs about as much as a full handshake's verification. Measured server-side in one
process (``ssl.SSLObject`` pairs, 400 handshakes, 3 rounds, client certificate, ECDSA P-256):

==============================  =============  ==================
server CPU per handshake        full           resumed
==============================  =============  ==================
no tickets                      1.1-1.9 ms     -
stateless ticket                1.4-2.3 ms     0.88-1.37 ms
stateful ticket (this module)   1.2-1.8 ms     0.38-0.61 ms
==============================  =============  ==================

With ``OP_NO_TICKET`` set, OpenSSL still issues TLS 1.3 tickets, but *stateful* ones: the
ticket is only an id into the server context's session cache, so a resumption takes the cached
session (its certificate shared, nothing decoded) and issuing one costs a cache insert.

Two settings Python's ``ssl`` does not expose matter here, so they are made through OpenSSL's
own API on the context's ``SSL_CTX`` (``ctypes``, on the very libssl that ``_ssl`` is linked to):

* the cache size. OpenSSL's default holds 20,480 sessions; each keeps its peer's decoded
  certificate (about 5.7 KB measured), so a busy context could hold ~115 MB. Meshlet caps it at
  :data:`CACHE_SIZE` (``MESHLET_TLS_SESSION_CACHE``, default 1,024: ~6 MB at most). When it is
  full OpenSSL drops the oldest session; a peer resumes from its newest ticket, so a small
  cache only costs peers that have been quiet the longest a full handshake;
* the session lifetime (also the ticket's lifetime hint): :data:`SESSION_TIMEOUT_S`, an hour, the
  same bound as the inbound listener's context rotation (``proxy/server/tls_session.py``).

The ``SSL_CTX`` pointer is read from the ``SSLContext`` object (CPython's ``PySSLContext``
holds it right after the object header) and checked before anything is written through it:
the context's ``num_tickets`` set from Python must read back the same through
``SSL_CTX_get_num_tickets``. If the interpreter is not CPython, libssl's symbols cannot be
found, or the check fails, :func:`enable` returns False and the context keeps stateless
tickets: correct, only slower.

Security is unchanged: the cache belongs to the context, exactly as the stateless ticket keys
did, so a new context (certificate renewal, bundle change, hourly rotation) starts with an
empty cache and no earlier session resumes on it. OpenSSL also drops a session from the cache
when its connection ends without a TLS close_notify (a truncated connection is not resumable).
"""

from __future__ import annotations

import ctypes
import os
import ssl
import sys
import threading

#: Most sessions one server context keeps (OpenSSL's default: 20,480).
CACHE_SIZE = max(16, int(os.environ.get("MESHLET_TLS_SESSION_CACHE", "1024")))
#: How long a cached session (and so a ticket) can resume, in seconds.
SESSION_TIMEOUT_S = 3600

_SSL_CTRL_SET_SESS_CACHE_SIZE = 42
_SSL_CTRL_SET_SESS_CACHE_MODE = 44
_SSL_SESS_CACHE_SERVER = 0x0002

_lock = threading.Lock()
_libssl: ctypes.CDLL | None = None
_unavailable = False


def _lib() -> ctypes.CDLL | None:
    """libssl as ``_ssl`` sees it: ``dlsym`` on the extension's handle also searches its
    dependencies, so this is the same library instance Python's contexts live in."""
    global _libssl, _unavailable
    if _libssl is not None or _unavailable:
        return _libssl
    with _lock:
        if _libssl is None and not _unavailable:
            try:
                if sys.implementation.name != "cpython":
                    raise OSError("not CPython")
                import _ssl

                lib = ctypes.CDLL(_ssl.__file__)
                lib.SSL_CTX_ctrl.argtypes = [
                    ctypes.c_void_p,
                    ctypes.c_int,
                    ctypes.c_long,
                    ctypes.c_void_p,
                ]
                lib.SSL_CTX_ctrl.restype = ctypes.c_long
                lib.SSL_CTX_get_num_tickets.argtypes = [ctypes.c_void_p]
                lib.SSL_CTX_get_num_tickets.restype = ctypes.c_size_t
                lib.SSL_CTX_set_timeout.argtypes = [ctypes.c_void_p, ctypes.c_long]
                lib.SSL_CTX_set_timeout.restype = ctypes.c_long
                lib.SSL_CTX_get_timeout.argtypes = [ctypes.c_void_p]
                lib.SSL_CTX_get_timeout.restype = ctypes.c_long
                _libssl = lib
            except (OSError, AttributeError, ImportError):
                _unavailable = True
    return _libssl


def _ssl_ctx(ctx: ssl.SSLContext, lib: ctypes.CDLL) -> int | None:
    """The ``SSL_CTX *`` behind ``ctx``, or None if it does not check out."""
    if type(ctx) is not ssl.SSLContext or ctx.protocol != ssl.PROTOCOL_TLS_SERVER:
        return None
    # PySSLContext: PyObject_HEAD (refcount, type) then ``SSL_CTX *ctx``
    ptr = ctypes.c_void_p.from_address(id(ctx) + 2 * ctypes.sizeof(ctypes.c_void_p)).value
    if not ptr:
        return None
    before = ctx.num_tickets
    try:
        for probe in (7, 3):
            ctx.num_tickets = probe
            if lib.SSL_CTX_get_num_tickets(ptr) != probe:
                return None
    finally:
        ctx.num_tickets = before
    return ptr


def _reach(ctx: ssl.SSLContext) -> tuple[ctypes.CDLL, int] | None:
    """libssl and the context's ``SSL_CTX *``, or None where they cannot be had safely."""
    lib = _lib()
    if lib is None:
        return None
    ptr = _ssl_ctx(ctx, lib)
    return None if ptr is None else (lib, ptr)


def enable(ctx: ssl.SSLContext, *, cache_size: int = CACHE_SIZE) -> bool:
    """Make ``ctx`` (a server context issuing tickets) resume through a bounded, stateful
    session cache. Returns False, leaving ``ctx`` as it was, where that cannot be done."""
    reached = _reach(ctx)
    if reached is None:
        return False
    lib, ptr = reached
    lib.SSL_CTX_ctrl(ptr, _SSL_CTRL_SET_SESS_CACHE_MODE, _SSL_SESS_CACHE_SERVER, None)
    lib.SSL_CTX_ctrl(ptr, _SSL_CTRL_SET_SESS_CACHE_SIZE, cache_size, None)
    lib.SSL_CTX_set_timeout(ptr, SESSION_TIMEOUT_S)
    ctx.options |= ssl.OP_NO_TICKET
    return True


def settings(ctx: ssl.SSLContext) -> dict[str, int | bool] | None:
    """What the context's cache is set to (for tests), or None if unknown."""
    reached = _reach(ctx)
    if reached is None:
        return None
    lib, ptr = reached
    return {
        "stateful": bool(ctx.options & ssl.OP_NO_TICKET),
        "cache_size": lib.SSL_CTX_ctrl(ptr, _SSL_CTRL_SET_SESS_CACHE_SIZE + 1, 0, None),
        "timeout_s": lib.SSL_CTX_get_timeout(ptr),
        "cached": ctx.session_stats()["number"],
    }
