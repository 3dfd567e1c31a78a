"""The tracker without Redis: what a node announces and how a peer's news merges into its table.
Two nodes exchange messages by hand (`deliver`), as Redis would carry them."""

from __future__ import annotations

import ipaddress
import textwrap

import pytest

from fw.conntrack.table import RELATED, flow_key
from fw.conntrack.tcp import TcpState
from fw.decision import SessionChanged, SessionClosed, SessionOpened
from fw.drivers.effects import Effects
from fw.engine import Engine, EngineConfig
from fw.policy import load_policy
from fw.sync.tracker import SessionSync, key_from_list, key_text, merged_track
from tests.packets import seg

POLICY = """
version: 1
defaults: {action: drop, log: false}
rules:
  - {name: allow-web, action: accept, proto: tcp, dport: 80}
  - {name: allow-ftp, action: accept, proto: tcp, dport: 21, alg: ftp}
"""
C, S = "198.51.100.10:40000", "203.0.113.10:80"
CLIENT, SERVER = ipaddress.ip_address("198.51.100.10").packed, ipaddress.ip_address("203.0.113.10").packed
WEB = flow_key(6, CLIENT, SERVER, 40000, 80)
T0 = 1000.0  # engine time


class Side:
    """One node: an engine and its tracker; what it emitted waits in `outbox`."""

    def __init__(self, name: str, tmp_path, offset: float = 1_790_000_000.0, policy: str = POLICY, **config):
        path = tmp_path / f"policy-{name}.yaml"
        path.write_text(textwrap.dedent(policy))
        self.name = name
        self.engine = Engine(load_policy(path), EngineConfig(events=False, **config))
        self.outbox: list = []
        self.effects = Effects(None, None)  # the daemon's dispatcher: the tracker learns from effects
        self.tracker = SessionSync(self.engine, name, self._emit, lambda: offset, dispatch=self.effects)
        self.effects.on(SessionOpened, self.tracker.on_opened)
        self.effects.on(SessionChanged, self.tracker.on_changed)
        self.effects.on(SessionClosed, self.tracker.on_closed)

    def _emit(self, item) -> bool:
        self.outbox.append(item)
        return True

    def packet(self, data: bytes, now: float):
        decision = self.engine.process(data, now)
        self.effects(decision.effects)
        return decision

    def deliver(self, to: Side, now: float) -> list:
        """Everything we emitted, applied at `to`; the keys it touched."""
        touched = [to.tracker.apply(self.name, item.kind, item.body, now) for item in self.outbox if item.publish]
        self.outbox.clear()
        return touched


@pytest.fixture
def pair(tmp_path):
    return Side("fw1", tmp_path), Side("fw2", tmp_path, offset=1_790_000_000.25)  # clocks need not agree


def handshake(fw1: Side, fw2: Side, sport: int = 40000, dport: int = 80, now: float = T0):
    client, server = f"198.51.100.10:{sport}", f"203.0.113.10:{dport}"
    assert fw1.packet(seg(client, server, "S", seq=100), now).verdict == "accept"
    fw1.deliver(fw2, now)
    assert fw2.packet(seg(server, client, "SA", seq=5000, ack=101), now).verdict == "accept"
    fw2.deliver(fw1, now)
    assert fw1.packet(seg(client, server, "A", seq=101, ack=5001), now).verdict == "accept"
    fw1.deliver(fw2, now)


def test_only_news_is_announced(pair):
    fw1, fw2 = pair
    fw1.packet(seg(C, S, "S", seq=100), T0)
    fw1.packet(seg(C, S, "S", seq=100), T0 + 1)  # a retransmission: nothing new
    assert [(item.kind, item.body["why"]) for item in fw1.outbox] == [("session", "new")]
    assert fw1.outbox[0].field == key_text(WEB) == '[6,"198.51.100.10","203.0.113.10",40000,80]'
    assert key_from_list([6, "198.51.100.10", "203.0.113.10", 40000, 80]) == WEB


def test_a_handshake_split_over_two_nodes_ends_established_on_both(pair):
    fw1, fw2 = pair
    handshake(fw1, fw2)
    for side in pair:
        session = side.engine.table.sessions[WEB]
        assert (session.state, session.owner, session.tcp.liberal) == (TcpState.ESTABLISHED, "fw1", True)
    assert fw2.engine.table.sessions[WEB].created == pytest.approx(T0 - 0.25)  # its clock, the same instant


def test_older_news_does_not_take_a_session_back(pair):
    fw1, fw2 = pair
    fw1.packet(seg(C, S, "S", seq=100), T0)
    fw1.deliver(fw2, T0)
    fw2.packet(seg(S, C, "SA", seq=5000, ack=101), T0)
    syn_recv = list(fw2.outbox)
    fw2.deliver(fw1, T0)
    fw1.packet(seg(C, S, "A", seq=101, ack=5001), T0)  # ESTABLISHED on fw1
    for _ in range(3):
        fw1.packet(seg(C, S, "PA", seq=101, ack=5001, payload=b"x"), T0 + 1)
    fw2.outbox = syn_recv  # the SYN_RECV announcement again, late
    fw2.deliver(fw1, T0 + 2)
    session = fw1.engine.table.sessions[WEB]
    assert session.state == TcpState.ESTABLISHED and session.orig_packets == 5
    assert fw1.tracker.counters["applied:older"] == 1


def test_a_new_incarnation_of_the_flow_replaces_the_old_one(pair):
    fw1, fw2 = pair
    handshake(fw1, fw2)
    later = T0 + 500
    fw2.engine.kill(fw2.engine.table.sessions[WEB], later)  # gone on fw2 (say, expired), reopened there
    fw2.tracker.known.clear()
    assert fw2.packet(seg(C, S, "S", seq=9000), later).verdict == "accept"
    fw2.deliver(fw1, later)
    session = fw1.engine.table.sessions[WEB]
    assert (session.state, session.owner, session.created) == (TcpState.SYN_SENT, "fw2", pytest.approx(later + 0.25))


def test_window_data_is_merged_per_direction(pair):
    fw1, fw2 = pair
    handshake(fw1, fw2)
    fw1.packet(seg(C, S, "PA", seq=101, ack=5001, payload=b"a" * 1000), T0 + 1)  # fw1 sees the client's data
    fw2.packet(seg(S, C, "PA", seq=5001, ack=101, payload=b"b" * 3000), T0 + 1)  # fw2 the server's
    ours, theirs = fw1.engine.table.sessions[WEB].tcp, fw2.engine.table.sessions[WEB].tcp
    merged = merged_track(ours, theirs)
    original, reply = merged.seen
    assert original.td_end == 1101 and reply.td_end == 8001 and merged.liberal


def test_removals_apply_to_the_same_incarnation_only_and_not_over_newer_traffic(pair):
    fw1, fw2 = pair
    handshake(fw1, fw2)
    session = fw1.engine.table.sessions[WEB]
    fw1.effects(fw1.engine.kill(session, T0 + 1))  # its SessionClosed is announced at once
    assert [(i.kind, i.body["why"]) for i in fw1.outbox] == [("remove", "removed")]
    removal = fw1.outbox[0].body
    fw1.deliver(fw2, T0 + 1)
    assert WEB not in fw2.engine.table.sessions and fw2.engine.counters["killed"] == 0
    # an expiry there while the session has time left here: ignored; when it is due here too: applied
    handshake(fw1, fw2, now=T0 + 10)
    expired = dict(removal, why="expired", created=fw1.engine.table.sessions[WEB].created + 1_790_000_000.0)
    assert fw2.tracker.apply("fw1", "remove", expired, T0 + 400) is None
    assert WEB in fw2.engine.table.sessions and fw2.tracker.counters["removals_ignored"] == 1
    # a removal of another incarnation: ignored
    other = dict(removal, created=removal["created"] + 5)
    assert fw2.tracker.apply("fw1", "remove", other, T0 + 400) is None
    assert fw2.tracker.counters["removals_ignored"] == 2
    due = fw2.engine.table.sessions[WEB].deadline
    assert fw2.tracker.apply("fw1", "remove", expired, due - 0.5) == WEB
    assert WEB not in fw2.engine.table.sessions


def test_a_session_the_peer_keeps_alive_is_refreshed_here_in_batches(pair):
    fw1, fw2 = pair
    handshake(fw1, fw2)
    fw2.outbox.clear()
    for second in range(1, 10001, 10):  # only fw2 sees traffic (keepalives from the server), for hours
        assert fw2.packet(seg(S, C, "A", seq=5000 + second % 2, ack=101), T0 + second).verdict == "accept"
        fw2.tracker.sweep(T0 + second, connected=True)
        fw2.deliver(fw1, T0 + second)
        fw1.engine.expire(T0 + second)
    assert WEB in fw1.engine.table.sessions  # kept alive by fw2's refreshes, past its own 7440 s
    # fw2 sees one direction only: its timeout is tcp_unacknowledged (300 s); a refresh goes out about
    # once per half timeout, not per packet (1000 packets)
    refreshes = fw2.tracker.counters["announced:refresh"]
    assert 10000 / 300 <= refreshes <= 10000 / 150 + 2


def test_ftp_expectations_reach_the_peer_that_sees_the_data_connection(pair):
    fw1, fw2 = pair
    ctl_c, ctl_s = "198.51.100.10:40001", "203.0.113.10:21"
    handshake(fw1, fw2, sport=40001, dport=21)
    fw2.packet(seg(ctl_s, ctl_c, "PA", seq=5001, ack=101, payload=b"220 hi\r\n"), T0 + 1)
    fw2.deliver(fw1, T0 + 1)
    port = b"PORT 198,51,100,10,195,80\r\n"  # active mode: the server connects to the client's 50000
    fw1.packet(seg(ctl_c, ctl_s, "PA", seq=101, ack=5009, payload=port), T0 + 2)
    assert [i.body["why"] for i in fw1.outbox] == ["expectations"] and len(fw1.outbox[0].body["expectations"]) == 1
    fw1.deliver(fw2, T0 + 2)
    assert len(fw2.engine.expectations) == 1
    data = fw2.packet(seg("203.0.113.10:20", "198.51.100.10:50000", "S", seq=1), T0 + 3)
    assert (data.verdict, data.reason) == ("accept", "related:ftp")
    assert data.session.flags & RELATED and data.session.parent is fw2.engine.table.sessions[
        flow_key(6, CLIENT, SERVER, 40001, 21)]
    fw2.deliver(fw1, T0 + 3)
    assert fw1.engine.expectations == {}  # spent on fw1 as well


def test_restored_sessions_are_announced_by_the_sweep(pair, tmp_path):
    fw1, fw2 = pair
    fw1.packet(seg(C, S, "S", seq=100), T0)
    snapshot = fw1.engine.snapshot(1_790_000_000.0)
    fresh = Side("fw1", tmp_path)
    fresh.engine.restore(snapshot, T0 + 1, 1_790_000_000.0)
    fresh.tracker.seed(T0 + 1)
    assert fresh.outbox == []
    fresh.tracker.sweep(T0 + 1, connected=False)
    assert fresh.outbox == []  # nothing while Redis is away
    fresh.tracker.sweep(T0 + 1, connected=True)
    assert [i.body["why"] for i in fresh.outbox] == ["resync"]


def test_a_session_record_that_does_not_parse_is_an_error_for_the_caller(pair):
    fw1, _ = pair
    for body in ({"session": {"proto": 6}}, {"session": [1]}, {"session": {}, "expectations": {}}):
        with pytest.raises((ValueError, TypeError, KeyError)):
            fw1.tracker.apply("fw2", "session", body, T0)
    assert len(fw1.engine.table) == 0


def test_a_peer_that_asks_for_a_session_gets_it(pair):
    fw1, fw2 = pair
    handshake(fw1, fw2)
    fw2.engine.kill(fw2.engine.table.sessions[WEB], T0 + 301)  # fw2's copy timed out early
    fw2.tracker.known.clear()
    assert fw2.tracker.request(WEB)
    fw2.deliver(fw1, T0 + 301)  # the request
    assert [i.body["why"] for i in fw1.outbox] == ["requested"]
    fw1.deliver(fw2, T0 + 301)
    assert fw2.engine.table.sessions[WEB].state == TcpState.ESTABLISHED
    fw2.tracker.request(WEB)
    fw2.deliver(fw1, T0 + 301.1)
    assert fw1.outbox == []  # asked again at once: answered at most every 0.2 s


def test_a_227_seen_without_its_pasv_opens_the_expectation_the_peer_needs(pair):
    """Passive mode across asymmetric paths: the PASV crosses fw1, the 227 fw2. fw2's ALG judges
    the reply alone (unpaired: a sync cluster's sessions), the expectation travels to fw1, where
    the client's data connection arrives."""
    fw1, fw2 = pair
    ctl_c, ctl_s = "198.51.100.10:40002", "203.0.113.10:21"
    handshake(fw1, fw2, sport=40002, dport=21)
    fw1.packet(seg(ctl_c, ctl_s, "PA", seq=101, ack=5001, payload=b"PASV\r\n"), T0 + 1)
    assert fw1.outbox == []  # a command opens nothing by itself
    reply = b"227 Entering Passive Mode (203,0,113,10,117,50).\r\n"  # port 30002
    fw2.packet(seg(ctl_s, ctl_c, "PA", seq=5001, ack=107, payload=reply), T0 + 1)
    assert [i.body["why"] for i in fw2.outbox] == ["expectations"]
    fw2.deliver(fw1, T0 + 1)
    data = fw1.packet(seg("198.51.100.10:45000", "203.0.113.10:30002", "S", seq=1), T0 + 2)
    assert (data.verdict, data.reason) == ("accept", "related:ftp")
    lone = fw1.packet(seg(ctl_s, ctl_c, "PA", seq=5001, ack=107, payload=reply), T0 + 3)
    assert lone.verdict == "accept"  # the control session goes on whatever its ALG said


def claim_setup(pair):
    fw1, fw2 = pair
    handshake(fw1, fw2)
    return fw1, fw2, fw2.engine.table.sessions[WEB]


def test_a_claim_moves_the_session_and_a_node_coming_back_does_not_take_it_back(pair, tmp_path):
    fw1, fw2, session = claim_setup(pair)
    assert session.owner == "fw1"
    snapshot = fw1.engine.snapshot(1_790_000_000.0)  # what fw1 will find in its own file
    assert fw2.tracker.claim(session, T0 + 10)  # fw1 died; a packet of its session came to fw2
    assert session.owner == "fw2" and fw2.outbox[-1].body["why"] == "claimed"
    claimed = fw2.outbox[-1].body["claimed"]
    back = Side("fw1", tmp_path)  # fw1 comes back: its old copy, then the cluster's news
    back.engine.restore(snapshot, T0 + 20, 1_790_000_000.0)
    back.tracker.seed(T0 + 20)
    fw2.deliver(back, T0 + 20)
    ours = back.engine.table.sessions[WEB]
    assert ours.owner == "fw2" and back.tracker.known[ours].claimed == claimed
    assert back.outbox == []  # nothing to contest: fw1 agrees
    # fw1's stale news (owner fw1, no claim) reaches fw2: fw2 keeps its claim and says so again
    stale = Side("fw1", tmp_path)
    stale.engine.restore(snapshot, T0 + 21, 1_790_000_000.0)
    stale.tracker.seed(T0 + 21)
    stale.tracker.sweep(T0 + 21, connected=True)
    assert [i.body["session"]["owner"] for i in stale.outbox] == ["fw1"]
    stale.deliver(fw2, T0 + 21)
    assert fw2.engine.table.sessions[WEB].owner == "fw2"
    assert [(i.body["why"], i.body["claimed"]) for i in fw2.outbox] == [("claimed", claimed)]
    fw2.deliver(stale, T0 + 22)
    assert stale.engine.table.sessions[WEB].owner == "fw2"  # and the stale node comes round


def test_between_two_claims_the_later_wins_everywhere(pair):
    fw1, fw2, _ = claim_setup(pair)
    fw1.tracker.claim(fw1.engine.table.sessions[WEB], T0 + 5)  # both claimed it during a split
    fw2.tracker.claim(fw2.engine.table.sessions[WEB], T0 + 6)  # later
    fw1.deliver(fw2, T0 + 7)
    fw2.deliver(fw1, T0 + 7)
    assert fw1.engine.table.sessions[WEB].owner == fw2.engine.table.sessions[WEB].owner == "fw2"
