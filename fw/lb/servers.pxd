# Cython types for fw/lb/servers.py (build_compiled.py; the .py runs unchanged without them): the
# balancer's and the engine's reads of a real server's health, weight and counts are C fields.
cdef class RealServer:
    cdef public object address, packed, name, order, choice
    cdef public long family, port, weight, active, opened
    cdef public bint up
