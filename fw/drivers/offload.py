"""The fast path (`fw run --offload`): established TCP flows pass in the kernel, not through the queue.

How it works. With `EngineConfig(offload=True)` the engine emits an OffloadSession effect when it
moves a TCP session that may go to ESTABLISHED (its packets accepted both ways); OffloadService
consumes it and sets the OFFLOAD bit in the kernel conntrack entry's mark (ctnetlink, one message,
no wait for the answer). Our FW-FORWARD chain (fw.drivers.iptables, `Hooking.offload`) accepts the
packets of a connection with that bit before the NFQUEUE rule when the kernel's own tracker finds
them valid (ctstate ESTABLISHED) and they carry no SYN, FIN or RST; RSTs the kernel finds valid are
accepted too (the engine's window data is old, see below). Everything else still reaches the
engine: SYNs, FINs (so the engine sees the close), packets the kernel finds invalid.

Not offloaded: sessions with an ALG (the FTP ALG needs the control session's payload) and sessions
with `rst_on_timeout`. The engine's TCP window record stays as of the last packet it saw, and a RST
on expiry must carry exactly the receiver's RCV.NXT (RFC 5961); kernel conntrack does not give the
sequence numbers back (CTA_PROTOINFO_TCP has flags and window scales only), so exactness would be
lost. For the same reason the engine makes an offloaded session's record liberal (as the kernel
does when a flowtable hands a flow back): a FIN after megabytes the engine did not see is out of
its old window. A translated session is not offloaded by the engine (the kernel would pass its
packets untranslated) but by fw.drivers.nat_kernel, once the kernel holds its binding: the entry
it makes carries the bit from the start and `offloaded_here` takes the session in; on close that
entry is deleted there, so no bit is cleared here.

OffloadService consumes SessionClosed: the mark of an offloaded session the engine removed
(expired, killed, closed, reopened, evicted) is cleared at once, so later packets reach the engine
again (which then judges them: no session). Once a tick it keeps the engine and the kernel in step:
- the kernel's entries with the bit are read back (a dump filtered by mark; at most SYNC_BATCH a
  second, larger tables less often). An entry whose remaining timeout did not just run down since
  the last read saw a packet: the session's `last_seen` moves to now. The engine's deadline is then
  `last_seen` + the timeout of its state; while that is in the future it is kept at least until the
  next read (expiry may come up to one read interval late, never early). An entry the kernel closed
  (a valid RST) ends the engine's session; an entry the kernel no longer has is no longer offloaded.
Its counters are the `offload` section of `fw stats`. `fw sessions` shows the result (flag
OFFLOADED, the timeout so kept); the packet and byte counters
of an offloaded session count only what the engine saw.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from collections import Counter

from fw.conntrack import tcp as tcpmod
from fw.conntrack.table import OFFLOADED, flow_key
from fw.decision import OffloadSession, SessionClosed
from fw.drivers.iptables import Hooking
from fw.drivers.nfqueue import NETLINK_NETFILTER, NLM_F_ACK, NLM_F_REQUEST, NLMSG_ERROR, _attr

OFFLOAD_MARK = Hooking.offload_mark  # the connmark bit of offloaded connections
SYNC_BATCH = 2000  # offloaded sessions read back per second at most
TCP = 6

NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_GET = 0, 1
NLM_F_DUMP, NLMSG_DONE, NLA_F_NESTED = 0x300, 3, 0x8000
CTA_TUPLE_ORIG, CTA_STATUS, CTA_PROTOINFO, CTA_TIMEOUT, CTA_MARK, CTA_MARK_MASK = 1, 3, 4, 7, 8, 21
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE = 1, 1
KERNEL_TCP_STATES = ("NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK",
                     "TIME_WAIT", "CLOSE", "SYN_SENT2")
AF = {4: socket.AF_INET, 6: socket.AF_INET6}


class ConntrackError(Exception):
    """A conntrack netlink request failed."""


# -- ctnetlink messages ------------------------------------------------------------------------------


def _nested(kind: int, body: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, body)


def tuple_attrs(family: int, proto: int, src: bytes, dst: bytes, sport: int, dport: int) -> bytes:
    """CTA_TUPLE_ORIG's contents for a flow (addresses raw, 4 or 16 bytes)."""
    v4 = family == 4
    addresses = _attr(CTA_IP_V4_SRC if v4 else CTA_IP_V6_SRC, src) + _attr(CTA_IP_V4_DST if v4 else CTA_IP_V6_DST, dst)
    ports = (_attr(CTA_PROTO_NUM, bytes([proto])) + _attr(CTA_PROTO_SRC_PORT, struct.pack("!H", sport))
             + _attr(CTA_PROTO_DST_PORT, struct.pack("!H", dport)))
    return _nested(CTA_TUPLE_IP, addresses) + _nested(CTA_TUPLE_PROTO, ports)


def message(kind: int, flags: int, seq: int, family: int, body: bytes) -> bytes:
    payload = struct.pack("!BBH", family, 0, 0) + body
    return struct.pack("=IHHII", 16 + len(payload), (NFNL_SUBSYS_CTNETLINK << 8) | kind, flags, seq, 0) + payload


def mark_message(session, mark: int, mask: int, seq: int, ack: bool = False) -> bytes:
    """Update the mark bits `mask` of the session's kernel entry to `mark` (new = old & ~mask ^ mark)."""
    body = _nested(CTA_TUPLE_ORIG, tuple_attrs(session.family, session.proto, session.src, session.dst,
                                               session.sport, session.dport))
    body += _attr(CTA_MARK, struct.pack("!I", mark)) + _attr(CTA_MARK_MASK, struct.pack("!I", mask))
    return message(IPCTNL_MSG_CT_NEW, NLM_F_REQUEST | (NLM_F_ACK if ack else 0), seq, AF[session.family], body)


def attributes(data: bytes, start: int = 0, end: int | None = None) -> dict[int, bytes]:
    """Netlink attributes in data[start:end] by type (nesting flag dropped)."""
    end = len(data) if end is None else end
    found = {}
    while start + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, start)
        if length < 4:
            break
        found[kind & 0x3FFF] = data[start + 4:start + length]
        start += (length + 3) & ~3
    return found


class Entry:
    """What the kernel says of one connection: its original tuple, TCP state, timeout and mark."""

    __slots__ = ("family", "proto", "src", "dst", "sport", "dport", "state", "timeout", "mark")

    @classmethod
    def parse(cls, body: bytes) -> Entry | None:
        top = attributes(body, 4)  # after the nfgenmsg
        if CTA_TUPLE_ORIG not in top:
            return None
        entry = cls()
        tup = attributes(top[CTA_TUPLE_ORIG])
        ips, ports = attributes(tup.get(CTA_TUPLE_IP, b"")), attributes(tup.get(CTA_TUPLE_PROTO, b""))
        entry.family = 4 if CTA_IP_V4_SRC in ips else 6
        entry.src = ips.get(CTA_IP_V4_SRC) or ips.get(CTA_IP_V6_SRC, b"")
        entry.dst = ips.get(CTA_IP_V4_DST) or ips.get(CTA_IP_V6_DST, b"")
        entry.proto = ports.get(CTA_PROTO_NUM, b"\0")[0]
        entry.sport = struct.unpack("!H", ports.get(CTA_PROTO_SRC_PORT, b"\0\0"))[0]
        entry.dport = struct.unpack("!H", ports.get(CTA_PROTO_DST_PORT, b"\0\0"))[0]
        entry.timeout = struct.unpack("!I", top[CTA_TIMEOUT])[0] if CTA_TIMEOUT in top else None
        entry.mark = struct.unpack("!I", top[CTA_MARK])[0] if CTA_MARK in top else 0
        info = attributes(attributes(top.get(CTA_PROTOINFO, b"")).get(CTA_PROTOINFO_TCP, b""))
        state = info.get(CTA_PROTOINFO_TCP_STATE)
        entry.state = KERNEL_TCP_STATES[state[0]] if state and state[0] < len(KERNEL_TCP_STATES) else None
        return entry

    @property
    def key(self) -> tuple:
        return flow_key(self.proto, self.src, self.dst, self.sport, self.dport)


class Conntrack:
    """A ctnetlink socket of this network namespace: mark updates (no waiting) and filtered dumps."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.bind((0, 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.seq = int(time.time()) & 0xFFFFFF
        self.errors: Counter = Counter()  # errno names of failed updates (answered later)

    def send(self, data: bytes) -> None:
        self.sock.send(data)

    def next_seq(self) -> int:
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        return self.seq

    def set_mark(self, session, mark: int, mask: int) -> None:
        """Fire and forget: a failure (the entry is gone: ENOENT) comes back later, see drain()."""
        self.sock.send(mark_message(session, mark, mask, self.next_seq()))

    def drain(self) -> None:
        """Read the answers to earlier updates (errors only) without waiting."""
        while True:
            try:
                data = self.sock.recv(1 << 16, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError as exc:
                self.errors[errno.errorcode.get(exc.errno, str(exc.errno))] += 1
                return
            for kind, body in _messages(data):
                self._count_error(kind, body)

    def _count_error(self, kind: int, body: bytes) -> None:
        if kind == NLMSG_ERROR and len(body) >= 4:
            code = -struct.unpack_from("=i", body)[0]
            if code:
                self.errors[errno.errorcode.get(code, str(code))] += 1

    def dump(self, mark: int, mask: int, timeout: float = 2.0) -> list[Entry]:
        """The kernel's entries whose mark & mask == mark (every family)."""
        seq = self.next_seq()
        body = _attr(CTA_MARK, struct.pack("!I", mark)) + _attr(CTA_MARK_MASK, struct.pack("!I", mask))
        self.sock.send(message(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, seq, socket.AF_UNSPEC, body))
        entries: list[Entry] = []
        deadline = time.monotonic() + timeout
        self.sock.settimeout(timeout)
        try:
            while time.monotonic() < deadline:
                data = self.sock.recv(1 << 20)
                for kind, body, their_seq in _messages(data, with_seq=True):
                    if their_seq != seq:
                        self._count_error(kind, body)  # an answer to an earlier update
                    elif kind == NLMSG_DONE:
                        return entries
                    elif kind == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", body)[0]
                        raise ConntrackError(f"conntrack dump failed: {errno.errorcode.get(code, code)}")
                    elif (entry := Entry.parse(body)) is not None:
                        entries.append(entry)
        except TimeoutError:
            pass
        finally:
            self.sock.setblocking(True)
        raise ConntrackError("conntrack dump: no end within the time allowed")

    def close(self) -> None:
        self.sock.close()


def _messages(data: bytes, with_seq: bool = False):
    offset = 0
    while offset + 16 <= len(data):
        length, kind, _flags, seq = struct.unpack_from("=IHHI", data, offset)
        if length < 16:
            break
        body = data[offset + 16:offset + length]
        yield (kind, body, seq) if with_seq else (kind, body)
        offset += (length + 3) & ~3


# -- the driver side -----------------------------------------------------------------------------


class OffloadService:
    """--offload: consumes OffloadSession and SessionClosed (`attach(effects)`), and once a tick
    (a `Daemon.services` member: tick, close) reads the kernel's entries back."""

    def __init__(self, engine, conntrack: Conntrack | None = None, clock=time.monotonic):
        self.engine = engine
        self.dispatch = None  # the daemon's Effects (set by attach): where the effects of engine.kill go
        self.conntrack = conntrack if conntrack is not None else Conntrack()
        self.clock = clock
        self.counters: Counter = Counter()
        self.offloaded: dict[tuple, object] = {}  # canonical key -> session
        self.next_sync = 0.0
        self.remaining: dict[tuple, tuple[int, float]] = {}  # key -> (kernel timeout left, when read)

    def attach(self, effects) -> None:
        """Subscribe to the daemon's effects."""
        self.dispatch = effects
        effects.on(OffloadSession, self.on_offload)
        effects.on(SessionClosed, self.on_closed)

    def on_offload(self, effect: OffloadSession) -> None:
        session = effect.session
        if session.key in self.offloaded or session.slot == -1:
            return
        try:
            self.conntrack.set_mark(session, OFFLOAD_MARK, OFFLOAD_MARK)
        except OSError as exc:
            self.counters["errors"] += 1
            self.conntrack.errors[errno.errorcode.get(exc.errno, str(exc.errno))] += 1
            return
        session.flags |= OFFLOADED
        self.offloaded[session.key] = session
        self.counters["offloaded"] += 1

    def offloaded_here(self, session) -> None:
        """fw.drivers.nat_kernel made the entry of a translated session with the bit (and the
        binding) itself: kept and read back like the others; on close that entry is deleted there."""
        if session.key in self.offloaded or session.slot == -1:
            return
        session.liberal = True  # its window record ages while the kernel passes its packets
        session.flags |= OFFLOADED
        self.offloaded[session.key] = session
        self.counters["offloaded"] += 1
        self.counters["offloaded_translated"] += 1

    def replaced(self, old, new) -> None:
        """fw.drivers.nat_kernel handed an offloaded translated session's entry to the copy an HA
        peer's news put in its place: that copy is the offloaded one now."""
        if self.offloaded.get(old.key) is not old:
            return
        new.liberal = True
        new.flags |= OFFLOADED
        self.offloaded[new.key] = new

    def on_closed(self, effect: SessionClosed) -> None:
        session = effect.session
        if self.offloaded.get(session.key) is session:  # (a translated one's entry is deleted by nat_kernel)
            self._forget(session.key, session, clear=session.nat is None)

    def stats(self) -> dict:
        return {"active": len(self.offloaded), **self.counters, "netlink_errors": dict(self.conntrack.errors)}

    def tick(self, now: float) -> None:
        self.conntrack.drain()
        if now >= self.next_sync and self.offloaded:
            self.sync(now)

    def interval(self) -> float:
        return max(1.0, len(self.offloaded) / SYNC_BATCH)

    def _forget(self, key, session, clear: bool) -> None:
        self.offloaded.pop(key, None)
        self.remaining.pop(key, None)
        session.flags &= ~OFFLOADED
        if clear:
            try:
                self.conntrack.set_mark(session, 0, OFFLOAD_MARK)
                self.counters["released"] += 1
            except OSError:
                self.counters["errors"] += 1

    def sync(self, now: float) -> None:
        """Read the kernel's offloaded entries back into the engine's sessions."""
        interval = self.interval()
        self.next_sync = now + interval
        try:
            entries = {entry.key: entry for entry in self.conntrack.dump(OFFLOAD_MARK, OFFLOAD_MARK)}
        except (ConntrackError, OSError):
            self.counters["sync_errors"] += 1
            return
        self.counters["syncs"] += 1
        for key, session in list(self.offloaded.items()):
            entry = entries.get(key)
            if entry is None:  # the kernel forgot it: its packets reach the engine again
                self._forget(key, session, clear=False)
                self.counters["lost"] += 1
                continue
            if entry.state == "CLOSE":  # a RST the kernel found valid ended it
                self._forget(key, session, clear=False)
                effects = self.engine.kill(session, now, "offload-reset")
                if self.dispatch is not None:
                    self.dispatch(effects)
                self.counters["reset"] += 1
                continue
            self._refresh(key, session, entry, now, interval)

    def _refresh(self, key, session, entry: Entry, now: float, interval: float) -> None:
        last = self.remaining.get(key)
        if entry.timeout is not None:
            self.remaining[key] = (entry.timeout, now)
        if last is None or entry.timeout is None or entry.timeout > last[0] - (now - last[1]) + 1:
            session.last_seen = now  # a packet since the last read (or the first read)
        timeouts = session.timeouts
        timeout = timeouts[tcpmod.timeout_key(session.tcp, timeouts)] * self.engine.timeout_scale
        true_deadline = session.last_seen + timeout
        deadline = true_deadline if true_deadline <= now else max(true_deadline, now + interval + 1.5)
        self.engine.table.touch(session, deadline)

    def close(self) -> None:
        self.conntrack.close()
