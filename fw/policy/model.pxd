# The types of fw/policy/model.py when compiled (build_compiled.py; Cython's "pure Python mode":
# model.py stays ordinary Python and runs as it is with FW_PURE=1). Selector, Rule and
# TimeoutOverride are extension types: `matches` reads its own fields from C (no attribute lookups),
# membership in an interval set is one bisect in C (`_within`). The packet stays untyped: the
# shadow and re-check probes (fw/policy/shadow.py, recheck.py) are not Packets.
import cython

cdef class Selector:
    cdef public object index, proto, src, dst, sport, dport, icmp_type, icmp_code, iif, oif, families
    cdef public object iif_prefix, oif_prefix, from_zone, to_zone

cdef class Rule(Selector):
    cdef public object name, action, log, alg, timeouts, rst_on_timeout, file, line, limit, log_limit

cdef class TimeoutOverride(Selector):
    cdef public object timeouts, rst_on_timeout

@cython.locals(i=Py_ssize_t, starts=tuple)
cpdef bint _within(object intervals, object value)
