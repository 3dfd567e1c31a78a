"""Playbook tests of the engine: feed packets, state the verdict, reason and state expected for each."""

from __future__ import annotations

import textwrap

import pytest

from fw.decision import SendPacket, Verdicts
from fw.engine import Engine, EngineConfig
from fw.packet import parse
from fw.policy import load_policy
from tests.packets import icmp_echo_pkt, icmp_error_pkt, seg, udp_pkt

C = "198.51.100.10:40000"
S = "203.0.113.10:80"
C6 = "[2001:db8:1::10]:40000"
S6 = "[2001:db8:2::10]:80"

POLICY = """
version: 1
defaults: {action: drop, log: true}
sets:
  clients: [198.51.100.0/24, "2001:db8:1::/64"]
rules:
  - {name: allow-web, action: accept, proto: tcp, src: $clients, dport: [80, 443]}
  - {name: reject-telnet, action: reject, proto: tcp, dport: 23}
  - {name: reject-tftp, action: reject, proto: udp, dport: 69}
  - {name: allow-dns, action: accept, proto: udp, dport: 53}
  - {name: allow-ping, action: accept, proto: icmp, icmp_type: echo-request}
  - {name: allow-ping6, action: accept, proto: icmpv6, icmp_type: echo-request}
  - {name: allow-gre, action: accept, proto: 47}
"""


@pytest.fixture
def engine(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(POLICY))
    return Engine(load_policy(path), EngineConfig(events=True))


def play(engine, steps, start=100.0):
    """Each step: (packet bytes, verdict, reason, state) -> run it and compare; returns decisions."""
    decisions = []
    for number, (data, verdict, reason, state) in enumerate(steps):
        decision = engine.process(data, start + number * 0.01)
        got = (decision.verdict, decision.reason, decision.state)
        assert got == (verdict, reason, state), f"step {number}: got {got}"
        decisions.append(decision)
    return decisions


def handshake(client=C, server=S):
    return [
        (seg(client, server, "S", seq=100), "accept", "rule:allow-web", "SYN_SENT"),
        (seg(server, client, "SA", seq=300, ack=101), "accept", "established", "SYN_RECV"),
        (seg(client, server, "A", seq=101, ack=301), "accept", "established", "ESTABLISHED"),
    ]


def test_tcp_handshake_data_and_teardown(engine):
    play(
        engine,
        handshake()
        + [
            (seg(C, S, "PA", seq=101, ack=301, payload=b"GET /"), "accept", "established", "ESTABLISHED"),
            (seg(S, C, "A", seq=301, ack=106), "accept", "established", "ESTABLISHED"),
            (seg(C, S, "FA", seq=106, ack=301), "accept", "established", "FIN_WAIT"),
            (seg(S, C, "FA", seq=301, ack=107), "accept", "established", "LAST_ACK"),
            (seg(C, S, "A", seq=107, ack=302), "accept", "established", "TIME_WAIT"),
        ],
    )
    (session,) = list(engine.table)
    assert (session.orig_packets, session.reply_packets) == (5, 3)
    assert session.rule == "allow-web"


def test_ipv6_handshake(engine):
    play(engine, handshake(C6, S6))


def test_no_session_and_out_of_window(engine):
    play(
        engine,
        [(seg(C, S, "A", seq=1, ack=1), "drop", "invalid:no-session", None)]
        + handshake()
        + [
            (seg(C, S, "PA", seq=101 + 10_000_000, ack=301, payload=b"x"), "drop", "invalid:out-of-window",
             "ESTABLISHED"),
            (seg(C, S, "PA", seq=101, ack=301, payload=b"ok"), "accept", "established", "ESTABLISHED"),
        ],
    )  # fmt: skip


def test_exact_rst_closes_inexact_rst_does_not(engine):
    play(
        engine,
        handshake()
        + [
            (seg(S, C, "R", seq=305), "accept", "established", "ESTABLISHED"),
            (seg(S, C, "R", seq=301), "accept", "established", "CLOSE"),
        ],
    )


def test_default_drop_and_reject_effects(engine):
    telnet = seg(C, "203.0.113.10:23", "S", seq=7)
    decision = engine.process(telnet, 1.0)
    assert (decision.verdict, decision.reason, decision.state) == ("drop", "rule:reject-telnet", None)
    (reset,) = [e for e in decision.effects if isinstance(e, SendPacket)]
    answer = parse(reset.data)
    assert (answer.src, answer.dst, answer.sport, answer.dport) == (parse(telnet).dst, parse(telnet).src, 23, 40000)
    assert answer.flags & 0x14 == 0x14 and answer.ack == 8  # RST+ACK acknowledging the SYN
    tftp = engine.process(udp_pkt("198.51.100.10:5000", "203.0.113.10:69"), 1.0)
    (unreachable,) = [e for e in tftp.effects if isinstance(e, SendPacket)]
    icmp = parse(unreachable.data)
    assert (icmp.proto, icmp.icmp_type, icmp.icmp_code) == (1, 3, 13)
    assert icmp.inner.dport == 69
    other = engine.process(seg(C, "203.0.113.10:8080", "S"), 1.0)
    assert (other.verdict, other.reason) == ("drop", "default")


def test_udp_unreplied_then_replied(engine):
    query, answer = udp_pkt(C, "203.0.113.10:53"), udp_pkt("203.0.113.10:53", C)
    play(
        engine,
        [
            (answer, "drop", "default", None),
            (query, "accept", "rule:allow-dns", "UNREPLIED"),
            (query, "accept", "established", "UNREPLIED"),
            (answer, "accept", "established", "REPLIED"),
        ],
    )


def test_icmp_echo_by_identifier(engine):
    client, server = "198.51.100.10", "203.0.113.10"
    play(
        engine,
        [
            (icmp_echo_pkt(server, client, 7, 1, reply=True), "drop", "invalid:no-session", None),
            (icmp_echo_pkt(client, server, 7, 1), "accept", "rule:allow-ping", "UNREPLIED"),
            (icmp_echo_pkt(server, client, 7, 1, reply=True), "accept", "established", "REPLIED"),
            (icmp_echo_pkt(server, client, 8, 1, reply=True), "drop", "invalid:no-session", None),
        ],
    )


def test_icmp_error_related_only_to_its_session(engine):
    syn = seg(C, S, "S", seq=100)
    router = "203.0.113.1"
    play(
        engine,
        [
            (icmp_error_pkt(router, "198.51.100.10", 3, 1, syn), "drop", "invalid:no-session", None),
            (syn, "accept", "rule:allow-web", "SYN_SENT"),
            (icmp_error_pkt(router, "198.51.100.10", 3, 1, syn), "accept", "related:icmp", "SYN_SENT"),
            (icmp_error_pkt(router, "198.51.100.10", 3, 1, seg(C, "203.0.113.10:443", "S")), "drop",
             "invalid:no-session", None),
        ],
    )  # fmt: skip


def test_other_protocol_tracked_generically(engine):
    from fw.packet import build

    gre = build.ipv4("198.51.100.10", "203.0.113.10", 47, b"\x00" * 8)
    back = build.ipv4("203.0.113.10", "198.51.100.10", 47, b"\x00" * 8)
    play(engine, [(gre, "accept", "rule:allow-gre", "UNREPLIED"), (back, "accept", "established", "REPLIED")])


def test_malformed_is_dropped_and_counted(engine):
    verdicts = Verdicts()  # the driver counts the verdicts it gives (fw.drivers.nfqueue, replay)
    for data in (b"", b"\x45", b"\x60" + b"\x00" * 10, b"\x00" * 40):
        decision = engine.process(data, 1.0)
        assert (decision.verdict, decision.reason, decision.state) == ("drop", "malformed", None)
        verdicts.count(decision.verdict, decision.reason)
    assert verdicts.dropped == {"malformed": 4} and not decision.effects


def test_expiry_and_timeouts(engine):
    play(engine, handshake())
    (session,) = list(engine.table)
    assert session.deadline == pytest.approx(100.02 + 7440)
    engine.expire(100.02 + 7000)
    assert len(engine.table) == 1
    engine.expire(100.02 + 7442)
    assert len(engine.table) == 0 and engine.counters["expiries"] == 1
    decision = engine.process(seg(C, S, "A", seq=101, ack=301), 100.02 + 7443)
    assert (decision.verdict, decision.reason) == ("drop", "invalid:no-session")


def test_expiry_follows_a_shorter_timeout(engine):
    play(engine, [(seg(C, S, "S", seq=100), "accept", "rule:allow-web", "SYN_SENT")])
    play(engine, [(seg(S, C, "SA", seq=300, ack=101), "accept", "established", "SYN_RECV")], start=110.0)
    engine.expire(110.0 + 61)  # tcp_syn_recv is 60 s
    assert len(engine.table) == 0


def test_reopen_from_time_wait(engine):
    play(
        engine,
        handshake()
        + [
            (seg(C, S, "FA", seq=101, ack=301), "accept", "established", "FIN_WAIT"),
            (seg(S, C, "FA", seq=301, ack=102), "accept", "established", "LAST_ACK"),
            (seg(C, S, "A", seq=102, ack=302), "accept", "established", "TIME_WAIT"),
            (seg(C, S, "S", seq=900000), "accept", "rule:allow-web", "SYN_SENT"),
        ],
    )
    assert engine.counters["inserts"] == 2 and len(engine.table) == 1


def test_reload_keeps_sessions(engine, tmp_path):
    play(engine, handshake())
    closed = tmp_path / "closed.yaml"
    closed.write_text("version: 1\ndefaults: {action: drop}\nrules: []\n")
    engine.swap_policy(load_policy(closed))
    play(engine, [(seg(C, S, "PA", seq=101, ack=301, payload=b"hi"), "accept", "established", "ESTABLISHED")])
    play(engine, [(seg(C, "203.0.113.10:443", "S", seq=1), "drop", "default", None)])


def test_logged_default_drop_emits_an_eve_event(engine):
    decision = engine.process(seg(C, "203.0.113.10:8080", "S"), 1.0)
    (event,) = [e.event for e in decision.effects]
    assert event["event_type"] == "drop" and event["dest_port"] == 8080 and event["fw"]["reason"] == "default"


def test_snapshot_round_trip_keeps_sessions_working(engine, tmp_path):
    import json

    play(engine, handshake())
    engine.process(udp_pkt(C, "203.0.113.10:53"), 100.1)
    data = json.loads(json.dumps(engine.snapshot(clock_offset=1_700_000_000.0)))
    assert data["version"] == 1 and len(data["sessions"]) == 2
    assert data["sessions"][0]["created"] > 1_700_000_000  # wall-clock times leave the process
    fresh = Engine(engine.policy)
    # The new process's clock started elsewhere: its offset differs, remaining time is kept.
    assert fresh.restore(data, now=5.0, clock_offset=1_700_000_000.0 + 95.0) == 2
    decision = fresh.process(seg(C, S, "PA", seq=101, ack=301, payload=b"again"), 5.5)
    assert (decision.verdict, decision.reason, decision.state) == ("accept", "established", "ESTABLISHED")
    assert decision.session.deadline == pytest.approx(5.5 + 300)  # data unacknowledged: tcp_unacknowledged
    out_of_window = fresh.process(seg(C, S, "PA", seq=101 + 10_000_000, ack=301, payload=b"x"), 5.6)
    assert out_of_window.reason == "invalid:out-of-window"  # the window data came along


def test_restore_skips_bad_records_and_refuses_other_files(engine):
    from fw.conntrack.serial import SerialError

    with pytest.raises(SerialError):
        engine.restore({"format": "other"}, 1.0, 0.0)
    bad = {"format": "fw-sessions", "version": 1, "sessions": [{"src": "not an address"}, 7], "expectations": []}
    assert engine.restore(bad, 1.0, 0.0) == 0
    assert engine.counters["restore_errors"] == 2


def test_fragments_follow_their_first_fragment(engine):
    from fw.packet import build

    udp = build.udp("198.51.100.10", "203.0.113.10", 5000, 53, b"q" * 64)
    header, body = udp[:20], udp[20:]
    first = build.ipv4("198.51.100.10", "203.0.113.10", 17, body[:32], ident=77, mf=True)
    rest = build.ipv4("198.51.100.10", "203.0.113.10", 17, body[32:], ident=77, frag_offset=32)
    stray = build.ipv4("198.51.100.10", "203.0.113.10", 17, body[32:], ident=78, frag_offset=32)
    play(
        engine,
        [
            (stray, "drop", "fragment", None),
            (first, "accept", "rule:allow-dns", "UNREPLIED"),
            (rest, "accept", "established", "UNREPLIED"),
        ],
    )
    assert header[9] == 17


def test_a_capture_shorter_than_the_packet_is_tracked_by_its_lengths(engine):
    play(engine, handshake())
    big = seg(C, S, "PA", seq=101, ack=301, payload=b"z" * 1400)
    cut = big[:60]  # what a small copy range delivers: headers and a little payload
    play(engine, [(cut, "accept", "established", "ESTABLISHED")])
    (session,) = list(engine.table)
    assert session.orig_bytes == 40 + 40 + 1440  # SYN, ACK, and the cut segment by its total length
    # The window advanced by the full 1400 bytes: the next segment follows on.
    play(engine, [(seg(C, S, "PA", seq=1501, ack=301, payload=b"next"), "accept", "established", "ESTABLISHED")])
    play(engine, [(seg(S, C, "A", seq=301, ack=1505), "accept", "established", "ESTABLISHED")])
