"""Hypothesis: whatever bytes arrive, parse gives a sound Packet or raises MalformedPacket.

Three sources: arbitrary bytes, bytes that start like an IP header, and valid packets of every
shape (TCP with options, UDP, ICMP echo and errors, IPv4 options and fragments, IPv6 extension
headers) with random byte changes, truncations and insertions. A parsed packet must hold together
(every slot set, lengths consistent) and the engine's answers built from it must not fail.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fw.packet import MalformedPacket, Packet, build, flow_text, parse
from fw.packet.constants import ACK, PSH, SYN
from fw.packet.parse import FIELDS, _parse
from tests.packets import icmp_echo_pkt, icmp_error_pkt, seg, udp_pkt

C, S, C6, S6 = "198.51.100.10", "203.0.113.10", "2001:db8:1::10", "2001:db8:2::10"
TCP6 = build.tcp_segment(C6, S6, 40000, 443, 1, 2, SYN, options=build.tcp_options(mss=1440, wscale=7))
VALID = [
    seg(f"{C}:40000", f"{S}:80", "S", seq=100, mss=1460, sack_perm=True, ts=(1, 0), wscale=7),
    seg(f"{C}:40000", f"{S}:80", "PA", seq=101, ack=301, ts=(5, 6), payload=b"GET / HTTP/1.1\r\n"),
    seg(f"{C}:40000", f"{S}:80", "A", ts=(5, 6), sack=[(1, 2), (3, 4)]),
    seg(f"{C}:40000", f"{S}:80", "A", seq=101, ack=301),
    seg(f"{C}:40000", f"{S}:80", "FA", seq=101, ack=301, ts=(7, 8)),
    seg(f"[{C6}]:40000", f"[{S6}]:80", "SA", seq=7, ack=8, mss=1440),
    udp_pkt(f"{C}:5000", f"{S}:53", b"\x12\x34query"),
    udp_pkt(f"[{C6}]:5000", f"[{S6}]:53", b"answer"),
    icmp_echo_pkt(C, S, 7, 1, payload=b"ping"),
    icmp_echo_pkt(C6, S6, 7, 1, reply=True),
    icmp_error_pkt("192.0.2.1", C, 3, 4, seg(f"{C}:40000", f"{S}:80", "S", seq=9), rest=1400),
    icmp_error_pkt("192.0.2.1", C, 11, 0, icmp_echo_pkt(C, S, 7, 1)),
    icmp_error_pkt("2001:db8:ffff::1", C6, 1, 4, udp_pkt(f"[{C6}]:5000", f"[{S6}]:53", b"x" * 40)),
    build.ipv4(C, S, 6, build.tcp_segment(C, S, 1, 2, 3, 4, ACK | PSH, payload=b"x"),
               options=b"\x94\x04\0\0"),
    build.ipv4(C, S, 6, build.tcp_segment(C, S, 1, 2, 3, 4, SYN)[:12], mf=True, ident=5),
    build.ipv4(C, S, 17, b"\x55" * 24, frag_offset=1480, ident=5),
    build.ipv6(C6, S6, 0, build.hop_by_hop(43) + build.routing(44) + build.fragment_header(51, 0, True, 9)
               + build.auth_header(60) + build.dest_options(6) + TCP6),
    build.ipv6(C6, S6, 44, build.fragment_header(17, 1448, False, 9) + b"\x66" * 16),
    build.ipv6(C6, S6, 59, b""),
    build.ipv4(C, S, 47, b"\0" * 8),
]


def check_sound(packet: Packet, data: bytes) -> None:
    """A parsed packet holds together, and the engine can answer it."""
    for field in FIELDS:
        getattr(packet, field)                               # every slot was set
    assert packet.family in (4, 6) and len(packet.src) == len(packet.dst) == (4 if packet.family == 4 else 16)
    assert 0 <= packet.sport <= 0xFFFF and 0 <= packet.dport <= 0xFFFF
    assert 0 <= len(packet.payload) <= packet.payload_len
    assert packet.l4_offset <= packet.ip_len
    assert isinstance(flow_text(packet), str)
    if packet.inner is not None:
        assert packet.inner.inner is None and packet.inner.payload_len >= 0
        assert isinstance(flow_text(packet.inner), str)
    reset = build.tcp_reset_for(packet)
    if reset is not None:
        assert parse(reset).proto == 6
    unreachable = build.icmp_unreachable_for(data, packet)
    if unreachable is not None:
        assert parse(unreachable).inner.src == packet.src


def fields(packet: Packet | None) -> tuple | None:
    if packet is None:
        return None
    return tuple(fields(packet.inner) if name == "inner" else getattr(packet, name) for name in FIELDS)


def parse_or_malformed(data: bytes) -> None:
    """parse's fast path gives what the general way gives (the same Packet or the same error)."""
    try:
        packet = parse(data)
    except MalformedPacket as error:
        assert error.detail
        try:
            _parse(data, len(data))
        except MalformedPacket as general:
            assert general.detail == error.detail
        else:
            raise AssertionError("the general way parses what the fast path refused") from None
        return
    check_sound(packet, data)
    assert fields(packet) == fields(_parse(data, len(data)))


FUZZ = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=120))
def test_arbitrary_bytes(data):
    parse_or_malformed(data)


@FUZZ
@given(st.sampled_from([0x45, 0x46, 0x4F, 0x60, 0x40]), st.binary(max_size=160))
def test_bytes_that_start_like_ip(first, rest):
    parse_or_malformed(bytes([first]) + rest)


MUTATION = st.one_of(
    st.tuples(st.just("set"), st.integers(0, 2000), st.integers(0, 255)),
    st.tuples(st.just("cut"), st.integers(0, 2000), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 2000), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 2000), st.just(0)),
)


def mutate(data: bytes, mutations) -> bytes:
    buf = bytearray(data)
    for kind, where, value in mutations:
        where = where % (len(buf) + 1)
        if kind == "set" and where < len(buf):
            buf[where] = value
        elif kind == "cut":
            del buf[where:]
        elif kind == "insert":
            buf.insert(where, value)
        elif kind == "delete" and where < len(buf):
            del buf[where]
    return bytes(buf)


@FUZZ
@given(st.sampled_from(VALID), st.lists(MUTATION, min_size=1, max_size=4))
def test_mutated_valid_packets(data, mutations):
    parse_or_malformed(mutate(data, mutations))


@FUZZ
@given(st.sampled_from(VALID), st.integers(20, 80), st.integers(0, 255))
def test_header_byte_changes(data, where, value):
    """Changes aimed at the headers, where the length and option fields live."""
    parse_or_malformed(mutate(data, [("set", where % len(data), value)]))


def test_the_valid_corpus_parses():
    for data in VALID:
        check_sound(parse(data), data)
