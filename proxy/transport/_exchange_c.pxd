# Augmenting declarations: compile _exchange_py.py (via the _exchange_c.py symlink) as
# _exchange_c. One Exchange per request: an extension type, so making it fills a C struct
# instead of 29 slot stores, and compiled readers get typed fields.
import cython

cdef object _monotonic, _wallclock, split_host_port
cdef dict _HOST_PORT
cdef Py_ssize_t _HOST_PORT_MAX


cdef class Side:
    cdef public object rt
    cdef public str name
    cdef public bint outbound
    cdef public bint service_time
    cdef public bint endpoint_peer
    cdef public bint retry_overrides
    cdef public object env

    cpdef account(self, Exchange ex)


cdef class Exchange:
    cdef public double start
    cdef public int status
    cdef public object flags
    cdef public object upstream
    cdef public object cluster
    cdef public object service
    cdef public object route
    cdef public long long req_bytes
    cdef public long long resp_bytes
    cdef public double upstream_ms
    cdef public int attempts
    cdef public object request_id
    cdef public object grpc
    cdef public object peer
    cdef public bint mtls
    cdef public object endpoint
    cdef public object trace
    cdef public dict hdrs
    cdef public object downstream
    cdef public object fallback
    cdef public Side side
    cdef public object down
    cdef public object head
    cdef public object target
    cdef public object headers
    cdef public list extra
    cdef public object policy
    cdef public object upstream_cluster
    cdef public object resp_ops
    cdef public double deadline


@cython.locals(found=dict, spoofed=bint, name=object, value=object)
cpdef bint scan(object headers, Exchange ex) except -1

@cython.locals(hp=object)
cpdef tuple host_port(str authority)
