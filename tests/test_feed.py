"""fw.feed: the events `fw events` and `fw top` show, from a real engine's decisions (issue 17).

An Engine over policies/lab.yaml judges a TCP handshake and a refused packet; the engine's session
effects become `new`, `update` and `destroy` events (kills and expiries too), the tap's drops `drop`. The stream
(what the control socket sends) is read as a follower would. The control socket's parking of a
follower is tested with a real ControlServer and client over an abstract unix socket (root).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from fw.engine import Engine, EngineConfig
from fw.feed import DROPS_PER_SECOND, EventFeed
from fw.policy import load_policy
from tests.packets import seg, udp_pkt

ROOT = Path(__file__).resolve().parent.parent
CLIENT, SERVER = "198.51.100.10:40000", "203.0.113.10:80"


@pytest.fixture
def engine() -> Engine:
    return Engine(load_policy(str(ROOT / "policies" / "lab.yaml")), EngineConfig(events=True))


def judge(engine: Engine, feed: EventFeed, packet: bytes, now: float) -> None:
    """What the daemon does for one packet: the tap sees the decision, the sinks its effects."""
    decision = engine.process(packet, now)
    feed.observe(decision)
    feed.effects(decision.effects)


def handshake(engine: Engine, feed: EventFeed) -> None:
    for now, packet in enumerate([seg(CLIENT, SERVER, "S", seq=100), seg(SERVER, CLIENT, "SA", seq=500, ack=101),
                                  seg(CLIENT, SERVER, "A", seq=101, ack=501)]):
        judge(engine, feed, packet, float(now))


def test_a_handshake_is_a_new_session_and_two_state_changes(engine: Engine) -> None:
    feed = EventFeed(wall=lambda: 1000.0)
    handshake(engine, feed)
    events = feed.since(0)
    assert [(e["type"], e["state"]) for e in events] == [("new", "SYN_SENT"), ("update", "SYN_RECV"),
                                                         ("update", "ESTABLISHED")]
    assert events[0] == {"seq": 1, "time": 1000.0, "type": "new", "proto": "tcp", "src": "198.51.100.10",
                         "dst": "203.0.113.10", "sport": 40000, "dport": 80, "state": "SYN_SENT",
                         "rule": "allow-web", "flow_id": events[0]["flow_id"], "reason": "rule:allow-web"}
    assert events[2]["old_state"] == "SYN_RECV"
    judge(engine, feed, seg(CLIENT, SERVER, "PA", seq=101, ack=501, payload=b"x"), 4.0)
    assert len(feed.since(0)) == 3  # an established packet changes nothing


def test_a_kill_and_an_expiry_are_destroys(engine: Engine) -> None:
    feed = EventFeed()
    handshake(engine, feed)
    session = next(iter(engine.sessions))
    feed.effects(engine.kill(session, 5.0))
    assert feed.since(3)[0]["type"] == "destroy" and feed.since(3)[0]["reason"] == "killed"
    judge(engine, feed, udp_pkt("198.51.100.10:5353", "203.0.113.10:53", b"q"), 10.0)
    feed.effects(engine.expire(10_000.0))
    ended = feed.since(0)[-1]
    assert (ended["type"], ended["proto"], ended["dport"], ended["reason"]) == ("destroy", "udp", 53, "timeout")


def test_drops_come_with_their_reason_and_a_flood_is_summed(engine: Engine) -> None:
    feed = EventFeed()
    for index in range(DROPS_PER_SECOND + 30):
        feed.observe(engine.process(udp_pkt(f"198.51.100.10:{20000 + index}", "203.0.113.10:9999", b"x"), 1.0))
    drops = feed.since(0)
    assert len(drops) == DROPS_PER_SECOND
    assert drops[0]["reason"] == "default" and drops[0]["dport"] == 9999 and drops[0]["count"] == 1
    feed.tick(2.0)
    summary = feed.since(drops[-1]["seq"])
    assert summary == [{"seq": DROPS_PER_SECOND + 1, "time": summary[0]["time"], "type": "drop", "reason": "default",
                        "count": 30, "summary": True}]


def test_the_tap_makes_no_session_events(engine: Engine) -> None:
    feed = EventFeed()
    feed.observe(engine.process(seg(CLIENT, SERVER, "S", seq=100), 0.0))
    assert feed.since(0) == []  # sessions come from the effects alone: no per-packet state watch


def lines(stream) -> list:
    out = []
    for chunk in stream:
        if chunk is None:
            out.append(None)
            break
        out += [json.loads(line) for line in chunk.splitlines()]
    return out


def test_the_stream_filters_follows_and_tells_a_slow_reader_what_it_lost(engine: Engine) -> None:
    feed = EventFeed(size=4, wall=lambda: 1000.0)
    handshake(engine, feed)
    assert [e["type"] for e in lines(feed.stream(False))[1:]] == ["new", "update", "update"]
    assert [e["type"] for e in lines(feed.stream(False, types={"new"}))[1:]] == ["new"]
    assert lines(feed.stream(False, since=2000.0)) == [{"ok": True, "version": 1, "follow": False}]
    follower = feed.stream(True)
    assert lines(follower)[-1] is None  # history sent, then "nothing now"
    for index in range(6):
        feed.observe(engine.process(udp_pkt(f"198.51.100.10:{30000 + index}", "203.0.113.10:9999", b"x"), 5.0))
    caught_up = lines(follower)
    assert caught_up[0] == {"type": "lost", "count": 2} and [e["seq"] for e in caught_up[1:-1]] == [6, 7, 8, 9]


@pytest.mark.root
def test_a_follower_is_parked_woken_and_let_go(engine: Engine) -> None:
    from fw.daemon import Loop
    from fw.drivers.control import ControlServer, stream

    feed = EventFeed()
    address = b"\0fw-test-feed/%d" % os.getpid()
    server = ControlServer(lambda request: feed.stream(True), address)
    feed.wake = server.wake
    loop = Loop()
    server.listen(loop)
    received: list = []
    client = stream({"command": "events", "follow": True}, address=address, timeout=10)

    def read() -> None:
        for event in client:
            received.append(event)
            if len(received) == 3:
                client.close()
                return

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(200):
            loop.run_once(0.01)
            if server.parked:
                break
        assert server.parked, "the follower was not parked with nothing to send"
        handshake(engine, feed)  # publishes: wakes the follower
        for _ in range(500):
            loop.run_once(0.01)
            if not reader.is_alive():
                break
        reader.join(5)
        assert [e.get("type") for e in received] == [None, "new", "update"]
        for _ in range(300):  # the client hung up: the server lets the connection go
            loop.run_once(0.01)
            if not server.connections:
                break
        assert not server.connections and not server.parked
    finally:
        server.close()
