"""The kernel holds a bare translated session's NAT binding: its packets leave the queue unchanged.

Why. A packet fw rewrites goes back with a new payload in its verdict: the kernel (nfqnl_mangle)
then makes the whole skb linear, copies it in, sets CHECKSUM_NONE, and a GSO packet is segmented
and checksummed in software. Linux's own NAT rewrites in place, GSO and partial checksums intact.
So once a translated session is established, the kernel conntrack entry is given the same binding,
and fw accepts the session's packets without a new payload.

How it works. fw queues in mangle PREROUTING and POSTROUTING (priority -150), after the kernel's
conntrack lookup (-200) and before its nat hooks (DNAT -100, SNAT +100), which the rules register
in the namespace (fw.drivers.iptables: tagged `nat` chains, a RETURN each, when the policy
translates; an entry without a binding gets the kernel's null binding: nothing changes). The
engine (fw/engine_nat_passes.py) emits `KernelNat(session)` once a bare session (no ALG, no FTP
rewriting: no seqadj) is established (TCP) or carried 4 datagrams (UDP); `on_ready` then, on its own
ctnetlink socket, in one go (the kernel answers netlink requests while they are sent):
- deletes the kernel's entries that would clash: the one the client's packets made (orig c:cp ->
  d:dp) and the one the replies made (orig s:sp -> t:tp: the kernel never saw the translated
  tuple leave, so the replies looked like a new connection);
- creates one entry: orig tuple c:cp -> d:dp, CTA_NAT_DST (s:sp, min = max) when the destination
  is translated, CTA_NAT_SRC (t:tp) when the source is (nfnetlink_parse_nat_setup gives the other
  manip a null binding), status SEEN_REPLY|ASSURED, a TCP state ESTABLISHED with BE_LIBERAL both
  ways (mid-stream: the kernel's window tracking starts without the sequence numbers, and must not
  find packets invalid, which would leave them without an entry, so untranslated), the timeout
  of the state, and the connmark: KERNEL_NAT_MARK (the rules keep such entries' packets queued where
  they would skip the queue as the firewall's own ESTABLISHED traffic; a dump finds ours by it),
  and ONE_PASS_MARK when the client's direction takes one pass (as the deleted entry had it).
  Acknowledged: on success `engine.nat.kernel_translates(session)` (the engine's input): from then
  on the engine tracks the packets as before (the untranslated tuples arrive, before the nat hooks)
  and returns plain accepts; the kernel rewrites them after the verdict. A packet fw rewrote and
  still in flight is rewritten again by the kernel to the same values (idempotent).
  A failure (EEXIST: a packet made an entry in between; no nat module) is counted, the session
  stays rewritten in user space.
- A packet queued before the switch (or after its entry went away) belongs to another kernel entry,
  which holds no binding: accepted as it is it would leave untranslated. So the rules copy the
  connmark bit into the packet mark (FW-PREROUTING), and the driver tells the engine per packet
  (`Nat.kernel_packet`): only a packet whose own entry holds the binding goes unrewritten. The
  other way round, a packet whose entry has the bit while its session's binding is not held (a
  reopened tuple whose old entry the kernel kept) is dropped and the entry deleted (`stale`,
  counted `kernel_binding_stale_drops`).
SessionClosed (expiry, RST/FIN timeouts, kill, reload) deletes the entry; but an HA peer's news that
replaces the session (`replaced`: Engine.adopt, at every state change and refresh the peer
announces) hands the entry to the new copy when its binding is the same (`_carry`, counted
`kernel_bindings_carried`; offloaded if the old one was), so packets in flight are not dropped as
stale and the entry is not made again. The kernel may drop its
entry first (its own timeouts: nf_conntrack_udp_timeout_stream may be shorter than the policy's):
the next packet makes a new entry without the bit, which fw rewrites as before (`kernel_packet`);
once a second the entries with KERNEL_NAT_MARK are read back, and a session whose entry the kernel
no longer has may ask again (`Nat.kernel_lost`, counted `kernel_bindings_lost`). `close` (the daemon's exit)
deletes every entry it made. The flag is node-local (not in snapshots or HA sync): a session adopted
from an HA peer asks again (unless it replaces ours: `_carry`, above).
A restart (fw.daemon `keep_rules`: `fw stop --keep-rules`, SIGUSR2) is the same node: `keep_for_restart`
leaves the entries (the kernel goes on holding the bindings; their packets are still queued by the
kept rules, and dropped while no daemon listens), and the next daemon's `adopt`, before its first
packet, reads the entries with KERNEL_NAT_MARK back: a restored session whose entry is there is held
again (`Nat.kernel_adopt`, counted `kernel_bindings_adopted`: its packets are not `nat:kernel-stale`),
an entry no session owns is deleted (`kernel_bindings_orphans`), a restored session without one asks
again. `fw cleanup` deletes whatever entries with the bit are left (`delete_left`).
Counters: the `nat` section of `fw stats` (`kernel_bindings_*`).

With `--offload` (`offload`: fw.runner gives it the OffloadService) a session `offloadable` (TCP,
no ALG, no rst_on_timeout) gets its entry made with the offload bit too, and the offload service
takes it in (`offloaded_here`): the rules' fast path (before the one-pass rules) accepts its
ESTABLISHED packets without SYN/FIN/RST in mangle PREROUTING, and the kernel's nat hooks translate
them with the same binding; what still reaches the queue is judged as above. An entry a restart
adopts with the offload bit is offloaded again once the offload service is there (`use_offload`).
"""

from __future__ import annotations

import errno
import socket
import struct
from collections import Counter
from pathlib import Path

from fw.conntrack.table import OFFLOADED
from fw.decision import DROP, KernelNat, SessionClosed
from fw.drivers import nat_queue, offload
from fw.engine_nat import KERNEL_ASKED, KERNEL_NO
from fw.engine_nat_passes import ONE_PASS_MARK

KERNEL_NAT_MARK = nat_queue.KERNEL_NAT_MARK  # connmark bit of the entries made here (packet mark: copied)
STALE_REASON = "nat:kernel-stale"
TCP, UDP = 6, 17
IPCTNL_MSG_CT_DELETE = 2
NLM_F_EXCL, NLM_F_CREATE = 0x200, 0x400
CTA_TUPLE_REPLY, CTA_NAT_SRC, CTA_NAT_DST = 2, 6, 13
CTA_NAT_V4_MINIP, CTA_NAT_V4_MAXIP, CTA_NAT_PROTO, CTA_NAT_V6_MINIP, CTA_NAT_V6_MAXIP = 1, 2, 3, 4, 5
CTA_PROTONAT_PORT_MIN, CTA_PROTONAT_PORT_MAX = 1, 2
CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, CTA_PROTOINFO_TCP_FLAGS_REPLY = 4, 5
IPS_SEEN_REPLY, IPS_ASSURED, IPS_CONFIRMED = 1 << 1, 1 << 2, 1 << 3
TCP_CONNTRACK_ESTABLISHED = 3
IP_CT_TCP_FLAG_BE_LIBERAL = 0x08
SYNC_INTERVAL = 1.0
SYSCTL = Path("/proc/sys/net/netfilter")
KERNEL_TIMEOUT = {TCP: ("nf_conntrack_tcp_timeout_established", 432000),
                  UDP: ("nf_conntrack_udp_timeout_stream", 120)}


def nat_range(family: int, address: bytes, port: int) -> bytes:
    """A CTA_NAT_SRC/DST's contents: min = max address and port."""
    v4 = family == 4
    body = offload._attr(CTA_NAT_V4_MINIP if v4 else CTA_NAT_V6_MINIP, address)
    body += offload._attr(CTA_NAT_V4_MAXIP if v4 else CTA_NAT_V6_MAXIP, address)
    ports = offload._attr(CTA_PROTONAT_PORT_MIN, struct.pack("!H", port))
    ports += offload._attr(CTA_PROTONAT_PORT_MAX, struct.pack("!H", port))
    return body + offload._nested(CTA_NAT_PROTO, ports)


def create_body(binding, mark: int, timeout: int) -> bytes:
    """The IPCTNL_MSG_CT_NEW attributes of an entry holding `binding` (module docstring)."""
    family, proto = binding.family, binding.proto
    c, d, cp, dp = binding.orig
    s, t, sp, tp = binding.reply
    body = offload._nested(offload.CTA_TUPLE_ORIG, offload.tuple_attrs(family, proto, c, d, cp, dp))
    body += offload._nested(CTA_TUPLE_REPLY, offload.tuple_attrs(family, proto, d, c, dp, cp))
    if binding.dnat:
        body += offload._nested(CTA_NAT_DST, nat_range(family, s, sp))
    if binding.snat:
        body += offload._nested(CTA_NAT_SRC, nat_range(family, t, tp))
    # CONFIRMED: ctnetlink sets it on an entry it creates before it reads the status, and refuses
    # to change it (EBUSY; seen on 6.18).
    body += offload._attr(offload.CTA_STATUS, struct.pack("!I", IPS_CONFIRMED | IPS_SEEN_REPLY | IPS_ASSURED))
    body += offload._attr(offload.CTA_TIMEOUT, struct.pack("!I", timeout))
    body += offload._attr(offload.CTA_MARK, struct.pack("!I", mark))
    if proto == TCP:
        liberal = struct.pack("BB", IP_CT_TCP_FLAG_BE_LIBERAL, IP_CT_TCP_FLAG_BE_LIBERAL)
        tcp = offload._attr(offload.CTA_PROTOINFO_TCP_STATE, bytes([TCP_CONNTRACK_ESTABLISHED]))
        tcp += offload._attr(CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, liberal)
        tcp += offload._attr(CTA_PROTOINFO_TCP_FLAGS_REPLY, liberal)
        body += offload._nested(offload.CTA_PROTOINFO, offload._nested(offload.CTA_PROTOINFO_TCP, tcp))
    return body


def offloadable(session) -> bool:
    """Whether `--offload` may pass a kernel-held session's packets (fw.engine.may_offload's terms
    but the binding, which the kernel applies: TCP, no ALG, no rst_on_timeout)."""
    extra = session.extra
    return session.tcp is not None and not session.rst_on_timeout and (extra is None or extra.alg is None)


def kernel_timeout(proto: int) -> int:
    """The kernel's timeout of an established entry (its sysctl; the default when unreadable)."""
    name, default = KERNEL_TIMEOUT[proto]
    try:
        return int((SYSCTL / name).read_text())
    except (OSError, ValueError):
        return default


class KernelBindings:
    """Consumes KernelNat and SessionClosed (`attach`); a `Daemon.services` member (tick, close)."""

    def __init__(self, engine, conntrack: offload.Conntrack | None = None):
        self.engine = engine
        self.conntrack = conntrack
        self.offload = None  # fw.drivers.offload.OffloadService with --offload (fw.runner: use_offload)
        self.adopted_offloaded: list = []  # sessions whose entry a restart adopted with the offload bit
        self.counters: Counter = Counter()  # made, failed, refused, deleted, lost
        self.errors: Counter = Counter()  # errno names of failed creations
        self.active: dict[tuple, object] = {}  # session key -> session whose binding the kernel holds
        self.next_sync = 0.0
        self.timeouts = {proto: kernel_timeout(proto) for proto in KERNEL_TIMEOUT}
        self.keep = False  # stopping for a restart: the entries stay for the next daemon (`adopt`)

    def attach(self, effects) -> None:
        effects.on(KernelNat, self.on_ready)
        effects.on(SessionClosed, self.on_closed)

    def stats(self) -> dict:
        c = self.counters
        return {"kernel_bindings_made": c["made"], "kernel_bindings_carried": c["carried"],
                "kernel_bindings_failed": c["failed"],
                "kernel_bindings_lost": c["lost"], "kernel_binding_stale_drops": c["stale"],
                "kernel_bindings_active": len(self.active), "kernel_bindings_adopted": c["adopted"],
                "kernel_bindings_orphans": c["orphans"], "kernel_binding_errors": dict(self.errors)}

    def _socket(self) -> offload.Conntrack:
        if self.conntrack is None:
            self.conntrack = offload.Conntrack()
        return self.conntrack

    def on_ready(self, effect: KernelNat) -> None:
        session = effect.session
        binding = session.nat
        if binding is None or session.key in self.active or session.slot == -1:
            return
        proto = binding.proto
        timeout = self.timeouts[proto]
        mark = KERNEL_NAT_MARK
        if binding.after is not None and binding.forward is None and binding.after[0] is not None:
            mark |= ONE_PASS_MARK  # the client's direction takes one pass after routing (as before)
        offloaded = self.offload is not None and offloadable(session)
        if offloaded:
            mark |= offload.OFFLOAD_MARK  # --offload: the entry is made offloaded (module docstring)
        conntrack = self._socket()
        family = binding.family
        c, d, cp, dp = binding.orig
        s, t, sp, tp = binding.reply
        af = offload.AF[family]
        try:
            conntrack.drain()
            for tuple4 in ((c, d, cp, dp), (s, t, sp, tp)):  # the client's entry, the replies' entry
                send_delete(conntrack, family, offload.tuple_attrs(family, proto, *tuple4))
            seq = conntrack.next_seq()
            conntrack.send(offload.message(offload.IPCTNL_MSG_CT_NEW, offload.NLM_F_REQUEST | offload.NLM_F_ACK
                                           | NLM_F_CREATE | NLM_F_EXCL, seq, af,
                                           create_body(binding, mark, timeout)))
            code = self._answer(conntrack, seq)
        except OSError as exc:
            code = exc.errno or errno.EIO
        if code:
            self.counters["failed"] += 1
            self.errors[errno.errorcode.get(code, str(code))] += 1
            return
        if self.engine.nat.kernel_translates(session):
            self.counters["made"] += 1
            self.active[session.key] = session
            if offloaded:
                self.offload.offloaded_here(session)
        else:
            self._delete(binding)

    def stale(self, decision, data: bytes):
        """A packet whose kernel entry holds a binding its session does not (nat_queue's judge): the
        kernel would rewrite it with that binding after fw's verdict. Dropped, and the entry
        deleted: the sender's next try makes a new one."""
        self.counters["stale"] += 1
        decision.verdict, decision.reason = DROP, STALE_REASON
        found = nat_queue._kernel_tuple(data)
        if found is not None:
            conntrack = self._socket()
            family, tuple_attrs = found
            try:
                send_delete(conntrack, family, tuple_attrs)
            except OSError:
                self.counters["delete_errors"] += 1
        return decision

    @staticmethod
    def _answer(conntrack: offload.Conntrack, seq: int) -> int:
        """The errno of the request `seq` (0: done), from the answers already queued (the kernel
        answers a netlink request while it is sent); earlier answers (deletes of entries that were
        not there) are skipped."""
        sock = conntrack.sock
        while True:
            try:
                data = sock.recv(1 << 16, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return errno.ETIMEDOUT
            for kind, body, their_seq in offload._messages(data, with_seq=True):
                if their_seq == seq and kind == offload.NLMSG_ERROR and len(body) >= 4:
                    return -struct.unpack_from("=i", body)[0]

    def _delete(self, binding) -> None:
        conntrack = self._socket()
        try:
            send_delete(conntrack, binding.family, offload.tuple_attrs(binding.family, binding.proto, *binding.orig))
            self.counters["deleted"] += 1
        except OSError:
            self.counters["delete_errors"] += 1

    def on_closed(self, effect: SessionClosed) -> None:
        session = effect.session
        if self.active.get(session.key) is session:
            del self.active[session.key]
            if effect.why != "replaced" or not self._carry(session):
                self._delete(session.nat)

    def _carry(self, old) -> bool:
        """An HA peer's news replaced a session whose entry holds its binding (Engine.adopt: every
        state change and refresh the peer announces): the new copy, with the same binding, takes
        the entry over, offloaded if the old one was. Deleting it instead dropped the packets in
        flight (their mark still says the entry holds the binding: `stale`) and made it again."""
        new = self.engine.table.sessions.get(old.key)
        if new is None or new is old or new.slot == -1 or new.nat is None:
            return False
        binding, before = new.nat, old.nat
        if binding.orig != before.orig or binding.reply != before.reply or binding.kernel != KERNEL_NO:
            return False
        binding.kernel = KERNEL_ASKED  # (as a KernelNat would: the entry is there already)
        if not self.engine.nat.kernel_translates(new):
            return False
        self.active[new.key] = new
        self.counters["carried"] += 1
        if self.offload is not None and old.flags & OFFLOADED:
            self.offload.replaced(old, new)
        return True

    def tick(self, now: float) -> None:
        if self.conntrack is None or now < self.next_sync:
            return
        self.next_sync = now + SYNC_INTERVAL
        self.conntrack.drain()
        if self.active:
            self.sync()

    def sync(self) -> None:
        """Sessions whose entry the kernel no longer has: rewritten in user space again."""
        try:
            held = {entry.key for entry in self.conntrack.dump(KERNEL_NAT_MARK, KERNEL_NAT_MARK)}
        except (offload.ConntrackError, OSError):
            self.counters["sync_errors"] += 1
            return
        for key, session in list(self.active.items()):
            if session.key not in held:  # (the entry's key is its original tuple's: the session's)
                del self.active[key]
                self.engine.nat.kernel_lost(session)
                self.counters["lost"] += 1

    def adopt(self) -> int:
        """At start, before the first packet: the entries a daemon stopped for a restart left (module
        docstring). A restored session whose entry is there is held again; an entry no session owns
        goes. Returns how many were adopted."""
        try:
            entries = self._socket().dump(KERNEL_NAT_MARK, KERNEL_NAT_MARK)
        except (offload.ConntrackError, OSError):
            self.counters["sync_errors"] += 1
            return 0
        sessions = self.engine.table.sessions  # by key (a translated session's reply key too)
        for entry in entries:
            session = sessions.get(entry.key)
            if session is not None and session.key == entry.key and self.engine.nat.kernel_adopt(session):
                self.active[session.key] = session
                self.counters["adopted"] += 1
                if entry.mark & offload.OFFLOAD_MARK:
                    self.adopted_offloaded.append(session)  # the kernel still passes it: use_offload
            elif session is None or self.active.get(session.key) is not session:
                _delete_entry(self.conntrack, entry)
                self.counters["orphans"] += 1
        self.conntrack.drain()
        return self.counters["adopted"]

    def use_offload(self, service) -> None:
        """--offload (fw.runner, after the daemon started): translated sessions are offloaded once
        held, and those whose entry a restart adopted with the bit are the service's again (else
        their deadline would not follow the kernel's, and expiry would end a flow the kernel passes)."""
        self.offload = service
        for session in self.adopted_offloaded:
            if self.active.get(session.key) is not session:
                continue
            if offloadable(session):
                service.offloaded_here(session)
            else:  # (the policy now asks for exact resets): its packets must reach the engine again
                try:
                    self._socket().set_mark(session, 0, offload.OFFLOAD_MARK)
                except OSError:
                    self.counters["delete_errors"] += 1
        self.adopted_offloaded = []

    def keep_for_restart(self) -> None:
        """The daemon stops for a restart: `close` leaves the entries to the next one."""
        self.keep = True

    def close(self) -> None:
        """The daemon exits: every entry it made goes (their packets would pass translated unjudged),
        unless it stops for a restart (`keep_for_restart`)."""
        if not self.keep:
            for session in list(self.active.values()):
                self._delete(session.nat)
        self.active.clear()
        if self.conntrack is not None:
            self.conntrack.drain()
            self.conntrack.close()
            self.conntrack = None


def send_delete(conntrack: offload.Conntrack, family: int, tuple_attrs: bytes) -> None:
    """Ask the kernel to delete the entry whose original tuple is `tuple_attrs` (fire and forget)."""
    conntrack.send(offload.message(IPCTNL_MSG_CT_DELETE, offload.NLM_F_REQUEST, conntrack.next_seq(),
                                   offload.AF[family], offload._nested(offload.CTA_TUPLE_ORIG, tuple_attrs)))


def _delete_entry(conntrack: offload.Conntrack, entry) -> None:
    """Delete a dumped entry by its original tuple."""
    send_delete(conntrack, entry.family,
                offload.tuple_attrs(entry.family, entry.proto, entry.src, entry.dst, entry.sport, entry.dport))


def delete_left() -> int:
    """`fw cleanup`: delete the entries with KERNEL_NAT_MARK a daemon left (stopped for a restart, or
    crashed) in this network namespace; how many. 0 when conntrack cannot be asked."""
    try:
        conntrack = offload.Conntrack()
    except OSError:
        return 0
    try:
        entries = conntrack.dump(KERNEL_NAT_MARK, KERNEL_NAT_MARK)
        for entry in entries:
            _delete_entry(conntrack, entry)
        conntrack.drain()
        return len(entries)
    except (offload.ConntrackError, OSError):
        return 0
    finally:
        conntrack.close()
