"""Rewrite a packet's addresses and ports (ICMP query ids), checksums kept correct: NAT's hands.

How it works. `rewrite(data, packet, manip)` copies the L3 bytes into a bytearray, puts the new
source/destination address and port (or ICMP query identifier) in place with `struct.pack_into`,
and fixes the checksums, then returns new bytes; `packet` is `fw.packet.parse(data)`, whose offsets
it trusts. `Manip` fields left None are kept.

Checksums (fw/packet/checksum.py):
- The IPv4 header checksum is always updated incrementally (RFC 1624): the kernel hands over a
  complete one (ip_send_check runs before the OUTPUT hook; forwarded headers were verified).
- The L4 checksum covers a pseudo-header for TCP, UDP and ICMPv6, not for ICMP (v4).
  `partial=False` (the checksum is complete): an incremental update with the difference of every
  changed word (addresses, ports, identifier). `partial=True` (the kernel left a partial checksum,
  NFQA_SKB_CSUMNOTREADY, with GSO): the checksum is computed over the whole new L4 segment and its
  pseudo-header, since a verdict with a new payload makes the kernel treat the field as final.
- A zero UDP checksum (none, RFC 768) stays zero in complete mode, and a computed 0 is sent as
  0xFFFF, as Linux's __udp_manip_pkt does.

ICMP errors (packet.inner is set): `manip` changes the outer addresses and `inner` the quoted
packet, as Linux's nf_nat_icmp_reply_translation / nf_nat_ipv4_manip_pkt do: the quoted IPv4
header's checksum is updated; the quoted TCP checksum only when the whole 20-byte TCP header was
quoted (tcp_manip_pkt), the quoted UDP checksum when not zero, the quoted ICMP echo's identifier and
checksum (ICMPv6: with its pseudo-header); then the outer ICMP checksum is recomputed over the whole
message (in both modes: the kernel does so too, and an ICMP error is at most 1280 bytes).

Refused (RewriteError, for the engine to drop and count): fragments (conntrack reassembles before
the queue, so none should arrive), a packet the capture cut short (a verdict with fewer bytes would
truncate it in the kernel), an address of the other family.
"""

from __future__ import annotations

from struct import Struct
from typing import NamedTuple

from fw.packet.checksum import checksum_of_sum, pseudo_header_sum, udp_fold, update_sum, word_sum
from fw.packet.constants import ICMP_QUERIES, ICMPV6_QUERIES

_U16 = Struct("!H")
_PORTS = Struct("!HH")
_read16 = _U16.unpack_from
_write16 = _U16.pack_into
_from_bytes = int.from_bytes

# family -> (source address offset, length); the destination follows the source directly.
_ADDRESS_AT = {4: (12, 4), 6: (8, 16)}
_L4_CHECKSUM_AT = {6: 16, 17: 6, 1: 2, 58: 2}
_PSEUDO_HEADER = frozenset((6, 17, 58))


class RewriteError(Exception):
    """A packet this module will not rewrite; `detail` says why in a few words."""

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class Manip(NamedTuple):
    """What to put in a packet: None keeps the field. For ICMP queries (echo), `sport` or else
    `dport` is the identifier (the session table keys an echo by its id in both port slots)."""

    src: bytes | None = None
    dst: bytes | None = None
    sport: int | None = None
    dport: int | None = None


def rewrite(data: bytes, packet, manip: Manip, *, partial: bool = False,
            inner: Manip | None = None) -> bytes:
    """The packet `data` (parsed as `packet`) with `manip` (and `inner` for an ICMP error) applied."""
    if packet.is_fragment:
        raise RewriteError("fragment")
    end = packet.ip_len
    if len(data) < end:
        raise RewriteError("packet cut by the capture")
    buf = bytearray(data)
    family = packet.family
    address_delta = _set_addresses(buf, 0, family, manip)
    if packet.inner is not None:
        _icmp_error(buf, packet, inner, end)
        return bytes(buf)
    proto = packet.proto
    at = _L4_CHECKSUM_AT.get(proto)
    if at is None:
        return bytes(buf)            # no L4 header we know: addresses only (no checksum over them)
    l4 = packet.l4_offset
    delta = _set_ports(buf, l4, proto, family, manip)
    pseudo = proto in _PSEUDO_HEADER
    if partial:
        recompute_l4_checksum(buf, l4, end, proto, family)
        return bytes(buf)
    check = _read16(buf, l4 + at)[0]
    if proto == 17 and not check:
        return bytes(buf)            # UDP without a checksum stays without one
    check = update_sum(check, delta + address_delta if pseudo else delta)
    _write16(buf, l4 + at, udp_fold(check) if proto == 17 else check)
    return bytes(buf)


class Translation:
    """One session direction's rewrite, compiled once when the session opens.

    `apply(data, packet, partial=False)` gives the translated bytes of `data` (parsed as `packet`,
    a packet of this session direction: the lookup guarantees it carries `old`). It is a closure
    made here for the session's family and protocol, not a method: every packet of a translated
    session comes through it, and a closure reads its constants (the new header bytes, the two
    checksum differences) from cells, without attribute lookups or further calls. A complete
    TCP/UDP packet with a bare IP header (no IPv4 options, no IPv6 extension headers: nearly all)
    costs one struct unpack of its head, one pack, and one concatenation with the rest;
    IPv4 options or IPv6 extension headers take a `bytes.join` of slices; anything else (a partial
    checksum, a fragment, a packet the capture cut, other protocols) goes through `rewrite`.
    """

    __slots__ = ("family", "proto", "manip", "apply")

    def __init__(self, family: int, proto: int, old: tuple, new: tuple) -> None:
        """`old` and `new`: (src, dst, sport, dport) as the packet carries them before and after."""
        self.family = family
        self.proto = proto
        self.manip = manip = Manip(*new)
        addresses = new[0] + new[1]
        address_delta = _from_bytes(old[0] + old[1], "big") - _from_bytes(addresses, "big")
        if proto != 6 and proto != 17:
            self.apply = _general(manip)
        else:
            self.apply = _compiled(family, proto == 17, manip, addresses + _PORTS.pack(new[2], new[3]),
                                   address_delta if family == 4 else 0,
                                   address_delta + old[2] + old[3] - new[2] - new[3])


def _general(manip: Manip):
    """`Translation.apply` for what has no compiled path: `rewrite` with the session's manip."""

    def apply(data: bytes, packet, partial: bool = False) -> bytes:
        return rewrite(data, packet, manip, partial=partial)

    return apply


def _compiled(family: int, udp: bool, manip: Manip, header: bytes, ip_delta: int, l4_delta: int):
    """`Translation.apply` for TCP/UDP: `header` is the new addresses and ports (adjacent when the
    IP header is bare), the deltas RFC 1624's (old sum - new sum) of the IPv4 header's and the L4
    checksum's changed words. A zero UDP checksum (none) stays zero; a computed 0 is 0xFFFF."""
    bare = 20 if family == 4 else 40
    addresses, ports = header[:-4], header[-4:]
    between = "2s" if udp else "12s"  # the L4 bytes from the ports to the checksum
    if family == 4:  # before / IP header checksum / addresses+ports / between / L4 checksum
        unpack, pack = Struct(f"!10sH12x{between}H").unpack_from, Struct(f"!10sH12s{between}H").pack
    else:            # before / addresses+ports / between / L4 checksum
        unpack, pack = Struct(f"!8s36x{between}H").unpack_from, Struct(f"!8s36s{between}H").pack
    head_end = bare + (8 if udp else 18)

    def apply(data: bytes, packet, partial: bool = False) -> bytes:
        if packet.l4_offset != bare or partial or packet.is_fragment or len(data) < packet.ip_len:
            return _unusual(data, packet, partial)
        if family == 4:
            before, ip_check, middle, check = unpack(data)
            if udp:
                check = ((check + l4_delta) % 0xFFFF or 0xFFFF) if check else 0
            else:
                check = (check + l4_delta) % 0xFFFF
            return pack(before, (ip_check + ip_delta) % 0xFFFF, header, middle, check) + data[head_end:]
        before, middle, check = unpack(data)
        if udp:
            check = ((check + l4_delta) % 0xFFFF or 0xFFFF) if check else 0
        else:
            check = (check + l4_delta) % 0xFFFF
        return pack(before, header, middle, check) + data[head_end:]

    def _unusual(data: bytes, packet, partial: bool) -> bytes:
        """IPv4 options or IPv6 extension headers: slices joined; the rest: `rewrite`."""
        if partial or packet.is_fragment or len(data) < packet.ip_len:
            return rewrite(data, packet, manip, partial=partial)
        l4 = packet.l4_offset
        at = l4 + 6 if udp else l4 + 16
        check = data[at] << 8 | data[at + 1]
        if not udp:
            check = (check + l4_delta) % 0xFFFF
        elif check:
            check = (check + l4_delta) % 0xFFFF or 0xFFFF
        tail = (data[l4 + 4:at], check.to_bytes(2, "big"), data[at + 2:])
        if family == 4:   # the header checksum, the addresses, the options
            ip_check = ((data[10] << 8 | data[11]) + ip_delta) % 0xFFFF
            head = (data[:10], ip_check.to_bytes(2, "big"), addresses, data[20:l4])
        else:             # the addresses, the extension headers
            head = (data[:8], addresses, data[40:l4])
        return b"".join((*head, ports, *tail))

    return apply


def _set_addresses(buf: bytearray, base: int, family: int, manip: Manip) -> int:
    """Write the IP addresses of the header at `base`; return old_sum - new_sum of the changes.

    An IPv4 header's own checksum (at base + 10) is updated by the same difference.
    """
    offset, length = _ADDRESS_AT[family]
    delta = 0
    for address, at in ((manip.src, base + offset), (manip.dst, base + offset + length)):
        if address is None:
            continue
        if len(address) != length:
            raise RewriteError(f"a {len(address)}-byte address for an IPv{family} packet")
        delta += _from_bytes(buf[at:at + length], "big") - _from_bytes(address, "big")
        buf[at:at + length] = address
    if delta and family == 4:
        _write16(buf, base + 10, update_sum(_read16(buf, base + 10)[0], delta))
    return delta


def _set_ports(buf: bytearray, l4: int, proto: int, family: int, manip: Manip) -> int:
    """Write ports (TCP, UDP) or an ICMP query's identifier; return old_sum - new_sum."""
    if proto == 6 or proto == 17:
        sport, dport = _PORTS.unpack_from(buf, l4)
        new_sport = sport if manip.sport is None else manip.sport
        new_dport = dport if manip.dport is None else manip.dport
        _PORTS.pack_into(buf, l4, new_sport, new_dport)
        return sport + dport - new_sport - new_dport
    ident = manip.sport if manip.sport is not None else manip.dport
    if ident is None or buf[l4] not in (ICMP_QUERIES if family == 4 else ICMPV6_QUERIES):
        return 0
    old = _read16(buf, l4 + 4)[0]
    _write16(buf, l4 + 4, ident)
    return old - ident


def recompute_l4_checksum(buf: bytearray, l4: int, end: int, proto: int, family: int) -> None:
    """Compute the L4 checksum over the whole segment (and pseudo-header) from scratch."""
    at = _L4_CHECKSUM_AT[proto]
    _write16(buf, l4 + at, 0)
    total = word_sum(memoryview(buf)[l4:end])
    if proto in _PSEUDO_HEADER:
        offset, length = _ADDRESS_AT[family]
        total += pseudo_header_sum(buf[offset:offset + length], buf[offset + length:offset + 2 * length],
                                   proto, end - l4)
    check = checksum_of_sum(total)
    _write16(buf, l4 + at, udp_fold(check) if proto == 17 else check)


def with_payload(data: bytes, packet, payload: bytes) -> bytes:
    """The TCP/UDP packet `data` (parsed as `packet`) carrying `payload` instead of its own: an ALG
    rewrote it (another length: the IP length and the UDP length follow) or cut it short. The
    IPv4 header checksum is updated, the L4 checksum computed over the new segment (so a partial
    one becomes final too). Raises RewriteError for fragments and packets cut by the capture."""
    if packet.is_fragment or packet.proto not in (6, 17):
        raise RewriteError("no TCP/UDP payload to replace")
    end = packet.ip_len
    if len(data) < end:
        raise RewriteError("packet cut by the capture")
    l4 = packet.l4_offset
    header_end = l4 + ((data[l4 + 12] >> 4) << 2 if packet.proto == 6 else 8)
    buf = bytearray(data[:header_end])
    buf += payload
    size = len(buf)
    if packet.family == 4:
        old_total = _read16(buf, 2)[0]
        _write16(buf, 2, size)
        _write16(buf, 10, update_sum(_read16(buf, 10)[0], old_total - size))
    else:
        _write16(buf, 4, size - 40)
    if packet.proto == 17:
        _write16(buf, l4 + 4, size - l4)
    recompute_l4_checksum(buf, l4, size, packet.proto, packet.family)
    return bytes(buf)


def l4_checksum_valid(data: bytes, packet) -> bool:
    """Whether the packet's L4 checksum verifies (a zero UDP checksum counts as none: valid).

    False for a packet the kernel handed over with a partial checksum (its pseudo-header sum).
    """
    at = _L4_CHECKSUM_AT.get(packet.proto)
    l4, end = packet.l4_offset, packet.ip_len
    if at is None or len(data) < end:
        return True
    if packet.proto == 17 and data[l4 + 6:l4 + 8] == b"\0\0":
        return True
    total = word_sum(memoryview(data)[l4:end])
    if packet.proto in _PSEUDO_HEADER:
        total += pseudo_header_sum(packet.src, packet.dst, packet.proto, end - l4)
    return total % 0xFFFF == 0


def _icmp_error(buf: bytearray, packet, inner: Manip | None, end: int) -> None:
    """Translate the quoted packet (`inner`), then recompute the outer ICMP checksum."""
    family = packet.family
    if inner is not None:
        quoted = packet.inner
        base = packet.l4_offset + 8
        address_delta = _set_addresses(buf, base, family, inner)
        if not quoted.frag_offset:
            _quoted_l4(buf, base + quoted.l4_offset, quoted.proto, family, inner, address_delta, end)
    recompute_l4_checksum(buf, packet.l4_offset, end, packet.proto, family)


def _quoted_l4(buf: bytearray, l4: int, proto: int, family: int, inner: Manip,
               address_delta: int, end: int) -> None:
    """The quoted L4 header: ports/identifier, and its checksum where the kernel updates it."""
    at = _L4_CHECKSUM_AT.get(proto)
    if at is None or (proto == 1 and family == 6) or (proto == 58 and family == 4):
        return
    delta = _set_ports(buf, l4, proto, family, inner)
    if proto == 6 and l4 + 20 > end:
        return                        # the quoted TCP checksum lies beyond what was quoted
    check = _read16(buf, l4 + at)[0]
    if proto == 17 and not check:
        return
    check = update_sum(check, delta + address_delta if proto in _PSEUDO_HEADER else delta)
    _write16(buf, l4 + at, udp_fold(check) if proto == 17 else check)
