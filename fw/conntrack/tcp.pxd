# The types of fw/conntrack/tcp.py when compiled (build_compiled.py; Cython's "pure Python mode":
# tcp.py stays ordinary Python and runs as it is with FW_PURE=1). The tracker works on one typed
# class, TcpSession (a TcpTrack is one), and a typed Packet: every field a C integer, the
# sequence arithmetic in C (64-bit, masked as in Python: the same results).
import cython
from fw.conntrack.table cimport TcpSession
from fw.packet.parse cimport Packet

cdef class TcpTrack(TcpSession):
    pass

@cython.locals(flags=long, index=long, direction=long, mask="long long", half="long long",
               seq="long long", ack="long long", sack="long long", win="long long", end="long long",
               s_end="long long", s_maxend="long long", s_maxwin="long long", s_maxack="long long",
               s_scale=long, s_flags=long, r_end="long long", r_maxend="long long", r_maxwin="long long",
               r_flags=long, maxackwin="long long", swin="long long", right_edge="long long",
               raw_win="long long", right="long long")
cpdef object tcp_update(TcpSession track, Packet pkt, bint original)

@cython.locals(index=long, track=TcpTrack)
cpdef object tcp_new(Packet pkt, bint liberal=*)

@cython.locals(retransmitting=bint)
cpdef str timeout_key(TcpSession track, object timeouts=*)

@cython.locals(flags=long)
cpdef long long _seq_end(Packet pkt)

@cython.locals(flags=long, scale=long)
cpdef tuple _offered(Packet pkt)
