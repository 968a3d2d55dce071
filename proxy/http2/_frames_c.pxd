# Augments _frames_py.py (compiled as _frames_c): C types for the same source.
import cython

cdef Py_ssize_t _PREFACE_LEN, _HDR, _MIN_READ, _MIN_BUFFER
cdef unsigned int _PADDED, _PRIO, _ACK, _END_STREAM, _END_HEADERS


cdef class FrameParser:
    cdef public Py_ssize_t max_frame_size
    cdef bytearray _pending
    cdef Py_ssize_t _need
    cdef bint _preface
    cdef bytearray _buf
    cdef object _mv
    cdef Py_ssize_t _start, _end

    @cython.locals(start=Py_ssize_t, end=Py_ssize_t, held=Py_ssize_t, need=Py_ssize_t,
                   total=Py_ssize_t, cap=Py_ssize_t, size=Py_ssize_t, b=cython.p_uchar,
                   buf=bytearray)
    cpdef object get_buffer(self, Py_ssize_t hint)

    @cython.locals(frames=list, b=cython.p_uchar, end=Py_ssize_t, pos=Py_ssize_t,
                   length=Py_ssize_t, ftype=cython.uint, flags=cython.uint,
                   stream_id=cython.ulong)
    cpdef list parse(self, Py_ssize_t n)

    cpdef void clear(self)

    @cython.locals(frames=list, buf=bytes, b=cython.p_uchar, end=Py_ssize_t, pos=Py_ssize_t,
                   n=Py_ssize_t, length=Py_ssize_t, ftype=cython.uint, flags=cython.uint,
                   stream_id=cython.ulong)
    cpdef list feed(self, bytes data)


@cython.locals(n=Py_ssize_t, pad=Py_ssize_t, b=cython.p_uchar)
cdef tuple _padded(bytes payload, unsigned int flags, Py_ssize_t skip)

@cython.locals(start=Py_ssize_t, stop=Py_ssize_t)
cpdef bytes parse_data(unsigned int flags, unsigned long stream_id, bytes payload)

@cython.locals(start=Py_ssize_t, stop=Py_ssize_t)
cpdef tuple parse_headers(unsigned int flags, unsigned long stream_id, bytes payload)

@cython.locals(b=cython.p_uchar, depends_on=cython.ulong)
cdef tuple _priority(bytes payload, Py_ssize_t at, unsigned long stream_id)

@cython.locals(b=cython.p_uchar, n=Py_ssize_t, at=Py_ssize_t, ident=cython.uint,
               value=cython.ulong, out=list)
cpdef list parse_settings(unsigned int flags, unsigned long stream_id, bytes payload)

@cython.locals(b=cython.p_uchar, hi=cython.ulong)
cdef unsigned long _u32(bytes payload, Py_ssize_t at) except? 0

@cython.locals(n=Py_ssize_t, h=cython.p_uchar, header=bytearray)
cpdef bytes frame(unsigned int ftype, unsigned int flags, unsigned long stream_id, bytes payload)
