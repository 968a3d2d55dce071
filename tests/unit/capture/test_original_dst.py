"""Parsing the kernel's sockaddr answers, and None for a connection that was not redirected."""

from __future__ import annotations

import socket
import struct

from proxy.capture.original_dst import (
    is_self,
    original_dst,
    parse_sockaddr_in,
    parse_sockaddr_in6,
)


def test_parse_sockaddr_in() -> None:
    raw = (struct.pack("=H", socket.AF_INET) + struct.pack("!H", 9080)
           + socket.inet_aton("10.96.0.7"))
    assert parse_sockaddr_in(raw + b"\0" * 8) == ("10.96.0.7", 9080)


def test_parse_sockaddr_in6() -> None:
    raw = (struct.pack("=H", socket.AF_INET6) + struct.pack("!H", 443) + b"\0" * 4
           + socket.inet_pton(socket.AF_INET6, "fd00::7") + b"\0" * 4)
    assert len(raw) == 28
    assert parse_sockaddr_in6(raw) == ("fd00::7", 443)


def test_a_direct_connection_is_not_a_capture() -> None:
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    with lst, socket.create_connection(lst.getsockname(), timeout=5) as c:
        s, _ = lst.accept()
        with s:
            assert original_dst(s) is None
        assert c


def test_loop_guard() -> None:
    assert is_self(("127.0.0.1", 15001), ("127.0.0.1", 15001))
    assert is_self(("10.200.0.3", 15006), ("0.0.0.0", 15006))
    assert not is_self(("10.200.0.4", 8080), ("127.0.0.1", 15001))
