"""Sequence adjustment after a length-changing rewrite, as Linux nf_conntrack_seqadj.c does it.

Every adjusted packet is compared byte for byte with scapy's build (and checksum) of the packet with
the expected numbers. Direction 0 is the client's (it sent the rewritten PORT), 1 the server's.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

from fw.nat.seqadj import SeqAdj, after
from fw.packet import parse

CLIENT, SERVER = "198.51.100.10", "203.0.113.5"


def segment(src, dst, seq, ack, flags="A", options=(), payload=b"", v6=False):
    layer = IPv6(src="2001:db8:1::10", dst="2001:db8:2::5") if v6 else IP(src=src, dst=dst)
    return bytes(layer / TCP(sport=40000 if src == CLIENT else 21, dport=21 if src == CLIENT else 40000,
                             seq=seq, ack=ack, flags=flags, options=list(options)) / payload)


def from_client(seq, ack, **kw):
    return segment(CLIENT, SERVER, seq, ack, **kw)


def from_server(seq, ack, **kw):
    return segment(SERVER, CLIENT, seq, ack, **kw)


def adjusted(adj: SeqAdj, data: bytes, direction: int, partial: bool = False) -> bytes:
    return adj.adjust(data, parse(data), direction, partial)


def port_rewritten(delta=5, seq=1000) -> SeqAdj:
    adj = SeqAdj()
    adj.record(0, seq, delta)
    return adj


def test_later_segments_shift_and_the_rewritten_one_does_not():
    adj = port_rewritten()
    assert adjusted(adj, from_client(1000, 500, payload=b"PORT ..."), 0) == from_client(1000, 500, payload=b"PORT ...")
    assert adjusted(adj, from_client(1030, 500), 0) == from_client(1035, 500)


def test_the_other_direction_acks_shift_back():
    adj = port_rewritten()
    assert adjusted(adj, from_server(500, 1035), 1) == from_server(500, 1030)
    assert adjusted(adj, from_server(500, 1000), 1) == from_server(500, 1000)   # acks before it


def test_both_directions_at_once():
    adj = port_rewritten()
    adj.record(1, 500, -2)                          # a shorter 227 from the server
    assert adjusted(adj, from_server(600, 1035), 1) == from_server(598, 1030)
    assert adjusted(adj, from_client(1035, 598), 0) == from_client(1040, 600)


def test_sack_blocks_shift_back_and_other_options_stay():
    adj = port_rewritten()
    for lead in ([("NOP", None), ("NOP", None)], [("NOP", None)], []):     # even and odd offsets
        options = [*lead, ("SAck", (1045, 1065, 995, 1000)), ("Timestamp", (77, 88))]
        expected = [*lead, ("SAck", (1040, 1060, 995, 1000)), ("Timestamp", (77, 88))]
        out = adjusted(adj, from_server(500, 1035, options=options), 1)
        assert out == from_server(500, 1030, options=expected), lead


def test_a_retransmitted_rewrite_is_recorded_once_and_gets_offset_before():
    adj = port_rewritten()
    adj.record(0, 1000, 5)                           # the ALG rewrote the retransmission again
    assert adj.to_tuple() == ((1000, 0, 5), (0, 0, 0))
    assert adjusted(adj, from_client(1000, 500), 0) == from_client(1000, 500)
    adj.record(0, 2000, -3)                          # a second, later rewrite
    assert adj.to_tuple() == ((2000, 5, 2), (0, 0, 0))
    assert adjusted(adj, from_client(2000, 500), 0) == from_client(2005, 500)
    assert adjusted(adj, from_client(2100, 500), 0) == from_client(2102, 500)
    adj.record(0, 1500, 9)                           # an older segment: ignored (as Linux)
    assert adj.to_tuple() == ((2000, 5, 2), (0, 0, 0))


def test_wrap_around_of_the_32_bit_sequence_space():
    adj = port_rewritten(delta=7, seq=0xFFFFFFF0)
    assert adjusted(adj, from_client(0xFFFFFFFC, 1), 0) == from_client(3, 1)
    assert adjusted(adj, from_server(1, 5), 1) == from_server(1, 0xFFFFFFFE)
    assert after(5, 0xFFFFFFF0) and not after(0xFFFFFFF0, 5) and not after(5, 5)


def test_without_ack_flag_the_ack_field_is_left_alone():
    adj = port_rewritten()
    assert adjusted(adj, from_server(500, 1035, flags="S"), 1) == from_server(500, 1035, flags="S")


def test_ipv6_and_a_partial_checksum():
    adj = port_rewritten()
    before = segment(CLIENT, SERVER, 1030, 500, v6=True, payload=b"x" * 50)
    garbled = before[:56] + b"\x12\x34" + before[58:]
    assert adjusted(adj, garbled, 0, partial=True) == segment(CLIENT, SERVER, 1035, 500, v6=True, payload=b"x" * 50)


def test_round_trip_through_plain_numbers():
    adj = port_rewritten()
    adj.record(1, 77, -1)
    assert SeqAdj.from_tuple(adj.to_tuple()).to_tuple() == adj.to_tuple()
    assert adj.active and not SeqAdj().active


@settings(max_examples=120, deadline=None)
@given(records=st.lists(st.tuples(st.integers(0, 1), st.integers(0, 2**32 - 1), st.integers(-40, 40)),
                        max_size=4),
       seq=st.integers(0, 2**32 - 1), ack=st.integers(0, 2**32 - 1), direction=st.integers(0, 1),
       blocks=st.lists(st.integers(0, 2**32 - 1), min_size=0, max_size=6).filter(lambda b: len(b) % 2 == 0),
       nops=st.integers(0, 3), payload=st.binary(max_size=40))
def test_any_adjustment_matches_the_kernel_rules_and_scapy(records, seq, ack, direction, blocks, nops, payload):
    adj = SeqAdj()
    for way, position, delta in records:
        adj.record(way, position, delta)
    this, other = adj.corrections[direction], adj.corrections[1 - direction]
    options = [("NOP", None)] * nops + ([("SAck", tuple(blocks))] if blocks else [])
    before = from_client(seq, ack, options=options, payload=payload)
    new_blocks = tuple((b - other.ack_offset(b)) % 2**32 for b in blocks)
    expected_options = [("NOP", None)] * nops + ([("SAck", new_blocks)] if blocks else [])
    expected = from_client((seq + this.seq_offset(seq)) % 2**32, (ack - other.ack_offset(ack)) % 2**32,
                           options=expected_options, payload=payload)
    assert adjusted(adj, before, direction) == expected


@pytest.mark.parametrize("delta", [5, -5])
def test_ack_offset_uses_offset_before_to_find_the_position(delta):
    """An ack is compared after taking offset_before back (nf_ct_seq_adjust)."""
    adj = port_rewritten(delta=delta)
    adj.record(0, 2000, 1)
    way = adj.corrections[0]
    assert way.ack_offset(2000 + way.before) == way.before
    assert way.ack_offset(2001 + way.before) == way.after
