# The types of fw/packet/parse.py when compiled (build_compiled.py; Cython's "pure Python mode":
# parse.py stays ordinary Python and runs as it is with FW_PURE=1). A Packet's integer fields are
# C integers: the compiled tracker (fw/conntrack/tcp.pxd) reads them without a Python object each.
# Fields that may be None (options, ICMP type/code, inner) and the bytes stay Python objects.
import cython

cdef class Packet:
    cdef public long family, proto, ip_len, l4_offset, frag_offset, frag_id, sport, dport
    cdef public long long seq, ack
    cdef public long flags, window
    cdef public bint is_fragment, more_fragments, sack_perm
    cdef public object src, dst, mss, wscale, tsval, tsecr, sack, icmp_type, icmp_code, inner, data
    cdef public long icmp_id, icmp_seq, payload_len, payload_start, payload_end

@cython.locals(n=Py_ssize_t, vihl=long, total=long, frag=long, proto=long, sport=long, dport=long,
               seq="long long", ack="long long", data_offset=long, flags=long, window=long, end=long, hl=long,
               length=long, p=Packet)
cpdef Packet parse(object data)

