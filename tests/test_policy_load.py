"""Loading policies: the shipped ones, folders, revisions, options, timeouts and YAML edge cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from fw.policy import OPTIONS, PolicyError, load_policy, load_policy_sources
from fw.policy.intervals import IntervalSet

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ["policies/lab.yaml", "policies/examples/web-server.yaml",
           "policies/examples/workstation.yaml", "policies/examples/ftp-server.yaml",
           "policies/examples/corpus-ftp.yaml", "policies/examples/nat-gateway.yaml",
           "policies/examples/load-balancer.yaml"]


def load_text(text: str, name: str = "test.yaml"):
    return load_policy_sources([(name, text)], name=name)


def errors_of(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_text(text)
    return [d.message for d in caught.value.diagnostics]


@pytest.mark.parametrize("path", SHIPPED)
def test_shipped_policies_load_without_errors_or_warnings(path):
    policy = load_policy(ROOT / path)
    assert policy.warnings == ()
    assert policy.rules and len(policy.revision) == 12


def test_lab_policy_is_what_the_lab_needs():
    policy = load_policy(ROOT / "policies/lab.yaml")
    assert (policy.default_action, policy.default_log) == ("drop", True)
    names = [rule.name for rule in policy.rules]
    assert names == ["allow-web", "allow-ssh", "allow-ftp", "allow-ping", "allow-ping6",
                     "allow-iperf3", "allow-iperf3-udp", "allow-dns"]
    web = policy.rule("allow-web")
    assert (web.proto, web.dport) == (6, IntervalSet([(80, 80), (443, 443), (8080, 8080)]))
    assert policy.rule("allow-ftp").alg == "ftp"
    assert policy.rule("allow-ping").icmp_type == frozenset({8})
    assert policy.rule("allow-ping6").icmp_type == frozenset({128})
    assert policy.rule("allow-dns").proto == 17


def test_folder_merges_rules_in_file_order_and_sets_across_files(tmp_path):
    (tmp_path / "20-rules.yaml").write_text(
        "rules:\n  - {name: web, action: accept, proto: tcp, src: $clients, dport: 80}\n")
    (tmp_path / "10-base.yaml").write_text(
        "version: 1\ndefaults: {action: reject}\nrules:\n  - {name: first, action: drop, proto: 47}\n")
    (tmp_path / "30-sets.yaml").write_text("sets:\n  clients: [198.51.100.0/24]\n")
    (tmp_path / "README.md").write_text("not a policy\n")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "ignored.yaml").write_text("this: [is not valid\n")
    policy = load_policy(tmp_path)
    assert [rule.name for rule in policy.rules] == ["first", "web"]
    assert [rule.index for rule in policy.rules] == [0, 1]
    assert policy.default_action == "reject"
    assert policy.source_files == tuple(str(tmp_path / n) for n in ("10-base.yaml", "20-rules.yaml",
                                                                     "30-sets.yaml"))
    assert policy.rule("web").file == str(tmp_path / "20-rules.yaml")


def test_revision_ignores_layout_and_comments_but_not_content(tmp_path):
    one = "version: 1\nrules:\n  - {name: web, action: accept, proto: tcp, dport: 80}\n"
    same = "# comment\nversion: 1\nrules:\n  - name: web   # the web\n    action: accept\n" \
           "    proto: tcp\n    dport: 80\n"
    other = one.replace("80", "81")
    assert load_text(one).revision == load_text(same).revision
    assert load_text(one).revision != load_text(other).revision
    (tmp_path / "a.yaml").write_text("version: 1\n")
    (tmp_path / "b.yaml").write_text("rules:\n  - {name: web, action: accept, proto: tcp, dport: 80}\n")
    assert load_policy(tmp_path).revision == load_text(one).revision


def test_defaults_and_options_are_filled_from_the_one_table():
    policy = load_text("version: 1\noptions: {tcp_loose: true}\n")
    assert (policy.default_action, policy.default_log) == ("drop", False)
    assert (policy.options["tcp_loose"], policy.options["rst_on_timeout"]) == (True, False)
    assert policy.options["max_sessions"] == 262144
    assert dict(policy.options) == {name: True if name == "tcp_loose" else option.default
                                    for name, option in OPTIONS.items()}
    with pytest.raises(TypeError):
        policy.options["tcp_loose"] = False  # read-only


BUILTIN = {"tcp_established": 432000, "tcp_syn_sent": 120, "udp": 30}
TIMEOUTS_POLICY = """
version: 1
timeouts: {tcp_established: 7440, udp: 60}
timeout_overrides:
  - {dport: 22, tcp_established: 86400, rst_on_timeout: true}
  - {dst: 203.0.113.10, tcp_established: 3600, tcp_syn_sent: 10}
options: {rst_on_timeout: false}
rules:
  - {name: ssh, action: accept, proto: tcp, dport: 22, timeouts: {tcp_established: 172800}}
  - {name: ssh-plain, action: accept, proto: tcp, dport: 2222, rst_on_timeout: true}
  - {name: web, action: accept, proto: tcp, dport: 80}
"""


class Pkt:
    """Just the fields a policy reads of a Packet."""

    __slots__ = ("family", "src", "dst", "proto", "sport", "dport", "icmp_type", "icmp_code")

    def __init__(self, src, dst, proto=6, sport=40000, dport=80, icmp_type=0, icmp_code=0):
        import ipaddress

        self.src, self.dst = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
        self.family = 4 if len(self.src) == 4 else 6
        self.proto, self.sport, self.dport = proto, sport, dport
        self.icmp_type, self.icmp_code = icmp_type, icmp_code


def test_timeouts_resolve_rule_then_override_then_policy_then_builtin():
    policy = load_text(TIMEOUTS_POLICY)
    ssh = Pkt("198.51.100.10", "203.0.113.10", dport=22)
    table, rst = policy.timeouts_for(policy.match(ssh), ssh, BUILTIN)
    # the rule's own 172800 beats the override's 86400; rst from the first matching override
    assert dict(table) == {"tcp_established": 172800, "tcp_syn_sent": 120, "udp": 60}
    assert rst is True
    web = Pkt("198.51.100.10", "203.0.113.10", dport=80)
    table, rst = policy.timeouts_for(policy.match(web), web, BUILTIN)
    assert dict(table) == {"tcp_established": 3600, "tcp_syn_sent": 10, "udp": 60}
    assert rst is False
    elsewhere = Pkt("198.51.100.10", "203.0.113.99", dport=80)
    table, rst = policy.timeouts_for(None, elsewhere, BUILTIN)  # the default action's session
    assert dict(table) == {"tcp_established": 7440, "tcp_syn_sent": 120, "udp": 60}
    plain = Pkt("198.51.100.10", "203.0.113.99", dport=2222)
    assert policy.timeouts_for(policy.match(plain), plain, BUILTIN)[1] is True


def test_timeout_override_ports_without_proto_apply_to_tcp_and_udp_only():
    policy = load_text(TIMEOUTS_POLICY)
    assert policy.override_for(Pkt("198.51.100.10", "192.0.2.1", proto=17, dport=22)) is not None
    assert policy.override_for(Pkt("198.51.100.10", "192.0.2.1", proto=132, dport=22)) is None


def test_timeouts_are_cached_per_rule_and_override_and_follow_the_builtin():
    policy = load_text(TIMEOUTS_POLICY)
    web = Pkt("198.51.100.10", "203.0.113.10", dport=80)
    rule = policy.match(web)
    first = policy.timeouts_for(rule, web, BUILTIN)
    assert policy.timeouts_for(rule, Pkt("198.51.100.11", "203.0.113.10"), BUILTIN) is first
    other = dict(BUILTIN, tcp_syn_sent=60)
    assert policy.timeouts_for(rule, web, other)[0]["tcp_syn_sent"] == 10  # override still wins
    assert policy.timeouts_for(None, Pkt("198.51.100.1", "192.0.2.1"), other)[0]["tcp_syn_sent"] == 60


def test_addresses_quoted_or_not_and_ports_as_text():
    policy = load_text("version: 1\nrules:\n  - name: a\n    action: accept\n    proto: tcp\n"
                       "    dst: 2001:db8:2::10\n    dport: '8080'\n")
    rule = policy.rules[0]
    assert rule.dport == IntervalSet([(8080, 8080)])
    assert rule.dst.families() == frozenset({6})


def test_full_port_range_is_any_port():
    policy = load_text("version: 1\nrules:\n  - {name: a, action: accept, proto: udp, dport: '0-65535'}\n")
    assert policy.rules[0].dport is None


def test_every_error_is_reported_not_only_the_first():
    messages = errors_of("version: 1\nrules:\n  - {name: a, action: alow}\n  - {name: b, action: dorp}\n"
                         "  - {name: c, action: accept, proto: tcpp}\n")
    assert messages == [
        "unknown action 'alow' (expected accept, drop, reject)",
        "unknown action 'dorp' (expected accept, drop, reject)",
        "unknown protocol 'tcpp' (expected tcp, udp, icmp, icmpv6, any or a number 0-255)",
    ]


@pytest.mark.parametrize("text, message", [
    ("", "no 'version' (add 'version: 1')"),
    ("- a list\n", "a policy file must be a mapping of version, defaults, sets, zones, timeouts, "
                   "timeout_overrides, options, rules, nat, virtual_servers"),
    ("version: 1\nversion: 1\n", "duplicate key 'version'"),
    ("version: !!python/object:os.system 1\n",
     "unsupported YAML tag 'tag:yaml.org,2002:python/object:os.system'"),
    ("version: 1\nrules: &r [*r]\n", "an alias refers to a value that contains it"),
    ("version: 1\nrules:\n  - {name: a, action: accept, dport: 1:30, proto: tcp}\n",
     "dport: '1:30' reads as a base-60 number in YAML 1.1; quote it"),
])
def test_yaml_edge_cases_are_located_errors(text, message):
    if "alias" in message:
        message = "aliases expand to more than 1000000 values (or refer to themselves)"
    assert message in errors_of(text)


def test_alias_bomb_is_refused():
    lines = ["version: 1", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 8)]
    with pytest.raises(PolicyError) as caught:
        load_text("\n".join(lines) + "\n")
    assert any("aliases expand to more than" in d.message for d in caught.value.diagnostics)


def test_file_problems_are_errors_without_a_place(tmp_path):
    (tmp_path / "latin1.yaml").write_bytes("version: 1\n# caf\xe9\n".encode("latin-1"))
    for path, message in [(tmp_path / "nothing-here", "no such file or folder"),
                          (tmp_path / "latin1.yaml", "not UTF-8 text (line 2)")]:
        with pytest.raises(PolicyError) as caught:
            load_policy(path)
        (diagnostic,) = caught.value.diagnostics
        assert diagnostic.format() == f"{path}: error: {message}"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PolicyError, match="folder holds no"):
        load_policy(empty)


def test_policy_error_keeps_errors_and_warnings_apart():
    with pytest.raises(PolicyError) as caught:
        load_text("version: 1\nrules:\n  - {name: a, action: alow}\n")
    error = caught.value
    assert [d.severity for d in error.diagnostics] == ["error"]
    assert error.warnings == []
    assert "1 error in policy" in str(error)
    assert error.diagnostics[0].to_dict()["line"] == 3
