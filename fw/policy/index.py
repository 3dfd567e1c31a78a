# cython: annotation_typing=False
"""The rule index: the first matching rule without scanning every rule for each new session.

How it works: rules are grouped by (protocol, family), built lazily on the first packet of that
pair and kept. Inside a group, a chain of levels indexes one dimension each: destination port (TCP
and UDP), destination address, source address. A level cuts its dimension into elementary
segments at every interval boundary of the rules it holds (a sorted `bounds` list; a bisect finds
the segment) and keeps, per segment, the rules covering it, in rule order. A rule goes into the
first level where it is narrow (few intervals, few segments); rules narrow nowhere (any address,
a negation, a large set) stay in the final residual tuple, scanned in order.

A packet's first match is the lowest rule index over the levels: each level's segment tuple and
the residual are scanned in order only up to the best index found so far, and each candidate is
checked in full (`Rule.matches`), so the index only ever removes rules that cannot match.
Memory stays bounded: a rule spans at most MAX_SPAN segments of a level; broad port ranges and
big sets fall through to the residual, where the rule's own bisect check handles them.
"""

from __future__ import annotations

from bisect import bisect_right

try:
    import cython
except ImportError:  # no Cython: this module runs pure (as with FW_PURE=1)
    from fw import cython_shadow as cython

from fw.policy.intervals import FAMILY_MAX, PORT_MAX
from fw.policy.schema import PORT_PROTOCOLS

DPORT, DST, SRC = "dport", "dst", "src"
MIN_INDEXED = 8  # fewer narrow rules than this on a dimension: a level is not worth its cost
MAX_INTERVALS = 16  # a rule with more intervals on a dimension is not indexed on it
MAX_SPAN = 64  # nor is one covering more segments than this


class Level:
    """One indexed dimension: `segments[bisect_right(bounds, value) - 1]` -> candidate rules."""

    __slots__ = ("dimension", "bounds", "segments", "rest")

    def __init__(self, dimension, bounds, segments, rest):
        self.dimension = dimension
        self.bounds = bounds
        self.segments = segments
        self.rest = rest  # the next Level, or the residual tuple of rules

    def candidates(self, value: int) -> tuple:
        return self.segments[bisect_right(self.bounds, value) - 1]


class RuleIndex:
    """First-match lookup over rules in order; `match(pkt, iif, oif)` -> Rule | None."""

    def __init__(self, rules, min_indexed=MIN_INDEXED, max_span=MAX_SPAN):
        self.rules = tuple(rules)
        self.min_indexed = min_indexed
        self.max_span = max_span
        self._groups: dict[tuple[int, int], object] = {}
        self._end = len(self.rules)

    @cython.locals(level=Level)
    def match(self, pkt, iif=None, oif=None):
        node = self._groups.get((pkt.proto, pkt.family))
        if node is None:
            node = self.group(pkt.proto, pkt.family)
        src = address_int(pkt.src)
        dst = address_int(pkt.dst)
        best, limit = None, self._end
        while type(node) is Level:
            level = node  # compiled: its fields read from C
            dimension = level.dimension
            value = pkt.dport if dimension is DPORT else dst if dimension is DST else src
            for rule in level.segments[bisect_right(level.bounds, value) - 1]:
                if rule.index >= limit:
                    break
                if rule.matches(pkt, src, dst, iif, oif):
                    best, limit = rule, rule.index
                    break
            node = level.rest
        for rule in node:
            if rule.index >= limit:
                break
            if rule.matches(pkt, src, dst, iif, oif):
                return rule
        return best

    def all_matches(self, pkt, iif=None, oif=None, below=None) -> list:
        """Every rule (index < below) matching the packet, in order (for the shadow check)."""
        node = self._groups.get((pkt.proto, pkt.family))
        if node is None:
            node = self.group(pkt.proto, pkt.family)
        src = int.from_bytes(pkt.src, "big")
        dst = int.from_bytes(pkt.dst, "big")
        limit = self._end if below is None else below
        found = []
        while type(node) is Level:
            value = pkt.dport if node.dimension is DPORT else dst if node.dimension is DST else src
            found.extend(r for r in node.candidates(value)
                         if r.index < limit and r.matches(pkt, src, dst, iif, oif))
            node = node.rest
        found.extend(r for r in node if r.index < limit and r.matches(pkt, src, dst, iif, oif))
        return sorted(found, key=lambda rule: rule.index)

    def group(self, proto: int, family: int):
        """The index of the rules that can match packets of this protocol and family."""
        rules = [r for r in self.rules if (r.proto is None or r.proto == proto) and family in r.families]
        dimensions = ((DPORT, PORT_MAX),) if proto in PORT_PROTOCOLS else ()
        dimensions += ((DST, FAMILY_MAX[family]), (SRC, FAMILY_MAX[family]))
        levels = []
        for dimension, high in dimensions:
            level, rules = self._level(rules, dimension, family, high)
            if level is not None:
                levels.append(level)
        node = tuple(rules)
        for level in reversed(levels):
            level.rest, node = node, level
        self._groups[(proto, family)] = node
        return node

    def _level(self, rules, dimension, family, high):
        """(Level or None, the rules left for the next levels)."""
        spans = {rule.index: _intervals(rule, dimension, family) for rule in rules}
        narrow = [r for r in rules if spans[r.index] is not None and len(spans[r.index]) <= MAX_INTERVALS]
        bounds = _bounds((spans[r.index] for r in narrow), high)
        narrow = [r for r in narrow if _span(bounds, spans[r.index]) <= self.max_span]
        if len(narrow) < max(self.min_indexed, 1):
            return None, rules
        bounds = _bounds((spans[r.index] for r in narrow), high)
        segments: list = [[] for _ in bounds]
        for rule in narrow:
            for start, end in spans[rule.index]:
                first = bisect_right(bounds, start) - 1
                last = bisect_right(bounds, end) - 1
                for i in range(first, last + 1):
                    segments[i].append(rule)
        empty: tuple = ()
        frozen = [tuple(s) if s else empty for s in segments]
        indexed = {r.index for r in narrow}
        return Level(dimension, bounds, frozen, None), [r for r in rules if r.index not in indexed]


def address_int(address: bytes) -> int:
    """int.from_bytes(address, "big"); compiled, an IPv4 address is read in C (no method call)."""
    if cython.compiled and address.__class__ is bytes and len(address) == 4:
        raw = address
        value = raw[0]  # a C unsigned long: the shifts do not overflow
        return value << 24 | raw[1] << 16 | raw[2] << 8 | raw[3]
    return int.from_bytes(address, "big")


def _intervals(rule, dimension, family):
    if dimension is DPORT:
        return rule.dport
    addresses = rule.dst if dimension is DST else rule.src
    return None if addresses is None else addresses.by_family[family]


def _bounds(interval_sets, high) -> list[int]:
    bounds = {0}
    for intervals in interval_sets:
        for start, end in intervals:
            bounds.add(start)
            if end < high:
                bounds.add(end + 1)
    return sorted(bounds)


def _span(bounds, intervals) -> int:
    return sum(bisect_right(bounds, end) - bisect_right(bounds, start) + 1 for start, end in intervals)
