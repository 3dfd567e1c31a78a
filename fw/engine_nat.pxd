# Cython types for fw/engine_nat.py (build_compiled.py; the .py runs unchanged without them).
# A binding's two Translations are typed: the engine's established path (fw/engine.py's `_tcp`)
# reads them and calls `leave` in C.
cimport cython
from fw.nat.rewrite cimport Translation, _made, _c_header
from fw.packet.parse cimport Packet
from fw.engine_lb cimport Choice, LoadBalancer
from fw.conntrack.table cimport Extra, Session, untrack

cdef extern from "Python.h":  # `settled`: the cycle collector's tracking
    void PyObject_GC_UnTrack(object)



@cython.final
cdef class Binding:
    cdef public object ftp, alias, after, mid, names, held, ports, middle, lb
    cdef public Translation forward, backward
    cdef public tuple orig, reply
    cdef public int alias_side, proto, family, kernel


# A Binding that changes the destination only (a real server, a dnat entry): called in C by `bind`.
@cython.locals(binding=Binding, proto=long, family=long, udp=bint, bare=long, end=long, zero=long,
               forward=bytes, backward=bytes, number=long, number_back=long)
cpdef object _destination_only(Packet pkt, object sport, object dport, bytes new_dst, object new_dport, object names,
                               long ip_delta, long l4_delta, dict sessions)


# The engine's NAT: a new session's `bind` and `opened` are C calls from Engine.open_session (its
# local typed Nat), the fields they read C fields.
@cython.final
cdef class Nat:
    cdef public object node, nodes, routes, route_targets, clash
    cdef public tuple entries, dnats, snats, sources
    cdef public dict pools, by_name, middle
    cdef public LoadBalancer lb
    cdef public bint active, two_passes, kernel_bindings, kernel_packet

    @cython.locals(picked=Choice, lb=LoadBalancer, bound=Binding)
    cpdef object bind(self, Packet pkt, object sport, object dport, object iif, object oif, dict sessions,
                      double now=*)

    @cython.locals(extra=Extra, sessions=dict)
    cpdef opened(self, Session session, Binding binding, object table, dict sessions=*)


# A new session left to reference counting: called in C by `opened`.
cpdef void settled(Session session, Extra extra, Binding binding)
