"""The packet layer: L3 bytes in, a parsed `Packet` out (or `MalformedPacket`), and builders.

`parse` (fw/packet/parse.py) is the per-packet path: struct over the bytes, a `__slots__` Packet.
`build` makes packets with correct checksums (the engine's resets and ICMP unreachables, tests,
benchmarks); `text` turns packets into the text replay and logs show; `constants` holds flag
bits, protocol numbers and the ICMP name tables the policy loader uses.
"""

from fw.packet import build
from fw.packet.constants import (
    ACK,
    CWR,
    ECE,
    FIN,
    ICMP_CODES,
    ICMP_TYPE_NAMES,
    ICMP_TYPES,
    ICMPV6_CODES,
    ICMPV6_TYPE_NAMES,
    ICMPV6_TYPES,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    PROTOCOLS,
    PSH,
    RST,
    SYN,
    URG,
)
from fw.packet.parse import MalformedPacket, Packet, parse
from fw.packet.text import flow_text, format_addr

__all__ = [
    "ACK", "CWR", "ECE", "FIN", "ICMP_CODES", "ICMP_TYPE_NAMES", "ICMP_TYPES", "ICMPV6_CODES",
    "ICMPV6_TYPE_NAMES", "ICMPV6_TYPES", "PROTO_ICMP", "PROTO_ICMPV6", "PROTO_TCP", "PROTO_UDP",
    "PROTOCOLS", "PSH", "RST", "SYN", "URG", "MalformedPacket", "Packet", "build", "flow_text",
    "format_addr", "parse",
]
