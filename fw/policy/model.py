# cython: annotation_typing=False
"""The checked policy: Rule, TimeoutOverride and Policy, with first-match lookup and timeouts.

How it works: a `Selector` holds what a rule (or a timeout override) matches, already compiled:
protocol number or None, `AddressSet`s and port `IntervalSet`s or None for any, ICMP type and code
frozensets, interface names (a trailing '+' matches a prefix). `matches(pkt, src, dst, iif, oif)`
takes the addresses as ints, computed once per lookup. `Policy.match` asks the `RuleIndex`
(index.py); `Policy.timeouts_for` resolves a new session's timeouts in SPEC's order and caches the
merged table per (rule, override) pair. A Policy is not changed after loading; swap it whole.
Compiled (model.pxd), Selector, Rule and TimeoutOverride are extension types: `matches` reads
their fields from C and tests interval membership with one bisect (`_within`).
"""

from __future__ import annotations

from bisect import bisect_right
from types import MappingProxyType

from fw.policy.index import RuleIndex
from fw.policy.schema import PORT_PROTOCOLS
from fw.policy.zones import NO_ZONES

NO_TIMEOUTS = MappingProxyType({})


class Selector:
    """What a rule or timeout override matches. None means any, throughout."""

    __slots__ = ("index", "proto", "src", "dst", "sport", "dport", "icmp_type", "icmp_code", "iif",
                 "oif", "families", "iif_prefix", "oif_prefix", "from_zone", "to_zone")

    def __init__(self, index, proto=None, src=None, dst=None, sport=None, dport=None,
                 icmp_type=None, icmp_code=None, iif=None, oif=None, families=frozenset((4, 6)),
                 from_zone=None, to_zone=None):
        self.index = index
        self.proto = proto
        self.src = src
        self.dst = dst
        self.sport = sport
        self.dport = dport
        self.icmp_type = icmp_type
        self.icmp_code = icmp_code
        self.iif = iif
        self.oif = oif
        self.families = families  # the address families this can match at all
        self.iif_prefix = iif[:-1] if iif and iif.endswith("+") else None
        self.oif_prefix = oif[:-1] if oif and oif.endswith("+") else None
        self.from_zone = from_zone  # a fw.policy.zones.Zone: iif must be one of its interfaces
        self.to_zone = to_zone

    def matches(self, pkt, src: int, dst: int, iif: str | None, oif: str | None) -> bool:
        """Does the packet (with its addresses as ints and its interfaces) match?"""
        proto = self.proto
        if proto is not None and pkt.proto != proto:
            return False
        family = pkt.family
        if family not in self.families:
            return False
        addresses = self.src
        if addresses is not None and not _within(addresses.by_family[family], src):
            return False
        addresses = self.dst
        if addresses is not None and not _within(addresses.by_family[family], dst):
            return False
        if self.dport is not None and not _within(self.dport, pkt.dport):
            return False
        if self.sport is not None and not _within(self.sport, pkt.sport):
            return False
        if self.icmp_type is not None and pkt.icmp_type not in self.icmp_type:
            return False
        if self.icmp_code is not None and pkt.icmp_code not in self.icmp_code:
            return False
        if self.iif is not None and not _interface_matches(self.iif, self.iif_prefix, iif):
            return False
        if self.oif is not None and not _interface_matches(self.oif, self.oif_prefix, oif):
            return False
        if self.from_zone is not None and not self.from_zone.has_interface(iif):
            return False
        return self.to_zone is None or self.to_zone.has_interface(oif)

    def own_interfaces(self) -> tuple:
        """(iif, oif) names that satisfy this selector's own interface and zone conditions (None
        where it has none): for checks that judge a rule without a packet (shadowing, re-check)."""
        iif = self.iif_prefix if self.iif_prefix is not None else self.iif
        if iif is None and self.from_zone is not None:
            iif = self.from_zone.sample_interface()
        oif = self.oif_prefix if self.oif_prefix is not None else self.oif
        if oif is None and self.to_zone is not None:
            oif = self.to_zone.sample_interface()
        return iif, oif

    @property
    def interface_bound(self) -> bool:
        """Does matching depend on the packet's interfaces (iif, oif, from_zone, to_zone)?"""
        return not (self.iif is None and self.oif is None and self.from_zone is None and self.to_zone is None)


def _within(intervals, value) -> bool:
    """`value in intervals` (an IntervalSet of fw.policy.intervals), its bisect written out: compiled,
    a C call instead of the class's Python-level __contains__."""
    starts = intervals.starts
    i = bisect_right(starts, value) - 1
    return i >= 0 and value <= intervals.ends[i]


def _interface_matches(name: str, prefix: str | None, given: str | None) -> bool:
    if given is None:  # replay has no interfaces: a rule that names one never matches
        return False
    return given == name if prefix is None else given.startswith(prefix)


class Rule(Selector):
    """One rule. `index` is its position in the merged policy; `file`/`line` where it is written."""

    __slots__ = ("name", "action", "log", "alg", "timeouts", "rst_on_timeout", "file", "line", "limit",
                 "log_limit")

    def __init__(self, name, index, action, *, log=False, alg=None, timeouts=None,
                 rst_on_timeout=None, file="", line=0, limit=None, log_limit=None, **match):
        super().__init__(index, **match)
        self.name = name
        self.action = action
        self.log = log
        self.alg = alg
        self.timeouts = MappingProxyType(dict(timeouts)) if timeouts else NO_TIMEOUTS
        self.rst_on_timeout = rst_on_timeout  # None: not set by the rule
        self.file = file
        self.line = line
        self.limit = limit  # a fw.policy.limits.RuleLimit, or None
        self.log_limit = log_limit  # a fw.policy.limits.Rate for its log events, or None

    @property
    def reason(self) -> str:
        return f"rule:{self.name}"

    def __repr__(self) -> str:
        return f"Rule({self.name!r}, #{self.index}, {self.action})"


class TimeoutOverride(Selector):
    """A `timeout_overrides` entry: where it applies, and the timeouts it sets."""

    __slots__ = ("timeouts", "rst_on_timeout")

    def __init__(self, index, *, timeouts=None, rst_on_timeout=None, **match):
        super().__init__(index, **match)
        self.timeouts = MappingProxyType(dict(timeouts or {}))
        self.rst_on_timeout = rst_on_timeout

    def matches(self, pkt, src: int, dst: int, iif: str | None, oif: str | None) -> bool:
        """As Selector; ports given without a protocol apply to TCP and UDP only."""
        if (self.dport is not None or self.sport is not None) and pkt.proto not in PORT_PROTOCOLS:
            return False
        return Selector.matches(self, pkt, src, dst, iif, oif)

    def __repr__(self) -> str:
        return f"TimeoutOverride(#{self.index}, {dict(self.timeouts)})"


class Policy:
    """A loaded, valid policy. Read-only by convention: the engine swaps policies whole."""

    def __init__(self, *, rules, default_action, default_log=False, sets=None, timeouts=None,
                 timeout_overrides=(), options=None, revision="", source_files=(), sources=(),
                 warnings=(), version=1, zones=None, default_log_limit=None, nat=(), virtual_servers=()):
        self.version = version
        self.rules = tuple(rules)
        self.default_action = default_action
        self.default_log = default_log
        self.sets = MappingProxyType(dict(sets or {}))
        self.timeouts = MappingProxyType(dict(timeouts or {}))
        self.timeout_overrides = tuple(timeout_overrides)
        self.options = MappingProxyType(dict(options or {}))
        self.revision = revision
        self.source_files = tuple(source_files)
        self.sources = tuple(sources)  # (name, text) of each file, for the store
        self.warnings = tuple(warnings)
        self.nat = tuple(nat)  # fw.policy.nat.NatEntry, in order
        self.virtual_servers = tuple(virtual_servers)  # fw.policy.virtual_servers.VirtualServer
        self.zones = zones if zones is not None else NO_ZONES  # fw.policy.zones.Zones
        self.default_log_limit = default_log_limit  # a Rate for the default action's log, or None
        self._index = RuleIndex(self.rules)
        self._by_name = {rule.name: rule for rule in self.rules}
        self._timeouts_builtin = None
        self._timeouts_cache: dict = {}

    def match(self, pkt, iif: str | None = None, oif: str | None = None) -> Rule | None:
        """The first rule matching a packet that would open a new session, or None (default)."""
        return self._index.match(pkt, iif, oif)

    @property
    def translates(self) -> bool:
        """Whether the policy changes addresses (a `nat` entry or a virtual server)."""
        return bool(self.nat or self.virtual_servers)

    def rule(self, name: str) -> Rule | None:
        return self._by_name.get(name)

    def timeouts_for(self, rule: Rule | None, pkt, builtin) -> tuple:
        """(timeout table, rst_on_timeout) for a session opened by `pkt` under `rule` (None: the
        default action). Per key, first to last: the rule's `timeouts`, the first matching
        `timeout_overrides` entry, the policy's `timeouts`, `builtin`; rst_on_timeout likewise,
        ending at `options.rst_on_timeout`. The table returned is shared: do not change it."""
        override = self.override_for(pkt) if self.timeout_overrides else None
        if builtin is not self._timeouts_builtin:
            self._timeouts_builtin, self._timeouts_cache = builtin, {}
        key = (rule.index if rule is not None else -1, override.index if override is not None else -1)
        resolved = self._timeouts_cache.get(key)
        if resolved is None:
            table = dict(builtin)
            table.update(self.timeouts)
            rst = self.options.get("rst_on_timeout", False)
            for layer in (override, rule):
                if layer is not None:
                    table.update(layer.timeouts)
                    if layer.rst_on_timeout is not None:
                        rst = layer.rst_on_timeout
            resolved = self._timeouts_cache[key] = (MappingProxyType(table), rst)
        return resolved

    def override_for(self, pkt) -> TimeoutOverride | None:
        """The first `timeout_overrides` entry matching the packet, or None."""
        src = int.from_bytes(pkt.src, "big")
        dst = int.from_bytes(pkt.dst, "big")
        for override in self.timeout_overrides:
            if override.matches(pkt, src, dst, None, None):
                return override
        return None

    def summary(self) -> str:
        rules, sets, virtual = len(self.rules), len(self.sets), len(self.virtual_servers)
        balanced = f"{virtual} virtual server{'s' if virtual != 1 else ''}, " if virtual else ""
        return (f"{rules} rule{'s' if rules != 1 else ''}, {sets} set{'s' if sets != 1 else ''}, {balanced}"
                f"default {self.default_action}, revision {self.revision}")

    def __repr__(self) -> str:
        return f"Policy({self.revision}, {len(self.rules)} rules)"
