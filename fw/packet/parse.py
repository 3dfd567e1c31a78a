# cython: annotation_typing=False
"""Parse L3 bytes (IPv4 or IPv6) into a Packet, or raise MalformedPacket.

How it works: one pass with precompiled `struct` unpackers over the bytes, no copies (`payload`
is cut out of `data` only when asked for: a 64 KiB GSO packet is not copied for the engine, which
reads `payload_len`). `parse` reads the IP header (IPv6: walks the extension headers), fills the IP
fields of a fresh `Packet`, then hands the L4 part to one function per protocol (`_tcp`, `_udp`,
`_icmp`, `_no_l4`); each fills every L4 field, so a Packet never has an unset slot. Most packets
take a fast path first: IPv4 without options, TCP or UDP, not a fragment, both headers unpacked
in one call and every field stored in `parse` itself; whatever it does not take goes the general
way (`_parse`); for the packets both take they give the same Packet or the same error.

Lengths ("track by headers and lengths"): `end` is where the packet's bytes stop, the IP length
or the capture, whichever is shorter. Headers must lie completely before `end`, or the packet is
malformed; the payload may be cut by the capture (NFQUEUE copy range). Bytes after the IP length
are link padding and ignored. An IP length of 0 with bytes after the header (IPv4 total length 0,
IPv6 payload length 0: GSO/TSO super-packets, jumbograms) means "as long as the capture".

Fragments: a non-first fragment has no L4 header (ports 0, L4 fields at their defaults, payload =
the fragment's data). A first fragment is parsed like a whole packet; where that fails (its L4
header is cut, a UDP length covers the whole datagram) it is parsed leniently like a quoted packet
(ports when present) and `payload_len` counts what this fragment carries after the L4 header.

ICMP errors (ICMP 3,4,5,11,12; ICMPv6 1,2,3,4) carry the quoted packet in `inner`, parsed
leniently (`_quoted`): its IP header must be complete, of the same family, and followed by at
least 8 bytes of TCP/UDP/ICMP header (RFC 792's "64 bits"); the rest may be cut, so a quoted TCP
header usually gives ports and seq only, other fields 0/None. An ICMP error quoting an ICMP error
is malformed (RFC 1122 3.2.2 forbids sending one). Offsets in `inner` count from the quoted
packet's first byte; its `payload_len` is what its IP length leaves after the L4 header (taken
as 20 bytes for a TCP header cut before its data offset).

Compiled (build_compiled.py), parse.pxd makes Packet a C struct: its integer fields are C
integers (the fields that may be None and the bytes stay objects), read by the compiled tracker
without an int object each; and the fast path reads the headers' fields byte by byte from the
bytes' buffer as C integers instead of `unpack_from` (whose 14-field tuple of Python objects cost
~1,500 instructions a packet).

IPv6 walks hop-by-hop (first only, RFC 8200 4.1), routing, destination options, fragment and AH
headers; any other next header ends the walk and is `proto` (59: nothing follows). For a
non-first IPv6 fragment, `proto` is the fragment header's next header.
"""

from __future__ import annotations

from struct import Struct
from typing import Final

try:
    import cython
except ImportError:  # no Cython: this module runs pure (as with FW_PURE=1)
    from fw import cython_shadow as cython

from fw.packet.constants import ICMP_ERRORS, ICMP_QUERIES, ICMPV6_ERRORS, ICMPV6_QUERIES

_IPV4: Final = Struct("!BxHHHxB2x4s4s").unpack_from      # version+IHL, total length, id, frag, proto, src, dst
# An IPv4 header without options and the fixed TCP header after it, in one call (the fast path);
# for UDP the same bytes give the ports and, in `seq`'s high 16 bits, the UDP length.
_IPV4_TCP: Final = Struct("!BxHHHxB2x4s4sHHIIBBH").unpack_from
_IPV6: Final = Struct("!B3xHBx16s16s").unpack_from       # version.., payload length, next header, src, dst
_IPV6_FRAGMENT: Final = Struct("!BxHI").unpack_from      # next header, offset+M, id
_TCP: Final = Struct("!HHIIBBH").unpack_from             # ports, seq, ack, data offset, flags, window
_TCP_TS_BLOCK: Final = Struct("!III").unpack_from        # NOP NOP 8 10, tsval, tsecr
_UDP: Final = Struct("!HHH").unpack_from                 # ports, length
_ICMP: Final = Struct("!BB2xHH").unpack_from             # type, code, (checksum), identifier, sequence
_U16: Final = Struct("!H").unpack_from
_U32: Final = Struct("!I").unpack_from
_TWO_U32: Final = Struct("!II").unpack_from
_PORTS: Final = Struct("!HH").unpack_from

NOP_NOP_TIMESTAMP: Final = 0x0101080A
# TCP option kind -> the only valid length (SACK blocks, kind 5, are checked apart).
TCP_OPTION_LENGTHS: Final = {2: 4, 3: 3, 4: 2, 8: 10}
IPV6_EXTENSION_HEADERS: Final = frozenset((0, 43, 44, 51, 60))   # hop-by-hop, routing, fragment, AH, dest


class MalformedPacket(Exception):
    """The one exception a broken packet raises; `detail` says what is wrong, in a few words."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


# A Packet's fields (its __slots__; a compiled Packet has no __slots__ to read them from).
FIELDS = (
    "family", "src", "dst", "proto", "ip_len", "l4_offset",
    "is_fragment", "frag_offset", "more_fragments", "frag_id",
    "sport", "dport",
    "seq", "ack", "flags", "window", "mss", "wscale", "sack_perm", "sack", "tsval", "tsecr",
    "icmp_type", "icmp_code", "icmp_id", "icmp_seq", "inner",
    "payload_len", "data", "payload_start", "payload_end",
)


class Packet:
    """One parsed packet. Field meanings: docs/design.md, section "Packets"."""

    __slots__ = FIELDS
    # The types (annotations make no class attributes).
    family: int
    src: bytes
    dst: bytes
    proto: int
    ip_len: int
    l4_offset: int
    is_fragment: bool
    frag_offset: int
    more_fragments: bool
    frag_id: int
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    mss: int | None
    wscale: int | None
    sack_perm: bool
    sack: tuple
    tsval: int | None
    tsecr: int | None
    icmp_type: int | None
    icmp_code: int | None
    icmp_id: int
    icmp_seq: int
    inner: Packet | None
    payload_len: int
    data: bytes
    payload_start: int
    payload_end: int

    @property
    def payload(self) -> bytes:
        """The L4 payload as far as the capture goes (cut out when asked: a GSO packet's 64 KiB
        are not copied for the engine, which only needs `payload_len`)."""
        start, end = self.payload_start, self.payload_end
        # start may lie past end (a header cut by the capture); mypyc's bytes slice (2.4.1) then
        # fails with "Negative size passed to PyBytes_FromStringAndSize" where Python gives b"".
        return self.data[start:end] if start < end else b""

    def __repr__(self) -> str:
        from fw.packet.text import flow_text  # type: ignore  # noqa: PLC0415  (only for debugging output)

        return f"<Packet {flow_text(self)} flags={self.flags:#x} len={self.ip_len}>"


_new_packet = Packet.__new__  # a Packet without __init__ (object.__new__, unless compiled)
# The fast path calls Packet.__new__(Packet) when compiled: the type's C tp_new, directly (the alias
# is a Python call through tp_new_wrapper there, ~300 instructions); pure, the alias is the cheaper.


def parse(data: bytes) -> Packet:
    """L3 bytes -> Packet; raises MalformedPacket for anything that is not a sound IP packet.

    The common packets (IPv4 without options, not a fragment, TCP or UDP, lengths in order) take
    a fast path: one unpack for both headers, the fields stored in one function. What it does not
    take goes the general way (`_parse`), which gives the same Packet for the packets both take."""
    if data.__class__ is not bytes:
        data = bytes(data)
    n = len(data)
    if n < 40:
        return _parse(data, n)
    if cython.compiled:  # the headers' fields read as C integers, no tuple nor int objects
        b = _c_chars(data)  # noqa: F821  (the pxd's)
        vihl, proto = b[0], b[9]
        total = b[2] << 8 | b[3]
        frag = b[6] << 8 | b[7]
        if vihl != 0x45 or frag & 0x3FFF or total < 28:
            return _parse(data, n)
        src, dst = _c_slice(b, 12), _c_slice(b, 16)  # noqa: F821  (the pxd's: 4 bytes each)
        sport = b[20] << 8 | b[21]
        dport = b[22] << 8 | b[23]
        seq, ack = _c_be32(b, 24), _c_be32(b, 28)  # noqa: F821  (the pxd's)
        data_offset, flags = b[32], b[33]
        window = b[34] << 8 | b[35]
    else:
        vihl, total, _, frag, proto, src, dst, sport, dport, seq, ack, data_offset, flags, window = _IPV4_TCP(data)
        if vihl != 0x45 or frag & 0x3FFF or total < 28:
            return _parse(data, n)
    end = total if total < n else n
    if proto == 6:
        hl = (data_offset >> 4) << 2
        if hl == 20 and end >= 40:
            p = Packet.__new__(Packet) if cython.compiled else _new_packet(Packet)
            p.mss = p.wscale = p.tsval = p.tsecr = None
            p.sack_perm = False
            p.sack = ()
        elif hl == 32 and end >= 52:
            p = Packet.__new__(Packet) if cython.compiled else _new_packet(Packet)
            kind, p.tsval, p.tsecr = _TCP_TS_BLOCK(data, 40)
            if kind == NOP_NOP_TIMESTAMP:          # NOP NOP TS, the usual established segment
                p.mss = p.wscale = None
                p.sack_perm = False
                p.sack = ()
            else:
                _tcp_options(p, data, 40, 52)
        else:
            return _parse(data, n)
        p.seq = seq
        p.ack = ack
        p.flags = flags
        p.window = window
        p.payload_len = total - 20 - hl
        p.payload_start = 20 + hl
    elif proto == 17:
        length = seq >> 16
        if length < 8 or length > total - 20:
            return _parse(data, n)
        p = Packet.__new__(Packet) if cython.compiled else _new_packet(Packet)
        p.seq = p.ack = p.flags = p.window = 0
        p.mss = p.wscale = p.tsval = p.tsecr = None
        p.sack_perm = False
        p.sack = ()
        p.payload_len = length - 8
        p.payload_start = 28
        end = min(end, 20 + length)
    else:
        return _parse(data, n)
    p.family = 4
    p.src = src
    p.dst = dst
    p.proto = proto
    p.ip_len = total
    p.l4_offset = 20
    p.is_fragment = False
    p.frag_offset = 0
    p.more_fragments = False
    p.frag_id = 0
    p.sport = sport
    p.dport = dport
    p.icmp_type = p.icmp_code = p.inner = None
    p.icmp_id = p.icmp_seq = 0
    p.data = data
    p.payload_end = end
    return p


def _parse(data: bytes, n: int) -> Packet:
    """The general way: any IPv4 or IPv6 packet."""
    if n < 20:
        raise MalformedPacket("shorter than an IP header" if n else "empty packet")
    vihl, total, ident, frag, proto, src, dst = _IPV4(data)
    if vihl >> 4 != 4:
        if vihl >> 4 == 6:
            return _parse_ipv6(data, n)
        raise MalformedPacket(f"IP version {vihl >> 4}")
    off = (vihl & 15) << 2
    if off < 20 or off > n:
        raise MalformedPacket("bad IPv4 header length")
    gso = False
    if total < off:
        if total or n == off:
            raise MalformedPacket("IPv4 total length shorter than its header")
        total = n
        gso = True
    end = total if total < n else n
    p = _new_packet(Packet)
    p.family = 4
    p.src = src
    p.dst = dst
    p.proto = proto
    p.ip_len = total
    p.l4_offset = off
    if frag & 0x3FFF:
        return _fragment(p, data, off, end, total - off, gso, (frag & 0x1FFF) << 3, frag & 0x2000, ident)
    p.is_fragment = False
    p.frag_offset = 0
    p.more_fragments = False
    p.frag_id = 0
    if proto == 6:
        _tcp(p, data, off, end, total - off)
    elif proto == 17:
        _udp(p, data, off, end, total - off, gso)
    elif proto == 1:
        _icmp(p, data, off, end, total - off, 4)
    else:
        _no_l4(p, data, off, end, total - off)
    return p


def _parse_ipv6(data: bytes, n: int) -> Packet:
    if n < 40:
        raise MalformedPacket("shorter than an IPv6 header")
    _, payload_len, next_header, src, dst = _IPV6(data)
    gso = payload_len == 0 and n > 40
    total = n if gso else 40 + payload_len
    end = total if total < n else n
    proto, off, fragment = _walk_ipv6(data, 40, end, next_header)
    p = _new_packet(Packet)
    p.family = 6
    p.src = src
    p.dst = dst
    p.proto = proto
    p.ip_len = total
    p.l4_offset = off
    if fragment is not None and (fragment[0] or fragment[1]):
        return _fragment(p, data, off, end, total - off, gso, *fragment)
    p.is_fragment = False
    p.frag_offset = 0
    p.more_fragments = False
    p.frag_id = fragment[2] if fragment is not None else 0   # an atomic fragment (RFC 6946)
    _l4(p, data, off, end, total - off, gso, proto, 6)
    return p


def _walk_ipv6(data: bytes, off: int, end: int, next_header: int):
    """Skip extension headers from `off`: (protocol, L4 offset, (frag offset, more, id) or None)."""
    first = off
    fragment = None
    while next_header in IPV6_EXTENSION_HEADERS:
        if off + 8 > end:
            raise MalformedPacket("truncated IPv6 extension header")
        if next_header == 44:
            next_header, offset_m, ident = _IPV6_FRAGMENT(data, off)
            fragment = (offset_m & 0xFFF8, offset_m & 1, ident)
            off += 8
            if offset_m & 0xFFF8:
                break                          # a later fragment: no headers follow here
            continue
        if next_header == 51:
            length = (data[off + 1] + 2) << 2              # AH counts 4-byte words (RFC 4302)
        elif next_header == 0 and off != first:
            raise MalformedPacket("hop-by-hop options not first (RFC 8200 4.1)")
        else:
            length = (data[off + 1] + 1) << 3
        if off + length > end:
            raise MalformedPacket("truncated IPv6 extension header")
        next_header = data[off]
        off += length
    return next_header, off, fragment


def _fragment(p: Packet, data: bytes, off: int, end: int, l4len: int, gso: bool, frag_offset: int, more: int,
              ident: int) -> Packet:
    p.is_fragment = True
    p.frag_offset = frag_offset
    p.more_fragments = bool(more)
    p.frag_id = ident
    if frag_offset:
        _no_l4(p, data, off, end, l4len)
        return p
    try:
        _l4(p, data, off, end, l4len, gso, p.proto, p.family)
    except MalformedPacket:       # e.g. a UDP length beyond the fragment, a header cut short
        header_len = _lenient_l4(p, data, off, end, p.family)
        p.payload_len = max(0, l4len - header_len)
        p.data, p.payload_start, p.payload_end = data, off + header_len, end
    return p


def _l4(p: Packet, data: bytes, off: int, end: int, l4len: int, gso: bool, proto: int, family: int) -> None:
    if proto == 6:
        _tcp(p, data, off, end, l4len)
    elif proto == 17:
        _udp(p, data, off, end, l4len, gso)
    elif proto == (1 if family == 4 else 58):
        _icmp(p, data, off, end, l4len, family)
    else:
        _no_l4(p, data, off, end, l4len)


def _tcp(p: Packet, data: bytes, off: int, end: int, l4len: int) -> None:
    if off + 20 > end:
        raise MalformedPacket("truncated TCP header")
    p.sport, p.dport, p.seq, p.ack, data_offset, p.flags, p.window = _TCP(data, off)
    hl = (data_offset >> 4) << 2
    if hl < 20:
        raise MalformedPacket("TCP data offset below 5")
    if off + hl > end:
        raise MalformedPacket("TCP header beyond the packet")
    if hl == 32:
        kind, p.tsval, p.tsecr = _TCP_TS_BLOCK(data, off + 20)
        if kind == NOP_NOP_TIMESTAMP:          # NOP NOP TS, the usual established segment
            p.mss = p.wscale = None
            p.sack_perm = False
            p.sack = ()
        else:
            _tcp_options(p, data, off + 20, off + hl)
    elif hl == 20:
        p.mss = p.wscale = p.tsval = p.tsecr = None
        p.sack_perm = False
        p.sack = ()
    else:
        _tcp_options(p, data, off + 20, off + hl)
    p.icmp_type = p.icmp_code = p.inner = None
    p.icmp_id = p.icmp_seq = 0
    p.payload_len = l4len - hl
    p.data = data
    p.payload_start = off + hl
    p.payload_end = end


def _tcp_options(p: Packet, data: bytes, i: int, options_end: int) -> None:
    """The full TCP option walk (RFC 9293 3.2): EOL ends it, NOP is one byte, others kind+length."""
    mss = wscale = tsval = tsecr = None
    sack_perm = False
    sack: tuple = ()
    while i < options_end:
        kind = data[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 2 > options_end:
            raise MalformedPacket(f"TCP option {kind} without a length")
        length = data[i + 1]
        if length < 2 or i + length > options_end:
            raise MalformedPacket(f"TCP option {kind} has a bad length")
        expected = TCP_OPTION_LENGTHS.get(kind)
        if expected is not None and length != expected:
            raise MalformedPacket(f"TCP option {kind} has a bad length")
        if kind == 2:
            mss = _U16(data, i + 2)[0]
        elif kind == 3:
            wscale = data[i + 2]
        elif kind == 4:
            sack_perm = True
        elif kind == 8:
            tsval, tsecr = _TWO_U32(data, i + 2)
        elif kind == 5:
            if length < 10 or (length - 2) & 7:
                raise MalformedPacket("TCP SACK option has a bad length")
            sack = tuple(_TWO_U32(data, j) for j in range(i + 2, i + length, 8))
        i += length
    p.mss = mss
    p.wscale = wscale
    p.sack_perm = sack_perm
    p.sack = sack
    p.tsval = tsval
    p.tsecr = tsecr


def _udp(p: Packet, data: bytes, off: int, end: int, l4len: int, gso: bool) -> None:
    if off + 8 > end:
        raise MalformedPacket("truncated UDP header")
    sport, dport, length = _UDP(data, off)
    if length < 8:
        if length or not (gso or l4len > 0xFFFF):       # 0: jumbogram (RFC 2675) or GSO
            raise MalformedPacket("UDP length below 8")
        length = l4len
    elif length > l4len:
        raise MalformedPacket("UDP length beyond the IP payload")
    _no_tcp(p)
    p.sport = sport
    p.dport = dport
    p.icmp_type = p.icmp_code = p.inner = None
    p.icmp_id = p.icmp_seq = 0
    p.payload_len = length - 8
    p.data = data
    p.payload_start = off + 8
    p.payload_end = min(end, off + length)


def _icmp(p: Packet, data: bytes, off: int, end: int, l4len: int, family: int) -> None:
    if off + 8 > end:
        raise MalformedPacket("truncated ICMP header")
    icmp_type, p.icmp_code, ident, seq = _ICMP(data, off)
    p.icmp_type = icmp_type
    p.sport = p.dport = 0
    _no_tcp(p)
    if icmp_type in (ICMP_QUERIES if family == 4 else ICMPV6_QUERIES):
        p.icmp_id = ident
        p.icmp_seq = seq
    else:
        p.icmp_id = p.icmp_seq = 0
    if icmp_type in (ICMP_ERRORS if family == 4 else ICMPV6_ERRORS):
        p.inner = _quoted(data, off + 8, end, family)
    else:
        p.inner = None
    p.payload_len = l4len - 8
    p.data = data
    p.payload_start = off + 8
    p.payload_end = end


def _no_l4(p: Packet, data: bytes, off: int, end: int, l4len: int) -> None:
    """Defaults for every L4 field: a protocol without ports, or a non-first fragment."""
    p.sport = p.dport = 0
    _no_tcp(p)
    p.icmp_type = p.icmp_code = p.inner = None
    p.icmp_id = p.icmp_seq = 0
    p.payload_len = l4len
    p.data = data
    p.payload_start = off
    p.payload_end = end


def _no_tcp(p: Packet) -> None:
    p.seq = p.ack = p.flags = p.window = 0
    p.mss = p.wscale = p.tsval = p.tsecr = None
    p.sack_perm = False
    p.sack = ()


def _quoted(data: bytes, start: int, end: int, family: int) -> Packet:
    """The packet an ICMP error quotes, parsed leniently (see the module docstring)."""
    q = _new_packet(Packet)
    q.family = family
    available = end - start
    fragment = None
    if family == 4:
        if available < 20:
            raise MalformedPacket("quoted IPv4 header truncated")
        vihl, q.ip_len, ident, frag, q.proto, q.src, q.dst = _IPV4(data, start)
        off = start + ((vihl & 15) << 2)
        if vihl >> 4 != 4 or off < start + 20 or off > end:
            raise MalformedPacket("quoted packet is not a sound IPv4 header")
        if frag & 0x3FFF:
            fragment = ((frag & 0x1FFF) << 3, frag & 0x2000, ident)
    else:
        if available < 40:
            raise MalformedPacket("quoted IPv6 header truncated")
        version, payload_len, next_header, q.src, q.dst = _IPV6(data, start)
        if version >> 4 != 6:
            raise MalformedPacket("quoted packet is not IPv6")
        q.ip_len = 40 + payload_len
        q.proto, off, fragment = _walk_ipv6(data, start + 40, end, next_header)
    q.l4_offset = off - start
    q.is_fragment = fragment is not None and bool(fragment[0] or fragment[1])
    q.frag_offset, q.more_fragments, q.frag_id = (0, False, 0) if fragment is None else (
        fragment[0], bool(fragment[1]), fragment[2])
    if q.frag_offset:
        _no_l4(q, data, off, end, max(0, q.ip_len - q.l4_offset))
        return q
    if q.proto in (6, 17, 1 if family == 4 else 58) and end - off < 8:
        raise MalformedPacket("quoted L4 header shorter than 8 bytes")
    header_len = _lenient_l4(q, data, off, end, family)
    if q.icmp_type in (ICMP_ERRORS if family == 4 else ICMPV6_ERRORS):
        raise MalformedPacket("ICMP error quotes an ICMP error")
    q.payload_len = max(0, q.ip_len - q.l4_offset - header_len)
    q.data = data
    q.payload_start = off + header_len
    q.payload_end = end
    return q


def _lenient_l4(p: Packet, data: bytes, off: int, end: int, family: int) -> int:
    """Fill what there is of a possibly cut L4 header; returns the header's length."""
    available = end - off
    _no_l4(p, data, off, end, 0)
    proto = p.proto
    if proto == 6 or proto == 17:
        if available >= 4:
            p.sport, p.dport = _PORTS(data, off)
        if proto == 17:
            return 8
        if available >= 8:
            p.seq = _U32(data, off + 4)[0]
        if available >= 20:
            _, _, _, p.ack, data_offset, p.flags, p.window = _TCP(data, off)
            return max(20, (data_offset >> 4) << 2)
        return 20
    if proto == (1 if family == 4 else 58):
        if available >= 2:
            p.icmp_type, p.icmp_code = data[off], data[off + 1]
        if available >= 8 and p.icmp_type in (ICMP_QUERIES if family == 4 else ICMPV6_QUERIES):
            _, _, p.icmp_id, p.icmp_seq = _ICMP(data, off)
        return 8
    return 0
