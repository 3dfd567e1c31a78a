"""Test packets that read like the protocol: `seg(client, server, "S", seq=100)`.

Endpoints are "ip:port" strings ("198.51.100.10:40000", "[2001:db8:1::10]:40000"); flags are
letters (F S R P A U E C, any order: "SA", "PA", "FA", "RA"). Every helper returns L3 bytes built
by fw.packet.build, so checksums are right and the engine sees what the kernel would give it.
"""

from __future__ import annotations

from fw.packet import build
from fw.packet.constants import TCP_FLAG_LETTERS

FLAG_BITS = dict(TCP_FLAG_LETTERS)


def endpoint(text: str, port: int | None = None) -> tuple[str, int]:
    """ "198.51.100.10:80" / "[2001:db8::1]:80" / a bare address -> (address, port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest else (port or 0)
    if text.count(":") == 1:
        host, _, number = text.partition(":")
        return host, int(number)
    return text, port or 0


def flag_bits(flags: str) -> int:
    """"SA" -> SYN|ACK."""
    bits = 0
    for letter in flags.upper():
        bits |= FLAG_BITS[letter]
    return bits


def seg(src: str, dst: str, flags: str, seq: int = 0, ack: int = 0, win: int = 65535,
        payload: bytes = b"", sport: int | None = None, dport: int | None = None,
        wscale: int | None = None, mss: int | None = None, sack_perm: bool = False,
        ts: tuple[int, int] | None = None, sack=()) -> bytes:
    """A TCP segment; `sport`/`dport` override the endpoints' ports, `ts` is (tsval, tsecr)."""
    src_ip, src_port = endpoint(src)
    dst_ip, dst_port = endpoint(dst)
    options = build.tcp_options(mss=mss, wscale=wscale, sack_perm=sack_perm, ts=ts, sack=sack)
    return build.tcp(src_ip, dst_ip, src_port if sport is None else sport,
                     dst_port if dport is None else dport, seq, ack, flag_bits(flags), win,
                     options, payload)


def udp_pkt(src: str, dst: str, payload: bytes = b"") -> bytes:
    """A UDP datagram between two "ip:port" endpoints."""
    (src_ip, sport), (dst_ip, dport) = endpoint(src), endpoint(dst)
    return build.udp(src_ip, dst_ip, sport, dport, payload)


def icmp_echo_pkt(src: str, dst: str, ident: int, seq: int, reply: bool = False,
                  payload: bytes = b"") -> bytes:
    """An echo request (or reply); ICMPv6 for IPv6 addresses. Ports in the endpoints are ignored."""
    return build.icmp_echo(endpoint(src)[0], endpoint(dst)[0], ident, seq, payload, reply)


def icmp_error_pkt(router: str, dst: str, icmp_type: int, code: int, quoted_bytes: bytes,
                   full: bool = False, rest: int = 0) -> bytes:
    """An ICMP(v6) error from `router` to `dst` about the packet `quoted_bytes`, quoted as a
    router does (IPv4 header + 8 bytes, IPv6 as much as fits); `full=True` quotes it all."""
    quoted = quoted_bytes if full else build.quote(quoted_bytes)
    return build.icmp_error(endpoint(router)[0], endpoint(dst)[0], icmp_type, code, quoted, rest)
