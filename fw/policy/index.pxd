# The types of fw/policy/index.py when compiled (build_compiled.py; Cython's "pure Python mode":
# index.py stays ordinary Python and runs as it is with FW_PURE=1). A Level's fields are read
# from C in `RuleIndex.match`'s loop (not cimporting fw/policy/model.pxd: model imports index);
# an IPv4 address becomes an int in C (`address_int`).
import cython

cdef class Level:
    cdef public object dimension, bounds, segments, rest

@cython.locals(value="unsigned long", raw=bytes)
cpdef object address_int(object address)
