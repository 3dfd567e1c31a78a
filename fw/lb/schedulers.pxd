# Cython types for fw/lb/schedulers.py (build_compiled.py; the .py runs unchanged without them):
# `maglev_pick`, which the engine's load balancer calls directly (fw/engine_lb.pxd cimports it).
cimport cython
from fw.lb.servers cimport RealServer
from fw.lb.hashing cimport flow_hash


@cython.locals(server=RealServer, slot=Py_ssize_t)
cpdef object maglev_pick(object maglev, bytes src, object sport)
