# cython: annotation_typing=False
"""HPACK (RFC 7541) header compression: a strict decoder and an indexing encoder.

This is the readable twin; ``_hpack_c.pxd`` gives the same source C types and ``setup.py``
compiles it as ``_hpack_c``. Code here is written so that both run it well: byte buffers are
read by index (a ``const unsigned char *`` once compiled), the read cursor lives on the decoder
(a C field once compiled) and no per-field objects are made beyond the ``(name, value)`` tuple.
"""

from __future__ import annotations

from collections.abc import Container

from proxy.http2._hpack_tables import HUFFMAN_CODES, STATIC_TABLE
from proxy.http2.errors import HeaderListTooLarge, HPACKError

DEFAULT_TABLE_SIZE = 4096
DEFAULT_MAX_HEADER_LIST_SIZE = 65536
DEFAULT_MAX_HEADER_COUNT = 100
#: RFC 7541 4.1: every entry costs its name, its value and 32 octets of overhead
ENTRY_OVERHEAD = 32
#: an integer beyond this is an attack or a bug, never a real index, length or table size
MAX_INT = 0x7FFFFFFF
#: fields that must never enter a compression context (RFC 7541 7.1.3: CRIME-style probing)
NEVER_INDEXED = frozenset((b"authorization", b"proxy-authorization", b"cookie", b"set-cookie"))
#: fields whose value is new on every request (ids): sent as literals *without* indexing (RFC
#: 7541 6.2.2; unlike never-indexed, a later hop may index them). Indexing them would cost an
#: insert and an eviction per request and push out entries that do repeat.
UNIQUE_PER_REQUEST = frozenset((b"x-request-id", b"traceparent", b"b3", b"x-b3-traceid",
                                b"x-b3-spanid", b"x-b3-parentspanid"))  # fmt: skip

# C-typed copies for the compiled twin (the public names stay Python objects)
_OVERHEAD = ENTRY_OVERHEAD
_MAX_INT = MAX_INT

_STATIC_LEN = len(STATIC_TABLE)
_STATIC_FULL: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAMES: dict[bytes, int] = {}
for _i, _field in enumerate(STATIC_TABLE, 1):
    _STATIC_FULL.setdefault(_field, _i)
    _STATIC_NAMES.setdefault(_field[0], _i)

# Huffman decoding runs a 4-bit-at-a-time automaton over the code tree (the nghttp2 scheme).
# The states are the tree's 256 inner nodes; entry (state * 16 + nibble) * 3 holds the next
# state, flags, and the symbol emitted. The minimum code length is 5 bits, so one nibble emits
# at most one symbol.
_H_EMIT = 1
_H_FAIL = 2  # the nibble completes EOS, which must never appear in a string (RFC 7541 5.2)
_H_ACCEPT = 4  # stopping here leaves only a valid padding: at most 7 bits, all ones


def _build_huffman_decoder() -> bytes:
    children: list[list[int]] = [[0, 0]]  # 0 never names a child, so it means "no child yet"
    for sym, (code, length) in enumerate(HUFFMAN_CODES):
        node = 0
        for shift in range(length - 1, -1, -1):
            bit = (code >> shift) & 1
            if shift == 0:
                children[node][bit] = -(sym + 1)
            else:
                if children[node][bit] == 0:
                    children.append([0, 0])
                    children[node][bit] = len(children) - 1
                node = children[node][bit]
    depth = [0] * len(children)
    all_ones = [True] * len(children)
    for node, kids in enumerate(children):  # parents are created before their children
        for bit, kid in enumerate(kids):
            if kid > 0:
                depth[kid] = depth[node] + 1
                all_ones[kid] = all_ones[node] and bit == 1
    assert len(children) <= 256
    table = bytearray(len(children) * 16 * 3)
    for state in range(len(children)):
        for nibble in range(16):
            node, flags, sym = state, 0, 0
            for shift in (3, 2, 1, 0):
                kid = children[node][(nibble >> shift) & 1]
                if kid < 0:
                    if kid == -257:
                        flags |= _H_FAIL
                        break
                    flags |= _H_EMIT
                    sym = -kid - 1
                    node = 0
                else:
                    node = kid
            if not flags & _H_FAIL and (node == 0 or (all_ones[node] and depth[node] <= 7)):
                flags |= _H_ACCEPT
            j = (state * 16 + nibble) * 3
            table[j] = node if not flags & _H_FAIL else 0
            table[j + 1] = flags
            table[j + 2] = sym
    return bytes(table)


_HUFF_DECODE = _build_huffman_decoder()
_HUFF_CODE = tuple(code for code, _ in HUFFMAN_CODES)
_HUFF_LEN = bytes(length for _, length in HUFFMAN_CODES[:256])


def huffman_decode(data: bytes) -> bytes:
    """Decode one Huffman-coded string (RFC 7541 5.2); raises HPACKError if it is invalid."""
    return _huffman_decode(data, 0, len(data))


def _huffman_decode(data: bytes, start: int, end: int) -> bytes:
    buf = data
    tbl = _HUFF_DECODE
    # A code is at least 5 bits long, so n octets hold at most 8n/5 symbols; writing into a
    # buffer of that size beats growing one octet at a time.
    out = bytearray(((end - start) * 8) // 5)
    ob = out
    k = 0
    state = 0
    flags = _H_ACCEPT
    for i in range(start, end):
        c = buf[i]
        j = (state * 16 + (c >> 4)) * 3
        flags = tbl[j + 1]
        if flags & _H_EMIT:
            ob[k] = tbl[j + 2]
            k += 1
        elif flags & _H_FAIL:
            raise HPACKError("EOS symbol inside a Huffman-coded string")
        state = tbl[j]
        j = (state * 16 + (c & 15)) * 3
        flags = tbl[j + 1]
        if flags & _H_EMIT:
            ob[k] = tbl[j + 2]
            k += 1
        elif flags & _H_FAIL:
            raise HPACKError("EOS symbol inside a Huffman-coded string")
        state = tbl[j]
    if not flags & _H_ACCEPT:
        raise HPACKError("invalid Huffman padding")
    return bytes(ob[:k])


def huffman_encode(data: bytes) -> bytes:
    """Huffman-code ``data`` (RFC 7541 5.2), padding the last octet with the EOS prefix."""
    return bytes(_huffman_encode(data, _huffman_length(data)))


def _huffman_length(data: bytes) -> int:
    buf = data
    lens = _HUFF_LEN
    bits = 0
    for i in range(len(data)):
        bits += lens[buf[i]]
    return (bits + 7) >> 3


def _huffman_encode(data: bytes, length: int) -> bytearray:
    """Huffman-code ``data`` whose coded length (from ``_huffman_length``) is ``length``."""
    buf = data
    lens = _HUFF_LEN
    codes = _HUFF_CODE
    out = bytearray(length)
    ob = out
    k = 0
    acc = 0
    nbits = 0
    for i in range(len(data)):
        c = buf[i]
        n = lens[c]
        code = codes[c]
        acc = (acc << n) | code
        nbits += n
        while nbits >= 8:
            nbits -= 8
            ob[k] = (acc >> nbits) & 0xFF
            k += 1
        acc &= (1 << nbits) - 1  # keeps the accumulator below 38 bits
    if nbits:
        ob[k] = ((acc << (8 - nbits)) | (0xFF >> nbits)) & 0xFF
    return out


def _emit_int(out: bytearray, value: int, prefix: int, first: int) -> None:
    """RFC 7541 5.1: ``value`` in a ``prefix``-bit prefix whose other bits are ``first``."""
    limit = (1 << prefix) - 1
    if value < limit:
        out.append(first | value)
        return
    out.append(first | limit)
    value -= limit
    while value >= 128:
        out.append((value & 127) | 128)
        value >>= 7
    out.append(value)


def _emit_str(out: bytearray, data: bytes, huffman: bool) -> None:
    n = len(data)
    if huffman and n:
        hlen = _huffman_length(data)
        if hlen < n:
            _emit_int(out, hlen, 7, 0x80)
            out += _huffman_encode(data, hlen)
            return
    _emit_int(out, n, 7, 0)
    out += data


class Decoder:
    """Decodes header blocks, keeping the dynamic table in step with the peer's encoder.

    ``max_table_size`` is the SETTINGS_HEADER_TABLE_SIZE this endpoint advertised: the peer may
    size its table up to it. Decoding refuses with :class:`HPACKError` anything RFC 7541 forbids
    and with :class:`HeaderListTooLarge` (after finishing the block, so the table stays in step)
    a list above ``max_header_list_size`` octets (each field counted as name + value + 32) or
    ``max_header_count`` fields (0 for no count limit): the HPACK-bomb defence.
    """

    def __init__(
        self,
        max_table_size: int = DEFAULT_TABLE_SIZE,
        max_header_list_size: int = DEFAULT_MAX_HEADER_LIST_SIZE,
        max_header_count: int = DEFAULT_MAX_HEADER_COUNT,
    ) -> None:
        self._table: list = []  # (name, value), oldest first
        self._table_size = 0
        self._max_size = max_table_size  # the size the encoder last chose
        self._max_allowed = max_table_size  # the bound we advertised
        self._size_update_required = False
        self._pos = 0
        self.max_header_list_size = max_header_list_size
        self.max_header_count = max_header_count
        #: positions, in the last decoded list, of the fields sent as never-indexed
        self.never_indexed: list = []

    @property
    def max_allowed_table_size(self) -> int:
        return self._max_allowed

    @max_allowed_table_size.setter
    def max_allowed_table_size(self, value: int) -> None:
        """Call when our SETTINGS_HEADER_TABLE_SIZE is acknowledged by the peer."""
        if value < self._max_size:
            # RFC 7541 4.2: the encoder must then shrink its table at the start of the next block
            self._size_update_required = True
        self._max_allowed = value

    @property
    def header_table_size(self) -> int:
        """The dynamic table size currently in force (last chosen by the peer's encoder)."""
        return self._max_size

    @property
    def table(self) -> list:
        """The dynamic table, newest entry first (index 62 onwards)."""
        return self._table[::-1]

    def decode(self, data: bytes) -> list:
        buf = data
        end = len(data)
        self._pos = 0
        headers: list = []
        self.never_indexed = []
        total = 0
        count = 0
        too_large = False
        started = False
        while self._pos < end:
            b = buf[self._pos]
            if b & 0x20 and not b & 0xC0:  # 001xxxxx: dynamic table size update
                if started:
                    raise HPACKError("dynamic table size update after the first field")
                size = self._decode_int(buf, end, 5)
                if size > self._max_allowed:
                    raise HPACKError("dynamic table size update above the advertised maximum")
                self._max_size = size
                self._evict(0)
                self._size_update_required = False
                continue
            if not started:
                if self._size_update_required:
                    raise HPACKError("missing the required dynamic table size update")
                started = True
            if b & 0x80:  # 1xxxxxxx: indexed field
                index = self._decode_int(buf, end, 7)
                if index == 0:
                    raise HPACKError("index 0")
                field = self._field(index)
                name = field[0]
                value = field[1]
            else:
                if b & 0x40:  # 01xxxxxx: literal with incremental indexing
                    index = self._decode_int(buf, end, 6)
                else:  # 0000xxxx without indexing, 0001xxxx never indexed
                    if b & 0x10:
                        self.never_indexed.append(count)
                    index = self._decode_int(buf, end, 4)
                if index:
                    name = self._field(index)[0]
                else:
                    name = self._decode_str(buf, end)
                value = self._decode_str(buf, end)
                if b & 0x40:
                    self._add(name, value)
                field = (name, value)
            count += 1
            total += len(name) + len(value) + _OVERHEAD
            if too_large:
                continue
            if total > self.max_header_list_size or (
                self.max_header_count and count > self.max_header_count
            ):
                # Keep decoding (cheaply: nothing more is kept) so the table stays in step.
                too_large = True
                headers = []
                continue
            headers.append(field)
        if too_large:
            raise HeaderListTooLarge(
                f"header list of {count} fields, {total} octets exceeds the limit of "
                f"{self.max_header_list_size} octets / {self.max_header_count} fields"
            )
        return headers

    def _decode_int(self, buf: bytes, end: int, prefix: int) -> int:
        pos = self._pos
        limit = (1 << prefix) - 1
        value = buf[pos] & limit
        pos += 1
        if value == limit:
            shift = 0
            while True:
                if pos >= end:
                    raise HPACKError("truncated integer")
                b = buf[pos]
                pos += 1
                value += (b & 127) << shift
                if value > _MAX_INT:
                    raise HPACKError("integer overflow")
                if not b & 128:
                    break
                shift += 7
                if shift > 28:
                    raise HPACKError("integer encoding too long")
        self._pos = pos
        return value

    def _decode_str(self, buf: bytes, end: int) -> bytes:
        if self._pos >= end:
            raise HPACKError("truncated block: a string is missing")
        huffman = buf[self._pos] & 0x80
        length = self._decode_int(buf, end, 7)
        start = self._pos
        if length > end - start:
            raise HPACKError("truncated string")
        self._pos = start + length
        if huffman:
            return _huffman_decode(buf, start, start + length)
        return buf[start : start + length]

    def _field(self, index: int) -> tuple:
        if index <= _STATIC_LEN:
            return STATIC_TABLE[index - 1]
        index -= _STATIC_LEN + 1
        n = len(self._table)
        if index >= n:
            raise HPACKError("index beyond the dynamic table")
        return self._table[n - 1 - index]

    def _add(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + _OVERHEAD
        if size > self._max_size:
            # RFC 7541 4.4: an entry larger than the table empties it and is not added
            self._table.clear()
            self._table_size = 0
            return
        self._evict(size)
        self._table.append((name, value))
        self._table_size += size

    def _evict(self, room: int) -> None:
        while self._table_size + room > self._max_size:
            name, value = self._table.pop(0)
            self._table_size -= len(name) + len(value) + _OVERHEAD


class Encoder:
    """Encodes header lists; repeated fields are indexed, sensitive ones never are.

    A field enters the dynamic table unless its name is in ``never_index`` (sent as
    never-indexed literals, RFC 7541 7.1.3), in ``UNIQUE_PER_REQUEST`` (ids: a literal without
    indexing) or it would fill more than three quarters of the table (it would only evict
    everything else).
    """

    def __init__(
        self, max_table_size: int = DEFAULT_TABLE_SIZE, never_index: frozenset = NEVER_INDEXED
    ) -> None:
        self._entries: list = []  # (name, value, size), oldest first
        self._size = 0
        self._max_size = max_table_size
        self._next_seq = 0  # insertion number of the next entry; the newest is _next_seq - 1
        self._full: dict = {}  # (name, value) -> insertion number of its newest copy
        self._names: dict = {}  # name -> insertion number of its newest entry
        self._pending_min = -1  # smallest size set since the last block, -1 if none
        self.never_index = never_index

    @property
    def header_table_size(self) -> int:
        return self._max_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        """Resize the table (at most the peer's SETTINGS_HEADER_TABLE_SIZE).

        The next block starts with the size update(s) telling the decoder (RFC 7541 4.2).
        """
        if value < 0 or value > _MAX_INT:
            raise ValueError("header table size out of range")
        self._max_size = value
        self._evict(0)
        if self._pending_min < 0 or value < self._pending_min:
            self._pending_min = value

    def encode(
        self, headers: list, huffman: bool = True, sensitive: Container[int] | None = None
    ) -> bytes:
        """Encode one header list. ``sensitive``: positions of fields to send never-indexed
        besides the ``never_index`` names; a proxy passes the decoder's ``never_indexed`` so
        that a field the client protected stays protected (RFC 7541 7.1.3 requires it)."""
        out = bytearray()
        if self._pending_min >= 0:
            if self._pending_min < self._max_size:
                _emit_int(out, self._pending_min, 5, 0x20)
            _emit_int(out, self._max_size, 5, 0x20)
            self._pending_min = -1
        i = -1
        for field in headers:
            i += 1
            name = field[0]
            value = field[1]
            if name in self.never_index or (sensitive is not None and i in sensitive):
                index = self._name_index(name)
                _emit_int(out, index, 4, 0x10)
                if not index:
                    _emit_str(out, name, huffman)
                _emit_str(out, value, huffman)
                continue
            key = (name, value)
            index = _STATIC_FULL.get(key, 0)
            if index:
                _emit_int(out, index, 7, 0x80)
                continue
            seq = self._full.get(key, -1)
            if seq >= 0:
                _emit_int(out, _STATIC_LEN + self._next_seq - seq, 7, 0x80)
                continue
            index = self._name_index(name)
            size = len(name) + len(value) + _OVERHEAD
            if size * 4 <= self._max_size * 3 and name not in UNIQUE_PER_REQUEST:
                _emit_int(out, index, 6, 0x40)
                if not index:
                    _emit_str(out, name, huffman)
                _emit_str(out, value, huffman)
                self._add(name, value, size)
            else:
                _emit_int(out, index, 4, 0)
                if not index:
                    _emit_str(out, name, huffman)
                _emit_str(out, value, huffman)
        return bytes(out)

    def _name_index(self, name: bytes) -> int:
        index = _STATIC_NAMES.get(name, 0)
        if index:
            return index
        seq = self._names.get(name, -1)
        if seq >= 0:
            return _STATIC_LEN + self._next_seq - seq
        return 0

    def _add(self, name: bytes, value: bytes, size: int) -> None:
        self._evict(size)
        seq = self._next_seq
        self._next_seq = seq + 1
        self._entries.append((name, value, size))
        self._size += size
        self._full[(name, value)] = seq
        self._names[name] = seq

    def _evict(self, room: int) -> None:
        while self._entries and self._size + room > self._max_size:
            name, value, size = self._entries.pop(0)
            seq = self._next_seq - 1 - len(self._entries)  # the entry just removed
            self._size -= size
            key = (name, value)
            if self._full.get(key, -1) == seq:
                del self._full[key]
            if self._names.get(name, -1) == seq:
                del self._names[name]
