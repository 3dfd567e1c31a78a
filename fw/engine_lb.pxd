# Cython types for fw/engine_lb.py (build_compiled.py; the .py runs unchanged without them): a
# new balanced session reads its virtual server (Service), real server and Choice as C fields, and
# NAT's `bind` (fw/engine_nat.pxd) calls the LoadBalancer's `choose` in C.
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
    cdef public bytes vip
    cdef public long proto
    cdef public dict by_name


@cython.final
cdef class LoadBalancer:
    cdef public object node, nodes, services, pools, closed_bytes
    cdef public dict at
    cdef public bint active

    @cython.locals(service=Service, server=RealServer, choice=Choice, proto=long, here=tuple, dst=bytes)
    cpdef object choose(self, Packet pkt, object sport, object dport, double now)
