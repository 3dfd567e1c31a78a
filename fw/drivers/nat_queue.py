"""The queue callback of a daemon that translates (NAT): the hook, the route and the checksum state
of each packet given to the engine's two passes (fw/engine_nat_passes.py).

How it works. The queue is fw.drivers.nfqueue_socket's SocketQueue (netfilterqueue tells neither
the hook nor NFQA_SKB_INFO). Per packet, from what the kernel says of it:
- the hook: PREROUTING is the first pass (`BEFORE_ROUTING`, or `TO_FIREWALL` when the route of its
  destination is local, broadcast or multicast); POSTROUTING the second (`AFTER_ROUTING`), which
  only marked packets reach (fw.drivers.iptables); an ICMP error at OUTPUT is the firewall's own
  (`FROM_FIREWALL`: mangle OUTPUT queues those); INPUT and OUTPUT (--hooks) the engine's one pass
  (with NAT, the firewall's own ICMP errors are not judged by --hooks output: they pass);
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
- a packet longer than the copy range (a GRO packet above 65,531 bytes) cannot be rewritten (the
  verdict would cut it): the engine drops it as `nat:rewrite`, counted here as `nat_too_long`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from fw.drivers.nfqueue import PacketHandler
from fw.engine_nat_passes import AFTER_ROUTING, BEFORE_ROUTING, FROM_FIREWALL, TO_FIREWALL

NF_INET_PRE_ROUTING, NF_INET_LOCAL_OUT, NF_INET_POST_ROUTING = 0, 3, 4
TCP = 6
ICMP_ERRORS = {1: frozenset((3, 11, 12)), 58: frozenset((1, 2, 3, 4))}


class NatPacketHandler(PacketHandler):
    """PacketHandler for the NAT passes (module docstring); `routes` is a fw.drivers.routes.Routes."""

    def __init__(self, engine, fail_open: bool, on_effects: Callable, on_error: Callable, routes,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__(engine, fail_open, on_effects, on_error, clock)
        self.routes = routes
        routes.names = self.ifname
        engine.nat.routes = routes.table  # the engine's route input: a snapshot the driver keeps
        self._targets = None  # the engine's Nat.route_targets pinned in `routes`
        self.counters: Counter = Counter()  # partial_checksums (computed whole), tcp_gso_partial (left), nat_too_long

    def stats(self) -> dict:
        """The `nat` section of `fw stats`: checksum states seen, route lookups made."""
        return {**{key: 0 for key in ("partial_checksums", "tcp_gso_partial", "nat_too_long")}, **self.counters,
                "route_lookups": self.routes.lookups}

    def judge(self, packet, data: bytes):
        hook = packet.hook
        partial = False
        if packet.checksum_not_ready:
            if packet.gso and _proto(data) == TCP:
                self.counters["tcp_gso_partial"] += 1
            else:
                partial = True
                self.counters["partial_checksums"] += 1
        if hook == NF_INET_POST_ROUTING:
            decision = self.engine.process(data, self.clock(), None, self.ifname(packet.outdev),
                                           hook=AFTER_ROUTING, partial=partial)
        elif hook == NF_INET_PRE_ROUTING:
            targets = self.engine.nat.route_targets
            if targets is not self._targets:  # a new policy: its translated destinations in the snapshot
                self._targets = targets
                self.routes.pin(targets)
            route = self.routes.of_packet(data)
            local = route is not None and route.local
            decision = self.engine.process(data, self.clock(), self.ifname(packet.indev),
                                           None if route is None else route.oif,
                                           hook=TO_FIREWALL if local else BEFORE_ROUTING, partial=partial)
        elif hook == NF_INET_LOCAL_OUT and _icmp_error(data):
            decision = self.engine.process(data, self.clock(), None, self.ifname(packet.outdev), hook=FROM_FIREWALL)
        else:
            return super().judge(packet, data)
        if packet.truncated and decision.reason == "nat:rewrite":
            self.counters["nat_too_long"] += 1
        return decision

    @staticmethod
    def new_mark(packet, mark: int) -> int:
        """The NAT bit OR-ed into the packet's mark (the other bits are the operator's)."""
        return packet.get_mark() | mark

    def forget_interfaces(self) -> None:
        super().forget_interfaces()
        self.routes.forget()


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
