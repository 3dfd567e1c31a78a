# Types for the compiled build of nfqueue_socket.py (build_compiled.py; Cython's pure-Python mode).
# The classes become extension types with C fields; recvmmsg(2) is called from C on the ctypes
# arrays' address; a packet's attributes are read from a typed memoryview of the receive buffer.

cimport cython as cy  # not `cython`: the .py binds that name (a stand-in without Cython)
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.errno cimport errno as c_errno
from fw.drivers.nfqueue cimport PacketHandler, PacketInterfaces

cdef extern from "<sys/socket.h>":
    struct msghdr:
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    int recvmmsg(int sockfd, mmsghdr *msgvec, unsigned int vlen, int flags, void *timeout)
    int C_MSG_DONTWAIT "MSG_DONTWAIT"
    int C_MSG_TRUNC "MSG_TRUNC"

cdef bint _LITTLE
cdef int _PACKET_KIND, _NLMSG_ERROR, _TYPE_MASK, _PAYLOAD, _PACKET_HDR, _INDEV, _OUTDEV
cdef int _MARK, _SKB_INFO, _CAP_LEN, _PHYSINDEV, _PHYSOUTDEV


cdef inline int _c_recvmmsg(int fd, size_t address, unsigned int count) noexcept:
    """recvmmsg(2) without waiting: datagrams read, or -errno."""
    cdef int got = recvmmsg(fd, <mmsghdr *>address, count, C_MSG_DONTWAIT, NULL)
    return -c_errno if got < 0 else got


cdef inline long _c_length(size_t address, int index) noexcept:
    """The length of datagram `index` of the mmsghdr array at `address`; -1 if it was cut."""
    cdef mmsghdr *header = (<mmsghdr *>address) + index
    if header.msg_hdr.msg_flags & C_MSG_TRUNC:
        return -1
    return header.msg_len


cdef int _put_verdict(bytearray out, Py_ssize_t at, unsigned int verdict, unsigned int packet_id) except -1
cdef int _put_be32(bytearray out, Py_ssize_t at, unsigned int value) except -1
cdef int _put_lengths(bytearray out, Py_ssize_t start, unsigned int length, Py_ssize_t nla_at,
                      unsigned int nla_length) except -1


cdef inline bytes _c_bytes(const unsigned char[:] data, Py_ssize_t start, Py_ssize_t end):
    return PyBytes_FromStringAndSize(<const char *>&data[start], end - start)


cdef class _Receiver:
    cdef public int fd, count, slot
    cdef public object buffer, view, iovecs, headers, header_view
    cdef public size_t address
    cdef public Py_ssize_t enobufs, truncated

    @cy.locals(count=int, got=int, code=int)
    cpdef int receive(self, int most) except -1

    @cy.locals(length=long)
    cpdef long length(self, int index) noexcept


cdef class NfPacket(PacketInterfaces):
    cdef public unsigned int id, hw_protocol, hook, mark, physindev, physoutdev, skb_info
    cdef public object cap_len, payload, queue, new_mark, new_payload


cdef class SocketQueue:
    cdef public int number
    cdef public object options, callback, netlink_errors, _sock, _handle, _accept_through
    cdef public Py_ssize_t batches, sends, _gathered
    cdef public int _given, _verdict_batch
    cdef public bint _draining
    cdef public bytearray _out
    cdef public list _pending, _parts
    cdef public bytes _template, _batch_template, _mark_template, _payload_head, _mark_payload_head
    cdef public long long _seq
    cdef public _Receiver _receiver
    cdef public PacketHandler _handler
    cdef const unsigned char[:] _data

    @cy.locals(left=Py_ssize_t, handled=Py_ssize_t, receiver=_Receiver, slot=Py_ssize_t, got=int, i=int,
                   length=long, asked=int)
    cpdef int drain(self, budget=*) except -1

    @cy.locals(end=Py_ssize_t, packets=int, size=cy.uint, kind=int)
    cdef int _messages(self, Py_ssize_t offset, Py_ssize_t length) except -1

    @cy.locals(p=NfPacket, size=cy.uint, kind=int, value=cy.uint)
    cdef object _packet(self, Py_ssize_t at, Py_ssize_t end)
