# Augmenting declarations: compile _match_py.py (via the _match_c.py symlink) as _match_c.
import cython

cdef int EXACT, PREFIX, REGEX, PRESENT

@cython.locals(op=cython.int)
cdef bint _str_match(int op, str value, object rx, str subject)

cdef dict _header_dict(list headers)

@cython.locals(ok=bint)
cdef tuple _block_matches(object block, str path, str method, str authority, str scheme, object hdrs, str query, object qd)

cpdef object find(object table, str host, str path, str query, str method, str authority, str scheme, list headers)

cpdef object pick_destination(object route, double r)
