"""`fw policy test`: which rule decides a packet that would open a new session, and why.

How it works (as PAN-OS's `test security-policy-match`): the packet is built from the
command-line fields with fw.packet.build and parsed back, so the policy sees exactly what the
engine would; `Policy.match` picks the rule, the same call the engine makes. The explanation
then checks each criterion of a rule on its own (protocol, address family, addresses, ports,
ICMP type and code, interfaces, zones), mirroring `fw.policy.model.Selector.matches`, and shows it with
the value as written in the policy (from the stored sources) beside the packet's value. Rules
before the deciding one are listed with the first criterion that rules them out.
Only rules are considered: sessions, FTP expectations and flood limits are the engine's state.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field

import yaml

from fw.packet import build, parse
from fw.packet.constants import ICMP_TYPES, ICMPV6_TYPES, PROTO_NAMES, PROTOCOLS
from fw.packet.text import flow_text

TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
SYN = 2
DEFAULT_SPORT = 40000
MATCH_FIELDS = ("proto", "src", "dst", "sport", "dport", "icmp_type", "icmp_code", "iif", "oif", "from_zone",
                "to_zone")


class ProbeError(ValueError):
    """The fields do not describe a packet (bad usage)."""


@dataclass
class Criterion:
    field: str
    written: str  # as in the policy
    packet: str  # the packet's value
    matches: bool


@dataclass
class Skipped:
    rule: str
    index: int
    place: str  # file:line
    criterion: Criterion


@dataclass
class Explanation:
    flow: str
    revision: str
    action: str  # accept | drop | reject
    reason: str  # rule:NAME or default
    rule: dict | None  # name, index, place, action, log, alg
    criteria: list[Criterion] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["verdict"] = "accept" if self.action == "accept" else "drop"
        return data


def probe_packet(proto: str, src: str, dst: str, sport: int | None = None, dport: int | None = None,
                 icmp_type: str | None = None, icmp_code: int = 0):
    """The parsed packet the fields describe; ProbeError when they do not fit together."""
    try:
        src_addr, dst_addr = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    except ValueError as exc:
        raise ProbeError(str(exc)) from None
    if src_addr.version != dst_addr.version:
        raise ProbeError("--src and --dst must be of one address family")
    family = src_addr.version
    number = _proto_number(proto, family)
    src_bytes, dst_bytes = src_addr.packed, dst_addr.packed
    if number in (TCP, UDP):
        if dport is None:
            raise ProbeError(f"{proto} needs --dport")
        sport = DEFAULT_SPORT if sport is None else sport
        data = (build.tcp(src_bytes, dst_bytes, sport, dport, 1, 0, SYN) if number == TCP
                else build.udp(src_bytes, dst_bytes, sport, dport))
    elif number in (ICMP, ICMPV6):
        if sport is not None or dport is not None:
            raise ProbeError(f"{proto} has no ports (use --icmp-type)")
        kind = _icmp_type(icmp_type, number)
        data = build.ip_packet(src_bytes, dst_bytes, number,
                               build.icmp_message(src_bytes, dst_bytes, kind, icmp_code, 0x10000 | 1))
    else:
        if sport is not None or dport is not None:
            raise ProbeError(f"protocol {proto} has no ports for the rules")
        data = build.ip_packet(src_bytes, dst_bytes, number, b"")
    return parse(data)


def _proto_number(proto: str, family: int) -> int:
    name = proto.strip().lower()
    number = int(name) if name.isdigit() else PROTOCOLS.get(name)
    if number is None or not 0 <= number <= 255:
        raise ProbeError(f"unknown protocol {proto!r} (tcp, udp, icmp, icmpv6, a name or a number)")
    if number == ICMP and family == 6:
        raise ProbeError("icmp is IPv4's; use icmpv6 with IPv6 addresses")
    if number == ICMPV6 and family == 4:
        raise ProbeError("icmpv6 needs IPv6 addresses")
    return number


def _icmp_type(text: str | None, proto: int) -> int:
    if text is None:
        return 8 if proto == ICMP else 128
    names = ICMP_TYPES if proto == ICMP else ICMPV6_TYPES
    value = int(text) if text.isdigit() else names.get(text.lower())
    if value is None or not 0 <= value <= 255:
        raise ProbeError(f"unknown ICMP type {text!r}")
    return value


def explain(policy, pkt, iif: str | None = None, oif: str | None = None) -> Explanation:
    """Which rule of `policy` decides `pkt` (coming in on `iif`, going out on `oif`), and why."""
    written = written_rules(policy)
    rule = policy.match(pkt, iif, oif)
    src, dst = int.from_bytes(pkt.src, "big"), int.from_bytes(pkt.dst, "big")
    last = rule.index if rule is not None else len(policy.rules)
    skipped = []
    for earlier in policy.rules[:last]:
        failed = next((c for c in criteria(earlier, pkt, src, dst, iif, oif, written.get(earlier.index, {}))
                       if not c.matches), None)
        if failed is not None:
            skipped.append(Skipped(earlier.name, earlier.index, _place(earlier), failed))
    if rule is None:
        return Explanation(flow_text(pkt), policy.revision, policy.default_action, "default", None,
                           [], skipped)
    details = {"name": rule.name, "index": rule.index, "place": _place(rule), "action": rule.action,
               "log": rule.log, "alg": rule.alg}
    return Explanation(flow_text(pkt), policy.revision, rule.action, rule.reason, details,
                       list(criteria(rule, pkt, src, dst, iif, oif, written.get(rule.index, {}))), skipped)


def criteria(rule, pkt, src: int, dst: int, iif, oif, written: dict):
    """Each criterion the rule has, checked on its own (what Selector.matches checks, in order)."""
    family = pkt.family
    if rule.proto is not None:
        yield Criterion("proto", _shown(written, "proto"), _proto_name(pkt.proto), pkt.proto == rule.proto)
    if family not in rule.families:
        only = " and ".join(f"IPv{f}" for f in sorted(rule.families)) or "no family"
        yield Criterion("family", f"{only} only", f"IPv{family}", False)
    for name, selector, value, shown in (("src", rule.src, src, pkt.src), ("dst", rule.dst, dst, pkt.dst)):
        if selector is not None:
            yield Criterion(name, _shown(written, name), str(ipaddress.ip_address(shown)),
                            value in selector.by_family[family])
    for name in ("sport", "dport", "icmp_type", "icmp_code"):
        selector = getattr(rule, name)
        if selector is not None:
            value = getattr(pkt, name)
            yield Criterion(name, _shown(written, name), str(value), value in selector)
    for name, given in (("iif", iif), ("oif", oif)):
        wanted = getattr(rule, name)
        if wanted is not None:
            matches = given is not None and (given.startswith(wanted[:-1]) if wanted.endswith("+")
                                             else given == wanted)
            yield Criterion(name, wanted, given or "(none)", matches)
    for name, zone, given in (("from_zone", rule.from_zone, iif), ("to_zone", rule.to_zone, oif)):
        if zone is not None:
            yield Criterion(name, f"{zone.name} ({', '.join(zone.interfaces)})", given or "(none)",
                            zone.has_interface(given))


def written_rules(policy) -> dict[int, dict]:
    """The rules as written (plain YAML values), by their index in the merged policy."""
    rules: list = []
    for _name, text in policy.sources:
        try:
            document = yaml.safe_load(text) or {}
        except yaml.YAMLError:
            return {}
        rules += document.get("rules") or [] if isinstance(document, dict) else []
    return {index: rule for index, rule in enumerate(rules) if isinstance(rule, dict)}


def _shown(written: dict, key: str) -> str:
    return _plain_text(written[key]) if key in written else "(compiled)"


def _plain_text(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_plain_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_plain_text(v)}" for k, v in value.items()) + "}"
    return str(value)


def _proto_name(number: int) -> str:
    return PROTO_NAMES.get(number, str(number))


def _place(rule) -> str:
    return f"{rule.file}:{rule.line}" if rule.file else f"#{rule.index + 1}"
