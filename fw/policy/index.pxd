# The types of fw/policy/index.py when compiled (build_compiled.py; Cython's "pure Python mode":
# index.py stays ordinary Python and runs as it is with FW_PURE=1). A Level's fields are read
# from C in `RuleIndex.match`'s loop. (Not cimporting fw/policy/model.pxd: model imports index.)

cdef class Level:
    cdef public object dimension, bounds, segments, rest
