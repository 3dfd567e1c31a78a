"""The engine's effects, the one way out of it: sessions opened, changed and closed (every way a
session leaves), offload, and nothing made for a packet that merely passes."""

from __future__ import annotations

import textwrap

import pytest

from fw.conntrack import serial
from fw.conntrack.table import OFFLOADED, Session
from fw.conntrack.tcp import TcpState
from fw.decision import (
    NO_EFFECTS,
    LogEvent,
    OffloadSession,
    RewritePacket,
    SessionChanged,
    SessionClosed,
    SessionOpened,
    SetMark,
)
from fw.drivers.effects import Effects
from fw.engine import Engine, EngineConfig
from fw.policy import load_policy
from tests.packets import icmp_echo_pkt, seg, udp_pkt

C, S = "198.51.100.10:40000", "203.0.113.10:80"
POLICY = """
version: 1
defaults: {action: drop, log: false}
rules:
  - {name: web, action: accept, proto: tcp, dport: 80}
  - {name: exact, action: accept, proto: tcp, dport: 81, rst_on_timeout: true}
  - {name: ftp, action: accept, proto: tcp, dport: 21, alg: ftp}
  - {name: dns, action: accept, proto: udp, dport: 53}
  - {name: ping, action: accept, proto: icmp}
"""


def engine_for(tmp_path, offload=False, extra="") -> Engine:
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(POLICY) + extra)
    return Engine(load_policy(path), EngineConfig(events=False, offload=offload))


def kinds(decision_or_effects) -> list:
    effects = getattr(decision_or_effects, "effects", decision_or_effects)
    return [type(e).__name__ for e in effects]


def handshake(engine, client=C, server=S, now=1.0):
    return [engine.process(seg(client, server, "S", seq=100), now),
            engine.process(seg(server, client, "SA", seq=300, ack=101), now),
            engine.process(seg(client, server, "A", seq=101, ack=301), now)]


def test_a_handshake_tells_the_open_and_each_state_change_and_nothing_more(tmp_path):
    engine = engine_for(tmp_path)
    syn, syn_ack, ack = handshake(engine)
    assert kinds(syn) == ["SessionOpened"] and syn.effects[0].session is syn.session
    assert kinds(syn_ack) == ["SessionChanged"] and syn_ack.effects[0].old_state is TcpState.SYN_SENT
    assert kinds(ack) == ["SessionChanged"] and ack.effects[0].old_state is TcpState.SYN_RECV
    data = engine.process(seg(C, S, "PA", seq=101, ack=301, payload=b"x"), 2.0)
    assert data.reason == "established" and data.effects is NO_EFFECTS  # nothing made per packet


def test_udp_and_icmp_tell_the_reply(tmp_path):
    engine = engine_for(tmp_path)
    query = engine.process(udp_pkt("198.51.100.10:5000", "203.0.113.10:53", b"q"), 1.0)
    answer = engine.process(udp_pkt("203.0.113.10:53", "198.51.100.10:5000", b"a"), 1.1)
    again = engine.process(udp_pkt("203.0.113.10:53", "198.51.100.10:5000", b"a"), 1.2)
    assert (kinds(query), kinds(answer), again.effects) == (["SessionOpened"], ["SessionChanged"], NO_EFFECTS)
    assert answer.effects[0].old_state == "UNREPLIED" and answer.session.state == "REPLIED"
    ping = engine.process(icmp_echo_pkt("198.51.100.10", "203.0.113.10", 7, 1), 1.0)
    pong = engine.process(icmp_echo_pkt("203.0.113.10", "198.51.100.10", 7, 1, reply=True), 1.1)
    assert (kinds(ping), kinds(pong)) == (["SessionOpened"], ["SessionChanged"])


def test_every_way_out_of_the_table_is_told(tmp_path):
    engine = engine_for(tmp_path, extra="options: {max_sessions: 2}\n")
    first = handshake(engine)[0].session
    engine.process(seg(C, S, "FA", seq=101, ack=301), 2.0)  # FIN_WAIT ... then a new SYN reopens it
    engine.process(seg(S, C, "FA", seq=301, ack=102), 2.0)
    engine.process(seg(C, S, "A", seq=102, ack=302), 2.0)
    reopened = engine.process(seg(C, S, "S", seq=9000), 3.0)
    assert kinds(reopened) == ["SessionClosed", "SessionOpened"]
    assert (reopened.effects[0].session, reopened.effects[0].why) == (first, "reopen")
    engine.process(seg("198.51.100.10:40001", S, "S", seq=1), 3.0)
    full = engine.process(seg("198.51.100.10:40002", S, "S", seq=1), 3.0)  # the table is full: eviction
    assert kinds(full) == ["SessionClosed", "SessionOpened"] and full.effects[0].why == "evicted"
    killed = engine.kill(full.session, 3.0)
    assert [(type(e), e.why) for e in killed] == [(SessionClosed, "killed")]
    expired = engine.expire(1000.0)
    assert {e.why for e in expired} == {"timeout"} and len(expired) == len([*expired]) == 1
    assert engine.counters["killed"] == 1 and len(engine.table) == 0


def test_an_adopted_session_replacing_one_is_told(tmp_path):
    engine = engine_for(tmp_path)
    ours = handshake(engine)[0].session
    theirs = engine_for(tmp_path).process(seg(C, S, "S", seq=5), 1.0).session
    effects = engine.adopt(theirs, 1.5)
    assert [(e.session, e.why) for e in effects] == [(ours, "replaced")]
    assert engine.table.get(theirs.key) is theirs
    new = Session.of_flow(17, theirs.src, theirs.dst, 1, 2, "UNREPLIED", 1.5)
    new.deadline = 100.0
    assert engine.adopt(new, 1.5) == NO_EFFECTS  # nothing replaced


def test_offload_is_asked_for_sessions_that_may_go_only_when_configured(tmp_path):
    assert all(not isinstance(e, OffloadSession) for d in handshake(engine_for(tmp_path)) for e in d.effects)
    engine = engine_for(tmp_path, offload=True)
    ack = handshake(engine)[2]
    assert kinds(ack) == ["SessionChanged", "OffloadSession"] and ack.session.liberal  # its window record ages
    exact = handshake(engine, "198.51.100.10:40001", "203.0.113.10:81")[2]
    ftp = handshake(engine, "198.51.100.10:40002", "203.0.113.10:21")[2]
    assert kinds(exact) == kinds(ftp) == ["SessionChanged"]  # exact resets, an ALG: never offloaded


def test_the_ftp_alg_announcing_a_data_connection_is_a_change_of_the_control_session(tmp_path):
    engine = engine_for(tmp_path)
    control = "198.51.100.10:40002", "203.0.113.10:21"
    handshake(engine, *control)
    port = engine.process(seg(*control, "PA", seq=101, ack=301, payload=b"PORT 198,51,100,10,200,10\r\n"), 2.0)
    assert kinds(port) == ["SessionChanged"] and port.effects[0].old_state is port.session.state
    assert port.session.expectations


def test_the_dispatcher_hands_each_kind_to_its_subscribers(tmp_path):
    effects = Effects(None, None)
    seen = []
    effects.on(SessionOpened, seen.append)
    effects.on(SessionClosed, seen.append)
    decision = engine_for(tmp_path).process(seg(C, S, "S", seq=1), 1.0)
    effects(decision.effects + (SessionClosed(decision.session, "killed"), SessionChanged(None, None)))
    assert [type(e) for e in seen] == [SessionOpened, SessionClosed]
    effects((SetMark(1), RewritePacket(b""), LogEvent({})))  # the verdict's business, and the log's
    assert dict(effects.counters) == {"events_unlogged": 1}


@pytest.mark.parametrize("effect", [SetMark(0x10), RewritePacket(b"new bytes")])
def test_a_mark_or_a_rewrite_goes_out_with_the_verdict_alone(tmp_path, effect):
    from fw.drivers.nfqueue import PacketHandler
    from tests.test_daemon_units import StandInPacket

    class Marking(Engine):
        def process(self, data, now, iif=None, oif=None):
            decision = super().process(data, now, iif, oif)
            decision.effects += (effect,)
            return decision

    engine = Marking(policy_of(tmp_path))
    handler = PacketHandler(engine, False, lambda effects: None, lambda *args: None)
    handler.accept_later = True
    packet = StandInPacket(seg(C, S, "S", seq=1))
    assert handler(packet) is None and packet.verdicts == ["accept"]  # not left to a batch
    assert packet.changes == [effect]


def policy_of(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(POLICY))
    return load_policy(path)


def test_a_peers_copy_of_an_offloaded_session_stays_offloaded(tmp_path):
    """HA sync replaces a session with the merged copy a peer sent (adopt): when the one it
    replaces was offloaded here, the engine asks for the new one's offload again, after its close
    (fw.drivers.offload clears the mark, then sets it)."""
    engine = engine_for(tmp_path, offload=True)
    ack = handshake(engine)[2]
    ours = ack.session
    ours.flags |= OFFLOADED  # as fw.drivers.offload marks it
    copy = serial.session_from_dict(serial.session_to_dict(ours, 0.0), 0.0)
    effects = engine.adopt(copy, 2.0)
    assert kinds(effects) == ["SessionClosed", "OffloadSession"] and effects[1].session is copy
    assert copy.liberal and not copy.flags & OFFLOADED  # set by the offload driver once its mark is on
    again = serial.session_from_dict(serial.session_to_dict(copy, 0.0), 0.0)
    assert kinds(engine.adopt(again, 3.0)) == ["SessionClosed"]  # the one replaced was not offloaded
    plain = engine_for(tmp_path)
    session = handshake(plain)[2].session
    session.flags |= OFFLOADED
    assert kinds(plain.adopt(serial.session_from_dict(serial.session_to_dict(session, 0.0), 0.0), 2.0)) == \
        ["SessionClosed"]  # without --offload, never
