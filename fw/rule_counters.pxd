# Types for the compiled build of rule_counters.py (build_compiled.py; Cython's pure-Python mode):
# RuleCounters is an extension type; `count`, called for every packet of `fw run`, reads the
# decision's fields, the session's profile and the packet's length as C fields (a Decision's field
# read through Python's attribute lookup cost ~250 instructions).
import cython
from fw.conntrack.table cimport Profile, Session
from fw.decision cimport Decision
from fw.packet.parse cimport Packet


cdef class RuleCounters:
    cdef public dict rules, _reported

    @cython.locals(d=Decision, session=Session, profile=Profile, packet=Packet, entry=list)
    cpdef count(self, decision)
