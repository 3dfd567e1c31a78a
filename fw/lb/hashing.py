# cython: annotation_typing=False
"""Stable hashes: the same bytes give the same 64-bit number in every process and on every node.

How it works: BLAKE2b with an 8-byte digest, personalised per use so that the hashes of one input
for different purposes (Maglev's offset and skip, a flow's table slot) are independent. Python's
own `hash()` is salted per process (PYTHONHASHSEED) and must never decide which real server a flow
goes to: two firewalls behind one ECMP router would disagree.

Pure, hashlib computes it (each purpose's empty state made once and copied per hash). Compiled
(build_compiled.py), an input of at most 128 bytes (every flow key, every server name) is hashed
by the pxd's `_c_blake2b64`, one BLAKE2b compression in C giving hashlib's number exactly (no
hasher, digest or int made), and the engine's Maglev pick takes a flow's hash as a C number
(`_c_flow_hash`, fw/lb/schedulers.py); longer inputs go through hashlib in both builds.
"""

from __future__ import annotations

from hashlib import blake2b

try:
    import cython
except ImportError:  # no Cython: this module runs pure (as with FW_PURE=1)
    from fw import cython_shadow as cython

OFFSET = b"fw-lb-offset"
SKIP = b"fw-lb-skip"
FLOW = b"fw-lb-flow"
SOURCE = b"fw-lb-source"
ONE_BLOCK = 128  # BLAKE2b's block: what the compiled build hashes in C


_HASHERS: dict[bytes, object] = {}  # purpose -> an empty BLAKE2b state with its personalisation
_FLOW = blake2b(digest_size=8, person=FLOW)  # flow_hash's


def stable_hash(data: bytes, purpose: bytes) -> int:
    """A 64-bit hash of `data`, independent for each `purpose` (at most 16 bytes). The same number
    as `blake2b(data, digest_size=8, person=purpose)`: a copy of the purpose's empty state is
    cheaper than a new one (no parameter block to parse and set up per flow)."""
    if cython.compiled and len(data) <= ONE_BLOCK and len(purpose) <= 16:
        return _c_blake2b64(data, len(data), purpose, len(purpose))  # noqa: F821  (the pxd's)
    base = _HASHERS.get(purpose)
    if base is None:
        base = _HASHERS[purpose] = blake2b(digest_size=8, person=purpose)
    hasher = base.copy()
    hasher.update(data)
    return int.from_bytes(hasher.digest(), "little")


def flow_hash(src: bytes, sport: int) -> int:
    """`stable_hash(flow_key(src, sport), FLOW)`: the number a flow is placed by (Maglev's slot)."""
    if cython.compiled and len(src) <= ONE_BLOCK - 2:
        return _c_flow_hash(src, sport)  # noqa: F821  (the pxd's)
    hasher = _FLOW.copy()
    hasher.update(src + sport.to_bytes(2, "big"))
    return int.from_bytes(hasher.digest(), "little")


def flow_key(src: bytes, sport: int) -> bytes:
    """The bytes a flow is hashed by within one virtual server: source address and port."""
    return src + sport.to_bytes(2, "big")
