# Augments _validate_py.py (compiled as _validate_c): C types for the same source.
import cython

cdef bint _COMPILED
cdef object _CONNECTION_SPECIFIC
cdef bytes _NAME_OK, _NAME_BAD, _TOKEN_OK, _TOKEN_BAD, _TARGET_OK, _TARGET_BAD, _VALUE_BAD
cdef object _NAME_OUTSIDE, _TOKEN_OUTSIDE, _TARGET_OUTSIDE


cdef class RequestFields:
    cdef public object method
    cdef public object scheme
    cdef public object authority
    cdef public object path
    cdef public object protocol
    cdef public object content_length
    cdef public list headers


cdef class ResponseFields:
    cdef public int status
    cdef public object content_length
    cdef public list headers


@cython.locals(p=cython.p_uchar, t=cython.p_uchar, i=Py_ssize_t)
cdef bint _has_any(bytes data, bytes table, object outside) except -1

@cython.locals(n=Py_ssize_t, p=cython.p_uchar, t=cython.p_uchar, i=Py_ssize_t, c=cython.uint)
cdef bint _bad_value(bytes value) except -1

cdef object _regular(bytes name, bytes value, unsigned long stream_id)

cdef inline bytes _check_request_pseudo(bytes method, bytes scheme, bytes authority, bytes path,
                                       bytes protocol, bytes host, unsigned long stream_id)

@cython.locals(name=bytes, value=bytes, regular=list, seen_regular=bint)
cpdef RequestFields validate_request_headers(object headers, unsigned long stream_id=*,
                                             bint extended_connect=*)

@cython.locals(name=bytes, value=bytes, regular=list, seen_regular=bint, status=int)
cpdef ResponseFields validate_response_headers(object headers, unsigned long stream_id=*)

@cython.locals(name=bytes, value=bytes)
cpdef list validate_trailers(object headers, unsigned long stream_id=*)
