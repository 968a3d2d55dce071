# Augmenting declarations: compile _tries_py.py (via the _tries_c.py symlink) as _tries_c.
# The synchronous steps take the compiled Exchange and Attempts, so their fields are C reads.
import cython

from proxy.resilience._attempts_c cimport Attempts as _Attempts
from proxy.transport._exchange_c cimport Exchange as _Exchange

cdef object _PROPAGATION


@cython.locals(grpc=bint, total=object, hdrs=dict)
cpdef _Attempts attempts_for(_Exchange ex)

@cython.locals(framing=list)
cpdef list request_framing(object head)

cpdef int settle(
    _Exchange ex, _Attempts m, object conn, object pool, object ep, bint reused, object result
) except -1
