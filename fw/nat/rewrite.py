# cython: annotation_typing=False
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
A session's two compiled directions (`Translation`) are made together by `pair` (one checksum
difference, negated for the reply). build_compiled.py compiles this module (fw/nat/rewrite.pxd:
Translation a final cdef class of numbers and one bytes object, so the cyclic collector does not
track it, and `leave` typed); it runs unchanged as Python (FW_PURE=1). Compiled, `leave` rewrites
a bare TCP/UDP packet in C (the pxd's `_c_translated`: one new bytes object, the packet copied
into it once, the header and both checksums written in place, a partial checksum summed in C) and
makes its RewritePacket (fw/decision.pxd) without a Python call; the Python code of `leave` is the
pure build's, which copies a large (GSO) packet's payload once too (a join over a memoryview).
"""

from __future__ import annotations

from struct import Struct
from typing import NamedTuple

try:
    import cython
except ImportError:  # no Cython: this module runs pure (as with FW_PURE=1)
    from fw import cython_shadow as cython

from fw.decision import RewritePacket
from fw.packet.checksum import checksum_of_sum, pseudo_header_sum, udp_fold, update_sum, word_sum
from fw.packet.constants import ICMP_QUERIES, ICMPV6_QUERIES

_U16 = Struct("!H")
_PORTS = Struct("!HH")
_read16 = _U16.unpack_from
_write16 = _U16.pack_into
_from_bytes = int.from_bytes
_BIG = 2048  # bytes beyond which the pure build joins a memoryview of the rest (no second copy)

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
    """One session direction's rewrite, compiled once when the session opens: the new addresses
    and ports as one bytes object, the two checksum differences reduced to 16 bits.

    `leave(data, packet, effects, partial=False)` gives `effects` and a RewritePacket with the
    translated bytes of `data` (parsed as `packet`, a packet of this session direction: the lookup
    guarantees it carries `old`); `apply` gives the bytes alone. Every packet of a translated
    session comes here, so the common case is short: a TCP/UDP packet with a bare IP header (no
    IPv4 options, no IPv6 extension headers) is, compiled, one copy and a few C stores
    (`_c_translated`, module docstring); pure, one struct unpack of its head, one pack and one
    concatenation with the rest (a join over a memoryview beyond `_BIG` bytes: the payload of a
    64 KiB GSO packet copied once); the structs are shared by every session of a kind (a
    session's own data is this object and its `header`, so little memory per packet).
    A partial checksum (`partial`) is computed whole in the same pass (`_whole`: one `word_sum` over
    the segment as it came, corrected by constants). IPv4 options or IPv6 extension headers take a
    `bytes.join` of slices (`_unusual`); anything else (a fragment, a packet the capture cut, other
    protocols, options or extension headers with a partial checksum) goes through `rewrite`.
    """

    __slots__ = ("family", "proto", "udp", "header", "ip_delta", "l4_delta", "zero", "bare", "end", "ports")

    def __init__(self, family: int, proto: int, old: tuple, new: tuple, deltas: tuple | None = None) -> None:
        """`old` and `new`: (src, dst, sport, dport) as the packet carries them before and after;
        `deltas`: (ip_delta, l4_delta) when the caller knows them (`pair`). Only numbers and one
        bytes object are kept (compiled, the object is then no business of the cyclic collector)."""
        self.family = family
        self.proto = proto
        udp = self.udp = proto == 17
        self.header = new[0] + new[1] + _PORTS.pack(new[2], new[3])
        if deltas is None:
            deltas = _deltas(family, old, new)
        self.ip_delta, self.l4_delta = deltas
        self.zero = 0xFFFF if udp else 0  # what a computed 0 is sent as
        self.ports = old[2] + old[3]  # for a partial checksum computed whole (`_whole`)
        if proto == 6 or udp:
            self.bare = 20 if family == 4 else 40  # the L4 offset of a bare IP header
            self.end = self.bare + (8 if udp else 18)  # the rest of the packet is copied as it is
        else:
            self.bare, self.end = -1, 0

    @property
    def manip(self) -> Manip:
        """The same change as a Manip (for `rewrite`)."""
        header, size = self.header, 4 if self.family == 4 else 16
        return Manip(header[:size], header[size:2 * size], *_PORTS.unpack_from(header, 2 * size))

    def leave(self, data: bytes, packet, effects: tuple = (), partial: bool = False) -> tuple:
        """`effects` and a RewritePacket with `data` translated (class docstring): the established
        path's whole rewrite in one call (the effect made without an `__init__` frame)."""
        if packet.l4_offset != self.bare or packet.is_fragment or len(data) < packet.ip_len:
            new = self._unusual(data, packet, partial)
        elif cython.compiled and type(data) is bytes:
            new = _c_translated(self, data, packet.ip_len, partial)  # noqa: F821  (the pxd's)
        else:
            if self.family == 4:
                before, ip_check, between, check = _UNPACK4[self.udp](data)
                if partial:
                    check = self._whole(data, packet.ip_len, check)
                elif check or not self.udp:  # a zero UDP checksum (none) stays zero; a computed 0 is 0xFFFF
                    check = (check + self.l4_delta) % 0xFFFF or self.zero
                head = _PACK4[self.udp](before, (ip_check + self.ip_delta) % 0xFFFF, self.header, between, check)
            else:
                before, between, check = _UNPACK6[self.udp](data)
                if partial:
                    check = self._whole(data, packet.ip_len, check)
                elif check or not self.udp:
                    check = (check + self.l4_delta) % 0xFFFF or self.zero
                head = _PACK6[self.udp](before, self.header, between, check)
            # A GSO packet's payload copied once (the join reads a view; `+` of a slice copies twice).
            new = head + data[self.end:] if len(data) <= _BIG else b"".join((head, memoryview(data)[self.end:]))
        effect = RewritePacket.__new__(RewritePacket)
        effect.data = new
        return effects + (effect,) if effects else (effect,)

    def apply(self, data: bytes, packet, partial: bool = False) -> bytes:
        """`data` translated: the bytes of `leave`'s RewritePacket."""
        return self.leave(data, packet, (), partial)[0].data

    def _whole(self, data: bytes, end: int, partial_check: int) -> int:
        """The whole L4 checksum of the translated segment, for a packet whose field holds only the
        kernel's partial sum (NFQA_SKB_CSUMNOTREADY): the sum of the segment as it came, less that
        field and the old ports, plus the new ports and the new pseudo-header (`pseudo`)."""
        l4 = self.bare
        # The new pseudo-header (less its length) and the ports' change: the new addresses and
        # ports are the header's words (their sum, mod 0xFFFF, is the number they spell).
        pseudo = _from_bytes(self.header, "big") + self.proto - self.ports
        total = word_sum(memoryview(data)[l4:end]) - partial_check + pseudo + (end - l4)
        check = -total % 0xFFFF
        return check or self.zero

    def _unusual(self, data: bytes, packet, partial: bool) -> bytes:
        """IPv4 options or IPv6 extension headers: slices joined; the rest: `rewrite`."""
        if self.bare < 0 or partial or packet.is_fragment or len(data) < packet.ip_len:
            return rewrite(data, packet, self.manip, partial=partial)
        l4 = packet.l4_offset
        at = l4 + 6 if self.udp else l4 + 16
        check = data[at] << 8 | data[at + 1]
        if not self.udp:
            check = (check + self.l4_delta) % 0xFFFF
        elif check:
            check = (check + self.l4_delta) % 0xFFFF or 0xFFFF
        tail = (self.header[-4:], data[l4 + 4:at], check.to_bytes(2, "big"), data[at + 2:])
        if self.family == 4:   # the header checksum, the addresses, the options
            ip_check = ((data[10] << 8 | data[11]) + self.ip_delta) % 0xFFFF
            return b"".join((data[:10], ip_check.to_bytes(2, "big"), self.header[:8], data[20:l4], *tail))
        return b"".join((data[:8], self.header[:32], data[40:l4], *tail))  # the extension headers kept


def _deltas(family: int, old: tuple, new: tuple) -> tuple[int, int]:
    """(IPv4 header, L4) checksum differences of a translation: RFC 1624's old sum - new sum of
    the changed words, kept mod 0xFFFF (small ints); the IPv6 header has no checksum."""
    address_delta = _from_bytes(old[0] + old[1], "big") - _from_bytes(new[0] + new[1], "big")
    return (address_delta % 0xFFFF if family == 4 else 0,
            (address_delta + old[2] + old[3] - new[2] - new[3]) % 0xFFFF)


def pair(family: int, proto: int, orig: tuple, reply: tuple) -> tuple[Translation, Translation]:
    """A session's two directions: `orig` (c, d, cp, dp) leaves as (t, s, tp, sp) and `reply`
    (s, t, sp, tp) as (d, c, dp, cp); the same as two `Translation(...)`, made for every new
    translated session, so without their `__init__` calls: the reply's differences are the
    original's negated (the words are the same, summed in another order), computed once."""
    c, d, cp, dp = orig
    s, t, sp, tp = reply
    address_delta = _from_bytes(c + d, "big") - _from_bytes(s + t, "big")
    l4_delta = (address_delta + cp + dp - sp - tp) % 0xFFFF
    ip_delta = address_delta % 0xFFFF if family == 4 else 0
    udp = proto == 17
    if proto == 6 or udp:
        bare = 20 if family == 4 else 40
        end = bare + (8 if udp else 18)
    else:
        bare, end = -1, 0
    zero = 0xFFFF if udp else 0
    return (_made(family, proto, udp, zero, bare, end, t + s + _PORTS.pack(tp, sp), ip_delta, l4_delta, cp + dp),
            _made(family, proto, udp, zero, bare, end, d + c + _PORTS.pack(dp, cp), -ip_delta % 0xFFFF,
                  -l4_delta % 0xFFFF, sp + tp))


def _made(family: int, proto: int, udp: bool, zero: int, bare: int, end: int, header: bytes, ip_delta: int,
          l4_delta: int, ports: int) -> Translation:
    """A Translation of these fields, without its `__init__` (`pair`)."""
    made = Translation.__new__(Translation)
    made.family = family
    made.proto = proto
    made.udp = udp
    made.zero = zero
    made.bare = bare
    made.end = end
    made.header = header
    made.ip_delta = ip_delta
    made.l4_delta = l4_delta
    made.ports = ports
    return made

# The L4 bytes from the ports to the checksum, per transport (UDP: its length; TCP: seq to window).
_BETWEEN = {False: "12s", True: "2s"}


# A bare IP header's packet up to the L4 checksum, indexed by `udp` (False: TCP): IPv4 as before /
# header checksum / addresses+ports / between / L4 checksum, IPv6 without the header checksum.
_UNPACK4 = tuple(Struct(f"!10sH12x{_BETWEEN[udp]}H").unpack_from for udp in (False, True))
_PACK4 = tuple(Struct(f"!10sH12s{_BETWEEN[udp]}H").pack for udp in (False, True))
_UNPACK6 = tuple(Struct(f"!8s36x{_BETWEEN[udp]}H").unpack_from for udp in (False, True))
_PACK6 = tuple(Struct(f"!8s36s{_BETWEEN[udp]}H").pack for udp in (False, True))


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
