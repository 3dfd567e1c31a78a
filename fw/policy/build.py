"""From merged YAML nodes to a Policy: every section checked, every problem collected.

How it works: `build` walks the sections in a fixed order (version, defaults, sets, timeouts,
options, timeout_overrides, rules, nat, virtual_servers), each parser reporting at the offending node and going on; sets
come before rules because rules refer to them, whichever file defines them. Warnings that need the
whole rule list (rules that never match, shadowed rules) come last, only for a policy without
errors. The revision is the sha256 of the merged policy's values (comments, layout and the split
into files do not change it), 12 hex digits.
"""

from __future__ import annotations

import hashlib
import json

from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from fw.policy import fields, limits, nat, rules, schema
from fw.policy import virtual_servers as vsmod
from fw.policy import zones as zonemod
from fw.policy.diagnostics import ERROR, Diagnostic
from fw.policy.fields import INVALID
from fw.policy.index import RuleIndex
from fw.policy.model import Policy
from fw.policy.shadow import shadowing
from fw.policy.source import Merged, items


def build(merged: Merged, name: str, sink: list[Diagnostic]) -> Policy | None:
    """The Policy, or None when any error was reported (all of them are in `sink`)."""
    singles = merged.singles
    version = _version(merged, name, sink)
    default_action, default_log, default_log_limit = _defaults(singles.get("defaults"))
    sets = _sets(merged)
    timeouts = (fields.timeouts(singles["timeouts"][0], singles["timeouts"][2], "timeouts")
                if "timeouts" in singles else {})
    options = _options(singles.get("options"))
    zones = _zones(singles, sets, options)
    overrides = _overrides(singles.get("timeout_overrides"), sets)
    rule_list, names = [], {}
    for rep, node in merged.rules:
        rule = rules.rule(rep, node, len(rule_list), sets, names, zones)
        rule_list.append(None if rule is INVALID else rule)  # None: the policy is invalid anyway
    nat_list, nat_names = [], {}
    for rep, node in merged.nat:
        entries = nat.nat_entries(rep, node, sets, nat_names, first_index=len(nat_list))
        nat_list.extend(() if entries is INVALID else entries)
    vs_list, vs_seen = [], {"names": {}, "addresses": {}}
    for rep, node in merged.virtual_servers:
        entries = vsmod.virtual_servers(rep, node, vs_seen, nat_list)
        vs_list.extend(() if entries is INVALID else entries)
    if any(d.severity == ERROR for d in sink):
        return None
    _share_equal_values(rule_list)
    _rule_warnings(rule_list, names)
    file_order = {rep.file: i for i, rep in enumerate(merged.reporters)}
    warnings = sorted(sink, key=lambda d: d.sort_key(file_order))
    return Policy(
        rules=rule_list, default_action=default_action, default_log=default_log,
        sets=sets, timeouts=timeouts, timeout_overrides=overrides, options=options, nat=nat_list,
        virtual_servers=vs_list,
        revision=revision(merged), source_files=[rep.file for rep in merged.reporters],
        sources=[(rep.file, rep.text) for rep in merged.reporters], version=version,
        warnings=warnings, zones=zones, default_log_limit=default_log_limit,
    )


def _version(merged: Merged, name: str, sink: list[Diagnostic]):
    if "version" not in merged.singles:
        if merged.broken:
            return INVALID
        sink.append(Diagnostic(ERROR, name, "no 'version' (add 'version: 1')"))
        return INVALID
    rep, _key, node = merged.singles["version"]
    value = fields.scalar(rep, node, "version")
    if value is not INVALID and (isinstance(value, bool) or value not in schema.VERSIONS):
        rep.error(node, f"unsupported version '{node.value}' (expected "
                        f"{', '.join(map(str, schema.VERSIONS))})")
        return INVALID
    return value


def _defaults(entry):
    action, log, log_limit = schema.DEFAULT_ACTION, schema.DEFAULT_LOG, None
    if entry is None:
        return action, log, log_limit
    rep, _key, node = entry
    for key, _key_node, value in items(rep, node, schema.DEFAULTS_KEYS, "defaults"):
        if key == "action":
            action = fields.choice(rep, value, "action", schema.ACTIONS)
        elif key == "log_limit":
            log_limit = limits.rate(rep, value, "log_limit")
        else:
            log = fields.boolean(rep, value, "log")
    return action, log, log_limit


def _zones(singles: dict, sets: dict, options: dict):
    """The zones and the spoof_check mode; strict/loose without zones is an error at the option."""
    zones = zonemod.parse(singles.get("zones"), sets, options.get("spoof_check"))
    if "options" in singles:
        rep, _key, node = singles["options"]
        for key, value in (node.value if isinstance(node, MappingNode) else ()):
            if getattr(key, "value", None) == "spoof_check":
                zonemod.check_mode(rep, value, zones)
    return zones


def _sets(merged: Merged) -> dict:
    """name -> AddressSet (INVALID for a set with errors, so that its uses are not re-reported)."""
    sets = {}
    for name, (rep, key_node, value) in merged.sets.items():
        if not fields.SET_NAME.match(name):
            rep.error(key_node, f"bad set name '{name}' (letters, digits, '_', '-', '.')")
        sets[name] = fields.address_set(rep, value, name)
    return sets


def _options(entry) -> dict:
    options = schema.option_defaults()
    if entry is None:
        return options
    rep, _key, node = entry
    for key, _key_node, value in items(rep, node, schema.OPTIONS, "options"):
        kind = schema.OPTION_KINDS[schema.OPTIONS[key].kind]
        parsed = fields.scalar(rep, value, f"option '{key}'")
        if parsed is not INVALID and not kind.check(parsed):
            rep.error(value, f"option '{key}' must be {kind.expected}")
        options[key] = parsed
    return options


def _overrides(entry, sets: dict) -> list:
    if entry is None:
        return []
    rep, _key, node = entry
    if isinstance(node, ScalarNode) and node.tag == fields.NULL:
        return []
    if not isinstance(node, SequenceNode):
        rep.error(node, "timeout_overrides must be a list of {match keys, timeouts} mappings")
        return []
    return [rules.timeout_override(rep, item, i, sets) for i, item in enumerate(node.value)]


def _share_equal_values(rule_list: list) -> None:
    """Rules with equal address or port sets share one object (less memory, less for the GC)."""
    shared: dict = {}
    for rule in rule_list:
        for field in ("src", "dst", "sport", "dport", "icmp_type", "icmp_code"):
            value = getattr(rule, field)
            if value is not None:
                setattr(rule, field, shared.setdefault(value, value))


def _rule_warnings(rule_list: list, names: dict) -> None:
    """Rules that never match, and rules shadowed by an earlier one (at the rule's name)."""
    for rule in rule_list:
        if not rule.families:
            rep, node = names[rule.name]
            rep.warning(node, f"rule '{rule.name}' never matches: {rules.never_matches_reason(rule)}")
    for rule, earlier in shadowing(rule_list, RuleIndex(rule_list)):
        rep, node = names[rule.name]
        place = f"line {earlier.line}" if earlier.file == rule.file else f"{earlier.file}:{earlier.line}"
        rep.warning(node, f"rule '{rule.name}' is shadowed by rule '{earlier.name}' ({place})")


def revision(merged: Merged) -> str:
    """sha256 of the merged policy's values, canonical JSON, first 12 hex digits."""
    document = {key: _plain(value) for key, (_rep, _k, value) in merged.singles.items()}
    document["sets"] = {name: _plain(value) for name, (_rep, _k, value) in sorted(merged.sets.items())}
    document["rules"] = [_plain(node) for _rep, node in merged.rules]
    if merged.nat:  # absent from the document otherwise: revisions of policies without NAT unchanged
        document["nat"] = [_plain(node) for _rep, node in merged.nat]
    if merged.virtual_servers:
        document["virtual_servers"] = [_plain(node) for _rep, node in merged.virtual_servers]
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _plain(node):
    if isinstance(node, MappingNode):
        return {key.value: _plain(value) for key, value in node.value}
    if isinstance(node, SequenceNode):
        return [_plain(item) for item in node.value]
    return node.value
