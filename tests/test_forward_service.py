"""The daemon's side of owner forwarding (fw.sync.forwarding.service) without sockets: which packets
the hook hands to another node, what it judges here when nothing could go, and what the owner does
with a forwarded packet (judged by its engine, sent on one hop later, counted, events marked)."""

from __future__ import annotations

import textwrap
from types import SimpleNamespace

import pytest

from fw.decision import ACCEPT, DROP
from fw.drivers.effects import Effects
from fw.drivers.nfqueue import PacketHandler
from fw.engine import Engine, EngineConfig
from fw.policy import load_policy
from fw.sync.forwarding.owner import FORWARD, LOCAL, Route
from fw.sync.forwarding.service import ForwardService
from fw.sync.forwarding.wire import Datagram
from tests.packets import seg

POLICY = """
version: 1
defaults: {action: drop, log: true}
rules:
  - {name: web, action: accept, proto: tcp, dport: 80}
"""
C, S = "198.51.100.10:40000", "203.0.113.10:80"
SYN, SYN_ACK = seg(C, S, "S", seq=100), seg(S, C, "SA", seq=5000, ack=101)
TO_FW1 = Route(FORWARD, "owner", "fw1", ("192.0.2.1", 6380))
ALONE = Route(LOCAL, "alone")


class Packet:
    indev = outdev = 0
    hook = 2

    def __init__(self, data: bytes):
        self.data, self.verdicts = data, []

    def get_payload(self) -> bytes:
        return self.data

    def get_mark(self) -> int:
        return 0

    def accept(self) -> None:
        self.verdicts.append(ACCEPT)

    def drop(self) -> None:
        self.verdicts.append(DROP)


class Node:
    """ForwardingNode's surface: routes as set, datagrams recorded (or refused: `works` False)."""

    def __init__(self, unplaced: Route = ALONE):
        self.node, self.unplaced, self.works, self.sent = "fw2", unplaced, True, []
        self.receiver = SimpleNamespace(on_refused=None)

    def route_session(self, owner, forwarded):
        return Route(FORWARD, "owner", owner, ("192.0.2.1", 6380))

    def route_unplaced(self, forwarded):
        return self.unplaced

    def forward(self, route, packet, hook, iif, oif, mark):
        self.sent.append((route.node, packet, hook))
        return self.works


class Raw:
    def __init__(self):
        self.sent = []

    def send(self, family, data):
        self.sent.append(data)


@pytest.fixture
def rig(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(POLICY))
    engine = Engine(load_policy(path), EngineConfig(events=True))
    effects, held, events = Effects(Raw(), None), [], []
    effects.event_sinks.append(events.append)
    handler = PacketHandler(engine, False, effects, lambda *args: None)
    handler.defer = lambda packet, data, decision: held.append(decision.reason) and False
    daemon = SimpleNamespace(engine=engine, handler=handler, effects=effects)
    return SimpleNamespace(engine=engine, handler=handler, effects=effects, held=held, events=events, daemon=daemon)


def attach(rig, node: Node) -> ForwardService:
    service = ForwardService(rig.daemon, SimpleNamespace(peers={}), node)
    rig.handler.defer = service.on_decision
    return service


def test_a_packet_of_a_peers_session_goes_to_its_owner_and_is_dropped_here(rig):
    node = Node()
    service = attach(rig, node)
    rig.handler(Packet(SYN))
    for session in rig.engine.table.values():
        session.owner = "fw1"
    rig.engine.decide_at_owners({"fw1"})
    packet = Packet(SYN_ACK)
    rig.handler(packet)
    assert packet.verdicts == [DROP] and node.sent == [("fw1", SYN_ACK, 2)]
    assert service.counters["handed:owner"] == 1 and "owner:fw1" not in rig.handler.verdicts.dropped
    node.works = False  # the socket's buffer is full: judged here after all, then the hold's turn
    again = Packet(SYN_ACK)
    rig.handler(again)
    assert again.verdicts == [ACCEPT] and rig.handler.verdicts.accepted["established"] == 1
    assert service.counters["fallback"] == 1


def test_a_packet_no_session_explains_goes_to_the_only_peer_but_a_syn_never(rig):
    node = Node(TO_FW1)
    attach(rig, node)
    reply = Packet(SYN_ACK)
    rig.handler(reply)
    assert reply.verdicts == [DROP] and [sent[1] for sent in node.sent] == [SYN_ACK]
    refused = Packet(seg(C, "203.0.113.10:23", "S"))  # a new connection the policy refuses: ours to judge
    rig.handler(refused)
    assert refused.verdicts == [DROP] and len(node.sent) == 1
    assert rig.handler.verdicts.dropped["default"] == 1


def test_the_owner_judges_a_forwarded_packet_and_sends_it_on_one_hop_later(rig):
    service = attach(rig, Node())
    rig.handler(Packet(SYN))
    service._own(Datagram(1, 1, 0, 2, "fw1", "wan", "lan", 0, SYN_ACK))
    service._own(Datagram(1, 2, 0, 2, "fw1", "lan", "wan", 0, seg(C, "203.0.113.10:23", "S")))
    assert service.decided == {ACCEPT: {"established": 1}, DROP: {"default": 1}}
    assert service.by_peer == {"fw1": 2} and service.counters["sent_on"] == 1
    assert rig.effects.sender.sent[0][8] == SYN_ACK[8] - 1  # the TTL, one hop later
    assert [event.get("ha") for event in rig.events if event["event_type"] == "drop"] == [
        {"forwarded_by": "fw1", "decided_by": "fw2"}]


def test_a_packet_sync_held_goes_to_its_owner_or_is_judged_here(rig):
    from fw.sync.hold import Held  # noqa: PLC0415

    node = Node()
    service = attach(rig, node)
    rig.handler(Packet(SYN))
    for session in rig.engine.table.values():
        session.owner = "fw1"
    rig.engine.decide_at_owners({"fw1"})
    held = Held(Packet(SYN_ACK), SYN_ACK, "wan", "lan", None, 1.0, 1.05)
    decision = rig.engine.process(SYN_ACK, 1.01, "wan", "lan")
    assert service.forward_held(held, decision) and held.packet.verdicts == [DROP]
    assert node.sent == [("fw1", SYN_ACK, 2)]
    node.works = False
    again = Held(Packet(SYN_ACK), SYN_ACK, "wan", "lan", None, 1.0, 1.05)
    decision = rig.engine.process(SYN_ACK, 1.02, "wan", "lan")
    assert not service.forward_held(again, decision) and again.packet.verdicts == []
    assert (decision.verdict, decision.reason) == (ACCEPT, "established")  # judged here: sync gives the verdict


def test_the_stats_line_with_the_daemons_counters():
    from fw.sync.forwarding.report import stats_line  # noqa: PLC0415

    section = {"sent": {"sent": 7, "failed:ENOBUFS": 2}, "received": {"datagrams": 5, "accepted": 4,
               "refused": {"forged": 1, "replayed": 0}}, "handed": {"owner": 5, "only-peer": 2}, "fallback": 2,
               "decided": {"accept": {"established": 3}, "drop": {"default": 1}}, "sent_on": 3}  # fmt: skip
    assert stats_line(section) == (
        "forward: sent 7 (segmented 0, failed: ENOBUFS 2), received 4 of 5 datagrams, refused: forged 1; "
        "handed to owners 7 (decided here instead 2), judged for peers: accepted 3 (sent on 3), dropped 1")
