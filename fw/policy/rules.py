"""Checking one rule, or one timeout override, from its YAML mapping into a Rule/TimeoutOverride.

How it works: the mapping's known keys are parsed one by one (fields.py), each error reported at
its node; then the checks that involve several keys: ports only with tcp/udp, ICMP type and code
only with icmp/icmpv6 (their names are looked up in that protocol's table), `alg` only with its
protocol. The address families a rule can match at all are worked out here, so that a rule whose
source is IPv4 only and destination IPv6 only is flagged (a warning: it never matches).
"""

from __future__ import annotations

from yaml.nodes import MappingNode

from fw.packet.constants import PROTO_NAMES
from fw.policy import fields, limits, schema
from fw.policy import zones as zonemod
from fw.policy.diagnostics import Reporter
from fw.policy.fields import INVALID
from fw.policy.intervals import FAMILIES
from fw.policy.model import Rule, TimeoutOverride
from fw.policy.source import items

BOTH_FAMILIES = frozenset(FAMILIES)
FAMILY_SETS = {f: f for f in (frozenset(), frozenset((4,)), frozenset((6,)), BOTH_FAMILIES)}
FAMILY_WORDS = {frozenset((4,)): "IPv4 only", frozenset((6,)): "IPv6 only", frozenset(): "no address"}


def selector(rep: Reporter, entries: dict, sets: dict, where: str, ports_need_proto: bool):
    """The match keys of a rule or override -> Selector keyword arguments, or INVALID."""
    proto = fields.proto(rep, entries["proto"][1]) if "proto" in entries else None
    match = {"proto": proto}
    for key in ("src", "dst"):
        if key in entries:
            match[key] = fields.addresses(rep, entries[key][1], key, sets)
    for key in ("sport", "dport"):
        if key in entries:
            match[key] = fields.ports(rep, entries[key][1], key)
            if proto is not INVALID and (proto is not None or ports_need_proto) \
                    and proto not in schema.PORT_PROTOCOLS:
                rep.error(entries[key][0], f"'{key}' needs proto tcp or udp "
                                           f"(this {where} has {_proto_words(entries)})")
                match[key] = INVALID
    for key in ("icmp_type", "icmp_code"):
        if key not in entries:
            continue
        if proto is not INVALID and proto not in schema.ICMP_PROTOCOLS:
            rep.error(entries[key][0], f"'{key}' needs proto icmp or icmpv6 "
                                       f"(this {where} has {_proto_words(entries)})")
            match[key] = INVALID
        elif proto is not INVALID:
            names = schema.ICMP_NAMES[proto][0 if key == "icmp_type" else 1]
            match[key] = fields.icmp_values(rep, entries[key][1], key.replace("_", " "), names)
    for key in ("iif", "oif"):
        if key in entries:
            match[key] = fields.interface(rep, entries[key][1], key)
    if INVALID in match.values():
        return INVALID
    match["families"] = families(match)
    return match


def _proto_words(entries: dict) -> str:
    if "proto" not in entries:
        return "no proto"
    return f"proto {entries['proto'][1].value}"


def families(match: dict) -> frozenset:
    """The address families a selector can match: its protocol's, its src's and its dst's."""
    result = schema.PROTOCOL_FAMILIES.get(match.get("proto"), BOTH_FAMILIES)
    for key in ("src", "dst"):
        if match.get(key) is not None:
            result &= match[key].families()
    return FAMILY_SETS[result]  # one object per value: rules share them


def never_matches_reason(selector) -> str:
    """Why a selector with no family left never matches, e.g. 'src is IPv4 only, dst is IPv6 only'."""
    parts = []
    if selector.proto in schema.PROTOCOL_FAMILIES:
        parts.append(f"proto {PROTO_NAMES[selector.proto]} is "
                     f"{FAMILY_WORDS[schema.PROTOCOL_FAMILIES[selector.proto]]}")
    for key in ("src", "dst"):
        addresses = getattr(selector, key)
        if addresses is not None and addresses.families() != frozenset(FAMILIES):
            words = FAMILY_WORDS[addresses.families()]
            parts.append(f"{key} matches {words}" if not addresses.families() else f"{key} is {words}")
    return ", ".join(parts)


def rule(rep: Reporter, node, index: int, sets: dict, names: dict, zones=zonemod.NO_ZONES):
    """A Rule, or INVALID. `names` maps rule names seen so far to (reporter, name node)."""
    entries = {key: (key_node, value) for key, key_node, value in items(rep, node, schema.RULE_KEYS, "rule")}
    if not isinstance(node, MappingNode):
        return INVALID
    ok = len(entries) == len(node.value)
    name = fields.unique_name(rep, node, entries, names, "rule")
    if "action" in entries:
        action = fields.choice(rep, entries["action"][1], "action", schema.ACTIONS)
    else:
        rep.error(node, f"rule {_label(name)}has no 'action' (expected {', '.join(schema.ACTIONS)})")
        action = INVALID
    match = selector(rep, entries, sets, "rule", ports_need_proto=True)
    options = {
        "log": fields.boolean(rep, entries["log"][1], "log") if "log" in entries else False,
        "rst_on_timeout": (fields.boolean(rep, entries["rst_on_timeout"][1], "rst_on_timeout")
                           if "rst_on_timeout" in entries else None),
        "timeouts": (fields.timeouts(rep, entries["timeouts"][1], "rule timeouts")
                     if "timeouts" in entries else {}),
        "alg": _alg(rep, entries, match),
        **_policy_power(rep, entries, action, zones),
    }
    if match is not INVALID:
        match.update({key: options.pop(key) for key in ("from_zone", "to_zone") if key in options})
    if INVALID in (name, action, match) or INVALID in options.values() or not ok:
        return INVALID
    where = entries["name"][1].start_mark
    return Rule(name, index, action, file=rep.file, line=where.line + 1, **options, **match)


def _policy_power(rep: Reporter, entries: dict, action, zones) -> dict:
    """limit, log_limit, from_zone, to_zone (only those written)."""
    found = {}
    if "limit" in entries:
        found["limit"] = limits.rule_limit(rep, entries["limit"][0], entries["limit"][1], action)
    if "log_limit" in entries:
        found["log_limit"] = limits.rate(rep, entries["log_limit"][1], "log_limit")
    for key in ("from_zone", "to_zone"):
        if key in entries:
            found[key] = zonemod.zone_ref(rep, entries[key][1], key, zones)
    return found


def _label(name) -> str:
    return f"'{name}' " if isinstance(name, str) else ""


def _alg(rep: Reporter, entries: dict, match):
    if "alg" not in entries:
        return None
    alg = fields.choice(rep, entries["alg"][1], "alg", schema.ALGS)
    if alg is INVALID or match is INVALID:
        return INVALID
    if match["proto"] != schema.ALG_PROTOCOLS[alg]:
        rep.error(entries["alg"][0], f"alg '{alg}' needs proto {PROTO_NAMES[schema.ALG_PROTOCOLS[alg]]}")
        return INVALID
    return alg


def timeout_override(rep: Reporter, node, index: int, sets: dict):
    """One `timeout_overrides` entry -> TimeoutOverride, or INVALID."""
    entries = {key: (key_node, value)
               for key, key_node, value in items(rep, node, schema.OVERRIDE_KEYS, "timeout_overrides")}
    if not isinstance(node, MappingNode):
        return INVALID
    ok = len(entries) == len(node.value)
    match = selector(rep, entries, sets, "timeout override", ports_need_proto=False)
    timeouts = {}
    for key in schema.TIMEOUT_KEYS:
        if key in entries:
            timeouts[key] = fields.positive_int(rep, entries[key][1], f"timeout '{key}'")
    rst = None
    if "rst_on_timeout" in entries:
        rst = fields.boolean(rep, entries["rst_on_timeout"][1], "rst_on_timeout")
    if ok and not any(key in entries for key in schema.MATCH_KEYS):
        rep.error(node, "a timeout override needs at least one of " + ", ".join(schema.MATCH_KEYS)
                  + " (for every session, use 'timeouts')")
        ok = False
    elif ok and not timeouts and "rst_on_timeout" not in entries:
        rep.error(node, "a timeout override sets nothing (add a timeout or rst_on_timeout)")
        ok = False
    if not ok or match is INVALID or rst is INVALID or INVALID in timeouts.values():
        return INVALID
    return TimeoutOverride(index, timeouts=timeouts, rst_on_timeout=rst, **match)
