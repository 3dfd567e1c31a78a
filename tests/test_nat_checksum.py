"""The Internet checksum and its RFC 1624 incremental update, against scapy and full recomputes."""

from __future__ import annotations

import random
import struct

from hypothesis import assume, given
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.utils import checksum as scapy_checksum

from fw.packet import build
from fw.packet.checksum import (
    checksum,
    checksum_of_sum,
    pseudo_header_sum,
    udp_fold,
    update,
    update16,
    verify,
    word_sum,
)


@given(st.binary(max_size=3000))
def test_checksum_agrees_with_scapy_and_the_builder(data):
    assert checksum(data) == scapy_checksum(data) == build.checksum(data)


@given(st.binary(max_size=600))
def test_a_memoryview_sums_like_bytes(data):
    padded = b"xx" + data + b"yy"
    assert word_sum(memoryview(padded)[2:-2]) % 0xFFFF == word_sum(data) % 0xFFFF


def test_negative_zero_gives_a_zero_checksum_and_all_zero_data_0xffff():
    assert checksum(b"\xff\xff") == 0          # the sum 0xFFFF (-0) complements to 0
    assert checksum(b"\x00\x00") == 0xFFFF     # nothing at all: +0 complements to 0xFFFF
    assert checksum(b"\x12\x34\xed\xcb") == 0  # words summing to 0xFFFF


@st.composite
def data_and_change(draw):
    data = draw(st.binary(min_size=2, max_size=400))
    data += b"\0" * (len(data) & 1)
    start = draw(st.integers(0, len(data) // 2 - 1)) * 2
    words = draw(st.integers(1, (len(data) - start) // 2))
    new = draw(st.binary(min_size=words * 2, max_size=words * 2))
    return data, start, new


@given(data_and_change())
def test_incremental_update_equals_a_full_recompute(case):
    data, start, new = case
    changed = data[:start] + new + data[start + len(new):]
    assume(any(changed))                         # real packets are never all zero (RFC 1624 4)
    assert update(checksum(data), data[start:start + len(new)], new) == checksum(changed)


@given(data_and_change())
def test_incremental_update_accepts_0xffff_for_zero(case):
    data, start, new = case
    changed = data[:start] + new + data[start + len(new):]
    assume(any(changed))
    old = checksum(data)
    if old == 0:                                 # 0 and 0xFFFF are the same one's complement value
        assert update(0xFFFF, data[start:start + len(new)], new) == checksum(changed)


@given(st.binary(min_size=4, max_size=100), st.integers(0, 0xFFFF))
def test_update16_replaces_one_word(data, word):
    data += b"\0" * (len(data) & 1)
    old = struct.unpack_from("!H", data, 2)[0]
    changed = data[:2] + struct.pack("!H", word) + data[4:]
    assume(any(changed))
    assert update16(checksum(data), old, word) == checksum(changed)


def test_pseudo_header_sum_makes_scapy_tcp_checksums():
    packet = IP(bytes(IP(src="198.51.100.10", dst="203.0.113.5") / TCP(sport=40000, dport=80) / b"hi"))
    segment = bytearray(bytes(packet[TCP]))
    segment[16:18] = b"\0\0"
    src, dst = bytes(packet)[12:16], bytes(packet)[16:20]
    assert checksum_of_sum(pseudo_header_sum(src, dst, 6, len(segment)) + word_sum(segment)) \
        == packet[TCP].chksum
    assert verify(bytes(packet)[:20]) and not verify(b"\0" * 20)


def test_udp_fold_sends_zero_as_0xffff():
    assert udp_fold(0) == 0xFFFF and udp_fold(0x1234) == 0x1234


def test_long_data_is_summed_in_chunks_with_the_same_result():
    rng = random.Random(14)
    for size in (4095, 4096, 4097, 8191, 8192, 8193, 12289, 65531, 65535, 65536):
        data = rng.randbytes(size)
        assert checksum(data) == scapy_checksum(data), size
        assert checksum(memoryview(b"\0\0" + data)[2:]) == checksum(data)
