# Cython types for fw/decision.py (build_compiled.py; the .py runs unchanged without them).
# RewritePacket is a C struct of one field: a translated packet's effect made by fw/nat/rewrite.py's
# compiled path without a Python call (the type's tp_new) and filled with one C store.


cdef class RewritePacket:
    cdef public object data
