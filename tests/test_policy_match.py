"""Which rule a new session meets: first match, addresses, ports, protocols, ICMP, interfaces.

The indexed matcher is checked against a reference written independently from the policy's
source data with the ipaddress module (hypothesis: random small policies, random packets).
"""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from fw.packet import build, parse
from fw.packet.constants import ICMP_TYPES, ICMPV6_TYPES
from fw.policy import load_policy, load_policy_sources
from fw.policy.index import RuleIndex
from fw.policy.shadow import covers, shadowing

ROOT = Path(__file__).resolve().parent.parent
CLIENT, SERVER = "198.51.100.10", "203.0.113.10"
CLIENT6, SERVER6 = "2001:db8:1::10", "2001:db8:2::10"


class Pkt:
    """Just the fields a policy reads of a Packet (fw.packet.Packet has these and more)."""

    __slots__ = ("family", "src", "dst", "proto", "sport", "dport", "icmp_type", "icmp_code")

    def __init__(self, src, dst, proto=6, dport=80, sport=40000, icmp_type=0, icmp_code=0):
        self.src, self.dst = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
        self.family = 4 if len(self.src) == 4 else 6
        self.proto, self.sport, self.dport = proto, sport, dport
        self.icmp_type, self.icmp_code = icmp_type, icmp_code

    def __repr__(self):
        return (f"Pkt({ipaddress.ip_address(self.src)} -> {ipaddress.ip_address(self.dst)} "
                f"p{self.proto} {self.sport}->{self.dport} icmp {self.icmp_type}/{self.icmp_code})")


def policy_of(rules_yaml: str, sets: str = ""):
    text = f"version: 1\n{sets}rules:\n{rules_yaml}"
    return load_policy_sources([("test.yaml", text)])


def matched(policy, pkt, iif=None, oif=None):
    rule = policy.match(pkt, iif, oif)
    return None if rule is None else rule.name


def test_first_matching_rule_wins_in_file_order():
    policy = policy_of("""
  - {name: deny-one, action: drop, proto: tcp, src: 198.51.100.66, dport: 80}
  - {name: web, action: accept, proto: tcp, dport: [80, 443]}
  - {name: all-tcp, action: reject, proto: tcp}
""")
    assert matched(policy, Pkt("198.51.100.66", SERVER, dport=80)) == "deny-one"
    assert matched(policy, Pkt(CLIENT, SERVER, dport=80)) == "web"
    assert matched(policy, Pkt("198.51.100.66", SERVER, dport=443)) == "web"
    assert matched(policy, Pkt(CLIENT, SERVER, dport=22)) == "all-tcp"
    assert matched(policy, Pkt(CLIENT, SERVER, proto=17, dport=80)) is None


def test_negation_sets_and_lists():
    policy = policy_of("""
  - {name: not-servers, action: drop, src: $clients, dst: {not: [$servers, 192.0.2.0/24]}}
  - {name: to-servers, action: accept, src: [$clients, 192.0.2.7]}
""", sets="sets:\n  clients: [198.51.100.0/24, '2001:db8:1::/64']\n"
                "  servers: [203.0.113.10, '2001:db8:2::10']\n")
    assert matched(policy, Pkt(CLIENT, SERVER)) == "to-servers"
    assert matched(policy, Pkt(CLIENT, "203.0.113.11")) == "not-servers"
    assert matched(policy, Pkt(CLIENT, "192.0.2.1")) == "to-servers"  # excluded by the not-list
    assert matched(policy, Pkt(CLIENT6, SERVER6)) == "to-servers"
    assert matched(policy, Pkt(CLIENT6, "2001:db8:2::11")) == "not-servers"
    # {not: X} is everything but X, IPv6 included
    assert matched(policy, Pkt(CLIENT6, "2001:db8:ffff::1")) == "not-servers"
    assert matched(policy, Pkt("192.0.2.7", SERVER)) == "to-servers"
    assert matched(policy, Pkt("192.0.2.8", SERVER)) is None


def test_ipv4_and_ipv6_rules_see_only_their_family():
    policy = policy_of("""
  - {name: v4, action: accept, dst: 203.0.113.0/24}
  - {name: v6, action: accept, dst: '2001:db8:2::/64'}
  - {name: v6-host-bits-off, action: accept, src: '::/0'}
""")
    assert matched(policy, Pkt(CLIENT, SERVER)) == "v4"
    assert matched(policy, Pkt(CLIENT6, SERVER6)) == "v6"
    assert matched(policy, Pkt(CLIENT6, "2001:db8:3::1")) == "v6-host-bits-off"
    assert matched(policy, Pkt(CLIENT, "192.0.2.1")) is None


def test_port_ranges_lists_and_source_ports():
    policy = policy_of("""
  - {name: high, action: accept, proto: udp, dport: ["8000-8080", 9000], sport: "1024-65535"}
  - {name: low-source, action: drop, proto: udp}
""")
    for port, expected in [(7999, "low-source"), (8000, "high"), (8080, "high"), (8081, "low-source"),
                           (9000, "high")]:
        assert matched(policy, Pkt(CLIENT, SERVER, proto=17, dport=port)) == expected
    assert matched(policy, Pkt(CLIENT, SERVER, proto=17, dport=8000, sport=53)) == "low-source"


def test_any_and_numbered_protocols():
    policy = policy_of("""
  - {name: gre, action: accept, proto: 47}
  - {name: esp, action: accept, proto: esp}
  - {name: tcp-by-number, action: accept, proto: 6, dport: 22}
  - {name: anything, action: drop, proto: any, dst: 203.0.113.99}
""")
    assert matched(policy, Pkt(CLIENT, SERVER, proto=47, dport=0)) == "gre"
    assert matched(policy, Pkt(CLIENT, SERVER, proto=50, dport=0)) == "esp"
    assert matched(policy, Pkt(CLIENT, SERVER, proto=6, dport=22)) == "tcp-by-number"
    assert matched(policy, Pkt(CLIENT, "203.0.113.99", proto=132, dport=0)) == "anything"
    assert matched(policy, Pkt(CLIENT, SERVER, proto=132, dport=0)) is None


def test_icmp_type_and_code_names_follow_the_protocol():
    policy = policy_of("""
  - {name: ping, action: accept, proto: icmp, icmp_type: echo-request}
  - {name: ping6, action: accept, proto: icmpv6, icmp_type: [echo-request, 129]}
  - name: frag-needed
    action: accept
    proto: icmp
    icmp_type: destination-unreachable
    icmp_code: frag-needed
""")
    assert matched(policy, Pkt(CLIENT, SERVER, proto=1, dport=0, icmp_type=8)) == "ping"
    assert matched(policy, Pkt(CLIENT, SERVER, proto=1, dport=0, icmp_type=0)) is None
    assert matched(policy, Pkt(CLIENT6, SERVER6, proto=58, dport=0, icmp_type=128)) == "ping6"
    assert matched(policy, Pkt(CLIENT6, SERVER6, proto=58, dport=0, icmp_type=129)) == "ping6"
    assert matched(policy, Pkt(CLIENT6, SERVER6, proto=58, dport=0, icmp_type=8)) is None
    assert matched(policy, Pkt(CLIENT, SERVER, proto=1, dport=0, icmp_type=3, icmp_code=4)) == "frag-needed"
    assert matched(policy, Pkt(CLIENT, SERVER, proto=1, dport=0, icmp_type=3, icmp_code=3)) is None


def test_interfaces_never_match_without_interfaces_and_plus_is_a_prefix():
    policy = policy_of("""
  - {name: from-lan, action: accept, iif: eth1}
  - {name: to-vpn, action: accept, oif: wg+}
  - {name: rest, action: drop}
""")
    pkt = Pkt(CLIENT, SERVER)
    assert matched(policy, pkt) == "rest"  # replay: no interfaces
    assert matched(policy, pkt, iif="eth1") == "from-lan"
    assert matched(policy, pkt, iif="eth10") == "rest"
    assert matched(policy, pkt, iif="eth0", oif="wg0") == "to-vpn"
    assert matched(policy, pkt, iif="eth0", oif="wg-office") == "to-vpn"
    assert matched(policy, pkt, iif="eth0", oif="eth2") == "rest"


def test_lab_policy_with_real_packets():
    policy = load_policy(ROOT / "policies/lab.yaml")
    syn = parse(build.tcp(CLIENT, SERVER, 40000, 443, 1000, 0, 2))
    assert matched(policy, syn) == "allow-web"
    assert matched(policy, parse(build.tcp(CLIENT6, SERVER6, 40000, 21, 1000, 0, 2))) == "allow-ftp"
    assert matched(policy, parse(build.udp(CLIENT, SERVER, 40000, 5201, b"x"))) == "allow-iperf3-udp"
    assert matched(policy, parse(build.icmp_echo(CLIENT, SERVER, 1, 1, b"", False))) == "allow-ping"
    assert matched(policy, parse(build.icmp_echo(CLIENT6, SERVER6, 1, 1, b"", False))) == "allow-ping6"
    assert matched(policy, parse(build.icmp_echo(CLIENT, SERVER, 1, 1, b"", True))) is None  # a reply
    assert matched(policy, parse(build.tcp(SERVER, CLIENT, 80, 40000, 1, 0, 2))) is None  # inbound
    assert matched(policy, parse(build.tcp(CLIENT, "203.0.113.11", 40000, 80, 1, 0, 2))) is None


# -- the index against a reference --------------------------------------------------------------

SET_DEF = {"lab": ["198.51.100.0/25", "2001:db8:1::/64"]}
ADDRESSES = ["198.51.100.0/24", "198.51.100.0/25", "198.51.100.128/25", "198.51.100.10", "203.0.113.0/24",
             "203.0.113.10", "192.0.2.0/24", "2001:db8:1::/64", "2001:db8:1::10", "2001:db8::/32",
             "2001:db8:2::10", "$lab"]
PORTS = [22, 53, 80, 443, 8080, "80-90", "1000-2000", "0-1023", "60000-65535"]
ICMP_VALUES = ["echo-request", "echo-reply", "destination-unreachable", 0, 3, 8, 128]
INTERFACES = ["eth0", "eth1", "eth+", "wg0"]
PROTOS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, 47: 47}

addresses = st.one_of(
    st.lists(st.sampled_from(ADDRESSES), min_size=1, max_size=3),
    st.builds(lambda x: {"not": x}, st.lists(st.sampled_from(ADDRESSES), min_size=1, max_size=2)),
)


@st.composite
def rules(draw, index):
    rule = {"name": f"r{index}", "action": draw(st.sampled_from(["accept", "drop", "reject"]))}
    proto = draw(st.sampled_from([None, "tcp", "udp", "icmp", "icmpv6", 47]))
    if proto is not None:
        rule["proto"] = proto
    for key in ("src", "dst"):
        if draw(st.booleans()):
            rule[key] = draw(addresses)
    if proto in ("tcp", "udp"):
        for key in ("sport", "dport"):
            if draw(st.integers(0, 3)) > (2 if key == "sport" else 0):
                rule[key] = draw(st.lists(st.sampled_from(PORTS), min_size=1, max_size=3))
    if proto in ("icmp", "icmpv6") and draw(st.booleans()):
        rule["icmp_type"] = draw(st.lists(st.sampled_from(ICMP_VALUES), min_size=1, max_size=2))
    for key in ("iif", "oif"):
        if draw(st.integers(0, 4)) == 0:
            rule[key] = draw(st.sampled_from(INTERFACES))
    return rule


@st.composite
def policies(draw):
    count = draw(st.integers(0, 40))
    return [draw(rules(i)) for i in range(count)]


HOSTS4 = ["198.51.100.10", "198.51.100.200", "203.0.113.10", "203.0.113.77", "192.0.2.1", "10.1.2.3"]
HOSTS6 = ["2001:db8:1::10", "2001:db8:1::ffff", "2001:db8:2::10", "2001:db8:9::1", "fe80::1"]


@st.composite
def packets(draw):
    hosts = draw(st.sampled_from([HOSTS4, HOSTS6]))
    proto = draw(st.sampled_from([6, 17, 1, 58, 47]))
    ported = proto in (6, 17)
    port = st.sampled_from([0, 22, 53, 80, 85, 443, 1500, 8080, 40000, 65535]) if ported else st.just(0)
    pkt = Pkt(draw(st.sampled_from(hosts)), draw(st.sampled_from(hosts)), proto, draw(port), draw(port),
              draw(st.sampled_from([0, 3, 8, 128, 129])) if not ported else 0, 0)
    iif = draw(st.sampled_from([None, "eth0", "eth1", "eth12", "wg0"]))
    oif = draw(st.sampled_from([None, "eth0", "wg0"]))
    return pkt, iif, oif


def reference_matches(rule, pkt, iif, oif) -> bool:
    """SPEC's meaning of a rule, straight from its source data."""
    proto = rule.get("proto")
    if proto is not None and (PROTOS[proto] != pkt.proto
                              or (proto == "icmp" and pkt.family != 4)
                              or (proto == "icmpv6" and pkt.family != 6)):
        return False
    for key, raw in (("src", pkt.src), ("dst", pkt.dst)):
        if key in rule and not reference_address(rule[key], ipaddress.ip_address(raw)):
            return False
    for key, value in (("sport", pkt.sport), ("dport", pkt.dport)):
        if key in rule and not any(reference_port(item, value) for item in rule[key]):
            return False
    if "icmp_type" in rule:
        names = ICMP_TYPES if proto == "icmp" else ICMPV6_TYPES
        if pkt.icmp_type not in {names.get(v, v) for v in rule["icmp_type"]}:
            return False
    for key, name in (("iif", iif), ("oif", oif)):
        if key in rule:
            wanted = rule[key]
            if name is None or not (name == wanted or wanted.endswith("+") and name.startswith(wanted[:-1])):
                return False
    return True


def reference_address(spec, address) -> bool:
    if isinstance(spec, dict):
        return not reference_address(spec["not"], address)
    items = []
    for item in spec:
        items += SET_DEF[item[1:]] if item.startswith("$") else [item]
    return any(address in ipaddress.ip_network(item) for item in items)


def reference_port(item, value) -> bool:
    if isinstance(item, int):
        return item == value
    low, high = map(int, item.split("-"))
    return low <= value <= high


def load_rules(rule_list):
    text = yaml.safe_dump({"version": 1, "sets": SET_DEF, "rules": rule_list})
    return load_policy_sources([("random.yaml", text)])


@settings(max_examples=150, deadline=None)
@given(policies(), st.lists(packets(), min_size=1, max_size=25))
def test_indexed_matcher_agrees_with_a_reference(rule_list, cases):
    policy = load_rules(rule_list)
    dense = RuleIndex(policy.rules, min_indexed=1, max_span=2)  # indexes at every chance
    for pkt, iif, oif in cases:
        expected = next((r["name"] for r in rule_list if reference_matches(r, pkt, iif, oif)), None)
        assert matched(policy, pkt, iif, oif) == expected, (pkt, iif, oif)
        rule = dense.match(pkt, iif, oif)
        assert (rule.name if rule else None) == expected, ("dense index", pkt, iif, oif)


@settings(max_examples=100, deadline=None)
@given(policies(), st.lists(packets(), min_size=20, max_size=60))
def test_a_shadowed_rule_only_meets_packets_its_shadower_meets(rule_list, cases):
    policy = load_rules(rule_list)
    by_name = {rule["name"]: rule for rule in rule_list}
    pairs = shadowing(policy.rules, RuleIndex(policy.rules))
    reported = {w.message for w in policy.warnings if "shadowed" in w.message}
    assert reported == {f"rule '{b.name}' is shadowed by rule '{a.name}' (line {a.line})" for b, a in pairs}
    naive = [(b, next(a for a in policy.rules[:b.index] if covers(a, b))) for b in policy.rules
             if b.families and any(covers(a, b) for a in policy.rules[:b.index])]
    assert pairs == naive  # the probe finds every covering rule a full pairwise scan finds
    for shadowed, earlier in pairs:
        assert earlier.index < shadowed.index
        for pkt, iif, oif in cases:
            if reference_matches(by_name[shadowed.name], pkt, iif, oif):
                assert reference_matches(by_name[earlier.name], pkt, iif, oif), (pkt, iif, oif)


def test_shadowing_is_found_for_simple_cases():
    policy = load_rules([
        {"name": "all-tcp", "action": "drop", "proto": "tcp", "src": ["198.51.100.0/24"]},
        {"name": "web", "action": "accept", "proto": "tcp", "src": ["198.51.100.10"], "dport": [80]},
        {"name": "web6", "action": "accept", "proto": "tcp", "src": ["2001:db8:1::10"], "dport": [80]},
        {"name": "not-lab", "action": "drop", "src": {"not": ["$lab"]}},
        {"name": "outside", "action": "drop", "src": ["203.0.113.0/24"], "proto": "udp"},
    ])
    assert {(b.name, a.name) for b, a in shadowing(policy.rules, RuleIndex(policy.rules))} == {
        ("web", "all-tcp"), ("outside", "not-lab")}


# -- speed ---------------------------------------------------------------------------------------

def big_policy(count: int):
    """`count` rules of varied protocols, ports and sources, some for any protocol and port; the
    wanted packet matches only the last one."""
    lines = []
    for i in range(count - 1):
        if i % 50 == 49:
            lines.append(f"  - {{name: r{i}, action: drop, src: 10.{i % 250}.0.0/16}}")
            continue
        proto = ("udp", "tcp", "tcp", "icmp")[i % 4]
        ports = f", dport: {1024 + i % 60000}" if proto != "icmp" else ""
        lines.append(f"  - {{name: r{i}, action: accept, proto: {proto}, src: 192.0.2.{i % 250 + 1}{ports}}}")
    lines.append("  - {name: web, action: accept, proto: tcp, src: 198.51.100.0/24, dport: [80, 443]}")
    return policy_of("\n".join(lines) + "\n")


def match_rate(policy, pkts, repeat=5) -> float:
    """Best matches per second over a few runs."""
    match = policy.match
    assert match(pkts[0]).name == "web"
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for pkt in pkts:
            match(pkt)
        best = min(best, time.perf_counter() - start)
    return len(pkts) / best


def test_a_new_session_in_ten_thousand_rules_costs_at_most_twice_ten_rules():
    small, large = big_policy(10), big_policy(10000)
    assert len(large.rules) == 10000 and len(small.rules) == 10
    pkts = [Pkt(f"198.51.100.{2 + i % 250}", SERVER, 6, 80 if i % 2 else 443, 1024 + i) for i in range(5000)]
    small_rate, large_rate = match_rate(small, pkts), match_rate(large, pkts)
    print(f"policy.match: 10 rules {small_rate:,.0f}/s, 10000 rules {large_rate:,.0f}/s")
    assert large_rate * 2 >= small_rate


def test_address_int_reads_an_address_as_int_from_bytes_does():
    """fw.policy.index.address_int: compiled, an IPv4 address is read in C; the same ints either way."""
    from fw.policy.index import address_int

    for address in (bytes([192, 0, 2, 1]), b"\xff\xff\xff\xff", bytes(4), bytes(range(16)), bytearray(b"\x80\0\0\1")):
        assert address_int(address) == int.from_bytes(address, "big")
