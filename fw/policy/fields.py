"""Parsers for one policy value each: a YAML node in, a checked Python value (or INVALID) out.

How it works: every parser takes the file's Reporter and the value's node, reports what is wrong
at the node that is wrong (the list element, not the whole list) and returns INVALID, so the
caller can go on checking the rest of the rule. Addresses become `AddressSet`s and ports
`IntervalSet`s (see intervals.py); "any" is None throughout.
"""

from __future__ import annotations

import difflib
import re

from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from fw.policy import schema
from fw.policy.diagnostics import Reporter
from fw.policy.intervals import PORT_MAX, AddressSet, IntervalSet, parse_network
from fw.policy.source import items

INVALID = type("Invalid", (), {"__repr__": lambda self: "INVALID", "__slots__": ()})()
STR = "tag:yaml.org,2002:str"
INT = "tag:yaml.org,2002:int"
BOOL = "tag:yaml.org,2002:bool"
NULL = "tag:yaml.org,2002:null"
FLOAT = "tag:yaml.org,2002:float"
PORT_RANGE = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*$")
SET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
INTERFACE = re.compile(r"^[^\s/:]{1,15}$")  # Linux: IFNAMSIZ 16 with the NUL, no '/', ':' or space
ANY_WORD = "any"


def scalar(rep: Reporter, node, what: str):
    """A scalar node's value (str, int, bool, float, None), or INVALID (reported)."""
    if not isinstance(node, ScalarNode):
        rep.error(node, f"{what} must be a single value, not a {_kind(node)}")
        return INVALID
    if node.tag == INT:
        value = _yaml_int(node.value)
        if value is None:
            rep.error(node, f"{what}: '{node.value}' reads as a base-60 number in YAML 1.1; quote it")
            return INVALID
        return value
    if node.tag == BOOL:
        return node.value.lower() in ("yes", "true", "on")
    if node.tag == NULL:
        return None
    if node.tag == FLOAT:
        try:
            return float(node.value.replace("_", ""))
        except ValueError:  # .inf, .nan
            return node.value
    return node.value


def _yaml_int(text: str) -> int | None:
    """YAML 1.1 integers as PyYAML reads them (0x.., 0b.., 0.. octal); None for base 60."""
    digits = text.replace("_", "")
    sign = -1 if digits.startswith("-") else 1
    digits = digits.lstrip("+-")
    if ":" in digits:
        return None
    if digits.startswith(("0b", "0x")):
        return sign * int(digits, 0)
    if len(digits) > 1 and digits.startswith("0"):
        return sign * int(digits, 8)
    return sign * int(digits)


def _kind(node) -> str:
    if isinstance(node, MappingNode):
        return "mapping"
    return "list" if isinstance(node, SequenceNode) else "value"


def unique_name(rep: Reporter, node, entries: dict, names: dict, what: str):
    """An entry's `name`: text, not among `names` (name -> (reporter, node), updated); or INVALID."""
    if "name" not in entries:
        rep.error(node, f"{what} has no 'name' (every {what} needs a unique name)")
        return INVALID
    name_node = entries["name"][1]
    name = scalar(rep, name_node, "name")
    if name is INVALID:
        return INVALID
    if not isinstance(name, str) or not name.strip():
        rep.error(name_node, f"a {what} name must be text")
        return INVALID
    if name in names:
        rep.error(name_node, f"duplicate {what} name '{name}' (first at {first_place(rep, names[name])})")
        return INVALID
    names[name] = (rep, name_node)
    return name


def first_place(rep: Reporter, first: tuple) -> str:
    """Where (reporter, node) is, seen from `rep`'s file: `line N`, or `file:N` in another file."""
    first_rep, first_node = first
    line = first_node.start_mark.line + 1
    return f"line {line}" if first_rep is rep else f"{first_rep.file}:{line}"


def boolean(rep: Reporter, node, what: str):
    if isinstance(node, ScalarNode) and node.tag == BOOL:
        return scalar(rep, node, what)
    rep.error(node, f"{what} must be true or false")
    return INVALID


def positive_int(rep: Reporter, node, what: str):
    if isinstance(node, ScalarNode) and node.tag == INT:
        value = scalar(rep, node, what)
        if value is INVALID or value > 0:
            return value
    rep.error(node, f"{what} must be a positive integer")
    return INVALID


def choice(rep: Reporter, node, what: str, known):
    """One of `known` (e.g. an action)."""
    if not isinstance(node, ScalarNode):
        rep.error(node, f"{what} must be one of {', '.join(known)}")
        return INVALID
    value = scalar(rep, node, what)
    if value is INVALID or value in known:
        return value
    rep.error(node, f"unknown {what} '{node.value}' (expected {', '.join(known)})")
    return INVALID


def proto(rep: Reporter, node):
    """tcp | udp | icmp | icmpv6 | any | a number 0-255 -> protocol number, None for any."""
    value = scalar(rep, node, "proto")
    if value is INVALID:
        return INVALID
    if value == ANY_WORD:
        return None
    if isinstance(value, str) and value.lower() in schema.PROTOCOL_NAMES:
        return schema.PROTOCOL_NAMES[value.lower()]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255:
        return value
    rep.error(node, f"unknown protocol '{node.value}' (expected tcp, udp, icmp, icmpv6, any or a "
                    "number 0-255)")
    return INVALID


def ports(rep: Reporter, node, what: str):
    """A port, an "A-B" range, or a list of them -> IntervalSet (None when it is 0-65535)."""
    nodes = node.value if isinstance(node, SequenceNode) else [node]
    if not nodes:
        rep.error(node, f"{what} must not be an empty list")
        return INVALID
    pairs = [_port_item(rep, item, what) for item in nodes]
    if INVALID in pairs:
        return INVALID
    result = IntervalSet(pairs)
    return None if result.is_full(PORT_MAX) else result


def _port_item(rep: Reporter, node, what: str):
    value = scalar(rep, node, what)
    if value is INVALID:
        return INVALID
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= PORT_MAX:
            return (value, value)
        rep.error(node, f"port {value} is out of range (0-{PORT_MAX})")
        return INVALID
    match = PORT_RANGE.match(value) if isinstance(value, str) else None
    if match is None:
        rep.error(node, f"{what} must be a port, a range \"A-B\" or a list of them")
        return INVALID
    low, high = int(match[1]), int(match[2])
    if high > PORT_MAX:
        rep.error(node, f"port range '{value}' is out of range (0-{PORT_MAX})")
    elif low > high:
        rep.error(node, f"port range '{value}' is empty (start > end)")
    else:
        return (low, high)
    return INVALID


def address_set(rep: Reporter, node, name: str):
    """A set definition: an address/CIDR or a list of them -> AddressSet."""
    nodes = node.value if isinstance(node, SequenceNode) else [node]
    networks = []
    for item in nodes:
        if isinstance(item, ScalarNode) and item.value.startswith("$"):
            rep.error(item, f"set '{name}' refers to {item.value}: sets hold addresses only")
            networks.append(INVALID)
        else:
            networks.append(_network(rep, item))
    return INVALID if INVALID in networks else AddressSet.of_networks(networks)


def addresses(rep: Reporter, node, what: str, sets: dict):
    """address | CIDR | $set | any | a list of them | {not: X} -> AddressSet, None for any."""
    result = _address_expr(rep, node, what, sets)
    if result is INVALID:
        return INVALID
    return None if result.is_any() else result


def _address_expr(rep: Reporter, node, what: str, sets: dict):
    if isinstance(node, SequenceNode):
        parts = [_address_expr(rep, item, what, sets) for item in node.value]
        if INVALID in parts:
            return INVALID
        result = AddressSet()
        for part in parts:
            result = result.union(part)
        return result
    if isinstance(node, MappingNode):
        entries = items(rep, node, ("not",), what)
        if len(entries) != len(node.value):
            return INVALID
        if len(entries) != 1:
            rep.error(node, f"{what}: a negation is written {{not: X}}")
            return INVALID
        inner = _address_expr(rep, entries[0][2], what, sets)
        return INVALID if inner is INVALID else inner.complement()
    if isinstance(node, ScalarNode) and node.tag == STR and node.value == ANY_WORD:
        return AddressSet().complement()
    if isinstance(node, ScalarNode) and node.value.startswith("$"):
        name = node.value[1:]
        if name not in sets:
            close = difflib.get_close_matches(name, list(sets), n=1, cutoff=0.7)
            hint = f" (did you mean '${close[0]}'?)" if close else ""
            rep.error(node, f"undefined set '{node.value}'{hint}")
            return INVALID
        return sets[name]  # INVALID when the set itself was wrong (reported there)
    network = _network(rep, node)
    return INVALID if network is INVALID else AddressSet.of_networks([network])


def _network(rep: Reporter, node):
    if not isinstance(node, ScalarNode) or node.tag == NULL:
        rep.error(node, "expected an address or CIDR")
        return INVALID
    try:
        return parse_network(node.value)
    except ValueError as exc:
        rep.error(node, str(exc))
        return INVALID


def icmp_values(rep: Reporter, node, what: str, names: dict):
    """icmp_type/icmp_code: a name, a number 0-255 or a list -> frozenset of numbers."""
    nodes = node.value if isinstance(node, SequenceNode) else [node]
    if not nodes:
        rep.error(node, f"{what} must not be an empty list")
        return INVALID
    values = [_icmp_value(rep, item, what, names) for item in nodes]
    return INVALID if INVALID in values else frozenset(values)


def _icmp_value(rep: Reporter, node, what: str, names: dict):
    value = scalar(rep, node, what)
    if value is INVALID:
        return INVALID
    if isinstance(value, str) and value in names:
        return names[value]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255:
        return value
    close = difflib.get_close_matches(str(value), list(names), n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'?" if close else "expected a name or a number 0-255"
    rep.error(node, f"unknown {what} '{node.value}' ({hint})")
    return INVALID


def interface(rep: Reporter, node, what: str):
    value = scalar(rep, node, what)
    if value is INVALID:
        return INVALID
    if isinstance(value, str) and INTERFACE.match(value) and value != "+":
        return value
    rep.error(node, f"{what} must be an interface name (up to 15 characters; a trailing '+' "
                    "matches a prefix)")
    return INVALID


def timeouts(rep: Reporter, node, where: str):
    """A mapping of nf_conntrack timeout names to seconds."""
    if not isinstance(node, MappingNode):
        rep.error(node, f"{where} must be a mapping of timeout names to seconds")
        return INVALID
    result = {}
    entries = items(rep, node, schema.TIMEOUT_KEYS, where)
    for key, _key_node, value in entries:
        result[key] = positive_int(rep, value, f"timeout '{key}'")
    if len(entries) != len(node.value) or INVALID in result.values():
        return INVALID
    return result
