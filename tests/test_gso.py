"""GSO segmentation (fw.packet.gso) checked against a reassembly of its segments and against scapy,
which recomputes every length and checksum on its own (scapy in tests only)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop

from fw.packet import build, parse
from fw.packet.constants import ACK, CWR, ECE, FIN, PSH, URG
from fw.packet.gso import header_room, segment

V4 = ("198.51.100.10", "203.0.113.10")
V6 = ("2001:db8:1::10", "2001:db8:2::10")


def big_tcp(addresses, payload: bytes, flags: int = ACK | PSH, seq: int = 1000, options: bytes = b"",
            ident: int = 0x1234) -> bytes:
    segment_ = build.tcp_segment(*addresses, 40000, 80, seq, 777, flags, 502, options, payload)
    if ":" in addresses[0]:
        return build.ipv6(*addresses, 6, segment_)
    return build.ipv4(*addresses, 6, segment_, ident=ident)


def scapy_rebuilt(data: bytes) -> bytes:
    """The packet as scapy builds it with every length and checksum recomputed."""
    packet = IP(data) if data[0] >> 4 == 4 else IPv6(data)
    if IP in packet:
        del packet[IP].len, packet[IP].chksum
    else:
        del packet[IPv6].plen
    del packet[TCP].chksum
    return bytes(packet)


def reassembled(segments: list[bytes]) -> bytes:
    """The payloads in sequence order, as a receiver puts them (sequence numbers wrap at 2^32)."""
    parsed = [parse(s) for s in segments]
    base = parsed[0].seq
    ordered = sorted(parsed[::-1], key=lambda p: (p.seq - base) % 2**32)  # reversed: the order must come from seq
    return b"".join(bytes(p.payload) for p in ordered)


@pytest.mark.parametrize("addresses", [V4, V6], ids=["ipv4", "ipv6"])
def test_a_64k_packet_becomes_mss_sized_segments_as_scapy_builds_them(addresses):
    payload = os.urandom(65535 - 20 - 32 - (20 if addresses is V4 else 40))
    options = build.tcp_options(ts=(123456, 654321))
    data = big_tcp(addresses, payload, flags=ACK | PSH | FIN | CWR | ECE, options=options)
    segments = segment(data, 1448)
    assert len(segments) == -(-len(payload) // 1448)
    assert reassembled(segments) == payload
    for index, piece in enumerate(segments):
        assert piece == scapy_rebuilt(piece), f"segment {index}: a length or checksum differs from scapy's"
        tcp = (IP(piece) if addresses is V4 else IPv6(piece))[TCP]
        assert tcp.seq == 1000 + index * 1448 and tcp.ack == 777 and tcp.window == 502
        assert ("Timestamp", (123456, 654321)) in tcp.options
        last, first = index == len(segments) - 1, index == 0
        assert bool(tcp.flags & FIN) == last and bool(tcp.flags & PSH) == last
        assert bool(tcp.flags & CWR) == first and tcp.flags & (ACK | ECE) == ACK | ECE
        if addresses is V4:
            assert IP(piece).id == (0x1234 + index) & 0xFFFF and IP(piece).flags == 0


def test_ipv4_ids_wrap_and_sequence_numbers_wrap():
    data = big_tcp(V4, b"a" * 3000, seq=2**32 - 1000, ident=0xFFFF)
    segments = segment(data, 1000)
    assert [IP(s).id for s in segments] == [0xFFFF, 0, 1]
    assert [IP(s)[TCP].seq for s in segments] == [2**32 - 1000, 0, 1000]
    assert all(s == scapy_rebuilt(s) for s in segments)


def test_ipv4_options_and_ipv6_extension_headers_are_copied_into_each_segment():
    v4 = bytes(IP(src=V4[0], dst=V4[1], options=[b"\x94\x04\x00\x00"], id=9) / TCP(flags="A", seq=1) / (b"z" * 2500))
    v6 = bytes(IPv6(src=V6[0], dst=V6[1]) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / TCP(flags="A") / (b"y" * 2500))
    for data in (v4, v6):
        segments = segment(data, 1000)
        assert len(segments) == 3 and reassembled(segments) == data[-2500:]
        assert all(s == scapy_rebuilt(s) for s in segments)
        assert header_room(data) == len(segments[0]) - 1000
    assert IPv6(segment(v6, 1000)[0]).haslayer(IPv6ExtHdrDestOpt)


def test_a_gso_packet_with_a_partial_checksum_gets_full_ones():
    data = bytearray(big_tcp(V4, os.urandom(4000)))
    data[36:38] = b"\x12\x34"  # CHECKSUM_PARTIAL leaves only the pseudo-header's sum there
    assert all(s == scapy_rebuilt(s) for s in segment(bytes(data), 1448))


def test_an_ipv4_length_of_zero_means_as_long_as_the_capture():
    data = bytearray(big_tcp(V4, b"q" * 3000))
    data[2:4] = b"\x00\x00"
    assert reassembled(segment(bytes(data), 1460)) == b"q" * 3000


def test_a_packet_that_fits_is_returned_as_it_is_and_padding_is_dropped():
    data = big_tcp(V4, b"small")
    assert segment(data, 1448) == [data]
    assert segment(data + b"\0" * 6, 1448) == [data]  # link padding after the IP length


def test_the_urgent_flag_and_pointer_are_left_as_they_are():
    data = big_tcp(V4, b"u" * 3000, flags=ACK | URG)
    assert {IP(s)[TCP].flags & URG for s in segment(data, 1448)} == {URG}


@pytest.mark.parametrize("data, why", [
    (build.udp(*V4, 5000, 53, b"x" * 3000), "not an IPv4 TCP"),
    (build.ipv4(*V4, 6, build.tcp_segment(*V4, 1, 2, 0, 0, ACK, payload=b"x" * 3000), mf=True), "fragment"),
    (build.udp(*V6, 5000, 53, b"x" * 3000), "not TCP"),
    (big_tcp(V4, b"x" * 3000)[:1000], "beyond the capture"),
    (b"", "empty"),
    (b"\x50" + bytes(40), "not an IPv4 or IPv6"),
])  # fmt: skip
def test_what_cannot_be_split_is_refused_with_a_reason(data, why):
    with pytest.raises(ValueError, match=why):
        segment(data, 1000)


def test_a_bad_mss_is_refused_and_the_smallest_one_works():
    with pytest.raises(ValueError):
        segment(big_tcp(V4, b"x" * 3000), 0)
    assert reassembled(segment(big_tcp(V6, b"0123456789"), 1)) == b"0123456789"


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([V4, V6]), st.integers(1, 9000), st.integers(200, 2000), st.integers(0, 2**32 - 1),
       st.integers(0, 255), st.booleans())  # fmt: skip
def test_any_split_reassembles_and_checks_out(addresses, length, mss, seq, flags, timestamps):
    payload = bytes(i & 0xFF for i in range(length))
    options = build.tcp_options(ts=(seq, 1)) if timestamps else b""
    data = big_tcp(addresses, payload, flags=flags, seq=seq, options=options)
    segments = segment(data, mss)
    assert len(segments) == max(1, -(-length // mss))
    assert reassembled(segments) == payload
    parsed = [parse(s) for s in segments]
    assert [p.seq for p in parsed] == [(seq + i * mss) & 0xFFFFFFFF for i in range(len(segments))]
    assert all(p.payload_len <= mss for p in parsed)
    if len(segments) > 1:
        assert all(s == scapy_rebuilt(s) for s in (segments[0], segments[1], segments[-1]))
        union = 0
        for p in parsed:
            union |= p.flags
        assert union == flags  # no flag lost, none made up
        assert not any(p.flags & (FIN | PSH) for p in parsed[:-1]) and not any(p.flags & CWR for p in parsed[1:])


@pytest.mark.parametrize("addresses", [V4, V6])
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_finish_computes_a_partial_checksum_in_full(addresses, proto):
    """NFQUEUE hands CHECKSUM_PARTIAL packets up with the pseudo-header's sum only: finish() makes
    the checksum a receiver checks out of it, and leaves a right one as it is."""
    from fw.packet.checksum import checksum_of_sum, pseudo_header_sum  # noqa: PLC0415
    from fw.packet.gso import finish  # noqa: PLC0415

    if proto == "tcp":
        right, at = big_tcp(addresses, os.urandom(301)), 16
    else:
        right, at = build.udp(*addresses, 5000, 53, os.urandom(301)), 6
    off = 20 if ":" not in addresses[0] else 40
    src, dst = (right[12:16], right[16:20]) if off == 20 else (right[8:24], right[24:40])
    pseudo = (~checksum_of_sum(pseudo_header_sum(src, dst, 6 if proto == "tcp" else 17, len(right) - off))) & 0xFFFF
    partial = right[:off + at] + pseudo.to_bytes(2, "big") + right[off + at + 2:]
    assert partial != right and finish(partial) == right and finish(right) == right
    assert finish(b"\x45" + bytes(30)) == b"\x45" + bytes(30)  # not TCP or UDP: as it is
