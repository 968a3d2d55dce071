# Augmenting declarations: compile _channel_py.py (via the _channel_c.py symlink) as _channel_c.
# One channel per streamed body (every upstream response): an extension type with C fields and
# C-callable feed/read methods (the compiled upstream and downstream cimport it).
import cython


cdef class BodyChannel:
    cdef public object _chunks
    cdef public Py_ssize_t _size
    cdef public bint _eof
    cdef public object _exc
    cdef public object _waiter
    cdef public object _pause
    cdef public object _resume
    cdef public bint _paused
    cdef public Py_ssize_t high
    cdef public Py_ssize_t low
    cdef public object trailers
    cdef public long long total

    cpdef feed(self, object data)

    cpdef feed_eof(self, object trailers=*)

    cpdef set_exception(self, object exc)

    cdef void _wake(self)

    @cython.locals(data=object)
    cpdef object read_nowait(self)
