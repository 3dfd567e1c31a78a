# The types of fw/decision.py when compiled (build_compiled.py; Cython's "pure Python mode":
# decision.py stays ordinary Python and runs as it is with FW_PURE=1). A Decision and the effect a
# new session always makes (SessionOpened) are extension types: the engine (fw/engine.pxd cimports
# them) makes them without a Python-level __init__ call and stores their fields in C.

cdef class Decision:
    cdef public object verdict, reason, packet, session, effects

cdef class SessionOpened:
    cdef public object session
