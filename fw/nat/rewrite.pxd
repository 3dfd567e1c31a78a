# Cython types for fw/nat/rewrite.py (build_compiled.py; the .py runs unchanged without them).
cimport cython


@cython.no_gc  # ints, bytes, tuples of them and shared struct methods: never part of a cycle
@cython.final
cdef class Translation:
    cdef public int family, proto, ip_delta, l4_delta, zero, bare, end
    cdef public bint udp
    cdef public object unpack, pack
    cdef public bytes header
    cdef public tuple old, new

    @cython.locals(check=cython.long, ip_check=cython.long)
    cpdef tuple leave(self, data, packet, tuple effects=*, bint partial=*)


cpdef tuple pair(int family, int proto, tuple orig, tuple reply)
