# Augmenting declarations: compile _attempt_py.py (via the _attempt_c.py symlink) as _attempt_c.
# judge and respond take the compiled Exchange and Attempts, so their fields are C reads.
import cython

from proxy.resilience._attempts_c cimport Attempts as _Attempts
from proxy.transport._exchange_c cimport Exchange as _Exchange

cdef object _monotonic, _WHOLE


@cython.locals(status=int, grpc=object, grpc_hdr=object, fb=object)
cpdef int judge(_Exchange ex, object conn, object resp, object ep, _Attempts m) except -1

@cython.locals(status=int, extra=list, ops=object, no_body=bint, length="long long")
cpdef tuple respond(_Exchange ex, object conn, object resp, _Attempts m)
