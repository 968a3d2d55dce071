"""Where a captured connection was going before iptables redirected it (``SO_ORIGINAL_DST``).

After a NAT ``REDIRECT`` the accepted socket's local address is the sidecar's port; the kernel
keeps the pre-NAT destination in conntrack and hands it back through ``getsockopt(SOL_IP,
SO_ORIGINAL_DST)`` as a ``sockaddr_in`` (``IP6T_SO_ORIGINAL_DST`` on ``SOL_IPV6``, a
``sockaddr_in6``, for IPv6). One syscall per accepted connection, no per-request work.
"""

from __future__ import annotations

import errno
import socket
import struct

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
IP6T_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv6/ip6_tables.h
SOL_IP = getattr(socket, "SOL_IP", 0)
SOL_IPV6 = getattr(socket, "SOL_IPV6", 41)

# errnos meaning "this connection was not NAT'ed": no conntrack entry (ENOENT), or the option
# is not supported here (no netfilter, not Linux, not TCP)
_NOT_REDIRECTED = {errno.ENOENT, errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EINVAL}


def parse_sockaddr_in(raw: bytes) -> tuple[str, int]:
    """A 16-byte ``sockaddr_in``: family (host order), port (network order), IPv4 address."""
    if len(raw) < 8:
        raise ValueError(f"sockaddr_in too short ({len(raw)} bytes)")
    (port,) = struct.unpack_from("!H", raw, 2)
    return socket.inet_ntop(socket.AF_INET, raw[4:8]), port


def parse_sockaddr_in6(raw: bytes) -> tuple[str, int]:
    """A 28-byte ``sockaddr_in6``: family, port, flowinfo, 16-byte address, scope id."""
    if len(raw) < 24:
        raise ValueError(f"sockaddr_in6 too short ({len(raw)} bytes)")
    (port,) = struct.unpack_from("!H", raw, 2)
    return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port


def original_dst(sock: socket.socket) -> tuple[str, int] | None:
    """The pre-redirect ``(ip, port)`` of an accepted TCP socket, or None if it was not captured.

    A connection made straight to the sidecar's port (the explicit mode: the app dials 15001)
    gives None: conntrack then reports the socket's own local address (or has no entry at all,
    ENOENT, when NAT is not loaded), as does any platform without netfilter.
    """
    dst = _query(sock)
    if dst is None:
        return None
    try:
        local = sock.getsockname()[:2]
    except OSError:
        return dst
    if dst == (local[0], local[1]) or (
        dst[1] == local[1] and _unmapped(dst[0]) == _unmapped(local[0])
    ):
        return None
    return dst


def _unmapped(host: str) -> str:
    return host[7:] if host.startswith("::ffff:") else host


def _query(sock: socket.socket) -> tuple[str, int] | None:
    try:
        if sock.family == socket.AF_INET6:
            try:
                return parse_sockaddr_in6(sock.getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST, 28))
            except OSError as exc:
                if exc.errno not in _NOT_REDIRECTED:
                    raise
                # an IPv4 client on a dual-stack socket is tracked by the IPv4 table
                host, port = parse_sockaddr_in(sock.getsockopt(SOL_IP, SO_ORIGINAL_DST, 16))
                return host, port
        return parse_sockaddr_in(sock.getsockopt(SOL_IP, SO_ORIGINAL_DST, 16))
    except OSError as exc:
        if exc.errno in _NOT_REDIRECTED:
            return None
        raise


def is_self(dst: tuple[str, int], listener: tuple[str, int]) -> bool:
    """The loop guard: a "captured" destination that is the listener itself is not a capture."""
    host, port = dst
    lhost, lport = listener
    return port == lport and (host == lhost or lhost in ("0.0.0.0", "::") or
                              host.startswith("127."))
