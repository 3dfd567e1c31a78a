# Cython types for fw/nat/rewrite.py (build_compiled.py; the .py runs unchanged without them).
# Translation keeps numbers and one bytes object: no cycle can go through it, so Cython makes it a
# type the cyclic collector does not track (a session's two are not traversed by every collection).
# `_c_translated` is the compiled build's rewrite of a bare TCP/UDP packet: one new bytes object,
# the packet copied into it once (memcpy), the header and checksums written in place in C.
cimport cython as cy  # not `cython`: the .py binds that name (a stand-in without Cython)
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

from fw.decision cimport RewritePacket
from fw.packet.parse cimport Packet


cdef extern from "<arpa/inet.h>":
    uint16_t ntohs(uint16_t) nogil


@cy.final
cdef class Translation:
    cdef public int family, proto, ip_delta, l4_delta, zero, bare, end, ports
    cdef public bint udp
    cdef public bytes header

    @cy.locals(check=cy.long, ip_check=cy.long, effect=RewritePacket)
    cpdef tuple leave(self, data, Packet packet, tuple effects=*, bint partial=*)


@cy.locals(bare=int, end=int, zero=int, udp=bint)
cpdef tuple pair(int family, int proto, tuple orig, tuple reply)


@cy.locals(made=Translation)
cpdef Translation _made(int family, int proto, bint udp, int zero, int bare, int end, bytes header, int ip_delta,
                        int l4_delta, int ports)


cdef inline uint64_t _c_sum(const unsigned char *p, Py_ssize_t size) noexcept nogil:
    """The 16-bit words of p[:size] summed in the machine's byte order (RFC 1071 2(B): the sum of
    byte-swapped words is the byte-swapped sum), 32 bits at a time into 64, not yet folded; an odd
    last byte is padded with a zero after it."""
    cdef uint64_t total = 0
    cdef uint32_t word
    cdef Py_ssize_t at = 0
    while at + 4 <= size:
        memcpy(&word, p + at, 4)
        total += word
        at += 4
    if at < size:
        word = 0
        memcpy(&word, p + at, size - at)
        total += word
    return total


cdef inline long _c_network_sum(uint64_t total) noexcept nogil:
    """A `_c_sum` folded to 16 bits (end-around carry) and put in network byte order: congruent,
    mod 0xFFFF, to the one's complement sum of the words read big-endian (fw.packet.checksum)."""
    total = <uint32_t>total + (total >> 32)
    total = <uint32_t>total + (total >> 32)
    total = <uint16_t>total + (total >> 16)
    total = <uint16_t>total + (total >> 16)
    total = <uint16_t>total + (total >> 16)
    return ntohs(<uint16_t>total)


cdef inline bytes _c_translated(Translation t, bytes data, Py_ssize_t end, bint partial):
    """`Translation.leave`'s bytes for a bare TCP/UDP packet whose first `end` bytes (its IP length)
    were captured: the same numbers as the Python code (complete: RFC 1624 with the precomputed
    differences; partial: the whole L4 checksum over the new segment and pseudo-header)."""
    cdef Py_ssize_t size = PyBytes_GET_SIZE(data)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
    cdef unsigned char *p = <unsigned char *>PyBytes_AS_STRING(out)
    cdef const unsigned char *header = <const unsigned char *>PyBytes_AS_STRING(t.header)
    cdef Py_ssize_t l4 = t.bare, at, i
    cdef long check, total
    memcpy(p, PyBytes_AS_STRING(data), size)  # the one copy of the payload
    if t.family == 4:
        memcpy(p + 12, header, 12)  # addresses and ports: contiguous after a bare IPv4 header
        check = ((p[10] << 8 | p[11]) + t.ip_delta) % 0xFFFF
        p[10] = check >> 8
        p[11] = check & 0xFF
    else:
        memcpy(p + 8, header, 36)
    at = l4 + 6 if t.udp else l4 + 16
    check = p[at] << 8 | p[at + 1]
    if partial:  # the kernel's partial sum: the whole checksum, new pseudo-header and segment
        p[at] = p[at + 1] = 0
        total = t.proto + (end - l4)
        i = 0
        while i < (8 if t.family == 4 else 32):
            total += header[i] << 8 | header[i + 1]
            i += 2
        total += _c_network_sum(_c_sum(p + l4, end - l4))
        check = (0xFFFF - total % 0xFFFF) % 0xFFFF
        if not check:
            check = t.zero
    elif check or not t.udp:  # a zero UDP checksum (none) stays zero; a computed 0 is 0xFFFF
        check = (check + t.l4_delta) % 0xFFFF
        if not check:
            check = t.zero
    p[at] = check >> 8
    p[at + 1] = check & 0xFF
    return out


cdef inline bytes _c_header(bytes src, bytes dst, long sport, long dport):
    """A Translation's `header` for two addresses of one length (4 or 16 bytes): the same bytes
    as `Struct("!4s4sHH").pack(src, dst, sport, dport)` (16s16s for IPv6), made without struct."""
    cdef Py_ssize_t size = PyBytes_GET_SIZE(src)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 2 * size + 4)
    cdef unsigned char *p = <unsigned char *>PyBytes_AS_STRING(out)
    memcpy(p, PyBytes_AS_STRING(src), size)
    memcpy(p + size, PyBytes_AS_STRING(dst), size)
    p += 2 * size
    p[0] = (sport >> 8) & 0xFF
    p[1] = sport & 0xFF
    p[2] = (dport >> 8) & 0xFF
    p[3] = dport & 0xFF
    return out
