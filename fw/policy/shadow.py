"""Shadowed rules: a rule that never matches because an earlier rule matches all its packets.

How it works: an earlier rule A shadows B when A covers B on every dimension: protocol, address
families, source and destination addresses (interval containment per family), ports, ICMP type
and code, interfaces and zones. Comparing every pair would cost n^2 for n rules, so the candidates come
from the rule index: any rule covering B must match B's lowest packet (the "probe": B's first
address, port and ICMP value), so only the earlier rules matching the probe are compared in full.
Only single rules are considered (as pfctl and nft do), not unions of several earlier rules.
"""

from __future__ import annotations

from fw.policy.intervals import FAMILY_MAX, PORT_MAX, IntervalSet

PROBE_PROTO = 253  # RFC 3692 experimentation: a stand-in for "any protocol" in probes


class Probe:
    """The lowest packet a rule matches, shaped like a Packet for the matcher."""

    __slots__ = ("family", "proto", "src", "dst", "sport", "dport", "icmp_type", "icmp_code")

    def __init__(self, rule, family: int):
        size = 4 if family == 4 else 16
        self.family = family
        self.proto = PROBE_PROTO if rule.proto is None else rule.proto
        self.src = _lowest(rule.src, family).to_bytes(size, "big")
        self.dst = _lowest(rule.dst, family).to_bytes(size, "big")
        self.sport = rule.sport.starts[0] if rule.sport is not None else 0
        self.dport = rule.dport.starts[0] if rule.dport is not None else 0
        self.icmp_type = min(rule.icmp_type) if rule.icmp_type is not None else 0
        self.icmp_code = min(rule.icmp_code) if rule.icmp_code is not None else 0


def _lowest(addresses, family: int) -> int:
    return 0 if addresses is None else addresses.by_family[family].starts[0]


def shadowing(rules, index) -> list[tuple[object, object]]:
    """(shadowed rule, the first earlier rule that covers it) pairs, in rule order."""
    found = []
    for rule in rules:
        if not rule.families:
            continue  # never matches at all: reported apart
        probe = Probe(rule, min(rule.families))
        iif, oif = rule.own_interfaces()
        for earlier in index.all_matches(probe, iif, oif, below=rule.index):
            if covers(earlier, rule):
                found.append((rule, earlier))
                break
    return found


def covers(first, second) -> bool:
    """Does every packet `second` matches also match `first`?"""
    if first.proto is not None and first.proto != second.proto:
        return False
    if not second.families <= first.families:
        return False
    for family in second.families:
        if not (_covers_addresses(first.src, second.src, family)
                and _covers_addresses(first.dst, second.dst, family)):
            return False
    return (_covers_ports(first.sport, second.sport) and _covers_ports(first.dport, second.dport)
            and _covers_values(first.icmp_type, second.icmp_type)
            and _covers_values(first.icmp_code, second.icmp_code)
            and _covers_interface(first.iif, second.iif) and _covers_interface(first.oif, second.oif)
            and first.from_zone in (None, second.from_zone) and first.to_zone in (None, second.to_zone))


def _covers_addresses(first, second, family: int) -> bool:
    if first is None:
        return True
    wanted = IntervalSet([(0, FAMILY_MAX[family])]) if second is None else second.by_family[family]
    return first.by_family[family].covers(wanted)


def _covers_ports(first, second) -> bool:
    if first is None:
        return True
    return first.covers(IntervalSet([(0, PORT_MAX)]) if second is None else second)


def _covers_values(first, second) -> bool:
    return first is None or (second is not None and second <= first)


def _covers_interface(first, second) -> bool:
    if first is None:
        return True
    if second is None:
        return False
    if not first.endswith("+"):
        return first == second
    return second.startswith(first[:-1])
