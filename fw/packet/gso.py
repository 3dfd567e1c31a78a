"""Split a GSO/TSO TCP super-packet (up to 64 KiB, as NFQUEUE hands them up) into segments.

How it works, as the kernel's tcp_gso_segment does: the packet's IP header (IPv4 with options;
IPv6 with its hop-by-hop, routing and destination-options headers) and TCP header (with options)
are copied in front of each `mss`-byte slice of the payload. In each copy:
- IPv4: the total length, the identification (the first segment keeps the packet's, each next
  one adds 1, modulo 2^16) and the header checksum; IPv6: the payload length;
- TCP: the sequence number (+ the slice's offset, modulo 2^32), the flags (FIN and PSH on the last
  segment only, CWR on the first only; the others on all), and the checksum, computed in full (a
  GSO packet's is often only the pseudo-header's: CHECKSUM_PARTIAL).

`header_room(data)` is how many bytes of IP and TCP headers each segment carries, so that a caller
with a size limit (an MTU minus a tunnel's overhead) can choose `mss = limit - header_room(data)`.
A packet whose payload already fits is returned as it is. What cannot be split raises ValueError:
not TCP, an IP fragment, an IPv6 fragment header, a capture shorter than the IP length.

`finish(data)`: a TCP or UDP packet with its checksum computed in full, as the kernel's
skb_checksum_help does before a CHECKSUM_PARTIAL packet leaves for a device that cannot finish it.
NFQUEUE with the GSO flag hands such packets up as they are (a local sender's, or one that crossed
a veth: the field holds only the pseudo-header's sum); a copy sent out of a raw socket elsewhere
(owner forwarding) must carry the real checksum or its receiver drops it. Pure.
"""

from __future__ import annotations

import struct

from fw.packet.checksum import checksum, checksum_of_sum, pseudo_header_sum, word_sum
from fw.packet.constants import CWR, FIN, PSH

PROTO_TCP, PROTO_UDP = 6, 17
CHECKSUM_AT = {PROTO_TCP: 16, PROTO_UDP: 6}  # the checksum field's offset in the transport header
IPV6_COPIED_HEADERS = frozenset((0, 43, 60))  # hop-by-hop, routing, destination options
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


def _ipv4_layout(data: bytes) -> tuple[int, int]:
    """(TCP header offset, end of the packet) of an IPv4 TCP packet."""
    ihl = (data[0] & 0x0F) * 4
    total, frag, proto = _U16.unpack_from(data, 2)[0], _U16.unpack_from(data, 6)[0], data[9]
    if ihl < 20 or proto != PROTO_TCP:
        raise ValueError("not an IPv4 TCP packet")
    if frag & 0x3FFF:
        raise ValueError("an IP fragment")
    return ihl, _end(data, total)


def _ipv6_layout(data: bytes) -> tuple[int, int]:
    """(TCP header offset, end of the packet) of an IPv6 TCP packet, extension headers walked."""
    if len(data) < 40:
        raise ValueError("shorter than an IPv6 header")
    payload_length = _U16.unpack_from(data, 4)[0]
    end = _end(data, 40 + payload_length if payload_length else 0)
    next_header, off = data[6], 40
    while next_header in IPV6_COPIED_HEADERS:
        if off + 8 > end:
            raise ValueError("an extension header is cut")
        next_header, off = data[off], off + (data[off + 1] + 1) * 8
    if next_header != PROTO_TCP:
        raise ValueError(f"next header {next_header}: not TCP (or a fragment)")
    return off, end


def _end(data: bytes, length: int) -> int:
    if length == 0:  # GSO super-packets over 64 KiB leave the length 0: as long as the capture
        return len(data)
    if length > len(data):
        raise ValueError(f"the IP length ({length}) is beyond the capture ({len(data)} bytes)")
    return length


def _layout(data: bytes) -> tuple[int, int, int]:
    """(TCP offset, TCP header length, end of packet)."""
    if not data:
        raise ValueError("empty")
    version = data[0] >> 4
    if version == 4 and len(data) >= 20:
        off, end = _ipv4_layout(data)
    elif version == 6:
        off, end = _ipv6_layout(data)
    else:
        raise ValueError("not an IPv4 or IPv6 packet")
    if off + 20 > end:
        raise ValueError("the TCP header is cut")
    tcp_len = (data[off + 12] >> 4) * 4
    if tcp_len < 20 or off + tcp_len > end:
        raise ValueError("a bad TCP data offset")
    return off, tcp_len, end


def header_room(data: bytes) -> int:
    """Bytes of IP and TCP headers in each segment of `data`."""
    off, tcp_len, _end_ = _layout(data)
    return off + tcp_len


def segment(data: bytes, mss: int) -> list[bytes]:
    """`data` split into segments carrying at most `mss` bytes of TCP payload each."""
    if mss < 1:
        raise ValueError(f"mss {mss}")
    off, tcp_len, end = _layout(data)
    start = off + tcp_len
    if end - start <= mss:
        return [bytes(data[:end])]
    ip_header, tcp_header = bytearray(data[:off]), bytearray(data[off:start])
    src, dst = _addresses(data)
    seq, flags = _U32.unpack_from(tcp_header, 4)[0], tcp_header[13]
    ident = _U16.unpack_from(ip_header, 4)[0] if data[0] >> 4 == 4 else 0
    segments, offsets = [], range(start, end, mss)
    for index, at in enumerate(offsets):
        chunk = data[at:min(at + mss, end)]
        last = index == len(offsets) - 1
        seg_flags = flags & ~(CWR if index else 0) & ~(0 if last else FIN | PSH)
        _U32.pack_into(tcp_header, 4, (seq + at - start) & 0xFFFFFFFF)
        tcp_header[13] = seg_flags
        _U16.pack_into(tcp_header, 16, 0)
        tcp_bytes = bytes(tcp_header) + chunk
        pseudo = _pseudo(src, dst, len(tcp_bytes))
        _U16.pack_into(tcp_header, 16, checksum(pseudo + tcp_bytes))
        segments.append(_ip(ip_header, off, len(tcp_bytes), ident + index) + bytes(tcp_header) + chunk)
    return segments


def _addresses(data: bytes) -> tuple[bytes, bytes]:
    if data[0] >> 4 == 4:
        return bytes(data[12:16]), bytes(data[16:20])
    return bytes(data[8:24]), bytes(data[24:40])


def _pseudo(src: bytes, dst: bytes, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, PROTO_TCP, length)
    return src + dst + struct.pack("!IxxxB", length, PROTO_TCP)


def _ip(header: bytearray, off: int, tcp_length: int, ident: int) -> bytes:
    """The IP header of a segment whose TCP part (header and payload) is `tcp_length` bytes."""
    if header[0] >> 4 == 4:
        _U16.pack_into(header, 2, off + tcp_length)
        _U16.pack_into(header, 4, ident & 0xFFFF)
        _U16.pack_into(header, 10, 0)
        _U16.pack_into(header, 10, checksum(bytes(header)))
    else:
        _U16.pack_into(header, 4, off - 40 + tcp_length)
    return bytes(header)


def _transport(data: bytes) -> tuple[int, int, int] | None:
    """(protocol, transport offset, end) of an unfragmented IPv4/IPv6 packet, else None."""
    version = data[0] >> 4 if data else 0
    if version == 4 and len(data) >= 20:
        if _U16.unpack_from(data, 6)[0] & 0x3FFF:
            return None
        return data[9], (data[0] & 0x0F) * 4, min(_U16.unpack_from(data, 2)[0] or len(data), len(data))
    if version == 6 and len(data) >= 40:
        end = min(40 + _U16.unpack_from(data, 4)[0], len(data)) if _U16.unpack_from(data, 4)[0] else len(data)
        next_header, off = data[6], 40
        while next_header in IPV6_COPIED_HEADERS and off + 8 <= end:
            next_header, off = data[off], off + (data[off + 1] + 1) * 8
        return next_header, off, end
    return None


def finish(data: bytes) -> bytes:
    """`data` with its TCP or UDP checksum computed in full; other packets as they are."""
    layout = _transport(data)
    if layout is None or layout[0] not in CHECKSUM_AT:
        return data
    proto, off, end = layout
    at = off + CHECKSUM_AT[proto]
    if at + 2 > end:
        return data
    packet = bytearray(data[:end])
    _U16.pack_into(packet, at, 0)
    total = pseudo_header_sum(*_addresses(data), proto, end - off) + word_sum(memoryview(packet)[off:end])
    _U16.pack_into(packet, at, checksum_of_sum(total) or 0xFFFF)  # UDP: 0 would mean "no checksum"
    return bytes(packet)
