# cython: annotation_typing=False
"""The Internet checksum (RFC 1071) and its incremental update (RFC 1624), fast and exact.

How it works. The one's complement sum of 16-bit words is congruent modulo 0xFFFF to the number
the bytes spell big-endian (2**16 = 1 mod 0xFFFF), so `word_sum` is `int.from_bytes` (per 4 KiB
chunk, summed) and one `%`, in C, however long the data: no Python loop over words. The
end-around-carry sum S of data that is not all zero lies in 1..0xFFFF, and the checksum ~S is
then exactly `(-S) % 0xFFFF` (0..0xFFFE): the sum 0xFFFF ("negative zero") gives a
checksum of 0, as a full recompute on a real machine does; only all-zero data sums to +0 and gets
0xFFFF.

Incremental update (RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m')) is, in the same arithmetic,
HC' = (HC + m - m') % 0xFFFF, for any number of words at once: `m` and `m'` are the old and new
bytes at an even offset of the checksummed data (an address, a port, addresses and ports joined).
Like eqn. 3, it never yields 0xFFFF, and it equals a full recompute over the new bytes (the tests
check this against full recomputes and scapy). A field holding 0xFFFF (the same value as 0 in one's
complement) is accepted as input.

UDP (RFC 768) sends a computed 0 as 0xFFFF and reserves 0 for "no checksum" (IPv4): `udp_fold`.
"""

from __future__ import annotations

MOD = 0xFFFF
CHUNK = 4096  # bytes summed as one number (even)
_from_bytes = int.from_bytes


def word_sum(data) -> int:
    """A number congruent (mod 0xFFFF) to the one's complement sum of `data`'s 16-bit words.

    `data`: bytes, bytearray or memoryview; an odd length is padded with a zero byte (RFC 1071).
    Beyond CHUNK bytes the sum of the chunks' numbers is returned (each chunk even-sized, so the
    congruence holds): a small number, whose `% 0xFFFF` is cheap, where one 64 KiB number's division
    costs more than converting the bytes (measured: about half the time for a 64 KiB segment).
    """
    size = len(data)
    if size <= CHUNK:
        value = _from_bytes(data, "big")
        return value << 8 if size & 1 else value
    view = memoryview(data)
    total = 0
    last = (size - 1) // CHUNK * CHUNK
    for start in range(0, last, CHUNK):
        total += _from_bytes(view[start:start + CHUNK], "big")
    value = _from_bytes(view[last:], "big")
    return total + (value << 8 if (size - last) & 1 else value)


def checksum(data) -> int:
    """The Internet checksum of `data` (its checksum field zeroed by the caller)."""
    return checksum_of_sum(word_sum(data))


def checksum_of_sum(total: int) -> int:
    """The checksum for a running sum built with `word_sum` / `pseudo_header_sum` additions."""
    return -total % MOD if total else 0xFFFF       # all-zero data: +0 complements to 0xFFFF


def pseudo_header_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """The sum of the TCP/UDP/ICMPv6 pseudo-header (RFC 9293 3.1, RFC 8200 8.1)."""
    return _from_bytes(src, "big") + _from_bytes(dst, "big") + proto + length


def update(check: int, old: bytes, new: bytes) -> int:
    """RFC 1624: the checksum `check` after bytes `old` (even offset) became `new` (same length)."""
    return (check + _from_bytes(old, "big") - _from_bytes(new, "big")) % MOD


def update16(check: int, old: int, new: int) -> int:
    """RFC 1624 for one 16-bit word (a port, an ICMP identifier)."""
    return (check + old - new) % MOD


def update_sum(check: int, delta: int) -> int:
    """Apply a precomputed difference `old_sum - new_sum` (see `update`) to a checksum."""
    return (check + delta) % MOD


def udp_fold(check: int) -> int:
    """RFC 768: a computed UDP checksum of 0 is sent as 0xFFFF (0 means "none" on IPv4)."""
    return check or 0xFFFF


def verify(data) -> bool:
    """True when `data`, its checksum field included, sums to 0xFFFF (a correct checksum)."""
    total = word_sum(data)
    return total % MOD == 0 and total != 0
