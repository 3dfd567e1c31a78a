"""Checking the policy's `nat` list (SPEC "Translation") into NatEntry values, every error located.

How it works: each entry is a mapping read like a rule (source.items for the keys, rules.selector
for proto/src/dst/sport/dport/iif/oif, so matching is a `Selector`), then the translation keys:
- `name` (required, unique among nat entries) and `type`: snat | masquerade | dnat;
- `to`: snat an address or a range "a-b" (one family, a <= b); dnat "address[:port]" (IPv6 in
  brackets: "[2001:db8::10]:80"; a port needs proto tcp or udp); masquerade has none (its address is
  the route's preferred source on the way out);
- `ports`: snat and masquerade only, "lo-hi" or one port within 1-65535 (default 1024-65535);
- dnat is decided before routing and may not match `oif`;
- a `to` of a family the entry's match excludes never applies: an error.
Every problem is reported at its node through the Reporter and the list goes on, as in the rest of
fw/policy. build.py calls it for each file's `nat` list (the lists concatenate in file order, names
unique across them); the Policy keeps the entries in `policy.nat`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from fw.policy import fields, rules
from fw.policy.diagnostics import Reporter
from fw.policy.fields import INVALID
from fw.policy.model import Selector
from fw.policy.source import items

NAT_TYPES = ("snat", "masquerade", "dnat")
NAT_KEYS = ("name", "type", "proto", "src", "dst", "sport", "dport", "iif", "oif", "to", "ports")
DEFAULT_PORTS = (1024, 65535)
_PORT_RANGE = re.compile(r"^\s*([0-9]{1,5})\s*(?:-\s*([0-9]{1,5})\s*)?$")
_BRACKETED = re.compile(r"^\[([^\]]+)\](?::([0-9]{1,5}))?$")


@dataclass(frozen=True, slots=True)
class NatEntry:
    """One checked `nat` entry. `to_first`/`to_last`: the translated address range (raw bytes;
    None for masquerade); `to_port`: dnat's new port or None; `ports`: the source port range."""

    name: str
    index: int
    type: str
    selector: Selector
    family: int | None
    to_first: bytes | None
    to_last: bytes | None
    to_port: int | None
    ports: tuple[int, int]
    file: str
    line: int


def nat_entries(rep: Reporter, node, sets: dict, names: dict | None = None,
                first_index: int = 0) -> list | object:
    """The `nat` list node -> [NatEntry], or INVALID when anything was reported.

    `names` maps the names seen so far (across files) to (reporter, name node); `first_index` is
    the position of the list's first entry among all the files' entries."""
    if isinstance(node, ScalarNode) and node.tag == fields.NULL:
        return []
    if not isinstance(node, SequenceNode):
        rep.error(node, "nat must be a list of entries")
        return INVALID
    names = {} if names is None else names
    result = [nat_entry(rep, item, first_index + index, sets, names) for index, item in enumerate(node.value)]
    return INVALID if INVALID in result else result


def nat_entry(rep: Reporter, node, index: int, sets: dict, names: dict):
    """One entry -> NatEntry, or INVALID (reported)."""
    entries = {key: (key_node, value) for key, key_node, value in items(rep, node, NAT_KEYS, "nat entry")}
    if not isinstance(node, MappingNode):
        return INVALID
    ok = len(entries) == len(node.value)
    name = fields.unique_name(rep, node, entries, names, "nat entry")
    kind = _type(rep, node, entries, name)
    match = rules.selector(rep, entries, sets, "nat entry", ports_need_proto=True)
    if kind is INVALID or match is INVALID:
        if kind is not INVALID:  # what does not need the match is still checked: every error at once
            _ports(rep, entries, kind)
        return INVALID
    if kind == "dnat" and "oif" in entries:
        rep.error(entries["oif"][0], "dnat is decided before routing: it cannot match 'oif'")
        ok = False
    to = _to(rep, node, entries, kind, match)
    ports = _ports(rep, entries, kind)
    if INVALID in (name, to, ports) or not ok:
        return INVALID
    family, first, last, port = to
    where = entries["name"][1].start_mark
    return NatEntry(name, index, kind, Selector(index, **match), family, first, last, port, ports,
                    rep.file, where.line + 1)


def _type(rep: Reporter, node, entries: dict, name):
    if "type" not in entries:
        label = f"'{name}' " if isinstance(name, str) else ""
        rep.error(node, f"nat entry {label}has no 'type' (expected {', '.join(NAT_TYPES)})")
        return INVALID
    return fields.choice(rep, entries["type"][1], "nat type", NAT_TYPES)


def _to(rep: Reporter, node, entries: dict, kind: str, match: dict):
    """(family, first, last, port) of `to`; (None, None, None, None) for masquerade."""
    if kind == "masquerade":
        if "to" in entries:
            rep.error(entries["to"][0], "masquerade takes the outgoing interface's address: no 'to'")
            return INVALID
        return None, None, None, None
    if "to" not in entries:
        example = '"198.51.100.10:80"' if kind == "dnat" else "203.0.113.1 or a range a-b"
        rep.error(node, f"{kind} needs 'to' ({example})")
        return INVALID
    to_node = entries["to"][1]
    text = fields.scalar(rep, to_node, "to")
    if text is INVALID:
        return INVALID
    text = str(text).strip()
    parsed = _dnat_target(text) if kind == "dnat" else _snat_range(text)
    if isinstance(parsed, str):
        rep.error(to_node, f"to: {parsed}")
        return INVALID
    family, first, last, port = parsed
    if port is not None and match["proto"] not in (6, 17):
        rep.error(to_node, "to: a port needs proto tcp or udp")
        return INVALID
    if family not in match["families"]:
        rep.error(to_node, f"to: an IPv{family} address, but this entry matches no IPv{family} packet")
        return INVALID
    return parsed


def _dnat_target(text: str):
    """"addr", "addr:port", "[v6]", "[v6]:port" -> (family, raw, raw, port), or an error text."""
    bracketed = _BRACKETED.match(text)
    if bracketed:
        host, port_text = bracketed.groups()
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"'{text}' is not address[:port] (IPv6: [address]:port)"
    port = None
    if port_text is not None:
        port = int(port_text) if port_text.isdigit() else 0
        if not 1 <= port <= 65535:
            return f"port '{port_text}' is not within 1-65535"
    return address.version, address.packed, address.packed, port


def _snat_range(text: str):
    """"a" or "a-b" -> (family, first, last, None), or an error text."""
    first_text, _, last_text = text.partition("-")
    try:
        first = ipaddress.ip_address(first_text.strip())
        last = ipaddress.ip_address(last_text.strip()) if last_text else first
    except ValueError:
        return f"'{text}' is not an address or a range a-b"
    if first.version != last.version:
        return f"'{text}' mixes IPv4 and IPv6"
    if last < first:
        return f"'{text}' ends before it starts"
    return first.version, first.packed, last.packed, None


def _ports(rep: Reporter, entries: dict, kind: str):
    if "ports" not in entries:
        return DEFAULT_PORTS
    key_node, node = entries["ports"]
    if kind == "dnat":
        rep.error(key_node, "dnat takes its port from 'to' (\"address:port\"): no 'ports'")
        return INVALID
    value = fields.scalar(rep, node, "ports")
    if value is INVALID:
        return INVALID
    match = _PORT_RANGE.match(str(value))
    if match is None:
        rep.error(node, f"ports: '{node.value}' is not a port or a range lo-hi")
        return INVALID
    lo = int(match.group(1))
    hi = int(match.group(2)) if match.group(2) else lo
    if not 1 <= lo <= hi <= 65535:
        rep.error(node, f"ports: '{node.value}' is not a range within 1-65535, low to high")
        return INVALID
    return lo, hi
