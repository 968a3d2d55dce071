"""HPACK codec: RFC 7541 vectors, strictness, the HPACK-bomb defence, and differential tests
against the ``hpack`` library (and the compiled twin against the pure-Python one)."""

from __future__ import annotations

import hpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.http2.errors import HeaderListTooLarge, HPACKError
from tests.unit.http2.conftest import load

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NAMES = [
    b":method",
    b":path",
    b":authority",
    b":scheme",
    b":status",
    b"content-type",
    b"te",
    b"grpc-timeout",
    b"grpc-encoding",
    b"user-agent",
    b"authorization",
    b"cookie",
    b"x-request-id",
    b"traceparent",
    b"x-b3-traceid",
    b"accept-encoding",
    b"content-length",
]
name_st = st.one_of(
    st.sampled_from(NAMES),
    st.binary(min_size=1, max_size=20).map(lambda b: b.lower()),
)
value_st = st.one_of(
    st.sampled_from(
        [b"", b"GET", b"POST", b"/", b"http", b"application/grpc", b"trailers", b"200"]
    ),
    st.binary(max_size=40),
    st.text(max_size=30).map(lambda s: s.encode()),
    # huge values (more than 3/4 of the table: never indexed), cheap to generate
    st.tuples(st.binary(min_size=1, max_size=8), st.integers(3000, 6000)).map(
        lambda t: (t[0] * 6000)[: t[1]]
    ),
)
headers_st = st.lists(st.tuples(name_st, value_st), max_size=12)
size_st = st.one_of(st.none(), st.integers(0, 4096))
blocks_st = st.lists(st.tuples(size_st, headers_st), min_size=1, max_size=6)


def lib_decode(dec: hpack.Decoder, block: bytes) -> list[tuple[bytes, bytes]]:
    return [tuple(h) for h in dec.decode(block, raw=True)]


# RFC 7541 C.4: requests with Huffman coding, one connection
C4 = [
    (
        "828684418cf1e3c2e5f23a6ba0ab90f4ff",
        [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":path", b"/"),
            (b":authority", b"www.example.com"),
        ],
    ),
    (
        "828684be5886a8eb10649cbf",
        [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":path", b"/"),
            (b":authority", b"www.example.com"),
            (b"cache-control", b"no-cache"),
        ],
    ),
    (
        "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
        [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":path", b"/index.html"),
            (b":authority", b"www.example.com"),
            (b"custom-key", b"custom-value"),
        ],
    ),
]
# RFC 7541 C.3: the same without Huffman coding
C3 = [
    ("828684410f7777772e6578616d706c652e636f6d", C4[0][1]),
    ("828684be58086e6f2d6361636865", C4[1][1]),
    ("828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565", C4[2][1]),
]


@pytest.mark.parametrize("vectors", [C3, C4], ids=["C3", "C4"])
def test_rfc7541_request_examples(hp, vectors):
    dec = hp.Decoder()
    for hexblock, expected in vectors:
        assert dec.decode(bytes.fromhex(hexblock)) == expected
    assert dec.table == [
        (b"custom-key", b"custom-value"),
        (b"cache-control", b"no-cache"),
        (b":authority", b"www.example.com"),
    ]


def test_huffman_round_trip_and_rfc_example(hp):
    assert hp.huffman_encode(b"www.example.com").hex() == "f1e3c2e5f23a6ba0ab90f4ff"
    every = bytes(range(256))
    assert hp.huffman_decode(hp.huffman_encode(every)) == every
    assert hp.huffman_decode(b"") == b""


@pytest.mark.parametrize(
    "coded",
    [
        b"\xff\xff\xff\xff",  # 30 ones: the EOS symbol
        b"\x1f\xff",  # 'a' then 8 bits of padding: padding longer than 7 bits
        b"\x18",  # 'a' then padding of zeros, not the EOS prefix
        b"\xfe",  # 1111111 0: the start of a longer code, not padding
    ],
)
def test_huffman_errors(hp, coded):
    with pytest.raises(HPACKError):
        hp.huffman_decode(coded)


@pytest.mark.parametrize(
    "block",
    [
        b"\x80",  # index 0
        b"\xbe",  # index 62 with an empty dynamic table
        b"\xff\xff\xff\xff\xff\xff\x01",  # integer overflow
        b"\xff\x80\x80\x80\x80\x10",  # 2^32 + 127: overflow in the last allowed octet
        b"\xff\x80\x80\x80\x80\x80\x80\x00",  # integer encoding too long
        b"\xff",  # truncated integer
        b"\x40\x05ab",  # truncated literal name
        b"\x41",  # missing value
        b"\x82\x20",  # size update after a field
        b"\x3f\xe2\x1f",  # size update 4097 > 4096
        b"\x40\x81\xff\x00",  # Huffman name of a single EOS prefix
    ],
)
def test_malformed_blocks(hp, block):
    with pytest.raises(HPACKError) as info:
        hp.Decoder().decode(block)
    assert not isinstance(info.value, HeaderListTooLarge)


def test_size_update_rules(hp):
    dec = hp.Decoder()
    assert dec.decode(b"\x20\x3f\xe1\x1f\x82") == [(b":method", b"GET")]  # two, then fields
    assert dec.header_table_size == 4096
    dec.max_allowed_table_size = 100
    with pytest.raises(HPACKError):
        dec.decode(b"\x82")  # RFC 7541 4.2: the reduction must be acknowledged first
    dec = hp.Decoder()
    dec.max_allowed_table_size = 100
    assert dec.decode(b"\x3f\x2b\x82") == [(b":method", b"GET")]  # 74 <= 100
    assert dec.header_table_size == 74


def test_hpack_bomb_is_refused_and_table_stays_in_step(hp):
    enc = hpack.Encoder()
    big = [(b"x-bomb", b"a" * 3000)]
    first = enc.encode(big)
    dec = hp.Decoder(max_header_list_size=65536)
    assert dec.decode(first) == big
    bomb = b"\xbe" * 1000  # 1000 references to the 3 KB entry: 3 MB from 1 KB
    with pytest.raises(HeaderListTooLarge):
        dec.decode(bomb)
    assert dec.decode(enc.encode(big + [(b"a", b"b")])) == big + [(b"a", b"b")]


def test_header_count_limit(hp):
    block = hpack.Encoder().encode([(b"x", b"1")] * 101)
    with pytest.raises(HeaderListTooLarge):
        hp.Decoder().decode(block)
    assert len(hp.Decoder(max_header_count=0).decode(block)) == 101


def test_empty_fields_count_their_overhead(hp):
    block = hpack.Encoder().encode([(b"x", b"")] * 90)
    with pytest.raises(HeaderListTooLarge):
        hp.Decoder(max_header_list_size=90 * 32).decode(block)


def test_encoder_indexes_repeats_and_never_indexes_secrets(hp):
    enc = hp.Encoder()
    fields = [
        (b":method", b"POST"),
        (b":path", b"/a.B/C"),
        (b"authorization", b"Bearer x"),
        (b"cookie", b"a=b"),
        (b"x-custom", b"v"),
    ]
    first = enc.encode(fields)
    second = enc.encode(fields)
    assert len(second) < len(first)
    lib = hpack.Decoder()
    decoded = lib.decode(first, raw=True) + lib.decode(second, raw=True)
    assert [tuple(h) for h in decoded] == fields * 2
    assert [h.indexable for h in decoded] == [True, True, False, False, True] * 2
    dec = hp.Decoder()
    dec.decode(first)
    assert dec.never_indexed == [2, 3]


def test_per_request_ids_are_literals_without_indexing(hp):
    """x-request-id and trace ids are new on every request: they must not churn the dynamic
    table (an insert and an eviction each, pushing out fields that repeat), yet a later hop
    may index them (not never-indexed)."""
    enc = hp.Encoder()
    lib = hpack.Decoder()
    blocks = []
    for i in range(200):
        fields = [
            (b":method", b"POST"),
            (b"content-type", b"application/grpc"),
            (b"x-request-id", b"3b059d5e-a309-4dda-a3fb-%012x" % i),
            (b"traceparent", b"00-%032x-%016x-01" % (i, i)),
            (b"x-custom", b"v"),
        ]
        block = enc.encode(fields)
        blocks.append(block)
        decoded = lib.decode(block, raw=True)
        assert [tuple(h) for h in decoded] == fields
        assert all(h.indexable for h in decoded)
    assert [n for n, _ in lib.header_table.dynamic_entries] == [b"x-custom", b"content-type"]
    # the repeated fields stay indexed: later blocks are only the two ids plus a few bytes
    assert len(blocks[-1]) == len(blocks[1]) < len(blocks[0])


def test_encoder_table_size_change(hp):
    enc = hp.Encoder()
    lib = hpack.Decoder()
    fields = [(b"x-a", b"1"), (b"x-b", b"2")]
    lib.decode(enc.encode(fields), raw=True)
    enc.header_table_size = 0
    enc.header_table_size = 100
    block = enc.encode(fields)
    assert block[:2] == b"\x20\x3f"  # the smallest size, then the final one
    assert [tuple(h) for h in lib.decode(block, raw=True)] == fields
    assert lib.header_table.maxsize == 100


@SETTINGS
@given(blocks=blocks_st, huffman=st.booleans())
def test_our_encoder_to_hpack_decoder(blocks, huffman):
    py, c = load("hpack", "python"), load("hpack", "cython")
    encoders = [py.Encoder(), c.Encoder()]
    lib = hpack.Decoder()
    for size, headers in blocks:
        if size is not None:
            for enc in encoders:
                enc.header_table_size = size
        out = [enc.encode(headers, huffman=huffman) for enc in encoders]
        assert out[0] == out[1]  # the twins agree byte for byte
        assert lib_decode(lib, out[0]) == headers


@SETTINGS
@given(blocks=blocks_st, sensitive=st.sets(st.integers(0, 11)), huffman=st.booleans())
def test_hpack_encoder_to_our_decoder(blocks, sensitive, huffman):
    py, c = load("hpack", "python"), load("hpack", "cython")
    decoders = [py.Decoder(), c.Decoder()]
    lib = hpack.Encoder()
    oracle = hpack.Decoder()
    for size, headers in blocks:
        if size is not None:
            lib.header_table_size = size
        tuples = [
            hpack.NeverIndexedHeaderTuple(*h) if i in sensitive else hpack.HeaderTuple(*h)
            for i, h in enumerate(headers)
        ]
        block = lib.encode(tuples, huffman=huffman)
        # hpack sends a sensitive field that is already in a table as an index, so ask a
        # reference decoder which fields really went out never-indexed
        expected = [i for i, h in enumerate(oracle.decode(block, raw=True)) if not h.indexable]
        for dec in decoders:
            assert dec.decode(block) == headers
            assert dec.never_indexed == expected
        assert decoders[0].table == decoders[1].table


@settings(max_examples=40, deadline=None)
@given(blocks=blocks_st)
def test_round_trip_ours(hp, blocks):
    enc, dec = hp.Encoder(), hp.Decoder()
    for size, headers in blocks:
        if size is not None:
            enc.header_table_size = size
        assert dec.decode(enc.encode(headers)) == headers


def outcome(mod, data: bytes, prime: bytes):
    dec = mod.Decoder(max_header_list_size=8192, max_header_count=50)
    try:
        dec.decode(prime)
        return ("ok", dec.decode(data), dec.table)
    except HeaderListTooLarge:
        return ("too-large", dec.table)
    except HPACKError:
        return ("error",)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=64), prime=st.sampled_from([b"", bytes.fromhex(C4[2][0])]))
def test_garbage_raises_only_hpack_errors_and_twins_agree(data, prime):
    assert outcome(load("hpack", "python"), data, prime) == outcome(
        load("hpack", "cython"), data, prime
    )


@settings(max_examples=100, deadline=None)
@given(
    headers=headers_st,
    cut=st.integers(0, 10_000),
    flip=st.integers(0, 10_000),
    bit=st.integers(0, 7),
)
def test_damaged_blocks(headers, cut, flip, bit):
    block = hpack.Encoder().encode(headers)
    truncated = block[: cut % (len(block) + 1)]
    damaged = bytearray(block)
    if damaged:
        damaged[flip % len(damaged)] ^= 1 << bit
    for data in (truncated, bytes(damaged)):
        assert outcome(load("hpack", "python"), data, b"") == outcome(
            load("hpack", "cython"), data, b""
        )


def test_never_indexed_survives_a_proxy_hop(hp):
    """RFC 7541 7.1.3: an intermediary keeps never-indexed fields never-indexed."""
    client = hpack.Encoder()
    block = client.encode(
        [hpack.HeaderTuple(b"x-a", b"1"), hpack.NeverIndexedHeaderTuple(b"x-token", b"s3cret")]
    )
    dec = hp.Decoder()
    fields = dec.decode(block)
    assert dec.never_indexed == [1]
    out = hp.Encoder().encode(fields, sensitive=dec.never_indexed)
    assert [h.indexable for h in hpack.Decoder().decode(out, raw=True)] == [True, False]
