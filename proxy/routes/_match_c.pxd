# Augmenting declarations: compile _match_py.py (via the _match_c.py symlink) as _match_c.
import cython

cdef int EXACT, PREFIX, REGEX, PRESENT

@cython.locals(op=cython.int)
cdef bint _str_match(int op, str value, object rx, str subject)

cdef bint _plan_str(tuple mp, str subject)

cdef dict _header_dict(list headers)

@cython.locals(rp=tuple, blocks=tuple, bp=tuple, p=tuple, uop=cython.int, mp=tuple, ms=tuple,
               ok=bint, hdrs=dict, qd=dict)
cpdef object find(object table, str host, str path, str query, str method, str authority, str scheme, list headers)

cpdef object pick_destination(object route, double r)
