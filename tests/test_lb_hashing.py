"""fw.lb.hashing: the compiled build's BLAKE2b in C gives hashlib's numbers, for every length.

Both builds run these (FW_PURE=1 checks the hashlib path against itself and the pinned values; the
compiled build checks fw/lb/hashing.pxd's one-block compression against hashlib).
"""

from __future__ import annotations

from hashlib import blake2b

from hypothesis import given, settings
from hypothesis import strategies as st

from fw.lb.hashing import FLOW, OFFSET, SKIP, SOURCE, flow_hash, flow_key, stable_hash


def reference(data: bytes, person: bytes) -> int:
    return int.from_bytes(blake2b(data, digest_size=8, person=person).digest(), "little")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=16))
def test_stable_hash_is_hashlibs(data, person):
    assert stable_hash(data, person) == reference(data, person)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(min_size=4, max_size=4), st.binary(min_size=16, max_size=16), st.binary(max_size=200)),
       st.integers(0, 65535))
def test_flow_hash_is_hashlibs(src, sport):
    assert flow_hash(src, sport) == reference(flow_key(src, sport), FLOW) == stable_hash(flow_key(src, sport), FLOW)


def test_every_length_around_the_block():
    """0 to 130 bytes: the empty message, the last byte of the one block, and past it (hashlib)."""
    for size in range(131):
        data = bytes((7 * i + size) & 0xFF for i in range(size))
        for purpose in (OFFSET, SKIP, FLOW, SOURCE, b"", b"p" * 16):
            assert stable_hash(data, purpose) == reference(data, purpose), (size, purpose)


def test_pinned_values():
    """Nodes of different versions must agree: these are BLAKE2b's numbers and must stay."""
    assert stable_hash(b"203.0.113.21:8080", OFFSET) == 18300644682987662162
    assert flow_hash(bytes([198, 51, 100, 7]), 40000) == 3729800523569409958
