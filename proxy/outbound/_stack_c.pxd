# Augmenting declarations: compile _stack_py.py (via the _stack_c.py symlink) as _stack_c: the
# stack's request handler is a compiled coroutine.
import cython

cdef object _rand, _monotonic
