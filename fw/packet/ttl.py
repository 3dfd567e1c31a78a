"""One router hop: the packet with its IPv4 TTL or IPv6 hop limit lowered by one.

How it works: a node that sends on a packet another node received (owner forwarding,
docs/forwarding.md) acts as the router the packet crossed, so it lowers the TTL as the kernel's
forwarding would, and the IPv4 header checksum is updated incrementally (RFC 1624 for the 16-bit
word holding TTL and protocol: fw.packet.checksum.update16). A packet whose TTL would reach 0
is not sent on: `hop` returns None (the kernel would answer ICMP time exceeded; the caller counts
it). Pure.
"""

from __future__ import annotations

import struct

from fw.packet.checksum import update16

_U16 = struct.Struct("!H")


def hop(data: bytes) -> bytes | None:
    """`data` with its TTL / hop limit one lower; None if it would expire (or is not IPv4/IPv6)."""
    if len(data) >= 20 and data[0] >> 4 == 4:
        ttl = data[8]
        if ttl <= 1:
            return None
        check = update16(_U16.unpack_from(data, 10)[0], ttl << 8 | data[9], (ttl - 1) << 8 | data[9])
        return data[:8] + bytes((ttl - 1,)) + data[9:10] + _U16.pack(check) + data[12:]
    if len(data) >= 40 and data[0] >> 4 == 6:
        if data[7] <= 1:
            return None
        return data[:7] + bytes((data[7] - 1,)) + data[8:]
    return None
