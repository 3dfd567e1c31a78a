"""Per-rule limits, log limits, anti-spoofing zones and the reload re-check, through the engine.

Every test states what the engine answers packet by packet; the limit tests also check after each
step that the rule's counts equal the sessions the table holds (`assert_counts`), so a removal path
that forgot to release its count fails here.
"""

from __future__ import annotations

import textwrap
from collections import Counter

import pytest

from fw.conntrack.rule_limits import COUNTED
from fw.decision import LogEvent, SendPacket
from fw.engine import Engine, EngineConfig
from fw.packet import parse
from fw.policy import load_policy
from fw.policy.recheck import refused_by
from tests.packets import icmp_echo_pkt, icmp_error_pkt, seg, udp_pkt

SERVER = "203.0.113.10"

LIMITS = """
version: 1
defaults: {action: drop}
rules:
  - name: web
    action: accept
    proto: tcp
    dport: 80
    limit: {per_source: 2, sessions: 3}
  - name: dns
    action: accept
    proto: udp
    dport: 53
    limit: {rate: 2/second, burst: 2, per_source: true, over: reject}
  - name: ntp
    action: accept
    proto: udp
    dport: 123
    limit: {rate: 1/second, burst: 1}
  - name: ping
    action: accept
    proto: icmp
"""


def make(tmp_path, text: str, name: str = "policy.yaml", events: bool = True) -> Engine:
    return Engine(policy_of(tmp_path, text, name), EngineConfig(events=events))


def policy_of(tmp_path, text: str, name: str = "policy.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return load_policy(path)


def syn(client: str, port: int, dport: int = 80) -> bytes:
    return seg(f"{client}:{port}", f"{SERVER}:{dport}", "S", seq=1000)


def assert_counts(engine: Engine) -> None:
    """The rule limits' counts are exactly the COUNTED sessions of the table."""
    per_source, totals = Counter(), Counter()
    for session in engine.sessions:
        if session.flags & COUNTED:
            per_source[(session.rule, session.src)] += 1
            totals[session.rule] += 1
    for name, state in engine.rule_limits.rules.items():
        assert state.total == totals[name], (name, state.total, totals[name])
        assert {s: n for s, n in state.per_source.items()} == {
            src: n for (rule, src), n in per_source.items() if rule == name}


def test_per_source_and_total_session_counts_refuse_and_release(tmp_path):
    engine = make(tmp_path, LIMITS)
    a, b = "198.51.100.10", "198.51.100.11"
    assert engine.process(syn(a, 1000), 1.0).reason == "rule:web"
    assert engine.process(syn(a, 1001), 1.0).reason == "rule:web"
    over = engine.process(syn(a, 1002), 1.0)
    assert (over.verdict, over.reason, over.effects) == ("drop", "limit:web", ())  # drop: the default `over`
    assert engine.process(syn(b, 1000), 1.0).reason == "rule:web"  # another source has its own count
    assert engine.process(syn(b, 1001), 1.0).reason == "limit:web"  # the rule's total (3) is reached
    assert engine.counters["inserts"] == 3  # the two refused opened nothing (the driver counts verdicts)
    assert_counts(engine)
    # A retransmitted SYN of a counted session is that session, not a new one.
    assert engine.process(syn(a, 1000), 1.5).reason == "established"
    assert_counts(engine)


def test_every_way_out_of_the_table_releases_the_count(tmp_path):
    engine = make(tmp_path, LIMITS)
    a = "198.51.100.10"
    engine.process(syn(a, 1000), 1.0)
    engine.process(syn(a, 1001), 1.0)
    assert engine.process(syn(a, 1002), 1.0).reason == "limit:web"
    # kill
    engine.kill(next(s for s in engine.sessions if s.sport == 1000), 2.0)
    assert_counts(engine)
    assert engine.process(syn(a, 1003), 2.0).reason == "rule:web"
    # expiry (SYN_SENT lasts tcp_syn_sent, 120 s)
    engine.expire(200.0)
    assert len(engine.sessions) == 0
    assert_counts(engine)
    assert engine.rule_limits.rules["web"].per_source == {}
    assert engine.process(syn(a, 1004), 201.0).reason == "rule:web"
    assert engine.process(syn(a, 1005), 201.0).reason == "rule:web"
    # a reset: the session stays (CLOSE, 10 s) but no longer counts, as nf_conncount
    session = next(s for s in engine.sessions if s.sport == 1004)
    engine.process(seg(f"{a}:1004", f"{SERVER}:80", "R", seq=1001), 202.0)
    assert session.state.name == "CLOSE" and session.slot != -1
    assert_counts(engine)
    assert engine.rule_limits.rules["web"].per_source[session.src] == 1
    # a SYN that reopens the closed flow's key replaces the session: counted once, and released once
    assert engine.process(seg(f"{a}:1004", f"{SERVER}:80", "S", seq=5000), 203.0).reason == "rule:web"
    assert_counts(engine)
    assert engine.rule_limits.rules["web"].per_source[session.src] == 2
    assert engine.process(syn(a, 1006), 203.0).reason == "limit:web"


def test_eviction_and_a_restored_snapshot_keep_the_counts_true(tmp_path):
    options = "options: {max_sessions: 3, adaptive_start: 10, adaptive_end: 20}"
    text = LIMITS.replace("defaults: {action: drop}", "defaults: {action: drop}\n" + options)
    engine = make(tmp_path, text)
    for port in range(3):
        engine.process(icmp_echo_pkt("198.51.100.20", SERVER, port, 1), 1.0)
    engine.process(syn("198.51.100.10", 1000), 2.0)  # the table is full: one session is evicted
    engine.process(syn("198.51.100.10", 1001), 2.0)
    assert engine.counters["evictions"] >= 2
    assert_counts(engine)
    # A snapshot restored into a new engine counts its sessions again (and not twice).
    copy = make(tmp_path, text, "copy.yaml")
    restored = copy.restore(engine.snapshot(0.0), 3.0, 0.0)
    assert restored == len(engine.sessions)
    assert_counts(copy)
    held = copy.rule_limits.rules["web"].per_source
    assert sum(held.values()) == sum(1 for s in copy.sessions if s.rule == "web")


def test_a_reload_recounts_under_the_new_limits(tmp_path):
    engine = make(tmp_path, LIMITS)
    a = "198.51.100.10"
    engine.process(syn(a, 1000), 1.0)
    engine.process(syn(a, 1001), 1.0)
    engine.swap_policy(policy_of(tmp_path, LIMITS.replace("per_source: 2", "per_source: 3"), "more.yaml"))
    assert_counts(engine)
    assert engine.process(syn(a, 1002), 2.0).reason == "rule:web"
    assert engine.process(syn(a, 1003), 2.0).reason == "limit:web"  # the total, 3
    # A policy without limits: nothing is counted any more, and nothing is refused.
    engine.swap_policy(policy_of(tmp_path, LIMITS.replace("limit: {per_source: 2, sessions: 3}",
                                                          "log: false"), "none.yaml"))
    assert not any(s.flags & COUNTED for s in engine.sessions)
    assert engine.process(syn(a, 1004), 3.0).reason == "rule:web"
    # Limits again: the sessions in the table count at once (four, over the limits of 2 and 3).
    engine.swap_policy(policy_of(tmp_path, LIMITS, "again.yaml"))
    assert_counts(engine)
    assert engine.rule_limits.rules["web"].total == 4
    assert engine.process(syn(a, 1005), 4.0).reason == "limit:web"


def test_a_rate_per_source_rejects_with_an_icmp_unreachable_and_refills(tmp_path):
    engine = make(tmp_path, LIMITS)
    a, b = "198.51.100.10", "198.51.100.11"
    answers = [engine.process(udp_pkt(f"{a}:{4000 + i}", f"{SERVER}:53"), 10.0) for i in range(3)]
    assert [d.reason for d in answers] == ["rule:dns", "rule:dns", "limit:dns"]
    unreachable = answers[2].effects[0]
    assert isinstance(unreachable, SendPacket)
    reply = parse(unreachable.data)
    assert (reply.proto, reply.icmp_type, reply.icmp_code) == (1, 3, 13)  # administratively prohibited
    assert engine.process(udp_pkt(f"{b}:4000", f"{SERVER}:53"), 10.0).reason == "rule:dns"  # its own bucket
    assert engine.process(udp_pkt(f"{a}:4010", f"{SERVER}:53"), 10.2).reason == "limit:dns"
    assert engine.process(udp_pkt(f"{a}:4011", f"{SERVER}:53"), 10.6).reason == "rule:dns"  # 2/s refilled one


def test_a_shared_rate_limits_every_source_together(tmp_path):
    engine = make(tmp_path, LIMITS)
    first = engine.process(udp_pkt("198.51.100.10:5000", f"{SERVER}:123"), 10.0)
    second = engine.process(udp_pkt("198.51.100.11:5000", f"{SERVER}:123"), 10.5)
    third = engine.process(udp_pkt("198.51.100.12:5000", f"{SERVER}:123"), 11.0)
    assert [first.reason, second.reason, third.reason] == ["rule:ntp", "limit:ntp", "rule:ntp"]
    assert second.effects == ()  # over: drop


def test_a_tcp_rule_over_its_limit_rejects_with_a_reset(tmp_path):
    engine = make(tmp_path, LIMITS.replace("per_source: 2, sessions: 3", "per_source: 1, over: reject"))
    engine.process(syn("198.51.100.10", 1000), 1.0)
    over = engine.process(syn("198.51.100.10", 1001), 1.0)
    assert over.reason == "limit:web"
    reset = parse(over.effects[0].data)
    assert reset.flags & 4 and reset.dport == 1001  # RST|ACK to the client's port


LOGGED = """
version: 1
defaults: {action: drop, log: true, log_limit: 1/minute}
rules:
  - {name: noisy, action: drop, proto: udp, dport: 9, log: true, log_limit: 3/second}
  - {name: quiet, action: drop, proto: udp, dport: 7, log: true}
  - {name: web, action: accept, proto: tcp, dport: 80, log: true, log_limit: 2/second,
     limit: {per_source: 1}}
"""


def logged(decisions) -> int:
    return sum(isinstance(e, LogEvent) for d in decisions for e in d.effects)


def test_logged_drops_are_rate_limited_per_rule_and_the_rest_counted(tmp_path):
    engine = make(tmp_path, LOGGED)
    noisy = [engine.process(udp_pkt(f"198.51.100.10:{3000 + i}", f"{SERVER}:9"), 5.0) for i in range(10)]
    quiet = [engine.process(udp_pkt(f"198.51.100.10:{3000 + i}", f"{SERVER}:7"), 5.0) for i in range(10)]
    default = [engine.process(udp_pkt(f"198.51.100.10:{3000 + i}", f"{SERVER}:8"), 5.0) for i in range(10)]
    assert [logged(noisy), logged(quiet), logged(default)] == [3, 10, 1]
    assert all(d.verdict == "drop" for d in noisy + quiet + default)  # the verdict never changes
    assert engine.counters["log_suppressed:noisy"] == 7
    assert engine.counters["log_suppressed:default"] == 9
    assert engine.counters["log_suppressed"] == 16
    later = engine.process(udp_pkt("198.51.100.10:4000", f"{SERVER}:9"), 6.0)
    assert logged([later]) == 1  # the bucket refilled
    # The rule's new-session events and its over-the-limit drops share the rule's bucket.
    web = [engine.process(syn("198.51.100.10", 1000 + i), 7.0) for i in range(5)]
    assert [d.reason for d in web] == ["rule:web"] + ["limit:web"] * 4
    assert logged(web) == 2 and engine.counters["log_suppressed:web"] == 3


ZONES = """
version: 1
defaults: {action: drop}
zones:
  inside: {interfaces: [lan], addresses: [198.51.100.0/24, "2001:db8:1::/64"]}
  outside: {interfaces: [wan, ppp+], addresses: any}
  dmz: {interfaces: [dmz], addresses: 192.0.2.0/24}
options: {spoof_check: MODE}
rules:
  - {name: out, action: accept, from_zone: inside, to_zone: outside}
  - {name: to-dmz, action: accept, proto: tcp, dport: 80, to_zone: dmz}
"""


@pytest.mark.parametrize("mode, inside_from_wan, unknown_on_lan, dmz_on_wan", [
    ("strict", "spoof", "spoof", "spoof"),
    ("loose", "rule:to-dmz", "rule:to-dmz", "rule:to-dmz"),  # `any` outside: loose lets all in
    ("off", "rule:to-dmz", "rule:to-dmz", "rule:to-dmz"),
])
def test_spoof_check_modes(tmp_path, mode, inside_from_wan, unknown_on_lan, dmz_on_wan):
    engine = make(tmp_path, ZONES.replace("MODE", mode))
    # The inside's own address on the inside: always fine.
    assert engine.process(syn("198.51.100.10", 1000), 1.0, "lan", "wan").reason == "rule:out"
    # An inside address arriving from outside: only strict catches it (the /24 beats `any`).
    assert engine.process(syn("198.51.100.10", 1001, dport=80), 1.0, "wan", "dmz").reason == inside_from_wan
    # An outside address on the inside: strict refuses it.
    packet = seg("203.0.113.99:1000", "192.0.2.10:80", "S", seq=1)
    assert engine.process(packet, 1.0, "lan", "dmz").reason == unknown_on_lan
    # The dmz's address from the wan: strict refuses (the dmz holds it more narrowly than `any`).
    packet = seg("192.0.2.7:1000", "192.0.2.10:80", "S", seq=1)
    assert engine.process(packet, 1.0, "ppp0", "dmz").reason == dmz_on_wan
    # Replay (no interface) and interfaces of no zone are not checked; zone rules do not match there.
    assert engine.process(syn("198.51.100.10", 1002), 1.0).reason == "default"
    assert engine.process(syn("198.51.100.10", 1003, dport=80), 1.0, "eth9", "dmz").reason == "rule:to-dmz"


def test_loose_refuses_a_source_no_zone_holds(tmp_path):
    text = (ZONES.replace("MODE", "loose").replace("addresses: any", "addresses: 203.0.113.0/24")
            .replace("192.0.2.0/24", "192.0.2.0/25"))
    engine = make(tmp_path, text)
    unknown = seg("192.0.2.200:1000", "203.0.113.10:80", "S", seq=1)  # in no zone
    assert engine.process(unknown, 1.0, "lan", "wan").reason == "spoof"
    other_zone = seg("203.0.113.7:1000", "192.0.2.10:80", "S", seq=1)  # the outside's, on the inside
    assert engine.process(other_zone, 1.0, "lan", "dmz").reason == "rule:to-dmz"
    strict = make(tmp_path, text.replace("loose", "strict"), "strict.yaml")
    assert strict.process(other_zone, 1.0, "lan", "dmz").reason == "spoof"


def test_a_spoofed_packet_is_dropped_before_the_session_lookup(tmp_path):
    engine = make(tmp_path, ZONES.replace("MODE", "strict"))
    client, server = "198.51.100.10:1000", "203.0.113.10:22"
    assert engine.process(seg(client, server, "S", seq=100), 1.0, "lan", "wan").reason == "rule:out"
    reply = seg(server, client, "SA", seq=500, ack=101)
    assert engine.process(reply, 1.0, "wan", "lan").reason == "established"
    # The client's address arriving on the wan, even for its own session: spoofed.
    forged = seg(client, server, "A", seq=101, ack=501)
    spoofed = engine.process(forged, 1.1, "wan", "lan")
    assert (spoofed.verdict, spoofed.reason, spoofed.session, spoofed.effects) == ("drop", "spoof", None, ())
    assert engine.process(forged, 1.2, "lan", "wan").reason == "established"
    v6 = icmp_echo_pkt("2001:db8:1::10", "2001:db8:2::10", 7, 1)
    assert engine.process(v6, 1.3, "wan", "lan").reason == "spoof"
    assert engine.process(v6, 1.3, "lan", "wan").reason == "rule:out"


def test_without_zones_the_packet_path_has_no_spoof_check(tmp_path):
    engine = make(tmp_path, LIMITS)
    assert engine.spoof is None
    zoned = make(tmp_path, ZONES.replace("MODE", "off"), "zoned.yaml")
    assert zoned.spoof is None  # zones for from_zone/to_zone only: no check either


RECHECK_OLD = """
version: 1
defaults: {action: drop}
options: {rst_on_timeout: true}
rules:
  - {name: ssh, action: accept, proto: tcp, dport: 22}
  - {name: web, action: accept, proto: tcp, dport: 80}
  - {name: dns, action: accept, proto: udp, dport: 53}
  - {name: lan-only, action: accept, proto: udp, dport: 123, iif: lan}
  - {name: ftp, action: accept, proto: tcp, dport: 21, alg: ftp}
"""
RECHECK_NEW = """
version: 1
defaults: {action: drop}
options: {reload_recheck: true}
rules:
  - {name: lan-ntp, action: accept, proto: udp, dport: 123, iif: lan}
  - {name: web, action: accept, proto: tcp, dport: 80}
  - {name: no-dns, action: reject, proto: udp, dport: 53}
"""


def established(engine, client: str, server: str, now: float):
    engine.process(seg(client, server, "S", seq=100), now)
    engine.process(seg(server, client, "SA", seq=500, ack=101), now)
    engine.process(seg(client, server, "A", seq=101, ack=501), now)
    return next(s for s in engine.sessions if s.sport == int(client.rsplit(":", 1)[1]))


def test_a_reload_recheck_closes_the_refused_sessions_and_resets_established_tcp(tmp_path):
    engine = make(tmp_path, RECHECK_OLD)
    ssh = established(engine, "198.51.100.10:1000", "203.0.113.10:22", 1.0)
    established(engine, "198.51.100.10:1001", "203.0.113.10:80", 1.0)
    engine.process(udp_pkt("198.51.100.10:2000", "203.0.113.10:53"), 1.0)
    engine.process(udp_pkt("198.51.100.10:2001", "203.0.113.10:123"), 1.0, "lan", "wan")
    new = policy_of(tmp_path, RECHECK_NEW, "new.yaml")
    # The dry run names them and changes nothing.
    would = refused_by(new, list(engine.sessions))
    assert sorted((s.rule, s.dport) for s in would) == [("dns", 53), ("ssh", 22)]
    assert len(engine.sessions) == 4
    engine.swap_policy(new)
    effects = engine.recheck(2.0)
    assert sorted(s.dport for s in engine.sessions) == [80, 123]  # ntp: decided by an interface, kept
    resets = [parse(e.data) for e in effects if isinstance(e, SendPacket)]
    assert sorted((r.dport, r.seq) for r in resets) == [(22, 101), (1000, 501)]  # exact, both ends
    assert all(r.flags & 4 for r in resets)
    ends = [e.event for e in effects if isinstance(e, LogEvent)]
    assert [e["fw"]["reason"] for e in ends] == ["recheck", "recheck"] or all(ends)
    assert engine.counters["recheck_closed"] == 2 and engine.counters["recheck_resets"] == 1
    assert ssh.slot == -1
    # The closed flow's next packet finds no session.
    late = engine.process(seg("198.51.100.10:1000", "203.0.113.10:22", "A", seq=101, ack=501), 3.0)
    assert late.reason == "invalid:no-session"


def test_a_data_session_goes_with_its_refused_control_session(tmp_path):
    engine = make(tmp_path, RECHECK_OLD)
    control = established(engine, "198.51.100.10:1000", "203.0.113.10:21", 1.0)
    engine.process(seg("198.51.100.10:1000", "203.0.113.10:21", "PA", seq=101, ack=501, payload=b"PASV\r\n"), 1.05)
    engine.process(seg("203.0.113.10:21", "198.51.100.10:1000", "PA", seq=501, ack=107,
                       payload=b"227 Entering Passive Mode (203,0,113,10,195,80)\r\n"), 1.1)
    data = engine.process(seg("198.51.100.10:1001", "203.0.113.10:50000", "S", seq=1), 1.2)
    assert data.reason == "related:ftp" and data.session.parent is control
    new = policy_of(tmp_path, RECHECK_NEW, "new.yaml")
    assert {s.dport for s in refused_by(new, list(engine.sessions))} == {21, 50000}


EDGES = """
version: 1
defaults: {action: drop}
rules:
  - {name: web, action: accept, proto: tcp, dport: 80}
"""


@pytest.mark.parametrize("client, server, router, too_big, exceeded", [
    ("198.51.100.10:40000", "203.0.113.10:80", "203.0.113.1", (3, 4), (11, 0)),
    ("[2001:db8:1::10]:40000", "[2001:db8:2::10]:80", "2001:db8:2::1", (2, 0), (3, 0)),
])
def test_path_mtu_and_time_exceeded_errors_quoting_a_session_are_related(
        tmp_path, client, server, router, too_big, exceeded):
    engine = make(tmp_path, EDGES)
    established(engine, client, server, 1.0)
    big = seg(client, server, "PA", seq=101, ack=501, payload=b"x" * 1400)
    assert engine.process(big, 1.1).reason == "established"
    to = client.rsplit(":", 1)[0].strip("[]")
    # A router on a 1280-byte link answers the 1400-byte segment: "packet too big, MTU 1280"
    # (IPv4: 3/4 "fragmentation needed", the MTU in the low half of the rest-of-header field).
    for (kind, code), rest in ((too_big, 1280), (exceeded, 0)):
        error = icmp_error_pkt(router, to, kind, code, big, rest=rest)
        decision = engine.process(error, 1.2)
        assert (decision.verdict, decision.reason) == ("accept", "related:icmp")
        assert decision.session.sport == 40000
    # The same error about a flow the table does not hold is not related to anything.
    other = seg(client, server.replace(":80", ":81"), "PA", seq=101, ack=501, payload=b"x" * 1400)
    stray = engine.process(icmp_error_pkt(router, to, *too_big, other, rest=1280), 1.3)
    assert (stray.verdict, stray.reason) == ("drop", "invalid:no-session")


def test_fw_policy_test_explains_a_zone_criterion(tmp_path):
    from fw.store.explain import explain

    policy = policy_of(tmp_path, ZONES.replace("MODE", "off"))
    packet = parse(seg("198.51.100.10:1000", "203.0.113.10:22", "S", seq=1))
    refused = explain(policy, packet, "wan", "lan")
    assert refused.reason == "default"
    assert [(s.rule, s.criterion.field, s.criterion.matches) for s in refused.skipped][0] == (
        "out", "from_zone", False)
    chosen = explain(policy, packet, "lan", "ppp0")
    assert chosen.reason == "rule:out"
    assert [(c.field, c.written, c.packet, c.matches) for c in chosen.criteria] == [
        ("from_zone", "inside (lan)", "lan", True), ("to_zone", "outside (wan, ppp+)", "ppp0", True)]


def test_a_recheck_and_an_adopted_copy_release_and_count_once(tmp_path):
    engine = make(tmp_path, LIMITS)
    a = "198.51.100.10"
    for port in (1000, 1001):
        engine.process(syn(a, port), 1.0)
    # An HA peer's copy of a session replaces ours: still one count for it.
    ours = next(s for s in engine.sessions if s.sport == 1000)
    copy = make(tmp_path, LIMITS, "peer.yaml")
    copy.process(syn(a, 1000), 1.0)
    theirs = next(iter(copy.sessions))
    engine.adopt(theirs, 1.5)
    assert ours.slot == -1 and theirs.flags & COUNTED
    assert_counts(engine)
    assert engine.rule_limits.rules["web"].total == 2
    # A re-check that refuses the rule's sessions releases every count.
    engine.swap_policy(policy_of(tmp_path, LIMITS.replace("dport: 80", "dport: 8080") +
                                 "options: {reload_recheck: true}\n", "moved.yaml"))
    engine.recheck(2.0)
    assert len(engine.sessions) == 0
    assert_counts(engine)
    engine.swap_policy(policy_of(tmp_path, LIMITS, "back.yaml"))
    assert engine.rule_limits.rules["web"].total == 0


def test_strict_gives_an_address_to_the_zone_that_holds_it_most_narrowly(tmp_path):
    text = """
    version: 1
    defaults: {action: accept}
    zones:
      inside: {interfaces: [lan], addresses: [198.51.100.0/24, "2001:db8:1::/48"]}
      lab: {interfaces: [lab+], addresses: [198.51.100.128/25, "2001:db8:1:5::/64"]}
      outside: {interfaces: [wan], addresses: {not: 198.51.100.0/26}}
    options: {spoof_check: strict}
    """
    engine = make(tmp_path, text)
    cases = [("198.51.100.5", "lan", "default"), ("198.51.100.200", "lan", "spoof"),
             ("198.51.100.200", "lab7", "default"), ("198.51.100.70", "wan", "spoof"),
             ("198.51.100.5", "wan", "spoof"), ("192.0.2.1", "wan", "default"), ("192.0.2.1", "lan", "spoof"),
             ("2001:db8:1:5::9", "lab0", "default"), ("2001:db8:1:5::9", "lan", "spoof"),
             ("2001:db8:1:6::9", "lan", "default"), ("2001:db8:ffff::1", "wan", "default")]
    got = []
    for number, (source, iif, _expected) in enumerate(cases):
        target = "203.0.113.10" if ":" not in source else "2001:db8:2::10"
        packet = udp_pkt(f"{source}:{1000 + number}" if ":" not in source else f"[{source}]:{1000 + number}",
                         f"{target}:53" if ":" not in target else f"[{target}]:53")
        got.append((source, iif, engine.process(packet, 1.0, iif, "x").reason))
    assert got == cases
