"""The packet layer: every field of every protocol, lengths and truncation, builders, flow text.

Packets come from fw.packet.build (through tests/packets.py) and, where an independent builder
matters, from scapy; built packets' checksums are checked with scapy's own checksum code.
"""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, in4_chksum
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    in6_chksum,
)
from scapy.layers.ipsec import AH
from scapy.utils import checksum as scapy_checksum

from fw.packet import ICMP_TYPES, ICMPV6_TYPES, MalformedPacket, build, flow_text, format_addr, parse
from fw.packet.constants import ACK, CWR, ECE, FIN, ICMP_TYPE_NAMES, ICMPV6_TYPE_NAMES, PSH, RST, SYN, URG
from tests.packets import icmp_echo_pkt, icmp_error_pkt, seg, udp_pkt

C, S = "198.51.100.10", "203.0.113.10"
C6, S6 = "2001:db8:1::10", "2001:db8:2::10"
ROUTER, ROUTER6 = "192.0.2.1", "2001:db8:ffff::1"
CB, SB = build.address(C), build.address(S)
C6B, S6B = build.address(C6), build.address(S6)


def malformed(data: bytes) -> str:
    with pytest.raises(MalformedPacket) as info:
        parse(data)
    return info.value.detail


def patch(data: bytes, offset: int, fmt: str, *values) -> bytes:
    buf = bytearray(data)
    struct.pack_into(fmt, buf, offset, *values)
    return bytes(buf)


# ---- IPv4 ----------------------------------------------------------------------------------

def test_ipv4_tcp_every_field():
    data = seg(f"{C}:40000", f"{S}:80", "PA", seq=1000, ack=2000, win=501, payload=b"GET /")
    p = parse(data)
    assert (p.family, p.src, p.dst, p.proto) == (4, CB, SB, 6)
    assert (p.ip_len, p.l4_offset) == (len(data), 20)
    assert (p.is_fragment, p.frag_offset, p.more_fragments, p.frag_id) == (False, 0, False, 0)
    assert (p.sport, p.dport, p.seq, p.ack, p.flags, p.window) == (40000, 80, 1000, 2000, PSH | ACK, 501)
    assert (p.mss, p.wscale, p.sack_perm, p.sack, p.tsval, p.tsecr) == (None, None, False, (), None, None)
    assert (p.icmp_type, p.icmp_code, p.icmp_id, p.inner) == (None, None, 0, None)
    assert (p.payload_len, p.payload) == (5, b"GET /")


@pytest.mark.parametrize("seq, ack", [(0xFFFFFFF0, 0x80000001), (0x7FFFFFFF, 0xFFFFFFFF), (0x80000000, 0)])
def test_fast_path_reads_every_bit_of_ports_and_sequence_numbers(seq, ack):
    """The fast path (compiled: read byte by byte as C integers) keeps the high bits: no sign."""
    p = parse(seg(f"{C}:65535", f"{S}:32768", "A", seq=seq, ack=ack, win=65535))
    assert (p.sport, p.dport, p.seq, p.ack, p.window) == (65535, 32768, seq, ack, 65535)
    u = parse(udp_pkt(f"{C}:65534", f"{S}:65535", payload=b"x" * 64))
    assert (u.src, u.dst, u.sport, u.dport, u.payload_len, u.payload_end) == (CB, SB, 65534, 65535, 64, 28 + 64)


@pytest.mark.parametrize("letters, bits", [
    ("F", FIN), ("S", SYN), ("R", RST), ("P", PSH), ("A", ACK), ("U", URG), ("E", ECE), ("C", CWR),
    ("SAEC", SYN | ACK | ECE | CWR), ("FSRPAUEC", 0xFF),
])
def test_tcp_flags_are_the_low_eight_bits(letters, bits):
    assert parse(seg(f"{C}:1", f"{S}:2", letters)).flags == bits


def test_tcp_syn_options_linux_layout():
    p = parse(seg(f"{C}:40000", f"{S}:80", "S", mss=1460, sack_perm=True, ts=(111, 0), wscale=7))
    assert (p.mss, p.sack_perm, p.tsval, p.tsecr, p.wscale, p.sack) == (1460, True, 111, 0, 7, ())


def test_tcp_options_from_scapy_in_any_order():
    data = bytes(IP(src=C, dst=S) / TCP(options=[("WScale", 14), ("NOP", None), ("MSS", 536),
                                                 ("Timestamp", (5, 6)), ("SAckOK", b""), ("EOL", None)]))
    p = parse(data)
    assert (p.wscale, p.mss, p.tsval, p.tsecr, p.sack_perm) == (14, 536, 5, 6, True)


def test_tcp_sack_blocks():
    p = parse(seg(f"{C}:1", f"{S}:2", "A", ts=(9, 8), sack=[(100, 200), (300, 400), (500, 600)]))
    assert p.sack == ((100, 200), (300, 400), (500, 600))
    assert (p.tsval, p.tsecr) == (9, 8)


def test_tcp_timestamp_fast_path_equals_full_walk():
    fast = parse(seg(f"{C}:1", f"{S}:2", "A", ts=(0xFFFFFFFF, 7)))
    # The same option in another layout (TS then NOP NOP) takes the full walk.
    walked = parse(build.tcp(C, S, 1, 2, 0, 0, ACK, options=b"\x08\x0a" + struct.pack("!II", 0xFFFFFFFF, 7)
                             + b"\x01\x01"))
    for field in ("tsval", "tsecr", "mss", "wscale", "sack_perm", "sack", "payload_len"):
        assert getattr(fast, field) == getattr(walked, field)
    assert fast.tsval == 0xFFFFFFFF


def test_tcp_eol_ends_the_options():
    p = parse(build.tcp(C, S, 1, 2, 0, 0, SYN, options=b"\x00\x02\x04\x05\xb4"))   # junk after EOL
    assert p.mss is None


@pytest.mark.parametrize("options, why", [
    (b"\x01\x01\x1e\x08\x00\x00\x00\x00", "option overruns the header"),
    (b"\x02\x03\x05\xb4", "MSS of length 3"),
    (b"\x03\x04\x07\x00", "window scale of length 4"),
    (b"\x01\x01\x08\x0b" + bytes(8), "timestamps of length 11"),
    (b"\x04\x03\x00\x00", "SACK-permitted of length 3"),
    (b"\x01\x01\x05\x06" + bytes(4), "SACK with half a block"),
    (b"\x01\x01\x01\x1e", "kind without a length byte"),
    (b"\x1e\x01\x00\x00", "length below 2"),
])
def test_tcp_broken_option_is_malformed(options, why):
    assert "option" in malformed(build.tcp(C, S, 1, 2, 0, 0, SYN, options=options)), why


def test_tcp_data_offset_below_five_or_beyond_the_packet_is_malformed():
    good = seg(f"{C}:1", f"{S}:2", "S")
    assert "offset" in malformed(patch(good, 32, "!B", 4 << 4))
    assert "beyond" in malformed(patch(good, 32, "!B", 6 << 4))


def test_ipv4_options_are_skipped():
    data = build.ipv4(C, S, 6, build.tcp_segment(C, S, 1, 2, 3, 4, SYN), options=b"\x94\x04\x00\x00" * 3)
    p = parse(data)
    assert (p.l4_offset, p.sport, p.dport, p.seq) == (32, 1, 2, 3)
    assert IP(data).ihl == 8


def test_ipv4_header_length_checks():
    good = seg(f"{C}:1", f"{S}:2", "S")
    assert "header length" in malformed(patch(good, 0, "!B", 0x44))
    assert "header length" in malformed(patch(good, 0, "!B", 0x4F)[:40])


def test_ipv4_total_length_below_header_is_malformed():
    assert "total length" in malformed(patch(seg(f"{C}:1", f"{S}:2", "S"), 2, "!H", 19))


def test_capture_shorter_than_total_length_keeps_lengths_from_headers():
    data = seg(f"{C}:1", f"{S}:2", "PA", payload=b"x" * 1000)
    p = parse(data[:100])                       # NFQUEUE copy range: headers complete
    assert (p.ip_len, p.payload_len, p.payload) == (1040, 1000, b"x" * 60)


def test_truncated_headers_are_malformed():
    data = seg(f"{C}:1", f"{S}:2", "S", mss=1460)
    assert "TCP" in malformed(data[:30])
    assert "beyond" in malformed(data[:42])
    assert "UDP" in malformed(udp_pkt(f"{C}:1", f"{S}:2")[:27])
    assert "ICMP" in malformed(icmp_echo_pkt(C, S, 1, 1)[:27])
    assert "IP header" in malformed(data[:19])
    assert "empty" in malformed(b"")


def test_trailing_link_padding_is_ignored():
    p = parse(seg(f"{C}:1", f"{S}:2", "A", payload=b"hi") + b"\0" * 6)
    assert (p.ip_len, p.payload_len, p.payload) == (42, 2, b"hi")


def test_total_length_zero_is_a_gso_super_packet():
    data = patch(seg(f"{C}:1", f"{S}:2", "A", payload=b"y" * 3000), 2, "!H", 0)
    p = parse(data)
    assert (p.ip_len, p.payload_len, len(p.payload)) == (3040, 3000, 3000)
    assert "total length" in malformed(data[:20])


def test_not_ip_is_malformed():
    assert "version" in malformed(b"\x50" + bytes(39))
    assert "IPv6" in malformed(b"\x60" + bytes(30))


# ---- IPv4 fragments ------------------------------------------------------------------------

def test_first_fragment_has_its_tcp_header():
    segment = build.tcp_segment(C, S, 40000, 80, 77, 0, SYN, payload=b"z" * 40)
    p = parse(build.ipv4(C, S, 6, segment[:32], ident=0x1234, mf=True))
    assert (p.is_fragment, p.more_fragments, p.frag_offset, p.frag_id) == (True, True, 0, 0x1234)
    assert (p.sport, p.dport, p.seq, p.flags) == (40000, 80, 77, SYN)


def test_non_first_fragment_has_no_l4_header():
    p = parse(build.ipv4(C, S, 6, b"\x99" * 16, ident=0x1234, frag_offset=1480))
    assert (p.is_fragment, p.more_fragments, p.frag_offset, p.frag_id) == (True, False, 1480, 0x1234)
    assert (p.proto, p.sport, p.dport, p.seq, p.flags) == (6, 0, 0, 0, 0)
    assert (p.payload_len, p.payload) == (16, b"\x99" * 16)


def test_first_fragment_of_a_udp_datagram():
    datagram = build.udp_datagram(C, S, 5000, 53, b"u" * 100)
    p = parse(build.ipv4(C, S, 17, datagram[:48], mf=True))     # its UDP length counts all 108 bytes
    assert (p.is_fragment, p.sport, p.dport, p.payload_len, p.payload) == (True, 5000, 53, 40, b"u" * 40)


def test_tiny_first_fragment_is_parsed_leniently():
    segment = build.tcp_segment(C, S, 40000, 80, 77, 0, SYN)
    p = parse(build.ipv4(C, S, 6, segment[:8], mf=True))    # RFC 1858's tiny fragment
    assert (p.sport, p.dport, p.seq, p.flags, p.payload_len, p.payload) == (40000, 80, 77, 0, 0, b"")


def test_df_alone_is_not_a_fragment():
    assert parse(build.ipv4(C, S, 17, build.udp_datagram(C, S, 1, 2), df=True)).is_fragment is False


# ---- UDP -----------------------------------------------------------------------------------

def test_udp_fields():
    p = parse(udp_pkt(f"{C}:5000", f"{S}:53", b"query"))
    assert (p.proto, p.sport, p.dport, p.payload_len, p.payload) == (17, 5000, 53, 5, b"query")
    assert (p.seq, p.flags, p.tsval, p.icmp_type) == (0, 0, None, None)


def test_udp_length_rules():
    data = udp_pkt(f"{C}:5000", f"{S}:53", b"query")
    assert "below 8" in malformed(patch(data, 24, "!H", 7))
    assert "beyond" in malformed(patch(data, 24, "!H", 14))
    short = parse(patch(data, 24, "!H", 10))          # bytes after the UDP length are not payload
    assert (short.payload_len, short.payload) == (2, b"qu")
    gso = parse(patch(patch(data, 24, "!H", 0), 2, "!H", 0))
    assert gso.payload_len == 5


# ---- ICMP ----------------------------------------------------------------------------------

@pytest.mark.parametrize("src, dst, types", [(C, S, (8, 0)), (C6, S6, (128, 129))])
def test_icmp_echo_request_and_reply(src, dst, types):
    for reply, icmp_type in zip((False, True), types, strict=True):
        p = parse(icmp_echo_pkt(src, dst, 0xBEEF, 42, reply=reply, payload=b"ping"))
        assert (p.icmp_type, p.icmp_code, p.icmp_id, p.icmp_seq) == (icmp_type, 0, 0xBEEF, 42)
        assert (p.sport, p.dport, p.inner, p.payload_len) == (0, 0, None, 4)


def test_icmp_other_type_has_no_id():
    p = parse(build.ip_packet(C, S, 1, build.icmp_message(C, S, 9, 0, 0x12345678)))
    assert (p.icmp_type, p.icmp_id, p.inner) == (9, 0, None)


def test_icmp_error_quotes_tcp_ports_and_seq_only():
    offending = seg(f"{C}:40000", f"{S}:80", "S", seq=0xABCDEF01)
    p = parse(icmp_error_pkt(ROUTER, C, 3, 1, offending))
    assert (p.proto, p.icmp_type, p.icmp_code, p.src) == (1, 3, 1, build.address(ROUTER))
    assert (p.payload_len, p.payload) == (28, offending[:28])
    q = p.inner
    assert (q.family, q.src, q.dst, q.proto, q.ip_len, q.l4_offset) == (4, CB, SB, 6, 40, 20)
    assert (q.sport, q.dport, q.seq) == (40000, 80, 0xABCDEF01)
    assert (q.ack, q.flags, q.window, q.mss, q.tsval, q.inner) == (0, 0, 0, None, None, None)
    assert (q.payload_len, q.payload) == (0, b"")


def test_icmp_error_quoting_a_whole_segment_gives_more_fields():
    offending = seg(f"[{C6}]:40000", f"[{S6}]:80", "PA", seq=5, ack=6, win=700, payload=b"data")
    q = parse(icmp_error_pkt(ROUTER6, C6, 1, 4, offending)).inner
    assert (q.family, q.sport, q.dport, q.seq, q.ack) == (6, 40000, 80, 5, 6)
    assert (q.flags, q.window) == (PSH | ACK, 700)
    assert (q.payload_len, q.payload) == (4, b"data")


def test_icmp_error_quotes_udp_and_echo():
    q = parse(icmp_error_pkt(ROUTER, C, 3, 3, udp_pkt(f"{C}:5000", f"{S}:53", b"q" * 100))).inner
    assert (q.proto, q.sport, q.dport, q.ip_len, q.payload_len, q.payload) == (17, 5000, 53, 128, 100, b"")
    q = parse(icmp_error_pkt(ROUTER, C, 11, 0, icmp_echo_pkt(C, S, 7, 9))).inner
    assert (q.proto, q.icmp_type, q.icmp_id, q.icmp_seq) == (1, 8, 7, 9)
    q = parse(icmp_error_pkt(ROUTER6, C6, 3, 0, icmp_echo_pkt(C6, S6, 7, 9))).inner
    assert (q.proto, q.icmp_type, q.icmp_id, q.icmp_seq) == (58, 128, 7, 9)


def test_icmp_error_parses_every_error_type():
    offending = udp_pkt(f"{C}:5000", f"{S}:53")
    for icmp_type in (3, 4, 5, 11, 12):
        assert parse(icmp_error_pkt(ROUTER, C, icmp_type, 0, offending)).inner.dport == 53
    offending6 = udp_pkt(f"[{C6}]:5000", f"[{S6}]:53")
    for icmp_type in (1, 2, 3, 4):
        assert parse(icmp_error_pkt(ROUTER6, C6, icmp_type, 0, offending6)).inner.dport == 53


def test_icmp_error_about_an_icmp_error_is_malformed():
    first = icmp_error_pkt(ROUTER, C, 3, 1, seg(f"{C}:1", f"{S}:2", "S"))
    assert "ICMP error" in malformed(icmp_error_pkt(ROUTER, C, 11, 0, first))


def test_icmp_error_with_a_bad_quote_is_malformed():
    offending = seg(f"{C}:40000", f"{S}:80", "S")
    assert "quoted" in malformed(icmp_error_pkt(ROUTER, C, 3, 1, offending[:24], full=True))
    assert "quoted" in malformed(icmp_error_pkt(ROUTER, C, 3, 1, offending[:19], full=True))
    assert "quoted" in malformed(icmp_error_pkt(ROUTER, C, 3, 1, seg(f"[{C6}]:1", f"[{S6}]:2", "S")))


# ---- IPv6 ----------------------------------------------------------------------------------

def v6(next_header: int, headers: bytes, l4: bytes) -> bytes:
    return build.ipv6(C6, S6, next_header, headers + l4)


TCP6 = build.tcp_segment(C6, S6, 40000, 443, 10, 20, SYN | ACK, options=build.opt_mss(1440))


def test_ipv6_tcp_every_field():
    p = parse(v6(6, b"", TCP6))
    assert (p.family, p.src, p.dst, p.proto, p.ip_len, p.l4_offset) == (6, C6B, S6B, 6, 64, 40)
    assert (p.sport, p.dport, p.seq, p.ack, p.flags, p.mss) == (40000, 443, 10, 20, SYN | ACK, 1440)


@pytest.mark.parametrize("name, chain, first, length", [
    ("hop-by-hop", build.hop_by_hop(6), 0, 8),
    ("routing", build.routing(6), 43, 24),
    ("destination options", build.dest_options(6, b"\x01\x0c" + bytes(12)), 60, 16),
    ("AH", build.auth_header(6), 51, 24),
    ("atomic fragment", build.fragment_header(6, 0, False, 99), 44, 8),
    ("all of them", build.hop_by_hop(60) + build.dest_options(43) + build.routing(44)
     + build.fragment_header(51, 0, False, 99) + build.auth_header(60) + build.dest_options(6), 0, 80),
])
def test_ipv6_extension_headers_are_walked(name, chain, first, length):
    data = v6(first, chain, TCP6)
    p = parse(data)
    assert (p.proto, p.l4_offset, p.is_fragment) == (6, 40 + length, False), name
    assert (p.sport, p.dport, p.mss) == (40000, 443, 1440), name
    dissected = IPv6(data)                  # scapy agrees on the layout (it leaves AH's payload raw)
    assert bytes(dissected[AH].payload if AH in dissected else dissected[TCP]).endswith(TCP6), name


def test_ipv6_fragments():
    first = parse(v6(44, build.fragment_header(6, 0, True, 0xCAFEBABE), TCP6))
    assert (first.is_fragment, first.more_fragments, first.frag_offset, first.frag_id) == (True, True, 0,
                                                                                         0xCAFEBABE)
    assert (first.proto, first.sport, first.l4_offset) == (6, 40000, 48)
    later = parse(v6(0, build.hop_by_hop(44) + build.fragment_header(6, 1448, False, 7), b"\x77" * 24))
    assert (later.is_fragment, later.more_fragments, later.frag_offset) == (True, False, 1448)
    assert (later.frag_id, later.proto, later.sport, later.dport) == (7, 6, 0, 0)
    assert (later.payload_len, later.payload) == (24, b"\x77" * 24)
    scapy_view = IPv6(v6(44, build.fragment_header(6, 1448, False, 7), b""))
    assert scapy_view[IPv6ExtHdrFragment].offset == 181


def test_ipv6_other_and_no_next_header():
    assert (parse(v6(59, b"", b"")).proto, parse(v6(59, b"", b"")).payload_len) == (59, 0)
    gre = parse(v6(60, build.dest_options(47), b"\x00" * 8))
    assert (gre.proto, gre.sport, gre.payload_len, gre.l4_offset) == (47, 0, 8, 48)
    esp = parse(v6(50, b"", b"\x00" * 16))
    assert (esp.proto, esp.payload_len) == (50, 16)


def test_ipv6_extension_header_errors():
    assert "hop-by-hop" in malformed(v6(60, build.dest_options(0) + build.hop_by_hop(6), TCP6))
    assert "extension" in malformed(v6(0, build.hop_by_hop(6, bytes(20))[:16], b""))
    assert "extension" in malformed(v6(43, build.routing(6)[:6], b""))
    assert "TCP" in malformed(v6(6, b"", TCP6[:12]))


def test_ipv6_lengths():
    data = v6(17, b"", build.udp_datagram(C6, S6, 5000, 53, b"a" * 50))
    cut = parse(data[:60])
    assert (cut.ip_len, cut.payload_len, cut.payload) == (98, 50, b"a" * 12)
    padded = parse(data + bytes(8))
    assert (padded.ip_len, padded.payload) == (98, b"a" * 50)
    jumbo_udp = build.udp_datagram(C6, S6, 5000, 53, b"b" * 40)
    jumbo = parse(patch(v6(0, build.hop_by_hop(17, build.jumbo_option(56)), jumbo_udp), 4, "!H", 0))
    assert (jumbo.proto, jumbo.ip_len, jumbo.payload_len) == (17, 96, 40)


# ---- builders ------------------------------------------------------------------------------

IPV6_HEADERS = (IPv6, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment)


def upper_layer(data: bytes):
    layer = IPv6(data)
    while isinstance(layer, IPV6_HEADERS):
        layer = layer.payload
    return layer


def assert_checksums_ok(data: bytes) -> None:
    """Checksums verified by scapy: a correct checksum makes the sum over the data zero."""
    p = parse(data)
    l4 = data[p.l4_offset:p.ip_len]
    if p.family == 4:
        assert scapy_checksum(data[:p.l4_offset]) == 0
        assert (scapy_checksum(l4) if p.proto == 1 else in4_chksum(p.proto, IP(data), l4)) == 0
    else:
        assert in6_chksum(p.proto, upper_layer(data), l4) == 0


@pytest.mark.parametrize("data", [
    seg(f"{C}:40000", f"{S}:80", "PA", seq=1, ack=2, payload=b"odd"),
    seg(f"[{C6}]:40000", f"[{S6}]:80", "S", mss=1440, sack_perm=True, ts=(1, 0), wscale=7),
    udp_pkt(f"{C}:5000", f"{S}:53", b"x"),
    udp_pkt(f"[{C6}]:5000", f"[{S6}]:53", b"xy"),
    icmp_echo_pkt(C, S, 1, 2, payload=b"abc"),
    icmp_echo_pkt(C6, S6, 1, 2, reply=True),
    icmp_error_pkt(ROUTER, C, 3, 4, udp_pkt(f"{C}:5000", f"{S}:53", b"x" * 600), rest=1400),
    icmp_error_pkt(ROUTER6, C6, 2, 0, udp_pkt(f"[{C6}]:5000", f"[{S6}]:53", b"x" * 600), rest=1280),
    build.ipv4(C, S, 6, build.tcp_segment(C, S, 1, 2, 3, 4, SYN), options=b"\x01" * 4),
    v6(0, build.hop_by_hop(44) + build.fragment_header(17, 0, False, 1), build.udp_datagram(C6, S6, 1, 2)),
], ids=["tcp4", "tcp6-syn", "udp4", "udp6", "echo4", "echo6", "error4", "error6", "ip-options", "ext6"])
def test_built_checksums_verify_with_scapy(data):
    assert_checksums_ok(data)


def test_udp_checksum_zero_is_sent_as_ffff():
    unsummed = build.udp_datagram(C, S, 1, 2, b"\0\0")             # payload word 0
    total = ~struct.unpack("!H", unsummed[6:8])[0] & 0xFFFF          # one's complement sum
    word = 0xFFFF - total                                            # makes the sum 0xFFFF
    datagram = build.udp_datagram(C, S, 1, 2, struct.pack("!H", word))
    assert datagram[6:8] == b"\xff\xff"
    assert in4_chksum(17, IP(build.ipv4(C, S, 17, datagram)), datagram) == 0


def test_reset_for_a_syn_acknowledges_it():
    syn = parse(seg(f"{C}:40000", f"{S}:23", "S", seq=0xFFFFFFFF))
    reset = build.tcp_reset_for(syn)
    r = parse(reset)
    assert (r.src, r.dst, r.sport, r.dport) == (SB, CB, 23, 40000)
    assert (r.flags, r.seq, r.ack, r.window, r.payload_len) == (RST | ACK, 0, 0, 0, 0)   # seq+1 wraps
    assert_checksums_ok(reset)


def test_reset_for_data_and_fin_counts_both():
    r = parse(build.tcp_reset_for(parse(seg(f"{C}:1", f"{S}:2", "FP", seq=100, payload=b"abc"))))
    assert (r.flags, r.seq, r.ack) == (RST | ACK, 0, 104)


def test_reset_for_an_ack_takes_its_seq_from_the_ack():
    r = parse(build.tcp_reset_for(parse(seg(f"[{C6}]:1", f"[{S6}]:2", "PA", seq=100, ack=555, payload=b"x"))))
    assert (r.family, r.flags, r.seq, r.ack) == (6, RST, 555, 0)


def test_no_reset_for_a_reset():
    assert build.tcp_reset_for(parse(seg(f"{C}:1", f"{S}:2", "RA", seq=1, ack=2))) is None


@pytest.mark.parametrize("data, family, answer", [
    (udp_pkt(f"{C}:5000", f"{S}:69", b"x" * 100), 4, (1, 3, 13)),
    (udp_pkt(f"[{C6}]:5000", f"[{S6}]:69", b"x" * 100), 6, (58, 1, 1)),
])
def test_icmp_unreachable_for_quotes_the_packet(data, family, answer):
    packet = parse(data)
    error = build.icmp_unreachable_for(data, packet)
    e = parse(error)
    assert (e.proto, e.icmp_type, e.icmp_code, e.src, e.dst) == (*answer, packet.dst, packet.src)
    assert (e.inner.src, e.inner.dst, e.inner.sport, e.inner.dport) == (packet.src, packet.dst, 5000, 69)
    quoted = error[e.l4_offset + 8:]
    assert quoted == (data[:28] if family == 4 else data)
    assert_checksums_ok(error)
    from_fields = parse(build.icmp_unreachable_for(packet))           # the engine's one-argument form
    assert (from_fields.icmp_type, from_fields.inner.dport) == (answer[1], 69)
    assert from_fields.inner.ip_len == packet.ip_len == (128 if family == 4 else 148)


def test_no_icmp_error_about_errors_or_later_fragments():
    error = icmp_error_pkt(ROUTER, C, 3, 1, seg(f"{C}:1", f"{S}:2", "S"))
    assert build.icmp_unreachable_for(error, parse(error)) is None
    fragment = build.ipv4(C, S, 17, bytes(16), frag_offset=8)
    assert build.icmp_unreachable_for(fragment, parse(fragment)) is None
    multicast = udp_pkt("224.0.0.5:1", f"{S}:2")
    assert build.icmp_unreachable_for(multicast, parse(multicast)) is None
    echo = icmp_echo_pkt(C, S, 1, 1)
    assert parse(build.icmp_unreachable_for(echo, parse(echo))).inner.icmp_id == 1


def test_icmp_error_quote_limits():
    big4 = udp_pkt(f"{C}:1", f"{S}:2", b"z" * 2000)
    assert len(build.icmp_error(ROUTER, C, 3, 0, big4)) == 576
    big6 = udp_pkt(f"[{C6}]:1", f"[{S6}]:2", b"z" * 2000)
    assert len(build.icmp_error(ROUTER6, C6, 1, 0, big6)) == 1280
    assert build.quote(big4) == big4[:28]


# ---- text and names ------------------------------------------------------------------------

@pytest.mark.parametrize("data, text", [
    (seg(f"{C}:40000", f"{S}:80", "S"), "tcp 198.51.100.10:40000 -> 203.0.113.10:80"),
    (udp_pkt(f"{S}:53", f"{C}:5000"), "udp 203.0.113.10:53 -> 198.51.100.10:5000"),
    (seg(f"[{C6}]:40000", f"[{S6}]:80", "S"), "tcp [2001:db8:1::10]:40000 -> [2001:db8:2::10]:80"),
    (icmp_echo_pkt(C, S, 1, 1), "icmp 198.51.100.10 -> 203.0.113.10 type 8 code 0"),
    (icmp_echo_pkt(S6, C6, 1, 1, reply=True), "icmpv6 2001:db8:2::10 -> 2001:db8:1::10 type 129 code 0"),
    (icmp_error_pkt(ROUTER, C, 3, 13, udp_pkt(f"{C}:1", f"{S}:2")),
     "icmp 192.0.2.1 -> 198.51.100.10 type 3 code 13"),
    (build.ipv4(C, S, 47, bytes(8)), "proto 47 198.51.100.10 -> 203.0.113.10"),
    (v6(59, b"", b""), "proto 59 2001:db8:1::10 -> 2001:db8:2::10"),
    (build.ipv4(C, S, 6, bytes(8), frag_offset=1480),
     "tcp 198.51.100.10 -> 203.0.113.10 fragment offset 1480"),
    (v6(44, build.fragment_header(17, 8, False, 1), bytes(8)),
     "udp 2001:db8:1::10 -> 2001:db8:2::10 fragment offset 8"),
])
def test_flow_text(data, text):
    assert flow_text(parse(data)) == text


def test_format_addr():
    assert format_addr(CB) == "198.51.100.10"
    assert format_addr(build.address("2001:db8:0:0:0:0:0:1")) == "2001:db8::1"
    assert format_addr(bytes(16)) == "::"


def test_icmp_name_tables():
    named = [ICMP_TYPES[name] for name in ("echo-request", "echo-reply", "destination-unreachable",
                                           "time-exceeded", "parameter-problem", "redirect", "source-quench")]
    assert named == [8, 0, 3, 11, 12, 5, 4]
    assert (ICMPV6_TYPES["echo-request"], ICMPV6_TYPES["packet-too-big"]) == (128, 2)
    assert ICMPV6_TYPES["neighbour-solicitation"] == ICMPV6_TYPES["neighbor-solicitation"] == 135
    assert ICMPV6_TYPES["neighbour-advertisement"] == ICMPV6_TYPES["nd-neighbor-advert"] == 136
    assert (ICMPV6_TYPES["router-solicitation"], ICMPV6_TYPES["router-advertisement"]) == (133, 134)
    assert (ICMP_TYPE_NAMES[8], ICMPV6_TYPE_NAMES[135], ICMPV6_TYPE_NAMES[129]) == (
        "echo-request", "neighbor-solicitation", "echo-reply")


def test_seg_helper_accepts_port_overrides_and_bare_addresses():
    p = parse(seg(C, S, "S", sport=1234, dport=22))
    assert (p.sport, p.dport) == (1234, 22)
    assert ICMP in IP(icmp_echo_pkt(f"{C}:9", S, 1, 1)) and UDP in IP(udp_pkt(f"{C}:1", f"{S}:2"))
