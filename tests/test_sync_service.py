"""Sync between nodes through a real redis-server: announcements applied, the handshake of an
asymmetric flow completed across two nodes, packets held until their session arrives (or their
hold time is up), --sync-defer, removals, and the snapshot a joining node loads."""

from __future__ import annotations

import ipaddress
import json
import time

import pytest

from fw.conntrack.table import flow_key
from fw.conntrack.tcp import TcpState
from tests.packets import seg, udp_pkt
from tests.test_sync_helpers import Node, RedisServer, need_redis, pump, wait_ready

pytestmark = need_redis

C, S = "198.51.100.10:40000", "203.0.113.10:80"
KEY = flow_key(6, ipaddress.ip_address("198.51.100.10").packed, ipaddress.ip_address("203.0.113.10").packed,
               40000, 80)  # fmt: skip
SYN = seg(C, S, "S", seq=100, win=64240, mss=1460, wscale=7, sack_perm=True)
SYN_ACK = seg(S, C, "SA", seq=5000, ack=101, win=65160, mss=1460, wscale=7, sack_perm=True)
ACK = seg(C, S, "A", seq=101, ack=5001, win=502)
GET = seg(C, S, "PA", seq=101, ack=5001, win=502, payload=b"GET / HTTP/1.0\r\n\r\n")
ANSWER = seg(S, C, "PA", seq=5001, ack=119, win=509, payload=b"HTTP/1.0 200 OK\r\n\r\nhi")


@pytest.fixture
def redis_server():
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture
def nodes(redis_server, tmp_path):
    made = []

    def make(name: str, **options) -> Node:
        made.append(Node(name, redis_server.url, tmp_path, **options))
        return made[-1]

    yield make
    for node in made:
        node.close()


def test_a_new_session_reaches_the_peer_with_its_owner_and_liberal_windows(nodes):
    fw1, fw2 = nodes("fw1"), nodes("fw2")
    wait_ready(fw1, fw2)
    assert fw1.packet(SYN).verdict == "accept"
    assert fw1.session(KEY).owner == "fw1"
    assert pump([fw1, fw2], lambda: fw2.session(KEY) is not None)
    copy = fw2.session(KEY)
    assert (copy.owner, copy.state, copy.rule, copy.tcp.liberal) == ("fw1", TcpState.SYN_SENT, "allow-web", True)
    assert fw1.stats["announced"] == {"new": 1} and fw2.stats["applied"] == {"session": 1}


def test_an_asymmetric_handshake_completes_across_two_nodes(nodes):
    fw1, fw2 = nodes("fw1"), nodes("fw2")  # client -> fw1 -> server, server -> fw2 -> client
    wait_ready(fw1, fw2)
    fw1.packet(SYN)
    assert pump([fw1, fw2], lambda: fw2.session(KEY) is not None)
    assert fw2.packet(SYN_ACK).verdict == "accept"  # the reply fw1 never sees
    assert pump([fw1, fw2], lambda: fw1.session(KEY).state == TcpState.SYN_RECV)
    assert fw1.packet(ACK).verdict == "accept"
    assert fw1.session(KEY).state == TcpState.ESTABLISHED
    assert pump([fw1, fw2], lambda: fw2.session(KEY).state == TcpState.ESTABLISHED)
    assert fw1.packet(GET).verdict == "accept"
    assert fw2.packet(ANSWER).verdict == "accept"  # acknowledges data fw2 never saw: liberal window
    assert fw1.stats["announced"] == {"new": 1, "state": 1} and fw2.stats["announced"] == {"state": 1}


def test_a_reply_faster_than_the_sync_is_held_until_its_session_arrives(nodes):
    fw1, fw2 = nodes("fw1"), nodes("fw2")
    wait_ready(fw1, fw2)
    fw1.packet(SYN)
    reply = fw2.packet(SYN_ACK)  # before fw2 has heard of the session
    assert reply.verdict is None and fw2.stats["hold"]["waiting"] == 1
    started = time.monotonic()
    assert pump([fw1, fw2], lambda: reply.verdict is not None)
    assert reply.verdict == "accept" and reply.when - started < 0.05
    hold = fw2.stats["hold"]
    assert (hold["held"], hold["accepted"], hold["dropped"], hold["waiting"]) == (1, 1, 0, 0)
    assert 0 < hold["wait"]["median_ms"] < 50 and hold["wait"]["worst_ms"] < 50
    verdicts = fw2.handler.verdicts  # counted once, when the verdict is given: accepted
    assert (dict(verdicts.dropped), dict(verdicts.accepted)) == ({}, {"established": 1})


def test_the_client_ack_waits_for_the_peers_state(nodes):
    fw1, fw2 = nodes("fw1"), nodes("fw2")
    wait_ready(fw1, fw2)
    fw1.packet(SYN)
    assert pump([fw1, fw2], lambda: fw2.session(KEY) is not None)
    fw2.packet(SYN_ACK)
    ack = fw1.packet(ACK)  # fw1 still has SYN_SENT: an ACK from the client is invalid there, for now
    assert ack.verdict is None
    assert pump([fw1, fw2], lambda: ack.verdict is not None)
    assert ack.verdict == "accept" and fw1.session(KEY).state == TcpState.ESTABLISHED


def test_a_packet_no_session_comes_for_is_dropped_when_its_hold_time_is_up(nodes):
    fw1, fw2 = nodes("fw1", hold_ms=80), nodes("fw2", hold_ms=80)
    wait_ready(fw1, fw2)
    stray = fw2.packet(seg("203.0.113.10:80", "198.51.100.10:41000", "SA", seq=1, ack=2))
    unsolicited = fw2.packet(udp_pkt("203.0.113.10:53", "198.51.100.10:41000", b"x"))  # default: drop
    held_at = time.monotonic()
    assert stray.verdict is None and unsolicited.verdict is None
    assert pump([fw1, fw2], lambda: stray.verdict is not None and unsolicited.verdict is not None, 2)
    assert (stray.verdict, unsolicited.verdict) == ("drop", "drop")
    assert 0.07 <= stray.when - held_at < 0.2 and stray.when <= unsolicited.when  # in order
    assert dict(fw2.handler.verdicts.dropped) == {"invalid:no-session": 1, "default": 1}  # each counted once
    assert fw2.stats["hold"]["dropped"] == 2


def test_nothing_is_held_while_no_peer_is_heard(nodes):
    alone = nodes("fw1")
    wait_ready(alone)
    assert alone.packet(SYN_ACK).verdict == "drop"
    assert alone.stats["hold"]["held"] == 0


def test_hold_zero_disables_the_hold(nodes):
    fw1, fw2 = nodes("fw1"), nodes("fw2", hold_ms=0)
    wait_ready(fw1, fw2)
    assert fw2.packet(SYN_ACK).verdict == "drop"


def test_the_hold_is_bounded(nodes):
    fw1, fw2 = nodes("fw1"), nodes("fw2", max_held=3, hold_ms=200)
    wait_ready(fw1, fw2)
    packets = [fw2.packet(seg(S, f"198.51.100.10:{port}", "SA", seq=1, ack=2)) for port in range(42000, 42005)]
    assert [p.verdict for p in packets] == [None, None, None, "drop", "drop"]
    assert fw2.stats["hold"]["full"] == 2
    assert pump([fw1, fw2], lambda: all(p.verdict for p in packets), 2)


def test_defer_releases_the_first_packet_once_redis_took_the_announcement(nodes):
    fw1, fw2 = nodes("fw1", defer=True), nodes("fw2")
    wait_ready(fw1, fw2)
    first = fw1.packet(SYN)
    assert first.verdict is None  # kept until Redis has the news
    assert pump([fw1, fw2], lambda: first.verdict is not None, 2)
    assert first.verdict == "accept"
    defer = fw1.stats["defer"]
    assert defer["deferred"] == 1 and defer["timeouts"] == 0 and 0 < defer["wait"]["worst_ms"] < 50
    assert fw1.packet(seg(C, S, "S", seq=100)).verdict == "accept"  # a retransmitted SYN is not new


def test_a_removed_session_is_removed_at_the_peer(nodes):
    fw1, fw2 = nodes("fw1"), nodes("fw2")
    wait_ready(fw1, fw2)
    fw1.packet(SYN)
    assert pump([fw1, fw2], lambda: fw2.session(KEY) is not None)
    fw1.effects(fw1.engine.kill(fw1.session(KEY), time.monotonic()))  # as the daemon's kill does
    assert pump([fw1, fw2], lambda: fw2.session(KEY) is None, 5)
    assert fw1.stats["announced"]["removed"] == 1 and fw2.stats["applied"]["remove"] == 1
    assert fw2.engine.counters["killed"] == 0  # not an operator's kill there


def test_a_joining_node_loads_the_snapshot(nodes, redis_server):
    fw1 = nodes("fw1")
    wait_ready(fw1)
    for port in range(40000, 40010):
        assert fw1.packet(seg(f"198.51.100.10:{port}", S, "S", seq=port)).verdict == "accept"
    assert pump([fw1], lambda: redis_server.cli("HLEN", "fw:test:sessions") == "10")
    fields = redis_server.cli("HKEYS", "fw:test:sessions").splitlines()
    assert json.loads(fields[0])[0] == 6
    late = nodes("fw3")
    wait_ready(late)
    assert late.stats["snapshot_sessions"] == 10 and len(late.engine.table) == 10
    assert {s.owner for s in late.engine.table} == {"fw1"}


def test_a_restarted_node_gets_its_own_sessions_back(nodes, redis_server):
    fw1 = nodes("fw1")
    wait_ready(fw1)
    fw1.packet(SYN)
    assert pump([fw1], lambda: redis_server.cli("HLEN", "fw:test:sessions") == "1")
    fw1.close()
    again = nodes("fw1")
    wait_ready(again)
    assert again.session(KEY) is not None and again.session(KEY).owner == "fw1"
    assert again.packet(seg(C, S, "S", seq=100)).verdict == "accept"


def test_other_clusters_share_a_redis_without_seeing_each_other(nodes):
    a, b = nodes("fw1", cluster="blue"), nodes("fw2", cluster="green")
    wait_ready(a)
    wait_ready(b)
    a.packet(SYN)
    pump([a, b], timeout=0.5)
    assert b.session(KEY) is None and b.stats["peers"] == {}


def test_a_held_packet_asks_the_peers_for_its_session(nodes):
    fw1, fw2 = nodes("fw1"), nodes("fw2")
    wait_ready(fw1, fw2)
    fw1.packet(SYN)
    assert pump([fw1, fw2], lambda: fw2.session(KEY) is not None)
    fw2.packet(SYN_ACK)
    assert pump([fw1, fw2], lambda: fw1.session(KEY).state == TcpState.SYN_RECV)
    lost = fw2.session(KEY)  # fw2 loses its copy without a word (timed out early, say)
    fw2.service.known.pop(lost)
    fw2.engine.table.remove(lost)
    answer = fw2.packet(ANSWER)
    assert answer.verdict is None  # held, and fw1 is asked
    assert pump([fw1, fw2], lambda: answer.verdict is not None, 2)
    assert answer.verdict == "accept"
    assert fw2.stats["requests"]["sent"] == 1 and fw1.stats["announced"]["requested"] == 1


def test_a_held_packet_whose_session_is_another_owners_goes_to_that_owner(nodes):
    """--forward-to-owner with several peers: a reply no session explains is held as ever; when its
    session's news comes naming another owner, the engine says ForwardToOwner and the packet goes
    to the owner (sync's forward_held hook) instead of waiting on."""
    fw1, fw2 = nodes("fw1"), nodes("fw2")
    wait_ready(fw1, fw2)
    taken = []

    def forward_held(held, decision):
        taken.append((decision.reason, held.data))
        held.packet.drop()
        return True

    fw2.service.forward_held = forward_held
    fw2.engine.decide_at_owners({"fw1"})
    fw1.packet(SYN)
    reply = fw2.packet(SYN_ACK)
    assert reply.verdict is None
    assert pump([fw1, fw2], lambda: reply.verdict is not None)
    assert taken == [("owner:fw1", SYN_ACK)] and reply.verdict == "drop"
    hold = fw2.stats["hold"]
    assert (hold["held"], hold["forwarded"], hold["accepted"], hold["dropped"], hold["waiting"]) == (1, 1, 0, 0, 0)
    assert fw2.session(KEY).state == TcpState.SYN_SENT  # untouched here: its owner judges the SYN-ACK


def test_a_dead_owners_sessions_are_claimed_and_the_owners_view_follows(nodes, monkeypatch):
    """fw1 dies: fw2's live peers (on_peers, the forwarding's Owners view) drop it, so nothing
    would be forwarded to it; the next packet of its session makes fw2 the owner; fw1 back
    loads the snapshot and finds the session fw2's."""
    from fw.sync import service as service_module
    from fw.sync.forwarding.owner import FORWARD, LOCAL, Owners

    monkeypatch.setattr(service_module, "PEER_TIMEOUT", 1.0)
    monkeypatch.setattr(service_module, "HELLO_EVERY", 0.2)
    fw1, fw2 = nodes("fw1"), nodes("fw2")
    wait_ready(fw1, fw2)
    owners, seen = Owners("fw2"), []
    fw2.service.on_peers(lambda alive: (seen.append(alive), owners.update(alive, {"fw1": ("192.0.2.1", 6380)})))
    fw1.packet(SYN)
    assert pump([fw1, fw2], lambda: fw2.session(KEY) is not None and "fw1" in owners.alive)
    assert fw2.packet(SYN_ACK).verdict == "accept"
    assert pump([fw1, fw2], lambda: fw1.session(KEY).state == TcpState.SYN_RECV)
    assert owners.for_session(fw2.session(KEY).owner, False).kind == FORWARD  # fw1's, alive
    fw1.close()
    assert pump([fw2], lambda: "fw1" not in owners.alive, timeout=5)
    assert owners.for_session(fw2.session(KEY).owner, False)[:2] == (LOCAL, "owner-dead")
    assert fw2.packet(ACK).verdict == "accept"  # fw2 now sees the client's side too
    assert fw2.session(KEY).owner == "fw2" and fw2.stats["claimed"]["taken"] == 1
    assert owners.for_session(fw2.session(KEY).owner, False)[:2] == (LOCAL, "ours")
    back = nodes("fw1")
    wait_ready(back, fw2)
    assert back.session(KEY).owner == "fw2"  # the claim came with the snapshot
    assert back.packet(GET).verdict == "accept"  # fw2 is alive: fw1 decides, claims nothing
    assert back.session(KEY).owner == "fw2" and back.stats["claimed"]["taken"] == 0
    assert pump([back, fw2], lambda: seen[-1] == frozenset({"fw1"}))  # alive again: forwarded to again


def test_a_data_connection_waiting_at_one_node_goes_when_the_peer_s_227_arrives(nodes):
    """Passive FTP across asymmetric paths: the PASV crosses fw1, the 227 fw2; the client's data
    SYN reaches fw1 before fw2's news of the expectation: held, then let through as soon as the
    announcement with the expectation arrives (not at the end of the hold)."""
    fw1, fw2 = nodes("fw1", hold_ms=2000), nodes("fw2", hold_ms=2000)
    wait_ready(fw1, fw2)
    ctl_c, ctl_s = "198.51.100.10:40021", "203.0.113.10:21"
    control = flow_key(6, ipaddress.ip_address("198.51.100.10").packed, ipaddress.ip_address("203.0.113.10").packed,
                       40021, 21)  # fmt: skip
    fw1.packet(seg(ctl_c, ctl_s, "S", seq=100))
    assert pump([fw1, fw2], lambda: fw2.session(control) is not None)
    assert fw2.packet(seg(ctl_s, ctl_c, "SA", seq=5000, ack=101)).verdict == "accept"
    assert pump([fw1, fw2], lambda: fw1.session(control).state == TcpState.SYN_RECV)
    assert fw1.packet(seg(ctl_c, ctl_s, "A", seq=101, ack=5001)).verdict == "accept"
    assert fw1.packet(seg(ctl_c, ctl_s, "PA", seq=101, ack=5001, payload=b"PASV\r\n")).verdict == "accept"
    reply = b"227 Entering Passive Mode (203,0,113,10,117,50).\r\n"
    assert fw2.packet(seg(ctl_s, ctl_c, "PA", seq=5001, ack=107, payload=reply)).verdict == "accept"
    data = fw1.packet(seg("198.51.100.10:45000", "203.0.113.10:30002", "S", seq=1))
    started = time.monotonic()
    assert data.verdict is None  # held: the expectation is on its way
    assert pump([fw1, fw2], lambda: data.verdict is not None)
    assert data.verdict == "accept" and data.when - started < 1.0
    assert dict(fw1.handler.verdicts.accepted).get("related:ftp") == 1
