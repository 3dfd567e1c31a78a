# Types for the compiled build of engine_nat_passes.py (build_compiled.py; Cython's pure-Python
# mode): its small helpers are C functions; the passes' locals are typed in the .py (@cython.locals).
from fw.engine_nat cimport Binding
from fw.packet.parse cimport Packet


cdef tuple _ports(Packet pkt)
cdef tuple _quoted(Packet pkt)
