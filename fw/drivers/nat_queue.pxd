# Types for the compiled build of nat_queue.py (build_compiled.py; Cython's pure-Python mode): the
# NAT daemon's handler becomes an extension type deriving from nfqueue's PacketHandler, with C
# counters; PacketHandler.__call__ reaches its `judge` through the C method table.
cimport cython as cy
from fw.drivers.nfqueue cimport PacketHandler


cdef class NatPacketHandler(PacketHandler):
    cdef public object routes, _targets, kernel, bindings
    cdef public dict _by_v4
    cdef public Py_ssize_t partial_checksums, tcp_gso_partial, nat_too_long, first_pass, second_pass, one_pass

    cpdef judge(self, packet, data)
    @cy.locals(key=cy.ulong)
    cdef _route(self, bytes data)
