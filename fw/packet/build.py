"""Build packets with correct checksums: resets and ICMP errors for the engine, packets for tests.

How it works: pure functions from fields to bytes with `struct`, in layers as the wire has them.
L4 builders (`tcp_segment`, `udp_datagram`, `icmp_message`) take the addresses because their
checksums cover a pseudo-header (RFC 9293 3.1, RFC 768, RFC 4443 2.3); `ip_packet` wraps an L4
part in IPv4 or IPv6, chosen by the address length. The one-call forms (`tcp`, `udp`,
`icmp_echo`, `icmp_error`) return whole L3 packets. IPv6 extension headers are built by
`hop_by_hop`, `dest_options`, `routing`, `fragment_header`, `auth_header`, each told its next
header, and concatenated before the L4 part by the caller. Addresses may be given as bytes (4 or
16) or as text.

The engine's answers: `tcp_reset_for(packet)` is the RST a RFC 9293 stack sends for a segment
(section 3.10.7.1), `icmp_unreachable_for(data, packet)` the "administratively prohibited"
unreachable (ICMP 3/13, ICMPv6 1/1). Both come from the packet's destination to its source, and
both give None where RFC 9293 / RFC 1122 / RFC 4443 forbid an answer (a RST for a RST, an ICMP
error about an ICMP error, a non-first fragment, or a multicast or unspecified source), and the
unreachable also where the capture holds less than the IP header and 8 bytes to quote.
"""

from __future__ import annotations

import ipaddress
import struct

from fw.packet.checksum import checksum
from fw.packet.constants import ACK, FIN, ICMP_ERRORS, RST, SYN

ICMP_QUOTE_MAX = 576 - 20 - 8          # RFC 1812 4.3.2.3: the error fits in 576 bytes
ICMPV6_QUOTE_MAX = 1280 - 40 - 8       # RFC 4443 2.4 (c): the error fits in the minimum MTU


def address(addr: bytes | str) -> bytes:
    """Text or raw bytes -> 4 or 16 raw bytes."""
    if isinstance(addr, str):
        return ipaddress.ip_address(addr).packed
    addr = bytes(addr)
    if len(addr) not in (4, 16):
        raise ValueError(f"an address has 4 or 16 bytes, not {len(addr)}")
    return addr


def _pseudo_header(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!I3xB", length, proto)


def _with_checksum(src, dst, proto: int, segment: bytes, at: int, zero_is: int = 0) -> bytes:
    """Put the pseudo-header checksum of `segment` at offset `at` (its field zeroed on entry)."""
    value = checksum(_pseudo_header(src, dst, proto, len(segment)) + segment) or zero_is
    return segment[:at] + struct.pack("!H", value) + segment[at + 2:]


# ---- L3 -------------------------------------------------------------------------------------

def ipv4(src, dst, proto: int, payload: bytes, ttl: int = 64, ident: int = 0, *, tos: int = 0,
         df: bool = False, mf: bool = False, frag_offset: int = 0, options: bytes = b"") -> bytes:
    """An IPv4 packet; `options` are padded with EOL to 4 bytes, `frag_offset` is in bytes."""
    options += b"\0" * (-len(options) % 4)
    header_len = 20 + len(options)
    frag = (0x4000 if df else 0) | (0x2000 if mf else 0) | (frag_offset >> 3)
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | header_len >> 2, tos, header_len + len(payload),
                         ident, frag, ttl, proto, 0, address(src), address(dst)) + options
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + payload


def ipv6(src, dst, next_header: int, payload: bytes, hop_limit: int = 64, *,
         traffic_class: int = 0, flow_label: int = 0) -> bytes:
    """An IPv6 packet; `payload` includes any extension headers."""
    first_word = 6 << 28 | traffic_class << 20 | flow_label
    return struct.pack("!IHBB16s16s", first_word, len(payload), next_header, hop_limit,
                       address(src), address(dst)) + payload


def ip_packet(src, dst, proto: int, payload: bytes, **kwargs) -> bytes:
    """IPv4 or IPv6 by the address length."""
    src, dst = address(src), address(dst)
    return (ipv4 if len(src) == 4 else ipv6)(src, dst, proto, payload, **kwargs)


def _pad_options(options: bytes) -> bytes:
    """Pad an options header body (after its 2 first bytes) to 8n+6 bytes with Pad1/PadN."""
    gap = -(len(options) + 2) % 8
    if gap == 1:
        return options + b"\0"
    return options + (bytes((1, gap - 2)) + b"\0" * (gap - 2) if gap else b"")


def hop_by_hop(next_header: int, options: bytes = b"") -> bytes:
    """IPv6 hop-by-hop options header (protocol 0), padded to 8 bytes."""
    body = _pad_options(options)
    return bytes((next_header, (len(body) + 2) // 8 - 1)) + body


def dest_options(next_header: int, options: bytes = b"") -> bytes:
    """IPv6 destination options header (protocol 60): the same layout as hop-by-hop."""
    return hop_by_hop(next_header, options)


def jumbo_option(length: int) -> bytes:
    """The hop-by-hop Jumbo Payload option (RFC 2675)."""
    return struct.pack("!BBI", 0xC2, 4, length)


def routing(next_header: int, routing_type: int = 2, segments_left: int = 0,
            data: bytes = b"\0" * 20) -> bytes:
    """IPv6 routing header (protocol 43); `data` follows the 4 fixed bytes, padded to 8n+4."""
    data += b"\0" * (-(len(data) + 4) % 8)
    return bytes((next_header, (len(data) + 4) // 8 - 1, routing_type, segments_left)) + data


def fragment_header(next_header: int, offset: int, more: bool, ident: int) -> bytes:
    """IPv6 fragment header (protocol 44); `offset` in bytes, a multiple of 8."""
    return struct.pack("!BxHI", next_header, offset | bool(more), ident)


def auth_header(next_header: int, spi: int = 0x100, seq: int = 1, icv: bytes = b"\0" * 12) -> bytes:
    """IPsec AH (protocol 51, RFC 4302); its length counts 4-byte words, minus 2."""
    return struct.pack("!BBHII", next_header, (12 + len(icv)) // 4 - 2, 0, spi, seq) + icv


# ---- L4 -------------------------------------------------------------------------------------

def tcp_segment(src, dst, sport: int, dport: int, seq: int, ack: int, flags: int,
                window: int = 65535, options: bytes = b"", payload: bytes = b"",
                urgent: int = 0) -> bytes:
    """A TCP header (options padded with EOL to 4 bytes) and payload, checksum included."""
    options += b"\0" * (-len(options) % 4)
    segment = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                          (20 + len(options)) << 2, flags, window, 0, urgent) + options + payload
    return _with_checksum(address(src), address(dst), 6, segment, 16)


def udp_datagram(src, dst, sport: int, dport: int, payload: bytes = b"") -> bytes:
    """A UDP header and payload; a computed checksum of 0 is sent as 0xFFFF (RFC 768)."""
    segment = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return _with_checksum(address(src), address(dst), 17, segment, 6, zero_is=0xFFFF)


def icmp_message(src, dst, icmp_type: int, code: int, rest: int = 0, body: bytes = b"") -> bytes:
    """An ICMP (IPv4 addresses) or ICMPv6 (IPv6 addresses, pseudo-header checksum) message."""
    src, dst = address(src), address(dst)
    message = struct.pack("!BBHI", icmp_type, code, 0, rest) + body
    if len(src) == 16:
        return _with_checksum(src, dst, 58, message, 2)
    return message[:2] + struct.pack("!H", checksum(message)) + message[4:]


# ---- TCP options ----------------------------------------------------------------------------

def opt_mss(mss: int) -> bytes:
    return struct.pack("!BBH", 2, 4, mss)


def opt_wscale(shift: int) -> bytes:
    """NOP, window scale: 4 bytes."""
    return bytes((1, 3, 3, shift))


def opt_sack_perm() -> bytes:
    """SACK-permitted (2 bytes; pad it, or use tcp_options)."""
    return b"\x04\x02"


def opt_timestamps(tsval: int, tsecr: int) -> bytes:
    """NOP, NOP, timestamps: the 12-byte block of established segments (RFC 7323 appendix A)."""
    return struct.pack("!BBBBII", 1, 1, 8, 10, tsval & 0xFFFFFFFF, tsecr & 0xFFFFFFFF)


def opt_sack(blocks) -> bytes:
    """NOP, NOP, SACK with (left, right) blocks."""
    body = b"".join(struct.pack("!II", left & 0xFFFFFFFF, right & 0xFFFFFFFF) for left, right in blocks)
    return bytes((1, 1, 5, 2 + len(body))) + body


def tcp_options(mss=None, wscale=None, sack_perm=False, ts=None, sack=()) -> bytes:
    """Options in the order and alignment Linux sends them; `ts` is (tsval, tsecr)."""
    out = opt_mss(mss) if mss is not None else b""
    if sack_perm and ts is not None:
        out += b"\x04\x02" + opt_timestamps(*ts)[2:]
    elif ts is not None:
        out += opt_timestamps(*ts)
    elif sack_perm:
        out += b"\x01\x01\x04\x02"
    if wscale is not None:
        out += opt_wscale(wscale)
    if sack:
        out += opt_sack(sack)
    return out


# ---- whole packets --------------------------------------------------------------------------

def tcp(src, dst, sport: int, dport: int, seq: int, ack: int, flags: int, window: int = 65535,
        options: bytes = b"", payload: bytes = b"") -> bytes:
    """A TCP/IP packet, IPv4 or IPv6 by the address length."""
    return ip_packet(src, dst, 6, tcp_segment(src, dst, sport, dport, seq, ack, flags, window,
                                              options, payload))


def udp(src, dst, sport: int, dport: int, payload: bytes = b"") -> bytes:
    return ip_packet(src, dst, 17, udp_datagram(src, dst, sport, dport, payload))


def icmp_echo(src, dst, ident: int, seq: int, payload: bytes = b"", reply: bool = False) -> bytes:
    """An echo request (ICMP 8, ICMPv6 128) or reply (0, 129)."""
    v6 = len(address(src)) == 16
    icmp_type = (129 if reply else 128) if v6 else (0 if reply else 8)
    return ip_packet(src, dst, 58 if v6 else 1,
                     icmp_message(src, dst, icmp_type, 0, ident << 16 | seq, payload))


def icmp_error(src, dst, icmp_type: int, code: int, quoted: bytes, rest: int = 0) -> bytes:
    """An ICMP(v6) error quoting `quoted`, cut to the size limit; `rest` is the word after the
    checksum (the MTU of "fragmentation needed" and "packet too big", the pointer of
    "parameter problem")."""
    v6 = len(address(src)) == 16
    quoted = quoted[:ICMPV6_QUOTE_MAX if v6 else ICMP_QUOTE_MAX]
    return ip_packet(src, dst, 58 if v6 else 1, icmp_message(src, dst, icmp_type, code, rest, quoted))


def quote(data: bytes) -> bytes:
    """What an ICMP error quotes of a packet: IPv4 header + 8 bytes (RFC 792), or as much of an
    IPv6 packet as fits (RFC 4443); link padding after the IP length is dropped first."""
    if data[0] >> 4 == 4:
        length = struct.unpack_from("!H", data, 2)[0] or len(data)
        return data[:min(length, ((data[0] & 15) << 2) + 8)]
    length = struct.unpack_from("!H", data, 4)[0]
    return data[:min(40 + length if length else len(data), 40 + ICMPV6_QUOTE_MAX)]


def tcp_reset_for(packet) -> bytes | None:
    """The RST answering `packet` (RFC 9293 3.10.7.1): if it had ACK, <SEQ=SEG.ACK><CTL=RST>,
    else <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>, SYN and FIN counting one. None for a RST."""
    if packet.proto != 6 or packet.flags & RST or packet.frag_offset:
        return None
    if packet.flags & ACK:
        seq, ack, flags = packet.ack, 0, RST
    else:
        length = packet.payload_len + bool(packet.flags & SYN) + bool(packet.flags & FIN)
        seq, ack, flags = 0, packet.seq + length, RST | ACK
    return tcp(packet.dst, packet.src, packet.dport, packet.sport, seq, ack, flags, window=0)


def icmp_unreachable_for(data, packet=None) -> bytes | None:
    """ICMP 3/13 or ICMPv6 1/1 (administratively prohibited) for the packet `data` parsed into
    `packet`, from its destination; None where no ICMP error may be sent (module docstring).
    Called with the Packet alone, it quotes headers rebuilt from the packet's fields."""
    if packet is None:
        packet, data = data, None
    v6 = packet.family == 6
    if packet.proto == (58 if v6 else 1) and packet.icmp_type is not None and (
            packet.icmp_type < 128 if v6 else packet.icmp_type in ICMP_ERRORS):
        return None                    # RFC 1122 3.2.2, RFC 4443 2.4 (e.1)
    source = ipaddress.ip_address(packet.src)
    if packet.frag_offset or source.is_multicast or source.is_unspecified or (
            not v6 and packet.src == b"\xff\xff\xff\xff"):
        return None
    quoted = quote(data) if data is not None else _quote_from_fields(packet)
    if len(quoted) < packet.l4_offset + 8:
        return None                    # the receiver could not match it to a socket
    if v6:
        return icmp_error(packet.dst, packet.src, 1, 1, quoted)
    return icmp_error(packet.dst, packet.src, 3, 13, quoted)


def _quote_from_fields(packet) -> bytes:
    """An IP header (no options or extension headers) and 8 bytes of L4 header from a Packet."""
    if packet.proto == 6:
        l4 = struct.pack("!HHI", packet.sport, packet.dport, packet.seq)
    elif packet.proto == 17:
        l4 = struct.pack("!HHHH", packet.sport, packet.dport, 8 + packet.payload_len, 0)
    elif packet.icmp_type is not None:
        l4 = struct.pack("!BBHHH", packet.icmp_type, packet.icmp_code, 0, packet.icmp_id, packet.icmp_seq)
    else:
        l4 = packet.payload[:8]
    if packet.family == 6:
        return ipv6(packet.src, packet.dst, packet.proto, b"")[:4] + struct.pack(
            "!HBB", packet.ip_len - packet.l4_offset, packet.proto, 64) + packet.src + packet.dst + l4
    header = ipv4(packet.src, packet.dst, packet.proto, b"", ident=packet.frag_id,
                  mf=packet.more_fragments, frag_offset=packet.frag_offset)
    length = struct.pack("!H", packet.ip_len)
    header = header[:2] + length + header[4:10] + b"\0\0" + header[12:]
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + l4
