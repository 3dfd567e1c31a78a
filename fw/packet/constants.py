"""Numbers of the protocols the packet layer knows: TCP flag bits, protocol numbers, ICMP names.

Everything here is plain data. The name tables map the names an operator of iptables or nftables
would type (both spellings where they differ, e.g. `neighbour-solicitation` and
`nd-neighbor-solicit`) to numbers, for the policy loader; the `*_NAMES` tables go the other way
(one canonical name per number) for logs and messages.
"""

from __future__ import annotations

# TCP flag bits (the low 8 bits of byte 13 of the TCP header).
FIN = 0x01
SYN = 0x02
RST = 0x04
PSH = 0x08
ACK = 0x10
URG = 0x20
ECE = 0x40
CWR = 0x80
TCP_FLAG_LETTERS = (("F", FIN), ("S", SYN), ("R", RST), ("P", PSH), ("A", ACK), ("U", URG),
                    ("E", ECE), ("C", CWR))

# IP protocol numbers (IANA "Assigned Internet Protocol Numbers").
PROTO_HOPOPTS = 0
PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ROUTING = 43
PROTO_FRAGMENT = 44
PROTO_GRE = 47
PROTO_ESP = 50
PROTO_AH = 51
PROTO_ICMPV6 = 58
PROTO_NONE = 59
PROTO_DSTOPTS = 60
PROTO_SCTP = 132
PROTO_UDPLITE = 136

# Names a policy may use for `proto` (besides a number), and the name shown for a number.
PROTOCOLS = {
    "icmp": PROTO_ICMP, "tcp": PROTO_TCP, "udp": PROTO_UDP, "icmpv6": PROTO_ICMPV6,
    "ipv6-icmp": PROTO_ICMPV6, "gre": PROTO_GRE, "esp": PROTO_ESP, "ah": PROTO_AH,
    "sctp": PROTO_SCTP, "udplite": PROTO_UDPLITE,
}
PROTO_NAMES = {PROTO_ICMP: "icmp", PROTO_TCP: "tcp", PROTO_UDP: "udp", PROTO_ICMPV6: "icmpv6",
               PROTO_GRE: "gre", PROTO_ESP: "esp", PROTO_AH: "ah", PROTO_SCTP: "sctp",
               PROTO_UDPLITE: "udplite"}

# ICMP (IPv4) types. Names as nftables spells them, plus the iptables aliases.
ICMP_ECHO_REPLY = 0
ICMP_DEST_UNREACH = 3
ICMP_SOURCE_QUENCH = 4
ICMP_REDIRECT = 5
ICMP_ECHO_REQUEST = 8
ICMP_TIME_EXCEEDED = 11
ICMP_PARAMETER_PROBLEM = 12
ICMP_TYPES = {
    "echo-reply": 0, "destination-unreachable": 3, "source-quench": 4, "redirect": 5,
    "echo-request": 8, "router-advertisement": 9, "router-solicitation": 10, "time-exceeded": 11,
    "parameter-problem": 12, "timestamp-request": 13, "timestamp-reply": 14, "info-request": 15,
    "info-reply": 16, "address-mask-request": 17, "address-mask-reply": 18,
    # iptables aliases
    "pong": 0, "ping": 8, "ttl-exceeded": 11,
}
# Codes of destination-unreachable (the ones rules name); nftables and iptables spellings.
ICMP_CODES = {
    "net-unreachable": 0, "network-unreachable": 0, "host-unreachable": 1, "prot-unreachable": 2,
    "protocol-unreachable": 2, "port-unreachable": 3, "frag-needed": 4, "fragmentation-needed": 4,
    "source-route-failed": 5, "network-unknown": 6, "host-unknown": 7, "net-prohibited": 9,
    "network-prohibited": 9, "host-prohibited": 10, "tos-network-unreachable": 11,
    "tos-host-unreachable": 12, "admin-prohibited": 13, "communication-prohibited": 13,
    "host-precedence-violation": 14, "precedence-cutoff": 15,
}
ICMP_CODE_ADMIN_PROHIBITED = 13

# ICMPv6 types. RFC 4443 and RFC 4861 names, British and American spellings, nftables' nd-* names.
ICMPV6_DEST_UNREACH = 1
ICMPV6_PACKET_TOO_BIG = 2
ICMPV6_TIME_EXCEEDED = 3
ICMPV6_PARAMETER_PROBLEM = 4
ICMPV6_ECHO_REQUEST = 128
ICMPV6_ECHO_REPLY = 129
ICMPV6_TYPES = {
    "destination-unreachable": 1, "packet-too-big": 2, "time-exceeded": 3, "parameter-problem": 4,
    "echo-request": 128, "echo-reply": 129, "mld-listener-query": 130, "mld-listener-report": 131,
    "mld-listener-done": 132, "router-solicitation": 133, "router-advertisement": 134,
    "neighbor-solicitation": 135, "neighbor-advertisement": 136, "redirect": 137,
    "router-renumbering": 138, "ind-neighbor-solicit": 141, "ind-neighbor-advert": 142,
    "mld2-listener-report": 143,
    # aliases
    "ttl-exceeded": 3, "mld-listener-reduction": 132, "neighbour-solicitation": 135,
    "neighbour-advertisement": 136, "nd-router-solicit": 133, "nd-router-advert": 134,
    "nd-neighbor-solicit": 135, "nd-neighbor-advert": 136, "nd-redirect": 137,
    "ping": 128, "pong": 129,
}
# Codes of ICMPv6 destination-unreachable (RFC 4443 section 3.1).
ICMPV6_CODES = {
    "no-route": 0, "admin-prohibited": 1, "communication-prohibited": 1, "beyond-scope": 2,
    "addr-unreachable": 3, "address-unreachable": 3, "port-unreachable": 4, "policy-fail": 5,
    "reject-route": 6,
}
ICMPV6_CODE_ADMIN_PROHIBITED = 1

# Which ICMP messages are errors (they quote the offending packet) and which are queries (they
# carry an identifier that a reply echoes, as nf_conntrack_proto_icmp.c tracks them).
ICMP_ERRORS = frozenset((3, 4, 5, 11, 12))
ICMP_QUERIES = frozenset((0, 8, 13, 14, 15, 16, 17, 18))
ICMPV6_ERRORS = frozenset((1, 2, 3, 4))
ICMPV6_QUERIES = frozenset((128, 129))


def _canonical_names(table: dict[str, int]) -> dict[int, str]:
    """number -> the first name the table lists for it."""
    names: dict[int, str] = {}
    for name, number in table.items():
        names.setdefault(number, name)
    return names


ICMP_TYPE_NAMES = _canonical_names(ICMP_TYPES)
ICMPV6_TYPE_NAMES = _canonical_names(ICMPV6_TYPES)
