"""Where the kernel routes an address, and from which source: RTM_GETROUTE, cached for a second.

How it works. `Routes.lookup(family, dst)` sends one RTM_GETROUTE request (what `ip route get DST`
sends) on a NETLINK_ROUTE socket and reads the answer: the route's type (local, broadcast,
multicast: for the firewall itself), its output interface (RTA_OIF, as a name) and the preferred
source address (RTA_PREFSRC: for an output route the kernel fills it with what it would choose for
a connection of its own, inet_select_addr / ipv6_dev_get_saddr on that interface: a primary,
global address, never a link-local one or a secondary by accident). No route (unreachable): None.
Answers are kept by (family, dst) until `forget()`, which the daemon calls every second (routes
and addresses change), so a packet costs a dict lookup and a new destination one round trip.

The NAT passes use it (fw/drivers/nat_queue.py): before routing, the interface a packet will
leave by (rules may match `oif`) and whether it is for the firewall itself; for a new session's
source translation, the route to its translated destination, and masquerade's address. The engine
does no I/O: it reads `table`, a plain dict snapshot {(family, dst): (oif, preferred source) or
None (not routed out)} of every answer kept, which is its `Nat.routes` input. What the engine may
look up is in it before the packet is judged: the packet's own destination (`of_packet`, asked
first) and the translated destinations the policy can give (`pin(Nat.route_targets)`: dnat
targets and real servers, asked again after every `forget`).

It is an output route lookup (as from the firewall itself): policy routing by input interface or
source address is not taken into account.
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import NamedTuple

NETLINK_ROUTE = 0
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
NLM_F_REQUEST = 0x1
NLMSG_ERROR = 2
RTA_DST, RTA_OIF, RTA_PREFSRC = 1, 4, 7
RTN_UNICAST, RTN_LOCAL, RTN_BROADCAST, RTN_MULTICAST = 1, 2, 3, 5
FOR_FIREWALL = frozenset((RTN_LOCAL, RTN_BROADCAST, RTN_MULTICAST))
CACHE_LIMIT = 65536
ADDRESS_LENGTH = {4: 4, 6: 16}
_NLMSG = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")
_NLA = struct.Struct("=HH")


class Route(NamedTuple):
    oif: str | None  # the interface it leaves by (None: for the firewall itself, or unknown)
    src: bytes | None  # the preferred source address
    local: bool  # for the firewall itself (local, broadcast or multicast)


def request(family: int, dst: bytes, seq: int) -> bytes:
    """RTM_GETROUTE for `dst` (a full-length prefix)."""
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    body = _RTMSG.pack(af, len(dst) * 8, 0, 0, 0, 0, 0, 0, 0)
    body += _NLA.pack(4 + len(dst), RTA_DST) + dst + b"\0" * (-len(dst) % 4)
    return _NLMSG.pack(16 + len(body), RTM_GETROUTE, NLM_F_REQUEST, seq, 0) + body


def parse_answer(message: bytes, names) -> Route | None:
    """The Route of an RTM_NEWROUTE answer; None for an error (no route). `names(ifindex)`."""
    length, kind = _NLMSG.unpack_from(message)[:2]
    if kind != RTM_NEWROUTE:
        return None
    rtm_type = _RTMSG.unpack_from(message, 16)[7]
    at, end = 16 + _RTMSG.size, min(length, len(message))
    oif, src = None, None
    while at + 4 <= end:
        size, attr = _NLA.unpack_from(message, at)
        if size < 4:
            break
        if attr == RTA_OIF:
            oif = names(struct.unpack_from("=I", message, at + 4)[0])
        elif attr == RTA_PREFSRC:
            src = bytes(message[at + 4:at + size])
        at += (size + 3) & ~3
    local = rtm_type in FOR_FIREWALL
    return Route(None if local else oif, src, local)


def _if_name(index: int) -> str | None:
    try:
        return socket.if_indextoname(index)
    except OSError:
        return None


class Routes:
    """Route lookups on one netlink socket, cached (see the module docstring)."""

    def __init__(self) -> None:
        self._sock = None  # the netlink socket, opened at the first question
        self._seq = 0
        self._cache: dict[tuple[int, bytes], Route | None] = {}
        # The IPv4 answers again, by the address as a number: a packet's destination read without a
        # slice, a tuple or a bytes hash (fw.drivers.nat_queue reads it; cleared in place, never replaced).
        self.by_v4: dict[int, Route | None] = {}
        # The engine's snapshot (Nat.routes): the same answers as (oif, src), None when not routed out.
        self.table: dict[tuple[int, bytes], tuple[str | None, bytes | None] | None] = {}
        self._pinned: frozenset = frozenset()  # (family, dst) kept in the snapshot across `forget`
        self.names = _if_name  # ifindex -> name (the daemon gives its cached one)
        self.lookups = 0  # round trips to the kernel

    def lookup(self, family: int, dst: bytes) -> Route | None:
        key = (family, dst)
        try:
            return self._cache[key]
        except KeyError:
            pass
        if len(self._cache) >= CACHE_LIMIT:
            self.forget()
        return self._store(key)

    def _store(self, key: tuple[int, bytes]) -> Route | None:
        found = self._cache[key] = self._ask(*key)
        self.table[key] = None if found is None or found.local else (found.oif, found.src)
        if key[0] == 4 and len(key[1]) == 4:
            self.by_v4[int.from_bytes(key[1], "big")] = found
        return found

    def pin(self, targets) -> None:
        """Keep these (family, dst) in the snapshot, asked now and after every `forget` (the
        engine's Nat.route_targets: the translated destinations its policy can give)."""
        self._pinned = frozenset(targets)
        for key in self._pinned:
            if key not in self._cache:
                self._store(key)

    def of_packet(self, data: bytes) -> Route | None:
        """The route of a packet's destination (IPv4 or IPv6 bytes)."""
        version = data[0] >> 4
        if version == 4:
            return self.lookup(4, data[16:20])
        if version == 6:
            return self.lookup(6, data[24:40])
        return None

    def _ask(self, family: int, dst: bytes) -> Route | None:
        if len(dst) != ADDRESS_LENGTH.get(family):
            return None
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        self.lookups += 1
        if self._sock is None:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
            self._sock.bind((0, 0))
            self._sock.settimeout(1.0)
        self._sock.send(request(family, dst, self._seq))
        while True:
            answer = self._sock.recv(65536)
            seq = _NLMSG.unpack_from(answer)[3]
            if seq != self._seq:
                continue  # an answer to an earlier request that timed out
            if _NLMSG.unpack_from(answer)[1] == NLMSG_ERROR:
                code = -struct.unpack_from("=i", answer, 16)[0]
                if code in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EINVAL, errno.ENETDOWN):
                    return None
                raise OSError(code, f"route lookup: {errno.errorcode.get(code, code)}")
            return parse_answer(answer, self.names)

    def forget(self) -> None:
        """Routes, addresses and interfaces change: the daemon calls this every second (the
        pinned destinations are asked again at once: the engine reads them without asking)."""
        self._cache.clear()
        self.table.clear()
        self.by_v4.clear()
        for key in self._pinned:
            self._store(key)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
