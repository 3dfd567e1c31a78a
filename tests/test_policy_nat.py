"""The `nat` policy list: entries checked into NatEntry, every error located (file:line:col)."""

from __future__ import annotations

import ipaddress
import textwrap

from fw.policy import fields
from fw.policy.diagnostics import PolicyError, Reporter
from fw.policy.fields import INVALID
from fw.policy.nat import nat_entries
from fw.policy.source import compose

SETS_TEXT = "clients: [198.51.100.0/24, 2001:db8:1::/48]"


def load(text: str):
    """(entries or INVALID, formatted errors) for a policy text holding `sets` and `nat`."""
    text = textwrap.dedent(text)
    sink: list = []
    rep = Reporter("p.yaml", text, sink)
    root = compose(rep, text)
    top = {key.value: value for key, value in root.value}
    sets = {}
    if "sets" in top:
        sets = {k.value: fields.address_set(rep, v, k.value) for k, v in top["sets"].value}
    result = nat_entries(rep, top["nat"], sets)
    return result, PolicyError(sink).format() if sink else ""


def raw(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


def test_the_spec_example():
    entries, errors = load("""
        sets:
          clients: [198.51.100.0/24]
        nat:
          - name: outbound
            type: masquerade
            src: $clients
            oif: eth1
          - name: to-partner
            type: snat
            dst: 192.0.2.0/24
            to: 203.0.113.1
            ports: "20000-29999"
          - name: web-in
            type: dnat
            proto: tcp
            dst: 203.0.113.1
            dport: 8080
            to: "198.51.100.10:80"
          - name: v6-range
            type: snat
            to: "2001:db8::1-2001:db8::5"
          - name: v6-in
            type: dnat
            proto: udp
            to: "[2001:db8:1::10]:53"
    """)
    assert errors == ""
    outbound, partner, web, v6_range, v6_in = entries
    assert (outbound.type, outbound.to_first, outbound.ports, outbound.selector.oif) == \
        ("masquerade", None, (1024, 65535), "eth1")
    assert (partner.family, partner.to_first, partner.to_last, partner.ports) == \
        (4, raw("203.0.113.1"), raw("203.0.113.1"), (20000, 29999))
    assert (web.to_first, web.to_port, web.selector.proto, web.line) == (raw("198.51.100.10"), 80, 6, 14)
    assert (v6_range.family, v6_range.to_last) == (6, raw("2001:db8::5"))
    assert (v6_in.to_first, v6_in.to_port) == (raw("2001:db8:1::10"), 53)


def test_every_error_at_once_each_located():
    entries, errors = load("""
        nat:
          - name: a
            type: snatt
          - type: dnat
            to: 198.51.100.10
          - name: a
            type: masquerade
            to: 192.0.2.1
          - name: c
            type: dnat
            oif: eth0
            to: "198.51.100.10:80"
          - name: d
            type: snat
            to: "192.0.2.9-192.0.2.1"
            ports: "70000"
          - name: e
            type: dnat
            proto: tcp
            to: "[2001:db8::1]:99999"
          - name: f
            type: snat
            src: 198.51.100.0/24
            to: 2001:db8::1
          - name: g
            type: dnat
            ports: 1-2
            protocol: tcp
    """)
    assert entries is INVALID
    heads = [line for line in errors.splitlines() if ": error: " in line]
    assert heads == [
        "p.yaml:4:11: error: unknown nat type 'snatt' (expected snat, masquerade, dnat)",
        "p.yaml:5:5: error: nat entry has no 'name' (every nat entry needs a unique name)",
        "p.yaml:7:11: error: duplicate nat entry name 'a' (first at line 3)",
        "p.yaml:9:5: error: masquerade takes the outgoing interface's address: no 'to'",
        "p.yaml:12:5: error: dnat is decided before routing: it cannot match 'oif'",
        "p.yaml:13:9: error: to: a port needs proto tcp or udp",
        "p.yaml:16:9: error: to: '192.0.2.9-192.0.2.1' ends before it starts",
        "p.yaml:17:12: error: ports: '70000' is not a range within 1-65535, low to high",
        "p.yaml:21:9: error: to: port '99999' is not within 1-65535",
        "p.yaml:25:9: error: to: an IPv6 address, but this entry matches no IPv6 packet",
        "p.yaml:29:5: error: unknown key 'protocol' in nat entry (did you mean 'proto'?)",
        "p.yaml:26:5: error: dnat needs 'to' (\"198.51.100.10:80\")",
        "p.yaml:28:5: error: dnat takes its port from 'to' (\"address:port\"): no 'ports'",
    ]


def test_an_empty_or_wrong_nat_list():
    assert load("nat:\n") == ([], "")
    entries, errors = load("nat: {name: x}\n")
    assert entries is INVALID and "nat must be a list of entries" in errors


def test_sets_and_families():
    entries, errors = load(f"""
        sets:
          {SETS_TEXT}
        nat:
          - name: both
            type: masquerade
            src: $clients
          - name: v4-only-to
            type: snat
            src: $clients
            to: 192.0.2.1
    """)
    assert errors == "" and entries[0].selector.families == frozenset((4, 6))
