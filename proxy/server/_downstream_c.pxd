# Augmenting declarations: compile _downstream_py.py (via the _downstream_c.py symlink) as
# _downstream_c. The per-connection protocol becomes an extension type: its state is C struct
# fields, and the calls between its own methods are C calls.
import cython

from proxy.server._channel_c cimport BodyChannel as _BodyChannel

cdef int HEAD, BODY, WAIT, TUNNEL, CLOSED
cdef object parse_request_head, ChunkedDecoder, BodyChannel, response_head
cdef bytes _CONTINUE


cdef class Downstream:
    cdef public object listener
    cdef public object handler
    cdef public object loop
    cdef public object transport
    cdef public bytes buf
    cdef public int state
    cdef public _BodyChannel body
    cdef public long long remaining
    cdef public object chunked
    cdef public object task
    cdef public object peer
    cdef public str peer_principal
    cdef public bint tls
    cdef public str alpn
    cdef public bint keep_alive
    cdef public double idle_since
    cdef public double head_since
    cdef public bint _paused_writing
    cdef public object _drain_waiter
    cdef public object tunnel_peer
    cdef public long long requests
    cdef public bint read_paused
    cdef public str method
    cdef public int version
    cdef public object original_dst
    cdef public bint _chunk_out
    cdef public long long io
    cdef public long long _io_seen
    cdef public double _io_since
    cdef public bint responded
    cdef public object lost_reason

    @cython.locals(lst=object, res=object, head=object, n=Py_ssize_t, rest=bytes)
    cdef void _next_request(self)

    @cython.locals(rest=bytes)
    cdef void _feed_body(self, bytes data)

    cpdef void _request_done(self)

    cpdef write(self, object data)

    @cython.locals(keep=bint)
    cpdef send_response(
        self, int status, object reason, object headers, object connection_tokens, list extra,
        long long length, bint end, object data=*, bint no_body=*,
    )

    cpdef send_data(self, object data)

    cpdef send_end(self, object trailers)

    cpdef close(self)
