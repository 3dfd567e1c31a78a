"""Forwarded-packet datagrams: what goes on the wire, and every refusal of the receiving gate,
each with its reason and counter (forged, replayed, too-large, rate, unknown-node, malformed, stale)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fw.sync.codec import Codec
from fw.sync.forwarding.gate import REASONS, Gate, Limits, Refused, ReplayWindow, TokenBucket
from fw.sync.forwarding.wire import (
    HEADER,
    HOOKS,
    OVERHEAD_MAX,
    TAG_SIZE,
    Malformed,
    Sealer,
    forwarding_key,
    parse,
)
from tests.packets import seg, udp_pkt

SYNC_KEY = b"test-key-of-the-cluster-0123456789"
KEY = forwarding_key(SYNC_KEY, "lab")
NOW = 1_764_176_983.5
PACKET = seg("198.51.100.10:40000", "203.0.113.10:80", "PA", seq=1, ack=1, payload=b"GET / HTTP/1.1\r\n\r\n")
PACKET6 = seg("[2001:db8:1::10]:40000", "[2001:db8:2::10]:80", "A", seq=5, ack=9)


def sealer(node: str = "fw1", key: bytes = KEY, first: int = 1000) -> Sealer:
    return Sealer(key, node, first)


def gate(node: str = "fw2", peers=("fw1", "fw3"), **limits) -> Gate:
    return Gate(KEY, node, lambda name: name in peers, Limits(**limits))


def refusal(g: Gate, raw: bytes, now: float = NOW, mono: float = 100.0) -> str:
    with pytest.raises(Refused) as caught:
        g.admit(raw, now, mono)
    return caught.value.reason


def test_a_datagram_carries_the_packet_and_what_the_owner_needs_to_run_it():
    raw = sealer().seal(PACKET, NOW, HOOKS["FORWARD"], "lan", "wan", mark=0x10)
    assert len(raw) == HEADER.size + 3 + 3 + 3 + len(PACKET) + TAG_SIZE <= len(PACKET) + OVERHEAD_MAX
    datagram = gate().admit(raw, NOW, 100.0)
    assert (datagram.node, datagram.seq, datagram.ts_ms) == ("fw1", 1001, int(NOW * 1000))
    assert (datagram.hook, datagram.iif, datagram.oif, datagram.mark) == (2, "lan", "wan", 0x10)
    assert datagram.packet == PACKET and not datagram.segment
    six = sealer().seal(PACKET6, NOW, iif=None, oif=None, segment=True)
    assert parse(six).packet == PACKET6 and parse(six).segment and parse(six).iif is None


def test_each_datagram_takes_the_next_sequence_number():
    s = sealer(first=7)
    assert [parse(s.seal(PACKET, NOW)).seq for _ in range(3)] == [8, 9, 10]


def test_the_sealer_refuses_what_the_format_cannot_carry():
    with pytest.raises(ValueError):
        sealer().seal(PACKET, NOW, iif="a-very-long-interface-name")
    with pytest.raises(ValueError):
        sealer().seal(b"\x00" * 40, NOW)
    with pytest.raises(ValueError):
        Sealer(KEY, "no spaces", 1)
    s = sealer(first=5)
    for bad in ({"mark": 1 << 32}, {"hook": 256}, {"iif": "lan\u00e9"}):
        with pytest.raises(ValueError):
            s.seal(PACKET, NOW, **bad)
    assert s.seq == 5  # nothing sealed: no sequence number spent


def test_forged_datagrams_are_refused_whatever_was_changed():
    raw = sealer().seal(PACKET, NOW, HOOKS["FORWARD"], "lan", "wan")
    other_cluster = sealer(key=forwarding_key(SYNC_KEY, "other")).seal(PACKET, NOW)
    other_key = sealer(key=forwarding_key(b"another-key-of-16-bytes-or-more", "lab")).seal(PACKET, NOW)
    with_sync_key = sealer(key=SYNC_KEY).seal(PACKET, NOW)  # the sync key itself is not the forwarding key
    flipped_packet = bytearray(raw)
    flipped_packet[-TAG_SIZE - 1] ^= 1
    other_iif = raw.replace(b"lanwan", b"wanlan")
    g = gate()
    reasons = [refusal(g, bytes(blob)) for blob in (other_cluster, other_key, with_sync_key, flipped_packet, other_iif)]
    assert reasons == ["forged"] * 5
    assert g.refused["forged"] == 5 and not g.accepted
    assert g.admit(raw, NOW, 100.0).packet == PACKET  # the forgeries did not touch the window


def test_a_forged_datagram_with_a_high_sequence_number_does_not_move_the_window():
    genuine = sealer(first=1000)
    forger = sealer(key=forwarding_key(b"not-the-key-of-this-cluster", "lab"), first=10**15)
    g = gate()
    assert refusal(g, forger.seal(PACKET, NOW)) == "forged"
    assert g.admit(genuine.seal(PACKET, NOW), NOW, 100.0).seq == 1001


def test_replays_are_refused_reordering_inside_the_window_is_not():
    s, g = sealer(first=0), gate(window=64)
    first, second, third = (s.seal(PACKET, NOW) for _ in range(3))
    assert g.admit(third, NOW, 100.0).seq == 3
    assert g.admit(first, NOW, 100.0).seq == 1  # late, inside the window: accepted once
    assert [refusal(g, blob) for blob in (first, third)] == ["replayed", "replayed"]
    assert g.admit(second, NOW, 100.0).seq == 2
    for _ in range(70):
        late = s.seal(PACKET, NOW)
    g.admit(late, NOW, 100.0)  # seq 73: 1..9 are now below the window
    assert refusal(g, second) == "replayed"
    assert g.refused["replayed"] == 3 and g.accepted["fw1"] == 4


def test_the_window_keeps_each_sender_apart():
    g = gate()
    fw1, fw3 = sealer("fw1", first=500), sealer("fw3", first=10)
    g.admit(fw1.seal(PACKET, NOW), NOW, 100.0)
    assert g.admit(fw3.seal(PACKET, NOW), NOW, 100.0).seq == 11  # far below fw1's: another window


def test_a_restarted_sender_goes_on_above_its_old_numbers():
    g = gate()
    g.admit(sealer(first=1_000_000).seal(PACKET, NOW), NOW, 100.0)
    restarted = sealer(first=2_000_000)  # sequence numbers start at the wall clock in microseconds
    assert g.admit(restarted.seal(PACKET, NOW + 1), NOW + 1, 101.0).seq == 2_000_001


def test_unknown_senders_and_our_own_datagrams_are_refused():
    g = gate(node="fw2", peers=("fw1",))
    assert refusal(g, sealer("fw9").seal(PACKET, NOW)) == "unknown-node"
    assert refusal(g, sealer("fw2").seal(PACKET, NOW)) == "unknown-node"  # a loop back to ourselves
    assert g.refused["unknown-node"] == 2


def test_too_large_datagrams_and_packets_are_refused_before_anything_else():
    g = gate(max_packet=1500)
    big = seg("198.51.100.10:40000", "203.0.113.10:80", "A", payload=b"x" * 1600)
    assert refusal(g, sealer().seal(big, NOW)) == "too-large"
    assert refusal(g, b"\xff" * 70000) == "too-large"
    assert g.admit(sealer().seal(PACKET, NOW), NOW, 100.0)


def test_stale_datagrams_are_refused():
    g, s = gate(), sealer()
    assert refusal(g, s.seal(PACKET, NOW - 31)) == "stale"
    assert refusal(g, s.seal(PACKET, NOW + 31)) == "stale"
    assert g.admit(s.seal(PACKET, NOW - 29), NOW, 100.0)


def test_the_rate_limit_refuses_a_flood_and_lets_traffic_through_again_later():
    g, s = gate(packets_per_second=1000, burst_seconds=0.1), sealer()
    results = []
    for _ in range(300):  # all at the same instant: the burst (100) passes, the rest is refused
        try:
            g.admit(s.seal(PACKET, NOW), NOW, 100.0)
            results.append("ok")
        except Refused as refused:
            results.append(refused.reason)
    assert results.count("ok") == 100 and results.count("rate") == 200
    assert g.admit(s.seal(PACKET, NOW), NOW, 100.05)  # 50 ms later: 50 tokens back
    other = sealer("fw3")
    assert g.admit(other.seal(PACKET, NOW), NOW, 100.0)  # another sender has its own bucket


def test_the_byte_rate_limit():
    g, s = gate(packets_per_second=1e6, bytes_per_second=100_000, burst_seconds=0.1, max_packet=1500), sealer()
    big = seg("198.51.100.10:40000", "203.0.113.10:80", "A", payload=b"x" * 1400)  # 1440 bytes
    passed = sum(1 for _ in range(20) if _admitted(g, s.seal(big, NOW), 100.0))
    assert passed == 10_000 // len(big)  # a burst of 10,000 bytes
    assert g.refused["rate"] == 20 - passed


def _admitted(g: Gate, raw: bytes, mono: float) -> bool:
    try:
        g.admit(raw, NOW, mono)
        return True
    except Refused:
        return False


def _header(**changes) -> bytes:
    fields = {"magic": b"FW", "version": 1, "flags": 1, "seq": 1, "ts": int(NOW * 1000), "hook": 2, "n": 3,
              "i": 0, "o": 0, "mark": 0}  # fmt: skip
    fields.update(changes)
    return HEADER.pack(*fields.values()) + b"fw1"


@pytest.mark.parametrize("raw", [
    b"", b"FW", _header(magic=b"XX") + PACKET + bytes(TAG_SIZE), _header(version=2) + PACKET + bytes(TAG_SIZE),
    _header(flags=0) + PACKET + bytes(TAG_SIZE), _header(flags=0x81) + PACKET + bytes(TAG_SIZE),
    _header(hook=7) + PACKET + bytes(TAG_SIZE), _header(n=0) + PACKET + bytes(TAG_SIZE),
    _header(n=65) + PACKET + bytes(TAG_SIZE), _header(i=16) + PACKET + bytes(TAG_SIZE),
    _header(i=2) + bytes(TAG_SIZE), _header() + b"\x00" * 40 + bytes(TAG_SIZE),
    _header(n=3)[:-3] + b"f w" + PACKET + bytes(TAG_SIZE), _header(i=2)[:-3] + b"fw1\xff\xfe" + PACKET + bytes(32),
])  # fmt: skip
def test_malformed_datagrams_are_refused(raw):
    g = gate()
    assert refusal(g, raw) == "malformed"
    assert g.refused["malformed"] == 1
    with pytest.raises(Malformed):
        parse(raw)


def test_every_reason_has_a_counter_from_the_start():
    assert set(gate().stats()["refused"]) == set(REASONS)
    assert gate().stats()["refused"] == dict.fromkeys(REASONS, 0)


def test_a_sync_message_is_not_a_forwarded_packet():
    message = Codec(SYNC_KEY, "lab", "fw1", 1).seal("hello", {"sessions": 0}, NOW)
    assert refusal(gate(), message) == "malformed"


def test_the_replay_window_as_rfc_4303_describes_it():
    window = ReplayWindow(size=8)
    assert not window.seen(100)
    window.mark(100)
    assert window.seen(100) and not window.seen(99) and not window.seen(101)
    assert window.seen(92)  # 100 - 8: below the window, too old to tell
    window.mark(95)
    assert window.seen(95) and not window.seen(96)
    window.mark(103)  # slides by 3: 95 is now offset 8, out of the window
    assert window.seen(95) and window.seen(100) and not window.seen(102)
    window.mark(10**12)  # a jump beyond the window's size resets it
    assert window.bits == 1 and window.seen(103) and not window.seen(10**12 - 1)


def test_the_token_bucket():
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    assert [bucket.take(1, 0.0) for _ in range(6)] == [True] * 5 + [False]
    assert bucket.take(1, 0.1) and not bucket.take(1, 0.1)
    assert bucket.take(5, 10.0) and not bucket.take(1, 10.0)  # never more than the burst


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_are_refused_with_a_reason_never_an_exception(raw):
    g = gate()
    assert refusal(g, raw) in REASONS


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 200), st.integers(0, 255))
def test_any_changed_byte_of_a_genuine_datagram_is_refused(index, xor):
    raw = bytearray(sealer().seal(udp_pkt("198.51.100.10:5353", "203.0.113.10:53", b"q" * 50), NOW, 2, "lan", "wan"))
    index %= len(raw)
    raw[index] ^= xor or 1
    assert refusal(gate(), bytes(raw)) in ("forged", "malformed", "unknown-node", "stale")


def test_seal_packs_the_header_as_documented():
    raw = sealer(first=41).seal(PACKET, NOW, HOOKS["PREROUTING"], "lan", None, mark=7)
    magic, version, flags, seq, ts, hook, n, i, o, mark = HEADER.unpack_from(raw)
    assert (magic, version, flags, seq, ts, hook, n, i, o, mark) == (b"FW", 1, 1, 42, int(NOW * 1000), 0, 3, 3, 0, 7)
    assert raw[HEADER.size:HEADER.size + 6] == b"fw1lan" and raw[HEADER.size + 6:-TAG_SIZE] == PACKET
    assert struct.unpack_from("!H", raw, HEADER.size + 6 + 2)[0] == len(PACKET)  # the IPv4 total length
