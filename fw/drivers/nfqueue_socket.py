# cython: annotation_typing=False, boundscheck=False, wraparound=False
"""NFQUEUE on a plain netlink socket, without netfilterqueue/libnetfilter_queue: a drop-in `Queue`.

How it works. `SocketQueue(number, callback, options)` offers what fw.drivers.nfqueue.Queue offers
the daemon (fileno, drain, accept_waiting, close, batches, enobufs, netlink_errors,
kernel_counters), and its packets what a netfilterqueue Packet offers the PacketHandler, fw.sync
and fw.workers (id, indev, outdev, get_payload, get_mark, set_mark, set_payload, accept, drop).
- Binding: one NETLINK_NETFILTER socket; NFQNL_CFG_CMD_BIND for the queue, then the same
  NFQNL_MSG_CONFIG as the other driver (copy mode and range, queue length, flags GSO and FAIL_OPEN),
  each acknowledged before we go on (EBUSY: another process holds the queue).
- Reading: recvmmsg(2), up to `batch_recv` netlink datagrams (one packet each) a syscall, into one
  buffer of slots of the copy range plus headers; each datagram's length and MSG_TRUNC come from
  the mmsghdr array. A drain ends when a recvmmsg returns fewer than it asked for (the socket was
  empty then: the poll loop wakes us again), not after one more that fails with EAGAIN: at the
  small-packet bench's rate that was one syscall in five of the daemon's. Each packet message's
  attributes are read at their offsets: NFQA_PACKET_HDR
  (id, hw protocol, hook), NFQA_MARK, NFQA_IFINDEX_INDEV/OUTDEV (and PHYS*), NFQA_SKB_INFO
  (CSUMNOTREADY, GSO, CSUM_NOTVERIFIED), NFQA_CAP_LEN (the packet's length when the copy range cut
  it), NFQA_PAYLOAD (copied out once, as bytes: the engine keeps it and fw.sync may hold the packet
  past the drain).
- Compiled (build_compiled.py, with nfqueue_socket.pxd: the daemon's default binding then), the
  classes are extension types with C fields, recvmmsg is called from C on the ctypes arrays'
  address and the attributes are read byte by byte from a typed memoryview of the buffer; the pure
  module calls recvmmsg through ctypes and reads with `unpack_from` (`cython.compiled` picks).
  A PacketHandler callback (fw.drivers.nfqueue) is called through its `handle(packet, payload)`,
  from C, not through its __call__ slot (an argument tuple and a method lookup for the payload).
- Netlink errors and acks in the stream are counted, never handed on; ENOBUFS is counted.
- Verdicts are not sent one by one: each is appended (a 32-byte message from a template, 40 with a
  mark; with a new payload, NFQA_PAYLOAD: NAT; each a template whose lengths, id, verdict and mark
  are written in place (compiled, byte by byte: `_put_verdict`...), as building them attribute by
  attribute cost NAT's two passes a few us a packet) to one buffer, which goes to the kernel in one
  send when `verdict_batch` packets have one and at the end of every drain, or before it would pass
  MAX_DATAGRAM bytes (rewritten 64 KiB packets). A payload of GATHER_FROM bytes or more is not
  copied in: the buffer's parts and the payloads between them go in one sendmsg, as iovecs, which
  spares a rewritten 64 KiB GSO packet a copy and the buffer's reallocations. Accepts the callback
  leaves to the queue (ACCEPT_LATER) become one NFQNL_MSG_VERDICT_BATCH "accept every packet up to
  id N", appended after the single verdicts before it, so the kernel, which handles a datagram's
  messages in order, has dropped those first. A verdict given outside a drain (fw.sync's held
  packets) is sent at once.
- A payload shorter than the packet (`cap_len` set) is fine for an accept or drop: a verdict
  without NFQA_PAYLOAD leaves the packet as it is in the kernel. A verdict with a payload replaces
  the packet (a shorter one truncates it), so rewriting needs the whole packet.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable

try:
    import cython
except ImportError:  # no Cython: this module runs pure (as with FW_PURE=1)
    from fw import cython_shadow as cython

from fw.drivers.nfqueue import (
    ACCEPT_LATER,
    NETLINK_NETFILTER,
    NFNL_SUBSYS_QUEUE,
    NFQNL_MSG_CONFIG,
    NLM_F_ACK,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    SO_RCVBUFFORCE,
    PacketHandler,
    PacketInterfaces,
    QueueError,
    QueueOptions,
    _attr,
    config_flags,
    config_message,
    per_packet,
    read_queue_counters,
)

NFQNL_MSG_PACKET, NFQNL_MSG_VERDICT, NFQNL_MSG_VERDICT_BATCH = 0, 1, 3
PACKET_KIND = NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_PACKET
NFQA_CFG_CMD = 1
NFQNL_CFG_CMD_BIND, NFQNL_CFG_CMD_UNBIND = 1, 2
(NFQA_PACKET_HDR, NFQA_VERDICT_HDR, NFQA_MARK, NFQA_TIMESTAMP, NFQA_IFINDEX_INDEV, NFQA_IFINDEX_OUTDEV,
 NFQA_IFINDEX_PHYSINDEV, NFQA_IFINDEX_PHYSOUTDEV, NFQA_HWADDR, NFQA_PAYLOAD) = range(1, 11)
NFQA_CAP_LEN, NFQA_SKB_INFO = 13, 14
NFQA_SKB_CSUMNOTREADY, NFQA_SKB_GSO, NFQA_SKB_CSUM_NOTVERIFIED = 1, 2, 4
NF_DROP, NF_ACCEPT, NF_QUEUE, NF_REPEAT = 0, 1, 3, 4
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
MSG_TRUNC = 0x20
DEFAULT_OPTIONS = QueueOptions()
# A netlink datagram longer than the socket's send buffer (net.core.wmem_default, 208 KiB here)
# fails with EMSGSIZE: verdicts with payloads (NAT) are sent before the buffer would reach this.
MAX_DATAGRAM = 160 * 1024
GATHER_FROM = 4096  # a new payload this long is not copied into the verdict buffer but sent where it is
HEADROOM = 1024  # room in a receive slot for the netlink headers and the attributes before the payload

_NLMSG = struct.Struct("=IHHII")
_VERDICT_INTO = struct.Struct("!II").pack_into
_U32_INTO = struct.Struct("!I").pack_into
_NLMSG_LEN_INTO = struct.Struct("=I").pack_into
_NLA_LEN_INTO = struct.Struct("=H").pack_into
_PADDING = (b"", b"\0", b"\0\0", b"\0\0\0")
_ERROR = struct.Struct("=i8xI").unpack_from  # errno, then the request's nlmsghdr: its seq
_NLMSG_HEAD = struct.Struct("=IH").unpack_from  # (the pure module's reads; compiled, bytes are indexed)
_NLA = struct.Struct("=HH").unpack_from
_U32 = struct.Struct("!I").unpack_from
_LITTLE = sys.byteorder == "little"  # netlink's headers are in host order, the attributes' values in network order
# The hot path's constants under private names, which the pxd makes C integers (the public names stay
# Python's: compiled, a comparison with a module global is a dictionary lookup and a conversion).
_PACKET_KIND, _NLMSG_ERROR, _TYPE_MASK = PACKET_KIND, NLMSG_ERROR, NLA_TYPE_MASK
_PAYLOAD, _PACKET_HDR, _INDEV, _OUTDEV = NFQA_PAYLOAD, NFQA_PACKET_HDR, NFQA_IFINDEX_INDEV, NFQA_IFINDEX_OUTDEV
_MARK, _SKB_INFO, _CAP_LEN = NFQA_MARK, NFQA_SKB_INFO, NFQA_CAP_LEN
_PHYSINDEV, _PHYSOUTDEV = NFQA_IFINDEX_PHYSINDEV, NFQA_IFINDEX_PHYSOUTDEV


def _put_verdict(out: bytearray, at: int, verdict: int, packet_id: int) -> int:
    """NFQA_VERDICT_HDR's two values (network order) at `at`. Compiled (the pxd's C function): byte
    stores; a `pack_into` call cost ~500 instructions, four of them a translated packet's verdict."""
    if cython.compiled:
        _put_be32(out, at, verdict)
        _put_be32(out, at + 4, packet_id)
    else:
        _VERDICT_INTO(out, at, verdict, packet_id)
    return 0


def _put_be32(out: bytearray, at: int, value: int) -> int:
    """A 32-bit attribute value (network order) at `at`."""
    if cython.compiled:
        out[at] = value >> 24 & 0xFF
        out[at + 1] = value >> 16 & 0xFF
        out[at + 2] = value >> 8 & 0xFF
        out[at + 3] = value & 0xFF
    else:
        _U32_INTO(out, at, value)
    return 0


def _put_lengths(out: bytearray, start: int, length: int, nla_at: int, nla_length: int) -> int:
    """A verdict message's nlmsg_len (32 bits) at `start` and its NFQA_PAYLOAD's nla_len (16 bits)
    at `nla_at`, in host order."""
    if not cython.compiled:
        _NLMSG_LEN_INTO(out, start, length)
        _NLA_LEN_INTO(out, nla_at, nla_length)
    elif _LITTLE:
        out[start] = length & 0xFF
        out[start + 1] = length >> 8 & 0xFF
        out[start + 2] = length >> 16 & 0xFF
        out[start + 3] = length >> 24 & 0xFF
        out[nla_at] = nla_length & 0xFF
        out[nla_at + 1] = nla_length >> 8 & 0xFF
    else:
        out[start] = length >> 24 & 0xFF
        out[start + 1] = length >> 16 & 0xFF
        out[start + 2] = length >> 8 & 0xFF
        out[start + 3] = length & 0xFF
        out[nla_at] = nla_length >> 8 & 0xFF
        out[nla_at + 1] = nla_length & 0xFF
    return 0


# -- messages ------------------------------------------------------------------------------------


def _message(kind: int, flags: int, seq: int, queue: int, body: bytes) -> bytes:
    nfgen = struct.pack("!BBH", socket.AF_UNSPEC, 0, queue)
    return _NLMSG.pack(20 + len(body), NFNL_SUBSYS_QUEUE << 8 | kind, flags, seq, 0) + nfgen + body


def command_message(queue: int, seq: int, command: int) -> bytes:
    """NFQNL_MSG_CONFIG with NFQA_CFG_CMD (bind or unbind `queue`), acknowledged."""
    body = _attr(NFQA_CFG_CMD, struct.pack("!BxH", command, socket.AF_UNSPEC))
    return _message(NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, queue, body)


def verdict_message(queue: int, packet_id: int, verdict: int, mark: int | None = None,
                    payload: bytes | None = None, *, batch: bool = False) -> bytes:
    """One verdict (with NFQA_MARK and NFQA_PAYLOAD when given); batch: for every packet up to the id."""
    body = _attr(NFQA_VERDICT_HDR, struct.pack("!II", verdict, packet_id))
    if mark is not None:
        body += _attr(NFQA_MARK, struct.pack("!I", mark))
    if payload is not None:
        body += _attr(NFQA_PAYLOAD, payload)
    return _message(NFQNL_MSG_VERDICT_BATCH if batch else NFQNL_MSG_VERDICT, NLM_F_REQUEST, 0, queue, body)


def packet_message(queue: int, packet_id: int, payload: bytes, *, hw_protocol: int = 0x0800, hook: int = 2,
                   mark: int = 0, indev: int = 0, outdev: int = 0, skb_info: int = 0,
                   cap_len: int | None = None) -> bytes:
    """An NFQNL_MSG_PACKET as the kernel sends it (attributes in the kernel's order): for tests and
    bench/instructions.py, which replay packets without traffic."""
    body = _attr(NFQA_PACKET_HDR, struct.pack("!IHB", packet_id, hw_protocol, hook))
    if indev:
        body += _attr(NFQA_IFINDEX_INDEV, struct.pack("!I", indev))
    if outdev:
        body += _attr(NFQA_IFINDEX_OUTDEV, struct.pack("!I", outdev))
    if mark:
        body += _attr(NFQA_MARK, struct.pack("!I", mark))
    if skb_info:
        body += _attr(NFQA_SKB_INFO, struct.pack("!I", skb_info))
    if cap_len is not None:
        body += _attr(NFQA_CAP_LEN, struct.pack("!I", cap_len))
    body += _attr(NFQA_PAYLOAD, payload)
    return _message(NFQNL_MSG_PACKET, 0, 0, queue, body)


# -- recvmmsg ------------------------------------------------------------------------------------


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.c_void_p), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]  # fmt: skip


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


_MMSG_SIZE = ctypes.sizeof(_MMsgHdr)
_FLAGS_AT = _MsgHdr.msg_flags.offset
_LEN_AT = _MMsgHdr.msg_len.offset
# (msg_flags, msg_len) of each mmsghdr
_MMSG_RESULT = struct.Struct(f"={_FLAGS_AT}xi{_LEN_AT - _FLAGS_AT - 4}xI{_MMSG_SIZE - _LEN_AT - 4}x")
_libc = ctypes.CDLL(None, use_errno=True)
_recvmmsg = _libc.recvmmsg
_recvmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p)
_recvmmsg.restype = ctypes.c_int


class _Receiver:
    """Up to `count` datagrams per recvmmsg(2) into slots of `slot` bytes of one buffer.

    The mmsghdr and iovec arrays are ctypes objects, made once; compiled, recvmmsg is called from C
    on their address and the lengths read from them (the pxd's inline helpers), else through ctypes."""

    def __init__(self, fd: int, count: int, slot: int):
        self.fd, self.count, self.slot = fd, count, slot
        self.buffer = bytearray(count * slot)
        self.view = memoryview(self.buffer)
        base = ctypes.addressof(ctypes.c_char.from_buffer(self.buffer))
        self.iovecs = (_IoVec * count)(*[_IoVec(base + i * slot, slot) for i in range(count)])
        self.headers = (_MMsgHdr * count)()
        for i in range(count):
            self.headers[i].msg_hdr.msg_iov = ctypes.addressof(self.iovecs[i])
            self.headers[i].msg_hdr.msg_iovlen = 1
        self.header_view = memoryview(self.headers).cast("B")
        self.address = ctypes.addressof(self.headers)
        self.enobufs = 0
        self.truncated = 0

    def receive(self, most: int) -> int:
        """How many datagrams were read (at most `most`) into slots 0, 1...; 0 when none is waiting."""
        count = most if most < self.count else self.count
        while True:
            if cython.compiled:
                got = _c_recvmmsg(self.fd, self.address, count)  # noqa: F821  (the pxd's)
                code = -got if got < 0 else 0
            else:
                got = _recvmmsg(self.fd, self.address, count, socket.MSG_DONTWAIT, None)
                code = ctypes.get_errno() if got < 0 else 0
            if got >= 0:
                return got
            if code == errno.ENOBUFS:
                self.enobufs += 1
                continue
            if code in (errno.EAGAIN, errno.EINTR):
                return 0
            raise OSError(code, os.strerror(code))

    def length(self, index: int) -> int:
        """The length of datagram `index` of the last receive; -1 if it was cut (counted)."""
        if cython.compiled:
            length = _c_length(self.address, index)  # noqa: F821  (the pxd's)
        else:
            flags, length = _MMSG_RESULT.unpack_from(self.header_view, index * _MMSG_SIZE)
            if flags & MSG_TRUNC:
                length = -1
        if length < 0:
            self.truncated += 1  # cannot happen with slots of the copy range + HEADROOM
        return length


# -- packets -------------------------------------------------------------------------------------


class NfPacket(PacketInterfaces):
    """One queued packet: what the kernel told of it, and its verdict (given once). Its `indev` and
    `outdev` are PacketInterfaces' (fw.drivers.nfqueue: the handler reads them as C fields)."""

    __slots__ = ("id", "hw_protocol", "hook", "mark", "physindev", "physoutdev",
                 "skb_info", "cap_len", "payload", "queue", "new_mark", "new_payload")  # fmt: skip

    def get_payload(self) -> bytes:
        return self.payload

    def get_payload_len(self) -> int:
        return len(self.payload)

    def get_mark(self) -> int:
        return self.mark

    def set_mark(self, mark: int) -> None:
        """The verdict will carry this packet mark."""
        self.new_mark = mark

    def set_payload(self, data: bytes) -> None:
        """The packet leaves as these bytes (NAT); its whole copy is needed (see `truncated`)."""
        self.new_payload = data if type(data) is bytes else bytes(data)  # (bytes(b) is a call for nothing)

    @property
    def truncated(self) -> bool:
        """The copy range cut the payload: the kernel holds more than `payload`."""
        return self.cap_len is not None and self.cap_len > len(self.payload)

    @property
    def gso(self) -> bool:
        return bool(self.skb_info & NFQA_SKB_GSO)

    def accept(self) -> None:
        self._verdict(NF_ACCEPT)

    def drop(self) -> None:
        self._verdict(NF_DROP)

    def repeat(self) -> None:
        self._verdict(NF_REPEAT)

    def _verdict(self, verdict: int) -> None:
        queue = self.queue
        if queue is None:
            raise RuntimeError(f"packet {self.id} already has a verdict")
        self.queue = None
        queue.verdict(self, verdict)

    def __repr__(self) -> str:
        return f"<NfPacket {self.id} {len(self.payload)} bytes mark={self.mark:#x}>"


# -- the queue -----------------------------------------------------------------------------------


class SocketQueue:
    """One bound NFQUEUE queue whose packets go to `callback(packet)`; see fw.drivers.nfqueue.Queue
    for the callback's contract (it gives a verdict or returns ACCEPT_LATER)."""

    def __init__(self, number: int, callback: Callable, options: QueueOptions = DEFAULT_OPTIONS,
                 batch_recv: int = 64):
        self.number = number
        self.options = options
        self.callback = callback
        self._handle = per_packet(callback)  # what _packet calls
        # A PacketHandler whose __call__ is its own: _packet calls its `handle` with the payload (compiled:
        # a C call, not the type's __call__ slot with an argument tuple).
        self._handler = callback if (isinstance(callback, PacketHandler)
                                     and type(callback).__call__ is PacketHandler.__call__) else None
        self._verdict_batch = options.verdict_batch
        self.batches = 0  # NFQNL_MSG_VERDICT_BATCH messages sent
        self.sends = 0  # datagrams of verdicts sent
        self.netlink_errors: Counter = Counter()
        self._accept_through: int | None = None  # highest packet id waiting for the batch accept
        self._given = 0  # packets with a verdict in _out or waiting for the batch accept
        self._out = bytearray()  # verdicts not yet sent
        self._parts: list = []  # before _out, with large payloads between: sent with sendmsg (verdict())
        self._gathered = 0  # bytes in _parts
        self._draining = False
        self._pending: list[bytes] = []  # packet messages read while waiting for an ack
        self._template = bytes(verdict_message(number, 0, 0))
        self._batch_template = bytes(verdict_message(number, 0, NF_ACCEPT, batch=True))
        # With a mark, a payload, both: the same messages with the fields filled in place (verdict()).
        self._mark_template = bytes(verdict_message(number, 0, 0, 0))
        self._payload_head = bytes(verdict_message(number, 0, 0, None, b""))
        self._mark_payload_head = bytes(verdict_message(number, 0, 0, 0, b""))
        self._seq = int(time.time()) & 0xFFFFFF
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self._sock.bind((0, 0))
            self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, options.rcvbuf)
            slot = (min(options.copy_range, 0xFFFF) + HEADROOM + 7) & ~7
            self._receiver = _Receiver(self._sock.fileno(), max(1, min(batch_recv, options.budget)), slot)
            self._data = self._receiver.buffer  # compiled: a typed memoryview of it (the pxd)
            self._request(command_message(number, self._next_seq(), NFQNL_CFG_CMD_BIND), "bind")
            self.configure()
        except BaseException:
            self._sock.close()
            raise

    def fileno(self) -> int:
        return self._sock.fileno()

    def configure(self) -> None:
        """Copy mode and range, queue length, flags; QueueError if the kernel refuses."""
        options = self.options
        self._request(config_message(self.number, self._next_seq(), flags=config_flags(options),
                                     copy_range=options.copy_range, maxlen=options.maxlen), "configure")

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _request(self, message: bytes, what: str) -> None:
        """Send a request and wait for its ack; packets read meanwhile are kept for the next drain."""
        seq = _NLMSG.unpack_from(message)[3]
        self._sock.sendto(message, (0, 0))
        deadline = time.monotonic() + 2.0
        while (left := deadline - time.monotonic()) > 0:
            self._sock.settimeout(max(left, 0.01))
            try:
                reply = self._sock.recv(0x10000 + HEADROOM)
            except TimeoutError:
                break
            finally:
                self._sock.setblocking(True)
            if _NLMSG.unpack_from(reply)[1] != NLMSG_ERROR:
                self._pending.append(reply)
                continue
            code, reply_seq = _ERROR(reply, 16)
            if reply_seq != seq:
                continue
            if code in (-errno.EBUSY, -errno.EPERM) and what == "bind":  # EPERM: another socket owns it
                raise QueueError(f"cannot bind NFQUEUE {self.number}: another process is bound to it")
            if code:
                raise QueueError(f"queue {self.number}: the kernel refused to {what} the queue: "
                                 f"{errno.errorcode.get(-code, -code)}")
            return
        raise QueueError(f"queue {self.number}: no answer when asked to {what} the queue")

    # -- packets in --------------------------------------------------------------------------------

    def drain(self, budget: int | None = None) -> int:
        """Handle the packets waiting (at most `budget`); returns how many were handled."""
        left = budget or self.options.budget
        handled = 0
        receiver = self._receiver
        self._draining = True
        try:
            while self._pending and left > 0:  # read while waiting for an ack: into slot 0, then as read
                message = self._pending.pop(0)
                if len(message) <= receiver.slot:
                    receiver.buffer[:len(message)] = message
                    handled += self._messages(0, len(message))
                left -= 1
            slot = receiver.slot
            while left > 0:
                asked = left if left < receiver.count else receiver.count
                got = receiver.receive(asked)
                if not got:
                    break
                for i in range(got):
                    length = receiver.length(i)
                    if length >= 0:
                        handled += self._messages(i * slot, length)
                left -= got
                if got < asked:  # the socket was empty: not another recvmmsg only to hear EAGAIN
                    break
        finally:
            self._draining = False
            self.accept_waiting()
        return handled

    def _messages(self, offset: int, length: int) -> int:
        """Handle the netlink messages of one datagram in the receive buffer; returns how many were packets."""
        data = self._data
        end = offset + length
        packets = 0
        while offset + 16 <= end:
            if not cython.compiled:  # in Python, unpack_from is cheaper than indexing byte by byte
                size, kind = _NLMSG_HEAD(data, offset)
            elif _LITTLE:
                size = data[offset] | data[offset + 1] << 8 | data[offset + 2] << 16 | data[offset + 3] << 24
                kind = data[offset + 4] | data[offset + 5] << 8
            else:
                size = data[offset] << 24 | data[offset + 1] << 16 | data[offset + 2] << 8 | data[offset + 3]
                kind = data[offset + 4] << 8 | data[offset + 5]
            if size < 16 or offset + size > end:
                self.netlink_errors["malformed"] += 1
                break
            if kind == _PACKET_KIND:
                self._packet(offset + 20, offset + size)
                packets += 1
            elif kind == _NLMSG_ERROR:
                code = _ERROR(self._receiver.view, offset + 16)[0]
                if code:
                    self.netlink_errors[errno.errorcode.get(-code, str(-code))] += 1
            offset += (size + 3) & ~3
        return packets

    def _packet(self, at: int, end: int) -> None:
        """One packet message's attributes (from `at` to `end`) into an NfPacket, to the callback."""
        data = self._data
        p = NfPacket.__new__(NfPacket)
        p.mark = p.indev = p.outdev = p.physindev = p.physoutdev = p.skb_info = 0
        p.cap_len = p.new_mark = p.new_payload = None
        p.payload = b""
        p.queue = self
        while at + 4 <= end:
            if not cython.compiled:
                size, kind = _NLA(data, at)
                kind &= _TYPE_MASK
            elif _LITTLE:
                size = data[at] | data[at + 1] << 8
                kind = (data[at + 2] | data[at + 3] << 8) & _TYPE_MASK
            else:
                size = data[at] << 8 | data[at + 1]
                kind = (data[at + 2] << 8 | data[at + 3]) & _TYPE_MASK
            if size < 4 or at + size > end:
                break
            if kind == _PAYLOAD:
                if cython.compiled:
                    p.payload = _c_bytes(data, at + 4, at + size)  # noqa: F821  (the pxd's)
                else:
                    p.payload = self._receiver.view[at + 4:at + size].tobytes()
            elif size >= 8:  # the others are 32-bit values, the header's first field too
                if cython.compiled:
                    value = data[at + 4] << 24 | data[at + 5] << 16 | data[at + 6] << 8 | data[at + 7]
                else:
                    value = _U32(data, at + 4)[0]
                if kind == _PACKET_HDR:
                    p.id = value
                    if size >= 11:
                        p.hw_protocol = data[at + 8] << 8 | data[at + 9]
                        p.hook = data[at + 10]
                elif kind == _INDEV:
                    p.indev = value
                elif kind == _OUTDEV:
                    p.outdev = value
                elif kind == _MARK:
                    p.mark = value
                elif kind == _SKB_INFO:
                    p.skb_info = value
                elif kind == _CAP_LEN:
                    p.cap_len = value
                elif kind == _PHYSINDEV:
                    p.physindev = value
                elif kind == _PHYSOUTDEV:
                    p.physoutdev = value
            at += (size + 3) & ~3
        if (self._handle(p) if self._handler is None else self._handler.handle(p, p.payload)) is ACCEPT_LATER:
            self._accept_through = p.id
            self._given += 1
            if self._given >= self._verdict_batch:
                self.accept_waiting()

    # -- verdicts out ------------------------------------------------------------------------------

    def verdict(self, packet: NfPacket, verdict: int) -> None:
        """Queue `packet`'s verdict (sent with the others at the end of the drain, or now outside one)."""
        out = self._out
        mark, payload = packet.new_mark, packet.new_payload
        if payload is None:
            if mark is None:
                out += self._template
                _put_verdict(out, len(out) - 8, verdict, packet.id)
            else:
                out += self._mark_template
                _put_verdict(out, len(out) - 16, verdict, packet.id)
                _put_be32(out, len(out) - 4, mark)
        else:
            head = self._payload_head if mark is None else self._mark_payload_head
            size = len(head) + len(payload)
            padded = (size + 3) & ~3
            if self._gathered + len(out) + padded > MAX_DATAGRAM:  # NAT's 64 KiB payloads: a datagram's size is capped
                self._send_out()
                out = self._out
            start = len(out)
            out += head
            _put_lengths(out, start, padded, start + len(head) - 4, 4 + len(payload))
            _put_verdict(out, start + 24, verdict, packet.id)
            if mark is not None:
                _put_be32(out, start + 36, mark)
            if len(payload) < GATHER_FROM:
                out += payload
                out += _PADDING[padded - size]
            else:  # sent from where it is (sendmsg's iovecs): no copy of a 64 KiB GSO packet into the buffer
                self._parts.append(out)
                self._parts.append(payload)
                self._gathered += len(out) + len(payload)
                self._out = bytearray(_PADDING[padded - size])
        self._given += 1
        if not self._draining or self._given >= self.options.verdict_batch:
            self.accept_waiting()

    def accept_waiting(self) -> None:
        """Send the verdicts given so far and the batch accept of the packets left to us, in one datagram."""
        if self._accept_through is not None:
            self._out += self._batch_template
            _put_verdict(self._out, len(self._out) - 8, NF_ACCEPT, self._accept_through)
            self._accept_through = None
            self.batches += 1
        self._send_out()

    def _send_out(self) -> None:
        if self._parts:
            parts, self._parts, self._gathered = self._parts, [], 0
            parts.append(self._out)
            self._out, self._given = bytearray(), 0
            self._sock.sendmsg(parts)
            self.sends += 1
        elif self._out:
            out, self._out, self._given = self._out, bytearray(), 0
            self._sock.send(out)
            self.sends += 1

    @property
    def enobufs(self) -> int:
        return self._receiver.enobufs

    def kernel_counters(self) -> dict[str, int]:
        return read_queue_counters().get(self.number, {})

    def close(self) -> None:
        if self._sock.fileno() < 0:
            return
        self.accept_waiting()
        try:
            self._sock.sendto(command_message(self.number, self._next_seq(), NFQNL_CFG_CMD_UNBIND), (0, 0))
        except OSError:
            pass  # closing the socket unbinds it too
        self._sock.close()
