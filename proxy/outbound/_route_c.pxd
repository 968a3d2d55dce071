# Augmenting declarations: compile _route_py.py (via the _route_c.py symlink) as _route_c.
# FORWARD, NO_ROUTE, DIRECT, NO_CLUSTER and PASSTHROUGH stay Python-visible (they are imported).
import cython


@cython.locals(host=object, port=object, res=object, dst=object, svc=object, plan=object,
               policy=object, by_port=object)
cpdef tuple choose(object table, object plans, object head, object original_dst, object rand)

@cython.locals(target=object, headers=object, ops=object, authority=object)
cpdef tuple rewrite(object route, object block, object policy, object head)
