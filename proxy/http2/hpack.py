"""HPACK (RFC 7541) for the HTTP/2 fast path: the compiled codec, or its pure-Python twin.

``Decoder(max_table_size=4096, max_header_list_size=65536, max_header_count=100)``
``.decode(block) -> list[(name, value)]``; ``Encoder(max_table_size=4096)``
``.encode(headers, huffman=True) -> bytes``. Errors: :class:`HPACKError` (COMPRESSION_ERROR,
fatal to the connection) and :class:`HeaderListTooLarge` (431; the connection can go on).
"""

from __future__ import annotations

from proxy import _accel
from proxy.http2.errors import HeaderListTooLarge, HPACKError

impl = _accel.load("proxy.http2", "hpack")

Decoder = impl.Decoder
Encoder = impl.Encoder
huffman_decode = impl.huffman_decode
huffman_encode = impl.huffman_encode
NEVER_INDEXED = impl.NEVER_INDEXED

__all__ = [
    "NEVER_INDEXED",
    "Decoder",
    "Encoder",
    "HPACKError",
    "HeaderListTooLarge",
    "huffman_decode",
    "huffman_encode",
]
