"""Bound what one TLS connection keeps after a large message, in both directions.

The TLS layer under a config stream (uvloop's, as asyncio's) encrypts whatever one
``transport.write`` hands it into an OpenSSL memory BIO and then reads it out; it decrypts
whatever one socket read returned the same way. A memory BIO grows to the largest burst it ever
held and never gives the memory back while the connection lives. aiohttp writes a WebSocket
message with one ``write``, so every sidecar's first whole snapshot (~95 KB at 1,000 sidecars)
left ~110 KB per connection in the control plane, more than half of what a connected sidecar
cost it (``loadtests/bench_push.py``). Written in pieces of one TLS record (16 KiB), the BIO
holds one record: ~20 KB per connection instead. A delta (hundreds of bytes) is still one
write; a whole snapshot becomes a few, each encrypted and handed to the socket at once: the
same WebSocket frames in the same order, cut into more TLS records. Reads are bounded by the
socket's receive buffer (:func:`bound_reads`).
"""

from __future__ import annotations

import asyncio
from typing import Any

CHUNK = 16 * 1024  # one TLS record's plaintext (RFC 8446 5.1)


class ChunkedWrites:
    """A transport whose ``write`` hands the one under it at most :data:`CHUNK` bytes a call;
    everything else goes to that transport unchanged."""

    __slots__ = ("transport",)

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        write = self.transport.write  # type: ignore[attr-defined]
        if len(data) <= CHUNK:
            write(data)
            return
        view = memoryview(data)
        for i in range(0, len(view), CHUNK):
            write(view[i:i + CHUNK])

    def is_closing(self) -> bool:  # aiohttp asks before every frame: no __getattr__ detour
        return self.transport.is_closing()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


def chunk_websocket_writes(ws: Any) -> bool:
    """Make a prepared WebSocket's frames reach its TLS transport in :data:`CHUNK` pieces.
    aiohttp keeps the transport its writer writes to as ``ws._writer.transport``; with another
    aiohttp (no such attribute) this does nothing and says so (False): the stream still works,
    it only keeps the larger buffer."""
    writer = getattr(ws, "_writer", None)
    transport = getattr(writer, "transport", None)
    if transport is None or isinstance(transport, ChunkedWrites):
        return isinstance(transport, ChunkedWrites)
    if transport.get_extra_info("ssl_object") is None:
        return False  # plain TCP (unit tests): the kernel buffers, nothing to bound
    writer.transport = ChunkedWrites(transport)  # type: ignore[union-attr]
    return True


# The kernel's receive buffer of a config stream's socket: what one read can return at most.
RCVBUF = 32 * 1024


def bound_reads(sockets: Any) -> None:
    """Cap the receive buffer of the listener's sockets (connections accepted later inherit
    it). The TLS layer reads whatever the socket holds into its read buffer and hands it to
    OpenSSL's incoming memory BIO in one piece, and both keep the size of the largest read for
    the life of the connection: a reconnecting sidecar's registration (a hash per item it
    holds, ~120 KB at 1,000 sidecars) cost each stream ~1.3x its size. With 32 KiB (the
    kernel doubles it for its own accounting) a read returns at most that much. Requests
    still arrive whole, in more reads; the control plane receives ACKs and API calls, never a
    bulk transfer, so the smaller TCP window costs it nothing measurable."""
    import socket

    for sock in sockets or ():
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        except OSError:
            pass  # best effort: a platform that refuses keeps its default
