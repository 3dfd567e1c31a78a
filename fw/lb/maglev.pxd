# Cython types for fw/lb/maglev.py (build_compiled.py; the .py runs unchanged without them): a
# finished table's size is a C number and its fields are read without a dict (fw/lb/schedulers.py's
# `maglev_pick`, on every new balanced session).
cdef class MaglevTable:
    cdef public tuple servers
    cdef public object slots
    cdef public Py_ssize_t size
