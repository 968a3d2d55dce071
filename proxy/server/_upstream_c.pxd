# Augmenting declarations: compile _upstream_py.py (via the _upstream_c.py symlink) as
# _upstream_c. The connection and the pool become extension types: their attributes are C
# struct fields (typed where the type is fixed), their methods C calls between each other.
import cython

from proxy.server._channel_c cimport BodyChannel as _BodyChannel

cdef int MODE_NONE, MODE_LENGTH, MODE_CHUNKED, MODE_CLOSE
cdef object parse_response_head, response_body_mode, ChunkedDecoder, _monotonic
cdef object BodyChannel, ChannelClosed, request_head

cdef class EndpointPool


cdef bint _too_old(UpstreamConnection conn, double max_age) except -1


cdef class UpstreamConnection:
    cdef public EndpointPool pool
    cdef public object transport
    cdef public bytes buf
    cdef public object head_waiter
    cdef public object head
    cdef public _BodyChannel body
    cdef public int mode
    cdef public long long remaining
    cdef public object chunked
    cdef public bint closed
    cdef public bint keep_alive
    cdef public str request_method
    cdef public double idle_since
    cdef public long long requests
    cdef public object tunnel
    cdef public bint _paused_writing
    cdef public object _drain_waiter
    cdef public bint got_bytes
    cdef public str peer_principal
    cdef public bint chunked_request
    cdef public object _timer
    cdef public double _timer_when
    cdef public double _t_deadline
    cdef public object _t_fut
    cdef public bint tls_fresh
    cdef public bint counted
    cdef public double created

    @cython.locals(res=object, n=Py_ssize_t, mode=int, length="long long", rest=bytes)
    cdef void _parse_head(self)

    @cython.locals(mode=int, n=Py_ssize_t)
    cdef void _feed_body(self, bytes data)

    cdef void _fail(self, object exc)

    @cython.locals(deadline=double)
    cpdef arm_timeout(self, object fut, double timeout)

    cpdef disarm_timeout(self)

    cpdef object start(self, bytes head_bytes, str method)

    cpdef write(self, object data)


cdef class EndpointPool:
    cdef public str host
    cdef public object port
    cdef public object ssl
    cdef public object server_hostname
    cdef public list idle
    cdef public long long active
    cdef public object loop
    cdef public double idle_timeout
    cdef public long long max_requests
    cdef public object _sweeper
    cdef public object verify_peer
    cdef public object sessions
    cdef public long long max_connections
    cdef public long long max_pending
    cdef public long long max_active
    cdef public long long open
    cdef public object waiters
    cdef public dict overflows
    cdef public object on_overflow
    cdef public double max_age
    cdef public tuple keepalive

    @cython.locals(conn=UpstreamConnection)
    cpdef object take_idle(self)

    cdef bint _wake(self, object conn) except -1

    cdef void _closed_one(self)

    cpdef release(self, UpstreamConnection conn)

    cpdef discard(self, UpstreamConnection conn)
