# Types for the compiled build of rule_counters.py (build_compiled.py; Cython's pure-Python mode):
# RuleCounters is an extension type; `count`, called for every packet of `fw run`, reads the
# session's profile and the packet's length as C fields.
import cython
from fw.conntrack.table cimport Profile, Session
from fw.packet.parse cimport Packet


cdef class RuleCounters:
    cdef public dict rules, _reported

    @cython.locals(session=Session, profile=Profile, packet=Packet, entry=list)
    cpdef count(self, decision)
