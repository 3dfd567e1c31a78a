# Types for the compiled build of nfqueue.py (build_compiled.py; Cython's pure-Python mode): the
# PacketHandler, called for every packet, becomes an extension type with C fields (a Python
# subclass may still override `judge` and `new_mark`; fw.drivers.nat_queue's NatPacketHandler is an
# extension type deriving from it, nat_queue.pxd).
cimport cython as cy  # not `cython`: the module binds that name (a stand-in without Cython)
from fw.decision cimport Decision, Verdicts
from fw.rule_counters cimport RuleCounters


cdef class PacketInterfaces:
    cdef public unsigned int indev, outdev


cdef class PacketHandler:
    cdef public object engine, fail_verdict, on_effects, on_error, clock, errors
    cdef public Verdicts verdicts
    cdef public object redirect, observe, defer
    cdef public dict _ifnames
    cdef public bint accept_later
    cdef public object _observed
    cdef public RuleCounters _counters
    cdef public long _last_indev, _last_outdev
    cdef public object _last_iif, _last_oif

    @cy.locals(decision=Decision, applied=int)
    cpdef handle(self, packet, data)
    @cy.locals(fields=PacketInterfaces, indev=long, outdev=long)
    cpdef judge(self, packet, data)


@cy.locals(items=dict)
cdef _count(counter, key)
