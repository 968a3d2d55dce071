# Augmenting declarations: compile _parser_py.py (via the _parser_c.py symlink) as _parser_c.
# MODE_* stay Python-visible (they are exported), so they are not declared here.
import cython

cdef object _FIELD_RE, _TOKEN_RE, _VALUE_RE, _VERSION_RE, _METHOD_RE
cdef object _HOST_RE, _AUTHORITY_FORM_RE, _ABSOLUTE_FORM_RE, _CHUNK_LINE_RE
cdef bytes _HEAD_BYTES, _REG_NAME_BYTES, _HEX_BYTES
cdef frozenset _METHODS
cdef dict _SPECIAL_FIELDS, _KNOWN_FIELDS
cdef int _F_HOST, _F_CONTENT_LENGTH, _F_TRANSFER_ENCODING, _F_CONNECTION, _F_UPGRADE, _F_EXPECT
cdef Py_ssize_t _MAX_CHUNK_LINE, _REQUEST_LINE_EXTRA
cdef int _SIZE, _DATA, _DATA_CRLF, _TRAILER, _DONE


cdef class RequestHead:
    cdef public str method
    cdef public str target
    cdef public str path
    cdef public str query
    cdef public int version
    cdef public list headers
    cdef public str host
    cdef public long long content_length
    cdef public bint chunked
    cdef public bint keep_alive
    cdef public str upgrade
    cdef public bint expect_continue
    cdef public tuple connection


cdef class ResponseHead:
    cdef public int status
    cdef public str reason
    cdef public int version
    cdef public list headers
    cdef public long long content_length
    cdef public bint chunked
    cdef public bint keep_alive
    cdef public tuple connection


@cython.locals(n=Py_ssize_t, limit=Py_ssize_t, crlf=Py_ssize_t, cr=Py_ssize_t)
cdef object _incomplete(object buf, Py_ssize_t max_head, int status, Py_ssize_t max_line)

@cython.locals(colon=Py_ssize_t, port=str, raw=bytes)
cdef bint _valid_host(str host) except -1

@cython.locals(first=str, part=str)
cdef str _content_length_digits(str value, int status)

cdef tuple _connection_tokens(str value, tuple current, int status)

@cython.locals(text=str, lines=list, crlf=Py_ssize_t)
cdef list _split_head(object head, int status)

@cython.locals(
    i=Py_ssize_t, count=Py_ssize_t, host_count=int, content_length="long long",
    te_count=int, digits=str, cl_digits=str, expect_continue=bint, name=str, colon=Py_ssize_t, value=str, line=str,
    headers=list, connection=tuple, upgrade=str, host=str, te_value=str, known=tuple, code=int,
)
cdef tuple _parse_fields(list lines, Py_ssize_t max_headers, int status)

@cython.locals(parts=list, method=str, target=str, http_version=str, version=int)
cdef inline int _request_line(RequestHead req, str line, Py_ssize_t max_line) except -1

@cython.locals(q=Py_ssize_t, path=str, query=str, url_host=str, scheme=str)
cdef inline str _target_form(RequestHead req, str method, str target)

cdef inline str _request_host(str host, int host_count, str url_host, int version)

cdef inline bint _request_chunked(int te_count, str te_value, long long content_length,
                                  int version) except -1

@cython.locals(
    end=Py_ssize_t, max_line=Py_ssize_t, lines=list, target=str, url_host=str, host=str,
    host_count=int, content_length="long long", te_count=int, te_value=str, connection=tuple,
    upgrade=str, expect_continue=bint, headers=list, version=int, keep_alive=bint,
    req=RequestHead,
)
cpdef object parse_request_head(object buf, Py_ssize_t max_head=*, Py_ssize_t max_headers=*, Py_ssize_t max_uri=*)

@cython.locals(
    end=Py_ssize_t, lines=list, line=str, http_version=str, code=str, reason=str,
    content_length="long long", te_count=int, te_value=str, connection=tuple, headers=list,
    version=int, status=int, chunked=bint, keep_alive=bint, resp=ResponseHead,
)
cpdef object parse_response_head(object buf, Py_ssize_t max_head=*, Py_ssize_t max_headers=*)

@cython.locals(status=int)
cpdef tuple response_body_mode(ResponseHead head, str request_method)


cdef class ChunkedDecoder:
    cdef public bint done
    cdef public list trailers
    cdef public bytes unused
    cdef int _state
    cdef object _remaining
    cdef bytes _buf
    cdef Py_ssize_t _max_trailer

    @cython.locals(out=list, buf=bytes, line=bytes, pos=Py_ssize_t, n=Py_ssize_t, i=Py_ssize_t, state=int, take=Py_ssize_t)
    cpdef list feed(self, object data)

    @cython.locals(rest=bytes, crlf=Py_ssize_t, cr=Py_ssize_t)
    cdef _stash_line(self, bytes buf, Py_ssize_t pos, Py_ssize_t n, Py_ssize_t limit)

    cdef _finish(self, bytes buf, Py_ssize_t pos, list trailers)


@cython.locals(covered=Py_ssize_t, trailers=list, name=str, value=str)
cdef list _parse_trailers(str text)

cpdef bytes encode_chunk(object data)

cpdef bytes encode_last_chunk(object trailers=*)
