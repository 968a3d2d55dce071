"""The server name of a TLS ClientHello, read without terminating TLS (TLS route matching).

Sans-I/O: ``server_name(data)`` looks at the bytes a client sent first and answers the SNI host,
``""`` when the hello has none (or the bytes are not TLS), or ``None`` when more bytes are
needed. Only the first record is read (a ClientHello split across records is rare; it then
matches as "no SNI").
"""

from __future__ import annotations

MAX_HELLO = 16 * 1024 + 5


def server_name(data: bytes) -> str | None:
    if len(data) < 5:
        return None if (not data or data[0] == 0x16) else ""
    if data[0] != 0x16 or data[1] != 3:
        return ""
    rec_len = int.from_bytes(data[3:5], "big")
    if len(data) < 5 + rec_len:
        return None if len(data) < MAX_HELLO else ""
    try:
        return _hello_sni(memoryview(data)[5 : 5 + rec_len])
    except (IndexError, ValueError):
        return ""


def _hello_sni(h: memoryview) -> str:
    if h[0] != 1:  # handshake type client_hello
        return ""
    p = 4 + 2 + 32  # handshake header, version, random
    p += 1 + h[p]  # session id
    p += 2 + int.from_bytes(h[p : p + 2], "big")  # cipher suites
    p += 1 + h[p]  # compression methods
    if p + 2 > len(h):
        return ""
    end = p + 2 + int.from_bytes(h[p : p + 2], "big")
    p += 2
    while p + 4 <= end:
        etype = int.from_bytes(h[p : p + 2], "big")
        elen = int.from_bytes(h[p + 2 : p + 4], "big")
        p += 4
        if etype == 0:  # server_name: list length, then (type, length, name)
            q = p + 2
            while q + 3 <= p + elen:
                ntype = h[q]
                nlen = int.from_bytes(h[q + 1 : q + 3], "big")
                if ntype == 0:
                    return bytes(h[q + 3 : q + 3 + nlen]).decode("ascii", "replace").lower()
                q += 3 + nlen
            return ""
        p += elen
    return ""
