"""Packets as text, for replay output, logs and messages (not on the per-packet path).

`flow_text(packet)` gives the packet's own direction in SPEC's `fw replay --json` form:

    tcp 198.51.100.10:40000 -> 203.0.113.10:80                 TCP and UDP (first fragments too)
    udp [2001:db8:1::10]:5000 -> [2001:db8:2::10]:53           IPv6 addresses in brackets
    icmp 198.51.100.10 -> 203.0.113.10 type 8 code 0           ICMP; `icmpv6` for ICMPv6
    proto 47 198.51.100.10 -> 203.0.113.10                     any other protocol, by number
    tcp 198.51.100.10 -> 203.0.113.10 fragment offset 1480     a non-first fragment (no ports)

Addresses without ports are never bracketed. `format_addr` gives IPv4 dotted quads and IPv6 in
RFC 5952 compressed form (via the ipaddress module).
"""

from __future__ import annotations

import ipaddress


def format_addr(addr: bytes) -> str:
    """4 or 16 raw address bytes -> `198.51.100.10` or `2001:db8:1::10`."""
    if len(addr) == 4:
        return f"{addr[0]}.{addr[1]}.{addr[2]}.{addr[3]}"
    return ipaddress.IPv6Address(bytes(addr)).compressed


def proto_text(packet) -> str:
    """`tcp`, `udp`, `icmp` (IPv4), `icmpv6` (IPv6), else `proto N`."""
    proto = packet.proto
    if proto == 6:
        return "tcp"
    if proto == 17:
        return "udp"
    if proto == (1 if packet.family == 4 else 58):
        return "icmp" if packet.family == 4 else "icmpv6"
    return f"proto {proto}"


def flow_text(packet) -> str:
    """The packet's direction as SPEC's replay `flow` field spells it (forms: module docstring)."""
    name = proto_text(packet)
    src = format_addr(packet.src)
    dst = format_addr(packet.dst)
    if packet.frag_offset:
        return f"{name} {src} -> {dst} fragment offset {packet.frag_offset}"
    if packet.proto == 6 or packet.proto == 17:
        if packet.family == 6:
            return f"{name} [{src}]:{packet.sport} -> [{dst}]:{packet.dport}"
        return f"{name} {src}:{packet.sport} -> {dst}:{packet.dport}"
    if packet.icmp_type is not None:
        return f"{name} {src} -> {dst} type {packet.icmp_type} code {packet.icmp_code}"
    return f"{name} {src} -> {dst}"
