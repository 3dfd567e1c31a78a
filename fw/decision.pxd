# The types of fw/decision.py when compiled (build_compiled.py; Cython's "pure Python mode":
# decision.py stays ordinary Python and runs as it is with FW_PURE=1). A Decision and the effect a
# new session always makes (SessionOpened) are extension types: the engine (fw/engine.pxd cimports
# them) makes them without a Python-level __init__ call and stores their fields in C.
# RewritePacket too: a translated packet's effect, made by fw/nat/rewrite.py's compiled path without
# a Python call (the type's tp_new) and filled with one C store; untracked by the cyclic collector,
# so the effect every translated packet makes does not bring collections on.
cimport cython

cdef class Decision:
    cdef public object verdict, reason, packet, session, effects

cdef class SessionOpened:
    cdef public object session


@cython.final
@cython.freelist(8)  # made and dropped for every translated packet: its memory reused
@cython.no_gc  # its one field holds bytes: no cycle goes through it (the collector need not track it)
cdef class RewritePacket:
    cdef public object data


# The packet handler's verdict counters (fw/drivers/nfqueue.pxd types its field): read as C fields.
cdef class Verdicts:
    cdef public object accepted, dropped
