"""The engine's side of owner forwarding: a packet of a session owned by a node named in
`decide_at_owners` is answered DROP `owner:NODE` with a ForwardToOwner effect, its session
untouched; `process_forwarded` judges it here whoever owns the session (no loops)."""

from __future__ import annotations

import textwrap

import pytest

from fw.decision import ACCEPT, DROP, ForwardToOwner
from fw.engine import Engine, EngineConfig
from fw.policy import load_policy
from tests.packets import icmp_echo_pkt, icmp_error_pkt, seg, udp_pkt

POLICY = """
version: 1
defaults: {action: drop, log: false}
rules:
  - {name: web, action: accept, proto: tcp, dport: 80}
  - {name: dns, action: accept, proto: udp, dport: 53}
  - {name: ping, action: accept, proto: icmp}
"""
C, S = "198.51.100.10:40000", "203.0.113.10:80"
SYN = seg(C, S, "S", seq=100)
SYN_ACK = seg(S, C, "SA", seq=5000, ack=101)
ACK = seg(C, S, "A", seq=101, ack=5001)


@pytest.fixture
def engine(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(POLICY))
    return Engine(load_policy(path), EngineConfig(events=False))


def opened(engine: Engine, data: bytes, owner: str = "fw1"):
    decision = engine.process(data, 1.0)
    assert decision.verdict == ACCEPT
    decision.session.owner = owner
    return decision.session


def test_a_packet_of_a_peers_session_leaves_for_its_owner_untouched(engine):
    session = opened(engine, SYN)
    engine.decide_at_owners({"fw1"})
    before = (session.state, session.reply_packets, session.last_seen, session.deadline)
    decision = engine.process(SYN_ACK, 2.0)
    assert (decision.verdict, decision.reason, decision.session) == (DROP, "owner:fw1", session)
    assert decision.effects == (ForwardToOwner("fw1"),)
    assert (session.state, session.reply_packets, session.last_seen, session.deadline) == before
    forwarded = engine.process_forwarded(SYN_ACK, 2.0)  # what the owner does with it
    assert (forwarded.verdict, forwarded.reason, forwarded.effects[0].__class__.__name__) == (
        ACCEPT, "established", "SessionChanged")
    assert engine.forward_to == frozenset({"fw1"})  # process_forwarded left the owners as they were
    assert engine.process(ACK, 3.0).reason == "owner:fw1"


@pytest.mark.parametrize("owner, nodes", [("fw2", {"fw1"}), (None, {"fw1"}), ("fw1", set())])
def test_sessions_of_other_owners_are_judged_here(engine, owner, nodes):
    opened(engine, SYN, owner)
    engine.decide_at_owners(nodes)
    decision = engine.process(SYN_ACK, 2.0)
    assert (decision.verdict, decision.reason) == (ACCEPT, "established")


def test_udp_icmp_and_icmp_errors_of_a_peers_session_leave_too(engine):
    query = udp_pkt("198.51.100.10:5000", "203.0.113.53:53", b"q")
    opened(engine, query)
    echo = icmp_echo_pkt("198.51.100.10", "203.0.113.10", 7, 1)
    opened(engine, echo)
    engine.decide_at_owners({"fw1"})
    answer = udp_pkt("203.0.113.53:53", "198.51.100.10:5000", b"a")
    error = icmp_error_pkt("203.0.113.1", "198.51.100.10", 3, 3, query)
    reply = icmp_echo_pkt("203.0.113.10", "198.51.100.10", 7, 1, reply=True)
    for data in (answer, error, reply):
        decision = engine.process(data, 2.0)
        assert (decision.reason, decision.effects) == ("owner:fw1", (ForwardToOwner("fw1"),))
        assert engine.process_forwarded(data, 2.0).verdict == ACCEPT


def test_a_packet_with_no_session_is_the_engines_as_ever(engine):
    engine.decide_at_owners({"fw1"})
    assert engine.process(SYN_ACK, 1.0).reason == "invalid:no-session"
    assert engine.process(SYN, 1.0).reason == "rule:web"
