# Cython types for fw/decision.py (build_compiled.py; the .py runs unchanged without them).
# RewritePacket is a C struct of one field: a translated packet's effect made by fw/nat/rewrite.py's
# compiled path without a Python call (the type's tp_new) and filled with one C store; untracked
# by the cyclic collector, so the effect every translated packet makes does not bring collections on.
cimport cython


@cython.final
@cython.freelist(8)  # made and dropped for every translated packet: its memory reused
@cython.no_gc  # its one field holds bytes: no cycle goes through it (the collector need not track it)
cdef class RewritePacket:
    cdef public object data
