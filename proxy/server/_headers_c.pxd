# Augmenting declarations: compile _headers_py.py (via the _headers_c.py symlink) as _headers_c.
# HOP_BY_HOP, PROTECTED and SPOOFABLE_INBOUND stay Python-visible (they are imported elsewhere).
import cython


@cython.locals(parts=list, name=str, value=str, skip_tokens=object)
cpdef bytes request_head(
    str method, str target, object headers, object connection_tokens, list extra, object drop=*
)

@cython.locals(parts=list, name=str, value=str, skip_tokens=object)
cpdef bytes response_head(
    int status, str reason, object headers, object connection_tokens, list extra,
    object drop=*, int version=*
)

@cython.locals(drop=set, out=list, name=object)
cpdef object apply_ops(object headers, object ops)
