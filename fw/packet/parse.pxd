# The types of fw/packet/parse.py when compiled (build_compiled.py; Cython's "pure Python mode":
# parse.py stays ordinary Python and runs as it is with FW_PURE=1). A Packet's integer fields are
# C integers: the compiled tracker (fw/conntrack/tcp.pxd) reads them without a Python object each.
# Fields that may be None (options, ICMP type/code, inner) and the bytes stay Python objects.
import cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize

cdef class Packet:
    cdef public long family, proto, ip_len, l4_offset, frag_offset, frag_id, sport, dport
    cdef public long long seq, ack
    cdef public long flags, window
    cdef public bint is_fragment, more_fragments, sack_perm
    cdef public object src, dst, mss, wscale, tsval, tsecr, sack, icmp_type, icmp_code, inner, data
    cdef public long icmp_id, icmp_seq, payload_len, payload_start, payload_end

@cython.locals(n=Py_ssize_t, vihl=long, total=long, frag=long, proto=long, sport=long, dport=long,
               seq="long long", ack="long long", data_offset=long, flags=long, window=long, end=long, hl=long,
               length=long, p=Packet, b="const unsigned char *")
cpdef Packet parse(object data)


cdef inline const unsigned char *_c_chars(bytes data) noexcept:
    """The bytes' own buffer (parse's fast path reads the headers from it)."""
    return <const unsigned char *>PyBytes_AS_STRING(data)


cdef inline bytes _c_slice(const unsigned char *b, Py_ssize_t at):
    """The 4 bytes at `at` (an IPv4 address) as a bytes object."""
    return PyBytes_FromStringAndSize(<const char *>b + at, 4)



cdef inline unsigned int _c_be32(const unsigned char *b, Py_ssize_t at) noexcept:
    """The 32-bit unsigned integer at `at`, in network order."""
    return (<unsigned int>b[at]) << 24 | (<unsigned int>b[at + 1]) << 16 | (<unsigned int>b[at + 2]) << 8 | b[at + 3]
