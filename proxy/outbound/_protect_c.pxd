# Augmenting declarations: compile _protect_py.py (via the _protect_c.py symlink) as _protect_c:
# the protections around the tries run as a compiled coroutine.
import cython

cdef object _monotonic
