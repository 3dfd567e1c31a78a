"""One router hop (fw.packet.ttl.hop): TTL and hop limit lowered, the IPv4 checksum still right."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fw.packet import build, parse
from fw.packet.ttl import hop


@given(st.integers(2, 255), st.integers(0, 0xFFFF), st.binary(max_size=40), st.integers(0, 255))
def test_ipv4_ttl_goes_down_by_one_and_the_header_checksum_stays_right(ttl, ident, payload, tos):
    data = build.ipv4("198.51.100.10", "203.0.113.10", 17, build.udp_datagram("198.51.100.10", "203.0.113.10",
                                                                                5000, 53, payload), ttl, ident, tos=tos)
    after = hop(data)
    assert after[8] == ttl - 1 and len(after) == len(data)
    assert build.checksum(after[:20]) == 0  # the header sums to 0 with its checksum: still valid
    assert after[:8] == data[:8] and after[12:] == data[12:]
    assert parse(after).sport == 5000


def test_ipv6_hop_limit_goes_down_by_one():
    data = build.udp("2001:db8:1::10", "2001:db8:2::10", 5000, 53, b"q")
    after = hop(data)
    assert after[7] == data[7] - 1 and after[:7] == data[:7] and after[8:] == data[8:]


def test_a_packet_that_would_expire_is_not_sent_on():
    v4 = build.ipv4("198.51.100.10", "203.0.113.10", 17, b"\0" * 8, ttl=1)
    v6 = build.ipv6("2001:db8:1::10", "2001:db8:2::10", 17, b"\0" * 8, hop_limit=1)
    assert hop(v4) is None and hop(v6) is None and hop(b"") is None and hop(b"\x50" + bytes(40)) is None
    assert hop(build.ipv4("198.51.100.10", "203.0.113.10", 17, b"\0" * 8, ttl=2))[8] == 1
