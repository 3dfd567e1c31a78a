"""Sets of ports and addresses as sorted, disjoint, inclusive integer intervals.

How it works: a port list, a CIDR, a list of CIDRs or its negation all become, per address family,
a tuple of interval starts and a tuple of interval ends (addresses as `int.from_bytes` of their raw
bytes). Membership is one `bisect` on the starts, so a set of ten thousand networks costs about
what a single network costs. Union, complement (for `{not: X}`) and containment (for the shadowed
rule check) are linear merges.
"""

from __future__ import annotations

import ipaddress
import re
from bisect import bisect_right

PORT_MAX = 65535
FAMILY_MAX = {4: (1 << 32) - 1, 6: (1 << 128) - 1}
FAMILIES = (4, 6)
_IPV4 = re.compile(r"^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})(?:/(\d{1,2}))?$")


class IntervalSet:
    """Disjoint inclusive intervals [starts[i], ends[i]], sorted; adjacent ones are merged."""

    __slots__ = ("starts", "ends")

    def __init__(self, pairs=()):
        starts: list[int] = []
        ends: list[int] = []
        for start, end in sorted(pairs):
            if ends and start <= ends[-1] + 1:
                ends[-1] = max(ends[-1], end)
            else:
                starts.append(start)
                ends.append(end)
        self.starts = tuple(starts)
        self.ends = tuple(ends)

    def __contains__(self, value: int) -> bool:
        i = bisect_right(self.starts, value) - 1
        return i >= 0 and value <= self.ends[i]

    def __bool__(self) -> bool:
        return bool(self.starts)

    def __len__(self) -> int:
        return len(self.starts)

    def __iter__(self):
        return zip(self.starts, self.ends, strict=True)

    def __eq__(self, other) -> bool:
        return isinstance(other, IntervalSet) and self.starts == other.starts and self.ends == other.ends

    def __hash__(self) -> int:
        return hash((self.starts, self.ends))

    def __repr__(self) -> str:
        return f"IntervalSet({list(self)})"

    def union(self, other: IntervalSet) -> IntervalSet:
        return IntervalSet(list(self) + list(other))

    def complement(self, high: int) -> IntervalSet:
        """Everything in [0, high] that is not in this set."""
        pairs, low = [], 0
        for start, end in self:
            if start > low:
                pairs.append((low, start - 1))
            low = end + 1
        if low <= high:
            pairs.append((low, high))
        return IntervalSet(pairs)

    def is_full(self, high: int) -> bool:
        return self.starts == (0,) and self.ends == (high,)

    def covers(self, other: IntervalSet) -> bool:
        """True when every value of `other` is in this set."""
        for start, end in other:
            i = bisect_right(self.starts, start) - 1
            if i < 0 or end > self.ends[i]:
                return False
        return True


EMPTY = IntervalSet()


class AddressSet:
    """Addresses of both families: `by_family[4]`, `by_family[6]` are IntervalSets."""

    __slots__ = ("by_family",)

    def __init__(self, v4: IntervalSet = EMPTY, v6: IntervalSet = EMPTY):
        self.by_family = {4: v4, 6: v6}

    @classmethod
    def of_networks(cls, networks) -> AddressSet:
        """From (family, first, last) triples."""
        pairs: dict[int, list] = {4: [], 6: []}
        for family, first, last in networks:
            pairs[family].append((first, last))
        return cls(IntervalSet(pairs[4]), IntervalSet(pairs[6]))

    def contains(self, family: int, value: int) -> bool:
        return value in self.by_family[family]

    def families(self) -> frozenset:
        return frozenset(f for f in FAMILIES if self.by_family[f])

    def union(self, other: AddressSet) -> AddressSet:
        return AddressSet(*(self.by_family[f].union(other.by_family[f]) for f in FAMILIES))

    def complement(self) -> AddressSet:
        return AddressSet(*(self.by_family[f].complement(FAMILY_MAX[f]) for f in FAMILIES))

    def is_any(self) -> bool:
        return all(self.by_family[f].is_full(FAMILY_MAX[f]) for f in FAMILIES)

    def __eq__(self, other) -> bool:
        return isinstance(other, AddressSet) and self.by_family == other.by_family

    def __hash__(self) -> int:
        return hash((self.by_family[4], self.by_family[6]))

    def __repr__(self) -> str:
        return f"AddressSet(v4={self.by_family[4]!r}, v6={self.by_family[6]!r})"


def parse_network(text: str) -> tuple[int, int, int]:
    """'198.51.100.0/24' or an address -> (family, first, last); ValueError with the reason.

    A CIDR with host bits set is an error (as nftables does), naming the network meant.
    """
    fast = _parse_ipv4(text)
    if fast is not None:
        return fast
    if "%" in text:
        raise ValueError(f"invalid address '{text}' (scoped addresses are not allowed)")
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"invalid address '{text}' (expected an IPv4 or IPv6 address or CIDR)") from None
    if "/" in text and network.network_address != ipaddress.ip_interface(text).ip:
        raise ValueError(f"'{text}' has host bits set (did you mean {network}?)")
    first = int(network.network_address)
    return network.version, first, first + network.num_addresses - 1


def _parse_ipv4(text: str):
    """The common case, dotted quad with an optional prefix, without ipaddress's cost; None
    hands anything unusual (leading zeros, out of range) to ipaddress for its verdict."""
    match = _IPV4.match(text)
    if match is None or any(len(part) > 1 and part[0] == "0" for part in match.groups("")):
        return None
    octets = [int(part) for part in match.groups()[:4]]
    prefix = 32 if match[5] is None else int(match[5])
    if max(octets) > 255 or prefix > 32:
        return None
    first = int.from_bytes(bytes(octets), "big")
    host_bits = (1 << (32 - prefix)) - 1
    if first & host_bits:
        network = f"{ipaddress.IPv4Address(first & ~host_bits)}/{prefix}"
        raise ValueError(f"'{text}' has host bits set (did you mean {network}?)")
    return 4, first, first | host_bits
