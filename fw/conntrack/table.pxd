# The types of fw/conntrack/table.py when compiled (build_compiled.py; Cython's "pure Python mode":
# table.py stays ordinary Python and runs as it is with FW_PURE=1). Sessions are C structs: times
# are doubles, counters and the TCP track's FIELDS C integers (no int object per number), so the
# compiled tracker (fw/conntrack/tcp.pxd) reads and writes them directly.
import cython

cdef class Profile:
    cdef public object rule, policy_rev, timeouts, rst_on_timeout

cdef class Extra:
    cdef public object alg, parent, expectations, owner, nat

cdef class Session:
    cdef public object key, state
    cdef public double deadline
    cdef public long slot
    cdef public long long orig_packets, orig_bytes, reply_packets, reply_bytes
    cdef public double created, last_seen
    cdef public long flags
    cdef public object profile, extra

cdef class TcpSession(Session):
    cdef public long long o_end, o_maxend, o_maxwin, o_maxack, r_end, r_maxend, r_maxwin, r_maxack
    cdef public long long last_seq, last_ack, last_end
    cdef public long o_scale, r_scale, last_flags
    cdef public long long last_win
    cdef public long o_flags, r_flags, retrans, last_packet

@cython.locals(liberal=long)
cpdef copy_fields(TcpSession target, TcpSession source)

# The cycle collector's tracking (Python.h): a session without `extra` holds only a tuple of bytes
# and ints, a state and a shared Profile, so it cannot be part of a cycle (`untrack`).
cdef extern from "Python.h":
    void PyObject_GC_Track(object)
    void PyObject_GC_UnTrack(object)
    bint PyObject_GC_IsTracked(object)

cpdef untrack(Session session)
