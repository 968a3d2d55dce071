# Augmenting declarations: compile _propagate_py.py (via the _propagate_c.py symlink) as
# _propagate_c; both functions take the compiled Exchange.
import cython

from proxy.transport._exchange_c cimport Exchange as _Exchange

cdef tuple _FLAGS


@cython.locals(hdrs=dict, ctx=object)
cpdef trace(object sampler, _Exchange ex, list extra)

@cython.locals(extra=list, rid=object)
cpdef list hop_headers(object rt, _Exchange ex)
