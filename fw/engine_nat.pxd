# Cython types for fw/engine_nat.py (build_compiled.py; the .py runs unchanged without them).
cimport cython
from fw.nat.rewrite cimport Translation, _made
from fw.packet.parse cimport Packet
from fw.engine_lb cimport Choice


@cython.final
cdef class Binding:
    cdef public object ftp, alias, forward, backward, after, mid, names, held, ports, middle, lb
    cdef public tuple orig, reply
    cdef public int alias_side, proto, family
