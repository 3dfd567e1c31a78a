# cython: annotation_typing=False
"""The queue callback of a daemon that translates (NAT): the hook, the route and the checksum state
of each packet given to the engine's two passes (fw/engine_nat_passes.py).

How it works. The queue is fw.drivers.nfqueue_socket's SocketQueue (netfilterqueue tells neither
the hook nor NFQA_SKB_INFO). Per packet, from what the kernel says of it:
- the hook: PREROUTING is the first pass (`BEFORE_ROUTING`, or `TO_FIREWALL` when the route of its
  destination is local, broadcast or multicast); POSTROUTING the second (`AFTER_ROUTING`), which
  only marked packets reach (fw.drivers.iptables), or the only one (`ONE_PASS`) for a packet the
  rules let by before routing (its mark has UNJUDGED_MARK: its connection's direction needs only
  the source half; the input interface is the kernel's indev there too); an ICMP error at OUTPUT
  is the firewall's own (`FROM_FIREWALL`: mangle OUTPUT queues those); INPUT and OUTPUT (--hooks)
  the engine's one pass (with NAT, the firewall's own ICMP errors are not judged by --hooks
  output: they pass);
- before routing the output interface is not known yet: the engine gets the route's (rules may
  match `oif`), from fw.drivers.routes (cached, forgotten every second); the engine's `Nat.routes`
  input is that cache's snapshot (`Routes.table`: no I/O in the engine), holding the packet's own
  destination and the policy's translated destinations (`Nat.route_targets`, pinned again after
  each reload), for a new session's source translation and masquerade's address;
- `partial`: NFQA_SKB_CSUMNOTREADY says the L4 checksum holds only the pseudo-header sum, and a
  verdict with a new payload makes the kernel take the field as final, so the engine computes the
  whole checksum of a packet it rewrites. Not for a TCP GSO packet: given back with a new payload,
  it is segmented in software (tcp4_gso_segment / tcp6_gso_segment), which writes the
  pseudo-header again and has each segment's checksum completed, so the pass over 64 KiB is spared;
- the SetMark of the first pass is OR-ed into the packet's mark (other bits are the operator's);
- the kernel conntrack entries (ctnetlink, fire and forget, `KernelEntries`): a packet dropped as
  `nat:first-pass` has its entry's ONE_PASS_MARK bit cleared (its next packet goes round the first
  pass); and when a TCP session whose original direction may take one pass becomes established,
  the entry its SYN made is deleted: the kernel's tracker holds it in SYN_SENT (it never sees the
  translated replies) and finds every later packet of the client invalid, which leaves them no
  entry and no connmark; the next one makes a new entry, picked up mid-stream (valid), on which
  the bit is saved;
- per hook, the trips counted (`first_pass`, `second_pass`, `one_pass` in `fw stats` `nat`);
- with the kernel holding bindings (fw.drivers.nat_kernel, `bindings`): whether the packet's own
  kernel entry holds its session's binding (the packet mark's KERNEL_NAT_MARK, copied from the
  connmark by the rules) is the engine's per-packet input `Nat.kernel_packet`: such a packet is
  accepted without a rewrite; one queued before the switch (another entry) is rewritten as before;
  a packet whose entry holds a binding its session does not (an older session's entry the kernel
  kept for a reopened tuple) is dropped and that entry deleted (`KernelBindings.stale`): the
  kernel would apply the old binding on top of fw's rewrite;
- a packet longer than the copy range (a GRO packet above 65,531 bytes) cannot be rewritten (the
  verdict would cut it): the engine drops it as `nat:rewrite`, counted here as `nat_too_long`.
Compiled (build_compiled.py, with nat_queue.pxd; fw/engine_nat_passes.py and fw/drivers/routes.py
are compiled too), NatPacketHandler is an extension type deriving from nfqueue's PacketHandler: the
queue reaches `judge` through the C method table, the counters are C integers (a Counter's
`c[k] += 1` costs ~1,000 instructions), the packet's fields are read directly (`skb_info`, `mark`),
and an IPv4 destination's route is read from `Routes.by_v4` by the address as a number (no slice,
tuple or bytes hash; `of_packet` only for a destination not asked yet). docs/performance.md ("The
NAT daemon's path compiled") has the instructions per packet before and after.
"""

from __future__ import annotations

import struct
import time
from collections import Counter
from collections.abc import Callable

from fw.conntrack.tcp import TcpState
from fw.decision import SessionChanged
from fw.drivers.nfqueue import PacketHandler
from fw.drivers.nfqueue_socket import NFQA_SKB_CSUMNOTREADY, NFQA_SKB_GSO
from fw.engine_nat import KERNEL_HELD
from fw.engine_nat_passes import (
    AFTER_ROUTING,
    BEFORE_ROUTING,
    FIRST_PASS_REASON,
    FROM_FIREWALL,
    ONE_PASS,
    ONE_PASS_ASKED,
    ONE_PASS_MARK,
    TO_FIREWALL,
    UNJUDGED_MARK,
)

NF_INET_PRE_ROUTING, NF_INET_LOCAL_OUT, NF_INET_POST_ROUTING = 0, 3, 4
KERNEL_NAT_MARK = 0x04000000  # fw.drivers.nat_kernel's: the packet's kernel entry holds its binding
TCP, UDP = 6, 17
IPCTNL_MSG_CT_DELETE = 2
# ICMP echo in a ctnetlink tuple: CTA_PROTO_ICMP(V6)_ID, _TYPE, _CODE attributes; the request's type
ICMP_ECHO = {1: (4, 5, 6, 8), 58: (7, 8, 9, 128)}
ICMP_ERRORS = {1: frozenset((3, 11, 12)), 58: frozenset((1, 2, 3, 4))}


class NatPacketHandler(PacketHandler):
    """PacketHandler for the NAT passes (module docstring); `routes` is a fw.drivers.routes.Routes."""

    def __init__(self, engine, fail_open: bool, on_effects: Callable, on_error: Callable, routes,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__(engine, fail_open, on_effects, on_error, clock)
        self.routes = routes
        self._by_v4 = routes.by_v4  # (cleared in place by `forget`, never replaced)
        routes.names = self.ifname
        engine.nat.routes = routes.table  # the engine's route input: a snapshot the driver keeps
        self._targets = None  # the engine's Nat.route_targets pinned in `routes`
        self.partial_checksums = 0  # partial checksums computed whole
        self.tcp_gso_partial = 0  # partial checksums of TCP GSO packets (left: software segmentation)
        self.nat_too_long = 0  # packets above the copy range the engine would not rewrite
        self.first_pass = self.second_pass = self.one_pass = 0  # trips per hook
        self.kernel = KernelEntries()
        self.bindings = None  # fw.drivers.nat_kernel.KernelBindings, when the kernel holds bindings

    def stats(self) -> dict:
        """The `nat` section of `fw stats`: checksum states seen, trips per hook, route lookups made."""
        return {"partial_checksums": self.partial_checksums, "tcp_gso_partial": self.tcp_gso_partial,
                "nat_too_long": self.nat_too_long, "first_pass": self.first_pass,
                "second_pass": self.second_pass, "one_pass": self.one_pass,
                "route_lookups": self.routes.lookups, **self.kernel.stats(),
                **(self.bindings.stats() if self.bindings is not None else {})}

    def judge(self, packet, data: bytes):
        hook = packet.hook
        partial = False
        if packet.skb_info & NFQA_SKB_CSUMNOTREADY:
            if packet.skb_info & NFQA_SKB_GSO and _proto(data) == TCP:
                self.tcp_gso_partial += 1
            else:
                partial = True
                self.partial_checksums += 1
        engine = self.engine
        engine.nat.kernel_packet = packet.mark & KERNEL_NAT_MARK != 0  # its entry holds the binding
        if hook == NF_INET_POST_ROUTING:
            if packet.mark & UNJUDGED_MARK:
                self.one_pass += 1
                names = self._ifnames
                try:  # ifname(), written out for the names already known
                    iif, oif = names[packet.indev], names[packet.outdev]
                except KeyError:
                    iif, oif = self.ifname(packet.indev), self.ifname(packet.outdev)
                self._route(data)  # a session opened here again (masquerade) reads its route in the snapshot
                decision = engine.process(data, self.clock(), iif, oif, ONE_PASS, partial)
                if decision.reason == FIRST_PASS_REASON:
                    self.kernel.clear(data, ONE_PASS_MARK)
            else:
                self.second_pass += 1
                decision = engine.process(data, self.clock(), None, self.ifname(packet.outdev), AFTER_ROUTING,
                                          partial)
        elif hook == NF_INET_PRE_ROUTING:
            self.first_pass += 1
            route = self._route(data)
            try:  # ifname(), written out for the names already known
                iif = self._ifnames[packet.indev]
            except KeyError:
                iif = self.ifname(packet.indev)
            if route is None:
                decision = engine.process(data, self.clock(), iif, None, BEFORE_ROUTING, partial)
            else:
                decision = engine.process(data, self.clock(), iif, route.oif,
                                          TO_FIREWALL if route.local else BEFORE_ROUTING, partial)
            effects = decision.effects
            if effects and effects[-1] is ONE_PASS_ASKED and decision.packet.proto == TCP:
                self._established(decision)
        elif hook == NF_INET_LOCAL_OUT and _icmp_error(data):
            decision = engine.process(data, self.clock(), None, self.ifname(packet.outdev), FROM_FIREWALL, False)
        else:
            return PacketHandler.judge(self, packet, data)
        if decision.reason == "nat:rewrite" and packet.truncated:
            self.nat_too_long += 1
        if packet.mark & KERNEL_NAT_MARK and decision.session is not None and self.bindings is not None:
            binding = decision.session.nat
            if binding is not None and binding.kernel != KERNEL_HELD and decision.verdict == "accept":
                return self.bindings.stale(decision, data)  # an older entry's binding would apply on top
        return decision

    def _route(self, data: bytes):
        """The route of the packet's destination (fw.drivers.routes.Route or None), with the
        engine's route snapshot ready for it: that destination, and the translated destinations of
        the engine's policy (pinned again when the policy changed)."""
        targets = self.engine.nat.route_targets
        if targets is not self._targets:
            self._targets = targets
            self.routes.pin(targets)
        if len(data) >= 20 and data[0] >> 4 == 4:  # IPv4: the cache by number (fw.drivers.routes), no slice
            key = data[16]  # (compiled: a C unsigned long, so the shift cannot overflow a C int)
            try:
                return self._by_v4[key << 24 | data[17] << 16 | data[18] << 8 | data[19]]
            except KeyError:
                pass
        return self.routes.of_packet(data)

    def _established(self, decision) -> None:
        """A TCP session whose original direction may take one pass just became established: the
        kernel entry of its SYN goes (module docstring)."""
        for effect in decision.effects:
            if type(effect) is SessionChanged and effect.session.state is TcpState.ESTABLISHED:
                session = effect.session
                binding = session.extra.nat
                if binding.forward is None and binding.after[0] is not None:
                    self.kernel.delete(binding.family, binding.proto, *binding.orig)
                return

    @staticmethod
    def new_mark(packet, mark: int) -> int:
        """The NAT bit OR-ed into the packet's mark (the other bits are the operator's)."""
        return packet.get_mark() | mark

    def forget_interfaces(self) -> None:
        super().forget_interfaces()
        self.routes.forget()


class KernelEntries:
    """The kernel conntrack entries of the one-pass bit (module docstring): ctnetlink requests sent
    without waiting, the socket opened on first use; failures (an entry already gone) read back and
    counted on the next request."""

    def __init__(self):
        self.conntrack = None
        self.counters: Counter = Counter()  # kernel_entries_deleted, kernel_bits_cleared, kernel_errors

    def stats(self) -> dict:
        return {"kernel_entries_deleted": self.counters["deleted"], "kernel_bits_cleared": self.counters["cleared"],
                "kernel_errors": sum(self.conntrack.errors.values()) if self.conntrack is not None else 0}

    def _send(self, kind: int, family: int, body: bytes) -> None:
        from fw.drivers import offload  # noqa: PLC0415  (ctnetlink: only once a request is needed)

        if self.conntrack is None:
            self.conntrack = offload.Conntrack()
        conntrack = self.conntrack
        conntrack.drain()
        conntrack.send(offload.message(kind, offload.NLM_F_REQUEST | offload.NLM_F_ACK, conntrack.next_seq(),
                                       offload.AF[family], body))

    def delete(self, family: int, proto: int, src: bytes, dst: bytes, sport: int, dport: int) -> None:
        from fw.drivers import offload  # noqa: PLC0415

        self.counters["deleted"] += 1
        self._send(IPCTNL_MSG_CT_DELETE, family, offload._nested(
            offload.CTA_TUPLE_ORIG, offload.tuple_attrs(family, proto, src, dst, sport, dport)))

    def clear(self, data: bytes, bit: int) -> None:
        """Clear `bit` in the connmark of the entry whose original tuple is this packet's."""
        from fw.drivers import offload  # noqa: PLC0415

        found = _kernel_tuple(data)
        if found is None:
            return
        family, tuple_attrs = found
        self.counters["cleared"] += 1
        body = offload._nested(offload.CTA_TUPLE_ORIG, tuple_attrs)
        body += offload._attr(offload.CTA_MARK, struct.pack("!I", 0))
        body += offload._attr(offload.CTA_MARK_MASK, struct.pack("!I", bit))
        self._send(offload.IPCTNL_MSG_CT_NEW, family, body)


def _kernel_tuple(data: bytes) -> tuple[int, bytes] | None:
    """(family, CTA_TUPLE_ORIG contents) of the kernel entry a packet makes (TCP, UDP, ICMP echo)."""
    from fw.drivers import offload  # noqa: PLC0415
    from fw.packet import MalformedPacket, parse  # noqa: PLC0415

    try:
        pkt = parse(data)
    except MalformedPacket:
        return None
    family, proto = (4 if data[0] >> 4 == 4 else 6), pkt.proto
    if proto == TCP or proto == UDP:
        return family, offload.tuple_attrs(family, proto, pkt.src, pkt.dst, pkt.sport, pkt.dport)
    if proto not in ICMP_ECHO or pkt.icmp_type != ICMP_ECHO[proto][3]:
        return None
    ident, kind, code, _ = ICMP_ECHO[proto]
    v4 = family == 4
    addresses = offload._attr(offload.CTA_IP_V4_SRC if v4 else offload.CTA_IP_V6_SRC, pkt.src)
    addresses += offload._attr(offload.CTA_IP_V4_DST if v4 else offload.CTA_IP_V6_DST, pkt.dst)
    fields = offload._attr(offload.CTA_PROTO_NUM, bytes([proto])) + offload._attr(ident, struct.pack("!H", pkt.icmp_id))
    fields += offload._attr(kind, bytes([pkt.icmp_type])) + offload._attr(code, bytes([pkt.icmp_code]))
    return family, offload._nested(offload.CTA_TUPLE_IP, addresses) + offload._nested(offload.CTA_TUPLE_PROTO, fields)


def _icmp_error(data: bytes) -> bool:
    """Whether the packet is an ICMP (ICMPv6) error: the firewall's own, in mangle OUTPUT."""
    proto = _proto(data)
    start = (data[0] & 0x0F) * 4 if proto == 1 else 40
    return proto in ICMP_ERRORS and len(data) > start and data[start] in ICMP_ERRORS[proto]


def _proto(data: bytes) -> int | None:
    version = data[0] >> 4 if data else 0
    if version == 4:
        return data[9]
    if version == 6:
        return data[6]
    return None
