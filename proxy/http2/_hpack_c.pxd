# Augments _hpack_py.py (compiled as _hpack_c): C types for the same source.
import cython

cdef Py_ssize_t _STATIC_LEN, _OVERHEAD
cdef long long _MAX_INT
cdef dict _STATIC_FULL, _STATIC_NAMES
cdef bytes _HUFF_DECODE, _HUFF_LEN
cdef tuple _HUFF_CODE
cdef unsigned int _H_EMIT, _H_FAIL, _H_ACCEPT


@cython.locals(buf=cython.p_uchar, tbl=cython.p_uchar, out=bytearray, ob=cython.p_uchar,
               k=Py_ssize_t, state=cython.uint, flags=cython.uint, i=Py_ssize_t, c=cython.uint,
               j=cython.uint)
cdef bytes _huffman_decode(unsigned char *data, Py_ssize_t start, Py_ssize_t end)

@cython.locals(buf=cython.p_uchar, lens=cython.p_uchar, bits=Py_ssize_t, i=Py_ssize_t)
cdef Py_ssize_t _huffman_length(bytes data) except -1

@cython.locals(buf=cython.p_uchar, lens=cython.p_uchar, codes=tuple, acc=cython.ulonglong,
               nbits=cython.int, i=Py_ssize_t, c=cython.uint, n=cython.uint, code=cython.ulonglong,
               out=bytearray,
               ob=cython.p_uchar, k=Py_ssize_t)
cdef bytearray _huffman_encode(bytes data, Py_ssize_t length)

@cython.locals(limit=Py_ssize_t)
cdef object _emit_int(bytearray out, Py_ssize_t value, int prefix, int first)

@cython.locals(n=Py_ssize_t, hlen=Py_ssize_t)
cdef object _emit_str(bytearray out, bytes data, bint huffman)


cdef class Decoder:
    cdef list _table
    cdef Py_ssize_t _table_size
    cdef Py_ssize_t _max_size
    cdef Py_ssize_t _max_allowed
    cdef bint _size_update_required
    cdef Py_ssize_t _pos
    cdef public Py_ssize_t max_header_list_size
    cdef public Py_ssize_t max_header_count
    cdef public list never_indexed

    @cython.locals(buf=cython.p_uchar, end=Py_ssize_t, headers=list, total=Py_ssize_t,
                   count=Py_ssize_t, too_large=bint, started=bint, b=cython.uint,
                   size=Py_ssize_t, index=Py_ssize_t, name=bytes, value=bytes)
    cpdef list decode(self, bytes data)

    @cython.locals(pos=Py_ssize_t, limit=Py_ssize_t, value=cython.longlong, shift=cython.int,
                   b=cython.ulonglong)
    cdef Py_ssize_t _decode_int(self, unsigned char *buf, Py_ssize_t end, int prefix) except -1

    @cython.locals(huffman=cython.uint, length=Py_ssize_t, start=Py_ssize_t)
    cdef bytes _decode_str(self, unsigned char *buf, Py_ssize_t end)

    @cython.locals(n=Py_ssize_t)
    cdef tuple _field(self, Py_ssize_t index)

    @cython.locals(size=Py_ssize_t)
    cdef object _add(self, bytes name, bytes value)

    @cython.locals(name=bytes, value=bytes)
    cdef object _evict(self, Py_ssize_t room)


cdef class Encoder:
    cdef list _entries
    cdef Py_ssize_t _size
    cdef Py_ssize_t _max_size
    cdef Py_ssize_t _next_seq
    cdef dict _full
    cdef dict _names
    cdef Py_ssize_t _pending_min
    cdef public object never_index

    @cython.locals(out=bytearray, name=bytes, value=bytes, index=Py_ssize_t, seq=Py_ssize_t,
                   size=Py_ssize_t, key=tuple, i=Py_ssize_t)
    cpdef bytes encode(self, object headers, bint huffman=*, object sensitive=*)

    @cython.locals(index=Py_ssize_t, seq=Py_ssize_t)
    cdef Py_ssize_t _name_index(self, bytes name) except -1

    @cython.locals(seq=Py_ssize_t)
    cdef object _add(self, bytes name, bytes value, Py_ssize_t size)

    @cython.locals(name=bytes, value=bytes, size=Py_ssize_t, seq=Py_ssize_t, key=tuple)
    cdef object _evict(self, Py_ssize_t room)
