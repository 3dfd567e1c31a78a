# cython: annotation_typing=False
"""The NFQUEUE side of the daemon: bind a queue, read packets in batches, give every one a verdict.

How it works. netfilterqueue (1.1) binds the queue and parses each message; we drive it and cover
its limits:
- Reading: `run_socket(reader)` calls `reader.recv()` for each message. Our reader receives on the
  queue's netlink socket itself (a dup of `get_fd()`), so it sees ENOBUFS (netfilterqueue's `run()`
  swallows it) and counts it, ends a batch after `budget` messages (by raising EAGAIN, which
  run_socket treats as "no more for now") so the daemon's loop keeps control, and uses a 128 KiB
  buffer instead of netfilterqueue's 4 KiB. Netlink errors and acks are consumed by the reader,
  never handed to libnetfilter_queue.
- Configuration: after bind() we send NFQNL_MSG_CONFIG ourselves on the same socket (the kernel
  accepts it only from the queue's owner) and check the ack: NFQA_CFG_PARAMS with the copy range
  netfilterqueue caps at 4016 bytes, NFQA_CFG_FLAGS with FAIL_OPEN (--fail-open: accept when the
  queue is full) and GSO (large GRO/GSO packets arrive whole instead of being segmented by the
  kernel; their checksums may be partial, which the engine does not check).
- Verdicts: drops (and a verdict that moves a packet to another queue) go out one by one, at once;
  accepts are sent in batches, NFQNL_MSG_VERDICT_BATCH "accept every packet up to id N", after at
  most `verdict_batch` packets and at the end of every drain (so a packet waits for at most that
  many others, never for more traffic): one syscall instead of up to 16 (measured, 64-byte UDP
  through `fw run`: the per-packet verdict syscall was about a fifth of the daemon's CPU).
  Packets kept for later (fw.sync's hold) would be swept up by a batch, so with a hold every
  verdict is sent on its own.
- Copy range 0xffff: with GSO a packet may be 64 KiB; the whole of it costs one memcpy, much less
  than the Python per-packet cost the GSO flag saves, and the ALG always sees complete payloads.
- The callback never raises: an exception while handling a packet gives that packet the
  fail-open/fail-closed verdict, is counted and reported with a summary of the packet.
- Kernel counters (queue_dropped: queue full; user_dropped: socket buffer full) come from
  /proc/net/netfilter/nfnetlink_queue.
- Compiled (build_compiled.py), nfqueue.pxd makes PacketHandler an extension type with C fields: the
  per-packet handler costs about a third of the interpreted one (docs/performance.md). Its
  `handle(packet, payload)` (what fw.drivers.nfqueue_socket calls, from C) reads the Decision's
  fields in C and calls a RuleCounters `observe` hook (fw.records) directly.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
import sys
import time
import warnings
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from types import FunctionType

try:
    import cython
except ImportError:  # no Cython: this module runs pure (as with FW_PURE=1)
    from fw import cython_shadow as cython


from fw.decision import ACCEPT, DROP, RewritePacket, SetMark, Verdicts
from fw.packet.constants import PROTO_NAMES
from fw.rule_counters import RuleCounters

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_CONFIG = 2
NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN, NFQA_CFG_MASK, NFQA_CFG_FLAGS = 2, 3, 4, 5
NFQA_CFG_F_FAIL_OPEN, NFQA_CFG_F_GSO = 0x1, 0x4
NFQNL_COPY_PACKET = 2
NFQNL_MSG_VERDICT, NFQNL_MSG_VERDICT_BATCH = 1, 3
NFQA_VERDICT_HDR, NFQA_MARK = 2, 3
NF_ACCEPT, NF_QUEUE = 1, 3
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2
_TYPE_LOW_BYTE = 4 if sys.byteorder == "little" else 5  # where nlmsg_type's low byte is (host order)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
PROC_QUEUES = "/proc/net/netfilter/nfnetlink_queue"
RECV_BUFFER = 128 * 1024
QUEUE_COLUMNS = ("queue", "peer_portid", "queue_total", "copy_mode", "copy_range",
                 "queue_dropped", "user_dropped", "id_sequence")  # fmt: skip


class QueueError(Exception):
    """The queue could not be bound or configured."""


@dataclass(frozen=True)
class QueueOptions:
    fail_open: bool = False
    gso: bool = True
    copy_range: int = 0xFFFF
    maxlen: int = 4096  # packets the kernel holds for us before the queue counts as full
    rcvbuf: int = 32 << 20  # bytes of socket buffer (SO_RCVBUFFORCE)
    budget: int = 256  # messages per batch before the loop looks at its other work
    verdict_batch: int = 16  # accepts told to the kernel in one NFQNL_MSG_VERDICT_BATCH, at most


# -- netlink messages ----------------------------------------------------------------------------


def _attr(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return struct.pack("=HH", length, kind) + data + b"\0" * (-length % 4)


def config_message(queue: int, seq: int, *, flags: int, copy_range: int, maxlen: int) -> bytes:
    """NFQNL_MSG_CONFIG for `queue`: copy mode and range, queue length, flags (mask = all we set)."""
    mask = NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO
    body = struct.pack("!BBH", socket.AF_UNSPEC, 0, queue)  # nfgenmsg: family, version, res_id
    body += _attr(NFQA_CFG_PARAMS, struct.pack("!IB", copy_range, NFQNL_COPY_PACKET))
    body += _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", maxlen))
    body += _attr(NFQA_CFG_FLAGS, struct.pack("!I", flags))
    body += _attr(NFQA_CFG_MASK, struct.pack("!I", mask))
    kind = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG
    return struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def config_flags(options: QueueOptions) -> int:
    """The NFQA_CFG_FLAGS of a queue with these options."""
    return (NFQA_CFG_F_FAIL_OPEN if options.fail_open else 0) | (NFQA_CFG_F_GSO if options.gso else 0)


def verdict_message(queue: int, packet_id: int, verdict: int, mark: int | None = None, *,
                    batch: bool = False) -> bytes:
    """NFQNL_MSG_VERDICT for one packet (verdict NF_QUEUE | target << 16 moves it to another queue);
    batch: NFQNL_MSG_VERDICT_BATCH, the verdict for every packet of the queue up to `packet_id`."""
    body = struct.pack("!BBH", socket.AF_UNSPEC, 0, queue)
    body += _attr(NFQA_VERDICT_HDR, struct.pack("!II", verdict, packet_id))
    if mark is not None:
        body += _attr(NFQA_MARK, struct.pack("!I", mark))
    kind = (NFNL_SUBSYS_QUEUE << 8) | (NFQNL_MSG_VERDICT_BATCH if batch else NFQNL_MSG_VERDICT)
    return struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST, 0, 0) + body


def netlink_error(message: bytes) -> tuple[int, int] | None:
    """(errno, seq of the request) if `message` is an NLMSG_ERROR (errno 0: an ack), else None."""
    if len(message) < 20 or struct.unpack_from("=H", message, 4)[0] != NLMSG_ERROR:
        return None
    (error,) = struct.unpack_from("=i", message, 16)
    seq = struct.unpack_from("=I", message, 28)[0] if len(message) >= 36 else 0
    return -error, seq


# -- reading ----------------------------------------------------------------------------------------


class _Reader:
    """What run_socket() reads from: one netlink message per recv(), at most `budget` per batch."""

    def __init__(self, sock: socket.socket, budget: int):
        self.sock = sock
        self.budget = budget
        self.left = 0
        self.buffer = bytearray(RECV_BUFFER)
        self.view = memoryview(self.buffer)
        self.enobufs = 0  # times the kernel told us it could not deliver (socket buffer full)
        self.netlink_errors: Counter = Counter()
        self.handled = 0
        self.pending: deque[bytes] = deque()  # packets read while waiting for an ack

    def recv(self, _size: int) -> bytes:
        if self.left <= 0:
            raise BlockingIOError(errno.EAGAIN, "batch done")
        if self.pending:
            self.left -= 1
            self.handled += 1
            return self.pending.popleft()
        while True:
            try:
                size = self.sock.recv_into(self.buffer, RECV_BUFFER, socket.MSG_DONTWAIT)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.enobufs += 1
                    continue
                raise
            message = self.view[:size].tobytes()
            # Most messages are packets: the full check only when the type's low byte is NLMSG_ERROR's.
            failure = netlink_error(message) if self.buffer[_TYPE_LOW_BYTE] == NLMSG_ERROR else None
            if failure is None:
                self.left -= 1
                self.handled += 1
                return message
            if failure[0]:
                self.netlink_errors[errno.errorcode.get(failure[0], str(failure[0]))] += 1


ACCEPT_LATER = "accept later"  # what a callback returns to have Queue accept the packet in a batch


def per_packet(callback: Callable) -> Callable:
    """What a queue calls for each packet: an object's bound __call__ if that is Python code (called
    without the type's slot lookup), else the callback itself (a function, or a compiled handler's
    C slot)."""
    call = next((kind.__dict__["__call__"] for kind in type(callback).__mro__ if "__call__" in kind.__dict__), None)
    return callback.__call__ if isinstance(call, FunctionType) else callback


class Queue:
    """One bound NFQUEUE queue whose packets go to `callback(packet)` (a netfilterqueue Packet).

    The callback gives each packet its verdict, or returns ACCEPT_LATER: the queue then accepts it
    with the packets after it in one NFQNL_MSG_VERDICT_BATCH ("every packet up to id N"), sent when
    `verdict_batch` are waiting and at the end of every drain(). So a callback that returns
    ACCEPT_LATER must not leave any packet without a verdict (a batch would accept it too)."""

    def __init__(self, number: int, callback: Callable, options: QueueOptions = QueueOptions()):
        from netfilterqueue import COPY_PACKET, NetfilterQueue

        self.number = number
        self.options = options
        self.callback = callback
        self._handle = per_packet(callback)  # what _on_packet calls
        self._batch_size = options.verdict_batch
        self.batches = 0  # NFQNL_MSG_VERDICT_BATCH messages sent
        self._accept_through: int | None = None  # highest packet id waiting to be accepted
        self._waiting = 0
        self._nfq = NetfilterQueue()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # we set the buffer size below
                self._nfq.bind(number, self._on_packet, max_len=options.maxlen, mode=COPY_PACKET,
                               range=min(options.copy_range, 4016), sock_len=options.rcvbuf // 2)
        except OSError as exc:
            raise QueueError(f"cannot bind NFQUEUE {number} (another process bound to it?): {exc}") from None
        self._sock = socket.fromfd(self._nfq.get_fd(), socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, options.rcvbuf)
        self._reader = _Reader(self._sock, options.budget)
        self._seq = int(time.time()) & 0xFFFFFF
        self.configure()

    def fileno(self) -> int:
        return self._sock.fileno()

    @property
    def flags(self) -> int:
        return config_flags(self.options)

    def configure(self) -> None:
        """Send our NFQNL_MSG_CONFIG and wait for its ack; QueueError if the kernel refuses."""
        self._seq += 1
        message = config_message(self.number, self._seq, flags=self.flags,
                                 copy_range=self.options.copy_range, maxlen=self.options.maxlen)
        self._sock.sendto(message, (0, 0))
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            self._sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                reply = self._sock.recv(RECV_BUFFER)
            except TimeoutError:
                break
            finally:
                self._sock.setblocking(True)
            failure = netlink_error(reply)
            if failure is None:
                self._reader.pending.append(reply)
            elif failure[1] == self._seq:
                if failure[0]:
                    raise QueueError(f"queue {self.number}: the kernel refused the queue configuration: "
                                     f"{errno.errorcode.get(failure[0], failure[0])}")
                return
        raise QueueError(f"queue {self.number}: no answer to the queue configuration")

    def drain(self, budget: int | None = None) -> int:
        """Handle the packets waiting (at most `budget`); returns how many were handled."""
        reader = self._reader
        reader.left = budget or self.options.budget
        before = reader.handled
        try:
            self._nfq.run_socket(reader)
        finally:
            self.accept_waiting()
        return reader.handled - before

    def _on_packet(self, packet) -> None:
        if self._handle(packet) is ACCEPT_LATER:
            self._accept_through = packet.id
            self._waiting += 1
            if self._waiting >= self._batch_size:
                self.accept_waiting()

    def accept_waiting(self) -> None:
        """Accept the packets the callback left to us, in one message."""
        if self._accept_through is None:
            return
        message = verdict_message(self.number, self._accept_through, NF_ACCEPT, batch=True)
        self._accept_through, self._waiting = None, 0
        self._sock.send(message)
        self.batches += 1

    @property
    def enobufs(self) -> int:
        return self._reader.enobufs

    @property
    def netlink_errors(self) -> Counter:
        return self._reader.netlink_errors

    def kernel_counters(self) -> dict[str, int]:
        return read_queue_counters().get(self.number, {})

    def close(self) -> None:
        self.accept_waiting()
        self._nfq.unbind()
        self._sock.close()


def read_queue_counters(path: str = PROC_QUEUES) -> dict[int, dict[str, int]]:
    """The kernel's per-queue counters of this network namespace, by queue number."""
    try:
        with open(path) as proc:
            rows = [line.split() for line in proc]
    except OSError:
        return {}
    return {int(row[0]): dict(zip(QUEUE_COLUMNS, map(int, row), strict=False)) for row in rows if row}


# -- the verdict for each packet --------------------------------------------------------------------


class PacketInterfaces:
    """A queued packet's interfaces (ifindexes). fw.drivers.nfqueue_socket's NfPacket derives from
    it: compiled, PacketHandler.judge reads them as C fields, not through attribute lookups."""

    __slots__ = ("indev", "outdev")


class PacketHandler:
    """The queue callback: packet bytes, the time and the interfaces into the engine, a verdict out.

    Whatever happens, the packet gets a verdict: an exception in the engine gives it the
    fail-open/fail-closed verdict (reason `error`), counted and reported through `on_error`.
    The decision's effects go to `on_effects` after the verdict, so they never delay the packet;
    SetMark and RewritePacket go with the verdict itself (which is then sent alone).
    `verdicts` counts each final verdict with its reason, here where it is given: a packet that
    `defer` keeps is counted by whoever gives its verdict later, one that `redirect` hands to
    another queue is counted there.
    """

    def __init__(self, engine, fail_open: bool, on_effects: Callable, on_error: Callable,
                 clock: Callable[[], float] = time.monotonic):
        self.engine = engine
        self.fail_verdict = ACCEPT if fail_open else DROP
        self.on_effects = on_effects
        self.on_error = on_error
        self.clock = clock
        self.errors: Counter = Counter()  # "engine", "effects", "verdict": failures by where
        self.verdicts = Verdicts()  # final verdicts by reason (errors: reason "error")
        self._ifnames: dict[int, str | None] = {0: None}
        self._last_indev = self._last_outdev = -1  # the last packet's interfaces and their names (judge)
        self._last_iif = self._last_oif = None
        # redirect(packet, decision) -> bool: another verdict for a packet the engine drops (fw.workers
        # hands an ICMP error whose session it does not hold to the next queue); True if it gave one.
        self.redirect: Callable | None = None
        # observe(decision): told of every decision (per-rule counters of fw.metrics), if set.
        self.observe: Callable | None = None
        self._observed = self._counters = None  # the observe hook seen last; its RuleCounters if it is one
        # defer(packet, data, decision) -> bool: True if it keeps the packet and gives its verdict
        # later itself (fw.sync holds a packet that waits for a peer's session; owner forwarding
        # sends it to its owner). Returning False it may have replaced the decision's verdict,
        # reason and effects (owner forwarding judged the packet here after all). Must not raise.
        self.defer: Callable | None = None
        # accept_later: an accepted packet's verdict is left to the Queue, which sends it with the
        # next ones in one batch (one syscall for up to QueueOptions.verdict_batch packets). Off
        # while `defer` is set: a batch would accept the packets it holds.
        self.accept_later = False

    def __call__(self, packet) -> str | None:
        """The packet's verdict, given; or ACCEPT_LATER, returned (see accept_later)."""
        try:
            data = packet.get_payload()
        except Exception as exc:  # noqa: BLE001  (the packet loop survives everything)
            return self._fail(packet, b"", "engine", exc)
        return self.handle(packet, data)

    def handle(self, packet, data: bytes) -> str | None:
        """__call__ with the packet's bytes in hand (fw.drivers.nfqueue_socket calls it, from C when
        compiled). Compiled, `decision` is a typed Decision: its fields are read in C, and a
        RuleCounters `observe` is called directly (`_counters`)."""
        try:
            decision = self.judge(packet, data)
            observe = self.observe
            if observe is not None:
                if observe is not self._observed:  # set (or changed) since the last packet
                    self._observe_with(observe)
                if self._counters is not None:
                    self._counters.count(decision)
                else:
                    observe(decision)
        except Exception as exc:  # noqa: BLE001  (the packet loop survives everything)
            return self._fail(packet, data, "engine", exc)
        later = None
        applied = 0  # SetMark and RewritePacket effects given to the verdict: nothing else does them
        effects = decision.effects
        try:
            if self.defer is not None and self.defer(packet, data, decision):
                pass  # kept: its verdict comes later
            elif decision.verdict == ACCEPT:  # (a defer hook may have judged it again: owner forwarding)
                _count(self.verdicts.accepted, decision.reason)
                if effects and (applied := self.apply_effects(packet, effects)):
                    packet.accept()  # changed: not in a batch, which would send the original
                elif self.accept_later and self.defer is None:
                    later = ACCEPT_LATER
                else:
                    packet.accept()
            elif self.redirect is None or not self.redirect(packet, decision):
                _count(self.verdicts.dropped, decision.reason)
                packet.drop()
        except Exception as exc:  # noqa: BLE001
            self.errors["verdict"] += 1
            self.on_error("verdict", exc, data)
        if len(effects) > applied:  # others than the packet's own (NAT's passes: usually none)
            try:
                self.on_effects(effects)
            except Exception as exc:  # noqa: BLE001
                self.errors["effects"] += 1
                self.on_error("effects", exc, data)
        return later

    def _observe_with(self, observe) -> None:
        """`observe` is a RuleCounters' count (fw.records): call that directly, not through the bound method."""
        owner = getattr(observe, "__self__", None)
        self._counters = owner if isinstance(owner, RuleCounters) and observe == owner.count else None
        self._observed = observe

    def judge(self, packet, data: bytes):
        """The engine's Decision for the packet (fw.drivers.nat_queue adds the NAT passes' inputs)."""
        if cython.compiled and isinstance(packet, PacketInterfaces):  # an NfPacket: C fields
            fields = cython.cast(PacketInterfaces, packet)
            indev, outdev = fields.indev, fields.outdev
        else:
            indev, outdev = packet.indev, packet.outdev
        if indev == self._last_indev and outdev == self._last_outdev:  # as the packet before
            iif, oif = self._last_iif, self._last_oif
        else:
            names = self._ifnames
            try:  # ifname(), written out for the names already known
                iif, oif = names[indev], names[outdev]
            except KeyError:
                iif, oif = self.ifname(indev), self.ifname(outdev)
            self._last_indev, self._last_outdev, self._last_iif, self._last_oif = indev, outdev, iif, oif
        return self.engine.process(data, self.clock(), iif, oif)

    @staticmethod
    def new_mark(packet, mark: int) -> int:
        """The mark a SetMark gives the packet (fw.drivers.nat_queue keeps the packet's other bits)."""
        return mark

    def apply_effects(self, packet, effects) -> int:
        """Apply SetMark and RewritePacket to the packet; how many there were (0: unchanged). Also
        for a packet fw.sync held and judged later."""
        applied = 0
        for effect in effects:
            kind = type(effect)
            if kind is SetMark:
                packet.set_mark(self.new_mark(packet, effect.mark))
                applied += 1
            elif kind is RewritePacket:
                packet.set_payload(effect.data)
                applied += 1
        return applied

    def _fail(self, packet, data: bytes, where: str, exc: BaseException) -> str | None:
        self.errors[where] += 1
        self.verdicts.count(self.fail_verdict, "error")
        later = None
        try:
            if self.fail_verdict == DROP:
                packet.drop()
            elif self.accept_later and self.defer is None:
                later = ACCEPT_LATER  # in order with the accepts before it
            else:
                packet.accept()
        except Exception:  # noqa: BLE001  (a verdict already given, or the queue is gone)
            self.errors["verdict"] += 1
        self.on_error(where, exc, data)
        return later

    def ifname(self, index: int) -> str | None:
        """The interface name of an ifindex, cached (forget_interfaces() clears the cache)."""
        try:
            return self._ifnames[index]
        except KeyError:
            pass
        try:
            name = socket.if_indextoname(index)
        except OSError:
            name = None
        self._ifnames[index] = name
        return name

    def forget_interfaces(self) -> None:
        """Interfaces come and go and ifindexes are reused: the daemon calls this every second."""
        self._last_indev = -1  # judge's names of the last packet's interfaces
        if len(self._ifnames) > 1:
            self._ifnames = {0: None}


def _count(counter: Counter, key) -> None:
    """counter[key] += 1. Compiled, with the dict's own C calls (a Counter's item assignment goes
    through its Python-level slots, as Counter defines __delitem__: ~1,000 instructions)."""
    items = cython.cast(dict, counter) if cython.compiled else counter
    items[key] = items.get(key, 0) + 1


def summarize(data: bytes) -> str:
    """One line about a packet for an error report; never raises, whatever the bytes."""
    try:
        version = data[0] >> 4
        if version == 4:
            start, proto, src, dst = (data[0] & 0x0F) * 4, data[9], data[12:16], data[16:20]
        elif version == 6:
            start, proto, src, dst = 40, data[6], data[8:24], data[24:40]
        else:
            raise ValueError
        src, dst = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        name = PROTO_NAMES.get(proto, f"proto {proto}")
        if proto in (6, 17) and len(data) >= start + 4:
            sport, dport = struct.unpack_from("!HH", data, start)
            host = "[{}]:{}" if version == 6 else "{}:{}"
            return f"{name} {host.format(src, sport)} -> {host.format(dst, dport)} ({len(data)} bytes)"
        return f"{name} {src} -> {dst} ({len(data)} bytes)"
    except (IndexError, ValueError):
        return f"{len(data)} bytes: {data[:24].hex()}"
