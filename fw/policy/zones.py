"""Zones: interfaces and the addresses that may arrive on them; the anti-spoofing check.

How it works: `zones:` maps a name to `{interfaces: [...], addresses: X}` (X an address expression,
as a rule's src). A `Zones` object answers two questions. `of(ifname)`: the zone of an interface
(exact names in a dict, names ending in '+' as prefixes), for rules' `from_zone`/`to_zone`.
`spoofed(pkt, iif)`: is the packet's source impossible on the interface it came in on? With
`spoof_check: loose` (Linux rp_filter 2) a source must belong to some zone; with `strict` (rp_filter
1, pf's antispoof) it must belong to the zone of its interface, and no other zone may hold it more
narrowly (the zone a route lookup would pick: the one whose interval around the address is the
smallest, so an inside /24 beats an outside `any`). Both are worked out once per policy into one
IntervalSet per zone and family (`allowed`): the boundaries of every zone's intervals cut the
address space into segments, and each segment goes to the zones holding it most narrowly; so a
packet costs a cached interface lookup and one bisect. A packet on an interface of no zone, or with
no interface at all (replay), is not checked. The engine asks only when zones and a check are set.
"""

from __future__ import annotations

from bisect import bisect_right

from yaml.nodes import ScalarNode, SequenceNode

from fw.policy import fields
from fw.policy.diagnostics import Reporter
from fw.policy.fields import INVALID
from fw.policy.intervals import FAMILIES, AddressSet, IntervalSet
from fw.policy.source import items, unknown_message

ZONE_KEYS = ("interfaces", "addresses")
SPOOF_MODES = ("strict", "loose", "off")


class Zone:
    """One zone: its name, interface names (a trailing '+' is a prefix) and addresses (AddressSet)."""

    __slots__ = ("name", "interfaces", "addresses")

    def __init__(self, name: str, interfaces: tuple, addresses):
        self.name = name
        self.interfaces = interfaces
        self.addresses = addresses

    def has_interface(self, ifname: str | None) -> bool:
        """Is `ifname` one of this zone's interfaces? (None, replay's: never.)"""
        if ifname is None:
            return False
        return any(ifname == name if not name.endswith("+") else ifname.startswith(name[:-1])
                   for name in self.interfaces)

    def sample_interface(self) -> str:
        """An interface name of this zone (for checks that need one, as the re-check)."""
        name = self.interfaces[0]
        return name[:-1] if name.endswith("+") else name

    def __repr__(self) -> str:
        return f"Zone({self.name!r}, {list(self.interfaces)})"


class Zones:
    """The policy's zones and its spoof_check mode."""

    def __init__(self, zones: dict, mode: str = "off", broken=frozenset()):
        self.by_name = dict(zones)
        self.mode = mode
        self.broken = broken  # names of zones with errors (already reported; not "unknown")
        self._exact = {}
        self._prefixes = []
        for zone in zones.values():
            for name in zone.interfaces:
                if name.endswith("+"):
                    self._prefixes.append((name[:-1], zone))
                else:
                    self._exact[name] = zone
        self._prefixes.sort(key=lambda item: -len(item[0]))  # the longest prefix first
        self._cache: dict = {}
        self.allowed = _allowed(zones, mode) if mode in ("strict", "loose") else {}

    @property
    def checks(self) -> bool:
        return self.mode in ("strict", "loose") and bool(self.by_name)

    def of(self, ifname: str | None) -> Zone | None:
        """The zone of an interface, or None."""
        if ifname is None:
            return None
        try:
            return self._cache[ifname]
        except KeyError:
            pass
        zone = self._exact.get(ifname)
        if zone is None:
            zone = next((z for prefix, z in self._prefixes if ifname.startswith(prefix)), None)
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[ifname] = zone
        return zone

    def spoofed(self, pkt, iif: str | None) -> bool:
        """True when the packet's source may not come in on `iif` (see the module's docstring)."""
        try:
            zone = self._cache[iif]
        except KeyError:
            zone = self.of(iif)
        if zone is None:
            return False
        return int.from_bytes(pkt.src, "big") not in self.allowed[zone.name][pkt.family]


NO_ZONES = Zones({})


def _allowed(zones: dict, mode: str) -> dict:
    """{zone name: {family: IntervalSet}}: the sources each zone admits under `mode`."""
    result: dict = {name: {} for name in zones}
    for family in FAMILIES:
        sets = {name: zone.addresses.by_family[family] for name, zone in zones.items()}
        if mode == "loose":
            union = IntervalSet([pair for intervals in sets.values() for pair in intervals])
            for name in zones:
                result[name][family] = union
            continue
        bounds = sorted({0} | {b for intervals in sets.values() for start, end in intervals
                               for b in (start, end + 1)})
        pieces: dict = {name: [] for name in zones}
        for low, high in zip(bounds, bounds[1:] + [None], strict=True):
            widths = {name: w for name, intervals in sets.items() if (w := _width(intervals, low)) is not None}
            if widths:
                narrowest = min(widths.values())
                last = (high - 1) if high is not None else low
                for name, width in widths.items():
                    if width == narrowest:
                        pieces[name].append((low, max(low, last)))
        for name in zones:
            result[name][family] = IntervalSet(pieces[name])
    return result


def _width(intervals, value: int) -> int | None:
    """The size of the interval of `intervals` holding `value`, or None when none does."""
    i = bisect_right(intervals.starts, value) - 1
    if i < 0 or value > intervals.ends[i]:
        return None
    return intervals.ends[i] - intervals.starts[i]


def parse(entry, sets: dict, mode) -> Zones:
    """The `zones:` section (rep, key node, value node) or None -> Zones (errors reported)."""
    if entry is None:
        return Zones({}, _mode(mode))
    rep, _key, node = entry
    zones: dict[str, Zone] = {}
    broken: set[str] = set()
    owners: dict[str, str] = {}
    for name, key_node, value in items(rep, node, None, "zones"):
        if not fields.SET_NAME.match(name):
            rep.error(key_node, f"bad zone name '{name}' (letters, digits, '_', '-', '.')")
            broken.add(name)
            continue
        zone = _zone(rep, name, value, sets, owners)
        if zone is INVALID:
            broken.add(name)
        else:
            zones[name] = zone
    return Zones(zones, _mode(mode), frozenset(broken))


def _mode(mode) -> str:
    return "off" if mode in (None, False) else mode


def _zone(rep: Reporter, name: str, node, sets: dict, owners: dict):
    entries = {key: (k, v) for key, k, v in items(rep, node, ZONE_KEYS, f"zone '{name}'")}
    if not hasattr(node, "value") or len(entries) != len(node.value):
        return INVALID
    missing = [key for key in ZONE_KEYS if key not in entries]
    if missing:
        rep.error(node, f"zone '{name}' needs {' and '.join(missing)}")
        return INVALID
    interfaces = _interfaces(rep, name, entries["interfaces"][1], owners)
    addresses = fields.addresses(rep, entries["addresses"][1], f"zone '{name}' addresses", sets)
    if interfaces is INVALID or addresses is INVALID:
        return INVALID
    return Zone(name, interfaces, AddressSet().complement() if addresses is None else addresses)


def _interfaces(rep: Reporter, zone: str, node, owners: dict):
    nodes = node.value if isinstance(node, SequenceNode) else [node]
    if not nodes:
        rep.error(node, f"zone '{zone}' needs at least one interface")
        return INVALID
    names = []
    for item in nodes:
        value = fields.interface(rep, item, "a zone interface")
        if value is INVALID:
            names.append(INVALID)
        elif value in owners:
            rep.error(item, f"interface '{value}' is already in zone '{owners[value]}'")
            names.append(INVALID)
        else:
            owners[value] = zone
            names.append(value)
    return INVALID if INVALID in names else tuple(names)


def zone_ref(rep: Reporter, node, what: str, zones: Zones):
    """A rule's from_zone/to_zone: a zone name -> Zone, or INVALID."""
    value = fields.scalar(rep, node, what)
    if value is INVALID:
        return INVALID
    if isinstance(value, str) and value in zones.by_name:
        return zones.by_name[value]
    if value in zones.broken:
        return INVALID
    known = list(zones.by_name) + sorted(zones.broken)
    if not known:
        rep.error(node, f"{what} '{node.value}': the policy defines no zones")
    else:
        rep.error(node, unknown_message("zone", str(node.value), known))
    return INVALID


def check_mode(rep: Reporter, node, zones: Zones) -> None:
    """spoof_check strict/loose needs zones (reported at the option's value)."""
    if zones.mode in ("strict", "loose") and not zones.by_name and not zones.broken \
            and isinstance(node, ScalarNode):
        rep.error(node, f"spoof_check {zones.mode} needs zones (a 'zones:' section)")
