"""Packet rewriting for NAT: every case byte-for-byte equal to the translated packet scapy builds.

Each test builds the original packet with scapy (checksums by scapy), rewrites it with
fw.nat.rewrite, and compares with scapy's build of the packet as it must leave (again checksummed
by scapy). ICMP errors quote the first bytes of a full original packet; the expected error quotes
the same bytes of the full translated packet, which is what the kernel's incremental updates give.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6EchoReply, ICMPv6EchoRequest, ICMPv6PacketTooBig, IPv6
from scapy.packet import Raw

from fw.nat.rewrite import Manip, RewriteError, Translation, l4_checksum_valid, rewrite, with_payload
from fw.packet import MalformedPacket, parse
from fw.packet.checksum import verify
from tests.test_packet_fuzz import MUTATION, VALID, mutate

V4 = ("198.51.100.10", "203.0.113.5", "192.0.2.1", "192.0.2.77")         # client, server, nat, router
V6 = ("2001:db8:1::10", "2001:db8:2::5", "2001:db8:ffff::1", "2001:db8:3::77")


def raw(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


def ip(src, dst, **kw):
    return IP(src=src, dst=dst, **kw) if ":" not in src else IPv6(src=src, dst=dst, **kw)


def l4(proto: str, sport: int, dport: int, family: int, **kw):
    if proto == "tcp":
        return TCP(sport=sport, dport=dport, flags="PA", seq=1000, ack=2000, **kw)
    if proto == "udp":
        return UDP(sport=sport, dport=dport, **kw)
    if family == 4:
        return ICMP(type=8, id=sport, seq=7)
    return ICMPv6EchoRequest(id=sport, seq=7)


def both(data: bytes, manip: Manip, **kw) -> bytes:
    return rewrite(data, parse(data), manip, **kw)


CASES = [(family, proto) for family in (4, 6) for proto in ("tcp", "udp", "icmp")]


@pytest.mark.parametrize(("family", "proto"), CASES)
@pytest.mark.parametrize("partial", [False, True])
def test_source_translation_equals_scapy(family, proto, partial):
    client, server, nat, _ = V4 if family == 4 else V6
    payload = Raw(b"GET / HTTP/1.0\r\n\r\n")
    before = bytes(ip(client, server) / l4(proto, 40000, 80, family) / payload)
    after = bytes(ip(nat, server) / l4(proto, 20001, 80, family) / payload)
    if partial:
        before = _garble_l4_checksum(before)
    assert both(before, Manip(src=raw(nat), sport=20001), partial=partial) == after


@pytest.mark.parametrize(("family", "proto"), CASES)
def test_destination_translation_of_a_reply_equals_scapy(family, proto):
    client, server, nat, _ = V4 if family == 4 else V6
    if proto == "icmp":
        reply = ICMP(type=0, id=20001, seq=7) if family == 4 else ICMPv6EchoReply(id=20001, seq=7)
        expected = ICMP(type=0, id=40000, seq=7) if family == 4 else ICMPv6EchoReply(id=40000, seq=7)
    else:
        reply, expected = l4(proto, 80, 20001, family), l4(proto, 80, 40000, family)
    before = bytes(ip(server, nat) / reply / Raw(b"x" * 33))
    after = bytes(ip(server, client) / expected / Raw(b"x" * 33))
    assert both(before, Manip(dst=raw(client), dport=40000)) == after


def test_both_translations_at_once_hairpin():
    before = bytes(IP(src=V4[0], dst=V4[2]) / TCP(sport=40000, dport=8080) / b"abc")
    after = bytes(IP(src=V4[2], dst=V4[1]) / TCP(sport=20000, dport=80) / b"abc")
    manip = Manip(src=raw(V4[2]), dst=raw(V4[1]), sport=20000, dport=80)
    assert both(before, manip) == after


@pytest.mark.parametrize("family", [4, 6])
def test_a_zero_udp_checksum_stays_zero_in_complete_mode(family):
    client, server, nat, _ = V4 if family == 4 else V6
    before = bytes(ip(client, server) / UDP(sport=5000, dport=53, chksum=0) / b"q")
    out = both(before, Manip(src=raw(nat), sport=6000))
    assert out == bytes(ip(nat, server) / UDP(sport=6000, dport=53, chksum=0) / b"q")


def test_a_udp_checksum_computing_to_zero_is_sent_as_ffff():
    """A payload word equal to the checksum with a zero word makes the sum 0xFFFF: checksum 0."""
    template = IP(src=V4[2], dst=V4[1]) / UDP(sport=6000, dport=53)
    payload = IP(bytes(template / b"\0\0"))[UDP].chksum.to_bytes(2, "big")
    assert IP(bytes(template / payload))[UDP].chksum == 0xFFFF
    before = bytes(IP(src=V4[0], dst=V4[1]) / UDP(sport=5000, dport=53) / payload)
    for partial in (False, True):
        out = both(before, Manip(src=raw(V4[2]), sport=6000), partial=partial)
        assert out == bytes(template / payload) and out[26:28] == b"\xff\xff"


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("partial", [False, True])
def test_a_64k_gso_segment(family, partial):
    client, server, nat, _ = V4 if family == 4 else V6
    size = 65535 - (20 if family == 4 else 0) - 32
    payload = Raw(bytes(range(256)) * (size // 256) + b"z" * (size % 256))
    options = [("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]
    before = bytes(ip(client, server) / TCP(sport=40000, dport=80, options=options) / payload)
    after = bytes(ip(nat, server) / TCP(sport=1024, dport=80, options=options) / payload)
    if partial:
        before = _garble_l4_checksum(before)
    assert len(before) >= 65535
    assert both(before, Manip(src=raw(nat), sport=1024), partial=partial) == after
    # The established path's compiled Translation (one copy, checksums in C when compiled) agrees.
    translation = Translation(family, 6, (raw(client), raw(server), 40000, 80), (raw(nat), raw(server), 1024, 80))
    assert translation.apply(before, parse(before), partial) == after


def test_ipv6_with_extension_headers():
    from scapy.layers.inet6 import IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop  # noqa: PLC0415
    before = bytes(IPv6(src=V6[0], dst=V6[1]) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
                   / TCP(sport=1, dport=2) / b"data")
    after = bytes(IPv6(src=V6[2], dst=V6[1]) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
                  / TCP(sport=3, dport=2) / b"data")
    assert both(before, Manip(src=raw(V6[2]), sport=3)) == after


# -- ICMP errors quoting a translated session --------------------------------------------------

def _icmp_error(family: int, src: str, dst: str, quoted: bytes):
    if family == 4:
        return IP(src=src, dst=dst) / ICMP(type=3, code=4, nexthopmtu=1400) / Raw(quoted)
    return IPv6(src=src, dst=dst) / ICMPv6PacketTooBig(mtu=1280) / Raw(quoted)


@pytest.mark.parametrize(("family", "proto"), CASES)
@pytest.mark.parametrize("quote", [28, 48, 200])
def test_icmp_error_toward_the_translated_address(family, proto, quote):
    """A router beyond the NAT reports on nat:20001 -> server; the client must see its own flow."""
    client, server, nat, router = V4 if family == 4 else V6
    quote += 20 if family == 6 else 0
    payload = Raw(bytes(range(100)))
    original = bytes(ip(nat, server) / l4(proto, 20001, 80, family) / payload)[:quote]
    translated = bytes(ip(client, server) / l4(proto, 40000, 80, family) / payload)[:quote]
    before = bytes(_icmp_error(family, router, nat, original))
    after = bytes(_icmp_error(family, router, client, translated))
    out = both(before, Manip(dst=raw(client)), inner=Manip(src=raw(client), sport=40000))
    assert out == after


def test_icmp_error_with_a_cut_tcp_header_keeps_the_stale_quoted_checksum():
    """19 bytes of TCP quoted: the checksum field is there but the header is not whole (as Linux)."""
    original = bytes(IP(src=V4[2], dst=V4[1]) / TCP(sport=20001, dport=80))[:39]
    before = bytes(_icmp_error(4, V4[3], V4[2], original))
    out = both(before, Manip(dst=raw(V4[0])), inner=Manip(src=raw(V4[0]), sport=40000))
    inner = out[28:]
    assert inner[36:38] == original[36:38]                       # quoted TCP checksum untouched
    assert inner[12:16] == raw(V4[0]) and inner[20:22] == (40000).to_bytes(2, "big")
    assert IP(out)[ICMP].chksum == IP(bytes(_icmp_error(4, V4[3], V4[0], inner)))[ICMP].chksum


def test_icmpv6_error_for_a_destination_translated_session():
    """A port forward: client -> nat:8080 became client -> server:80; the server's unreachable
    about server:80 -> client must reach the client as about nat:8080."""
    client, server, nat, _ = V6
    original = bytes(IPv6(src=client, dst=server) / UDP(sport=5000, dport=80) / b"q")
    translated = bytes(IPv6(src=client, dst=nat) / UDP(sport=5000, dport=8080) / b"q")
    before = bytes(IPv6(src=server, dst=client) / ICMPv6DestUnreach(code=4) / Raw(original))
    after = bytes(IPv6(src=nat, dst=client) / ICMPv6DestUnreach(code=4) / Raw(translated))
    out = both(before, Manip(src=raw(nat)), inner=Manip(dst=raw(nat), dport=8080))
    assert out == after


# -- refusals and properties -----------------------------------------------------------------

def test_refusals():
    data = bytes(IP(src=V4[0], dst=V4[1]) / TCP() / (b"x" * 100))
    cut = data[:60]
    with pytest.raises(RewriteError, match="cut"):
        rewrite(cut, parse(cut), Manip(src=raw(V4[2])))
    with pytest.raises(RewriteError, match="16-byte"):
        both(data, Manip(src=raw(V6[2])))
    frag = bytes(IP(src=V4[0], dst=V4[1], flags="MF") / UDP() / (b"x" * 100))
    with pytest.raises(RewriteError, match="fragment"):
        both(frag, Manip(src=raw(V4[2])))


def test_no_manip_gives_the_same_bytes_and_padding_is_kept():
    data = bytes(IP(src=V4[0], dst=V4[1]) / TCP() / b"x") + b"\0" * 6
    assert both(data, Manip()) == data
    out = both(data, Manip(sport=99))
    assert out[-6:] == b"\0" * 6 and out[:-6] == bytes(IP(src=V4[0], dst=V4[1]) / TCP(sport=99) / b"x")


@settings(max_examples=150, deadline=None)
@given(family=st.sampled_from([4, 6]), proto=st.sampled_from(["tcp", "udp", "icmp"]),
       sport=st.integers(1, 65535), dport=st.integers(1, 65535), new_sport=st.integers(1, 65535),
       new_dport=st.integers(1, 65535), payload=st.binary(max_size=300),
       addresses=st.tuples(st.integers(1, 2**32 - 1), st.integers(1, 2**32 - 1)),
       partial=st.booleans())
def test_any_translation_equals_scapy(family, proto, sport, dport, new_sport, new_dport, payload,
                                      addresses, partial):
    client, server, _, _ = V4 if family == 4 else V6
    if family == 4:
        new_src, new_dst = (str(ipaddress.IPv4Address(a)) for a in addresses)
    else:
        new_src, new_dst = (str(ipaddress.IPv6Address((0x20010DB8 << 96) + a)) for a in addresses)
    if proto == "icmp":
        new_dport = dport = sport            # an echo has one identifier
    before = bytes(ip(client, server) / l4(proto, sport, dport, family) / Raw(payload))
    after = bytes(ip(new_src, new_dst) / l4(proto, new_sport, new_dport, family) / Raw(payload))
    if partial:
        before = _garble_l4_checksum(before)
    manip = Manip(raw(new_src), raw(new_dst), new_sport, new_dport)
    assert both(before, manip, partial=partial) == after


def _garble_l4_checksum(data: bytes) -> bytes:
    """What the kernel hands over with CHECKSUM_PARTIAL: not the final checksum (here: junk)."""
    packet = parse(data)
    at = packet.l4_offset + {6: 16, 17: 6, 1: 2, 58: 2}[packet.proto]
    return data[:at] + b"\x5a\xa5" + data[at + 2:]


@settings(max_examples=100, deadline=None)
@given(family=st.sampled_from([4, 6]), proto=st.sampled_from(["tcp", "udp", "udp0", "icmp"]),
       ports=st.tuples(*[st.integers(1, 65535)] * 4),
       payload=st.binary(max_size=100) | st.binary(min_size=2040, max_size=2100),  # both sides of _BIG
       partial=st.booleans(), change_dst=st.booleans())
def test_a_compiled_translation_equals_rewrite_and_scapy(family, proto, ports, payload, partial, change_dst):
    client, server, nat, _ = V4 if family == 4 else V6
    sport, dport, new_sport, new_dport = ports
    if proto == "icmp":
        dport = sport
        new_dport = new_sport
    extra = {"chksum": 0} if proto == "udp0" else {}
    name = "udp" if proto == "udp0" else proto
    new_dst = nat if change_dst else server
    before = bytes(ip(client, server) / l4(name, sport, dport, family, **extra) / Raw(payload))
    after = bytes(ip(nat, new_dst) / l4(name, new_sport, new_dport, family, **extra) / Raw(payload))
    if partial:
        before = _garble_l4_checksum(before)
        after = bytes(ip(nat, new_dst) / l4(name, new_sport, new_dport, family) / Raw(payload))
    packet = parse(before)
    number = {"tcp": 6, "udp": 17, "udp0": 17, "icmp": 1 if family == 4 else 58}[proto]
    translation = Translation(family, number, (raw(client), raw(server), sport, dport),
                              (raw(nat), raw(new_dst), new_sport, new_dport))
    assert translation.apply(before, packet, partial) == after


# -- fuzz: any packet the parser accepts is rewritten soundly or refused ------------------------

def _l4_ok(data: bytes) -> bool:
    return l4_checksum_valid(data, parse(data))


def _ipv4_header_ok(data: bytes) -> bool:
    return data[0] >> 4 != 4 or verify(data[:(data[0] & 15) * 4])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(VALID), st.lists(MUTATION, max_size=3), st.binary(min_size=32, max_size=32),
       st.integers(0, 65535), st.booleans())
def test_any_parsed_packet_is_rewritten_soundly_or_refused(data, mutations, addresses, port, partial):
    data = mutate(data, mutations)
    try:
        packet = parse(data)
    except MalformedPacket:
        return
    if packet.proto not in (1, 6, 17, 58):
        return
    width = 4 if packet.family == 4 else 16
    manip = Manip(addresses[:width], addresses[16:16 + width], port, port)
    checks_were_ok = _l4_ok(data) and _ipv4_header_ok(data)
    try:
        out = rewrite(data, packet, manip, partial=partial, inner=Manip(sport=port))
    except RewriteError as error:
        assert error.detail
        return
    assert len(out) == len(data)
    again = parse(out)
    assert (again.src, again.dst) == (manip.src, manip.dst)
    if packet.proto in (6, 17):
        assert (again.sport, again.dport) == (port, port)
    if partial or packet.inner is not None or checks_were_ok:
        assert _l4_ok(out)
    if checks_were_ok:
        assert _ipv4_header_ok(out)


# -- a new payload (an ALG's rewrite, a cut) ----------------------------------------------------

@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("proto", ["tcp", "udp"])
@pytest.mark.parametrize("new", [b"PORT 192,0,2,1,156,64\r\n", b"", b"x" * 700])
@pytest.mark.parametrize("partial", [False, True])
def test_a_new_payload_fixes_lengths_and_checksums(family, proto, new, partial):
    client, server, _, _ = V4 if family == 4 else V6
    options = {"options": [("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]} if proto == "tcp" else {}
    before = bytes(ip(client, server) / l4(proto, 40000, 21, family, **options)
                   / Raw(b"PORT 198,51,100,10,156,64\r\n"))
    after = bytes(ip(client, server) / l4(proto, 40000, 21, family, **options) / Raw(new))
    if partial:
        before = _garble_l4_checksum(before)
    assert with_payload(before + b"\0" * 4, parse(before + b"\0" * 4), new) == after


def test_a_new_payload_refusals():
    echo = bytes(IP(src=V4[0], dst=V4[1]) / ICMP())
    with pytest.raises(RewriteError, match="payload"):
        with_payload(echo, parse(echo), b"x")
