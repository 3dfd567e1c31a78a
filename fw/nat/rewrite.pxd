# Cython types for fw/nat/rewrite.py (build_compiled.py; the .py runs unchanged without them).
# Translation keeps numbers and one bytes object: no cycle can go through it, so Cython makes it a
# type the cyclic collector does not track (a session's two are not traversed by every collection).
cimport cython


@cython.final
cdef class Translation:
    cdef public int family, proto, ip_delta, l4_delta, zero, bare, end, ports
    cdef public bint udp
    cdef public bytes header

    @cython.locals(check=cython.long, ip_check=cython.long)
    cpdef tuple leave(self, data, packet, tuple effects=*, bint partial=*)


@cython.locals(bare=int, end=int, zero=int, udp=bint)
cpdef tuple pair(int family, int proto, tuple orig, tuple reply)


@cython.locals(made=Translation)
cpdef Translation _made(int family, int proto, bint udp, int zero, int bare, int end, bytes header, int ip_delta,
                        int l4_delta, int ports)
