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

from fw.nat.rewrite cimport Translation


@cython.final
cdef class Binding:
    cdef public object ftp, alias, after, mid, names, held, ports, middle, lb
    cdef public Translation forward, backward
    cdef public tuple orig, reply
    cdef public int alias_side, proto, family, kernel


# A Binding that changes the destination only (a real server, a dnat entry): called in C by `bind`.
@cython.locals(binding=Binding, proto=long, family=long, udp=bint, bare=long, end=long, zero=long,
               forward=bytes, backward=bytes)
cpdef object _destination_only(Packet pkt, object sport, object dport, bytes new_dst, object new_dport, object names,
                               long ip_delta, long l4_delta, dict sessions)
