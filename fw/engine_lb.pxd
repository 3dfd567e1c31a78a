# Cython types for fw/engine_lb.py (build_compiled.py; the .py runs unchanged without them): a
# new balanced session reads its virtual server (Service), real server and Choice as C fields.
cimport cython
from fw.lb.servers cimport RealServer
from fw.lb.schedulers cimport maglev_pick
from fw.packet.parse cimport Packet


@cython.final
cdef class Choice:
    cdef public object spec, names, key, link, dst, dport
    cdef public RealServer server
    cdef public bint full_nat
    cdef public int ip_delta, l4_delta


@cython.final
cdef class Service:
    cdef public object spec, balancer, refuse, maglev
