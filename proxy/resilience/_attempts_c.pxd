# Augmenting declarations: compile _attempts_py.py (via the _attempts_c.py symlink) as
# _attempts_c. One Attempts per request: an extension type, so making it fills a C struct and its
# events read and write typed fields. Env stays a Python class (the runtime subclasses it with a
# live ``gates`` property).
import cython

cdef object _CONNECT, _RESET, _TIMEOUT, _RESPONSE
cdef object attempt_timeout, format_timeout_ms, IDEMPOTENT_METHODS, retry_after_delay, timeout_extra


cdef class Attempts:
    cdef public object env
    cdef public object retry
    cdef public str method
    cdef public bint idem
    cdef public object source
    cdef public double deadline
    cdef public object dest
    cdef public object cluster
    cdef public set tried
    cdef public int attempt
    cdef public object timeout
    cdef public double delay
    cdef public int status
    cdef public object flag
    cdef public object slot
    cdef public int hedges
    cdef public bint outbound
    cdef public object expected
    cdef public object grpc_timeout
    cdef public bint grpc
    cdef public object propagation
    cdef public object drop

    @cython.locals(remaining=object)
    cpdef int begin(self, object key) except -1

    @cython.locals(lines=list, t=object, expected=bint)
    cpdef list try_headers(self, list extra, object framing)

    cpdef bint _may_retry(self, object outcome, int status, object grpc, bint rl) except -1

    @cython.locals(delay=double, left=double)
    cpdef int _backoff(self, object retry_after) except -1

    cpdef int _give_up(self, int status, object flag) except -1
