"""A forwarding node assembled (fw.sync.forwarding.node) with a real redis-server: two nodes find
each other through the directory, route a packet of a session the other owns to it, stop forwarding
to a node that is no longer heard; the `forward` stats section and line."""

from __future__ import annotations

import select
import time

import pytest

from fw.packet import build
from fw.sync.forwarding.gate import Limits
from fw.sync.forwarding.node import ForwardConfig, ForwardingNode, default_listen
from fw.sync.forwarding.owner import FORWARD, LOCAL, Route
from fw.sync.forwarding.wire import HOOKS
from tests.test_forward_directory import wait_for
from tests.test_sync_helpers import KEY, RedisServer, need_redis

pytestmark = need_redis
PACKET = build.tcp("203.0.113.10", "198.51.100.10", 80, 40000, 1, 2, 0x12, 502)  # a SYN-ACK


@pytest.fixture
def redis_server():
    server = RedisServer(tcp=True).start()
    yield server
    server.close()


@pytest.fixture
def nodes(redis_server):
    made = []

    def make(name: str, **options) -> ForwardingNode:
        config = ForwardConfig(listen=("127.0.0.1", 0), refresh=0.1, ttl=1.0, **options)
        made.append(ForwardingNode(config, KEY, "lab", name, redis_server.url).start())
        return made[-1]

    yield make
    for node in made:
        node.close()


def received(node: ForwardingNode, count: int, timeout: float = 5.0) -> list:
    got, deadline = [], time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        if select.select([node], [], [], 0.1)[0]:
            got += node.receive()
    return got


def test_two_nodes_find_each_other_and_forward_to_the_owner(nodes):
    fw1, fw2 = nodes("fw1"), nodes("fw2")
    for node in (fw1, fw2):
        node.peers_heard(["fw1", "fw2"])  # what sync's hellos say

    def routed() -> Route:
        fw1.refresh()
        return fw1.route_session("fw2", forwarded=False)

    assert wait_for(lambda: routed().kind == FORWARD)
    route = routed()
    assert route == Route(FORWARD, "owner", "fw2", fw2.receiver.address)
    assert fw1.forward(route, PACKET, HOOKS["FORWARD"], "wan", "lan")
    [datagram] = received(fw2, 1)
    assert (datagram.packet, datagram.node, datagram.iif, datagram.oif) == (PACKET, "fw1", "wan", "lan")
    fw2.refresh()
    assert fw2.route_session("fw2", forwarded=True) == Route(LOCAL, "came-forwarded")  # fw2 decides it
    assert fw1.stats()["sent"]["sent"] == 1 and fw2.stats()["received"]["accepted"] == 1
    assert fw1.stats()["routes"]["forward:owner"] >= 1
    assert fw2.stats_line().startswith("forward: sent 0 (segmented 0, failed: none), received 1 of 1 datagrams")
    assert fw1.stats()["directory"]["peers"] == {"fw2": f"127.0.0.1:{fw2.receiver.address[1]}"}


def test_a_gso_packet_reaches_the_owner_in_segments(nodes):
    fw1, fw2 = nodes("fw1", mtu=1500), nodes("fw2")
    for node in (fw1, fw2):
        node.peers_heard(["fw1", "fw2"])
    assert wait_for(lambda: (fw1.refresh(), fw1.route_unplaced(False))[1].kind == FORWARD)  # the only peer
    big = build.tcp("203.0.113.10", "198.51.100.10", 80, 40000, 1, 2, 0x18, 502, b"", b"g" * 30000)
    assert fw1.forward(fw1.route_unplaced(False), big, HOOKS["FORWARD"], "wan", "lan")
    segments = received(fw2, fw1.stats()["sent"]["sent"])
    assert len(segments) == fw1.stats()["sent"]["sent"] > 20 and all(d.segment for d in segments)


def test_a_node_no_longer_heard_is_no_longer_forwarded_to_nor_accepted_from(nodes):
    fw1, fw2 = nodes("fw1"), nodes("fw2")
    for node in (fw1, fw2):
        node.peers_heard(["fw1", "fw2"])
    assert wait_for(lambda: (fw1.refresh(), fw1.route_session("fw2", False))[1].kind == FORWARD)
    fw1.peers_heard(["fw1"])  # fw2's hellos stopped (its directory entry may live on a while)
    assert fw1.route_session("fw2", False) == Route(LOCAL, "owner-dead")
    assert fw1.owners.takes_over("fw2")
    assert wait_for(lambda: (fw2.refresh(), fw2.route_session("fw1", False))[1].kind == FORWARD)
    fw2.forward(fw2.route_session("fw1", False), PACKET, HOOKS["FORWARD"], "wan", "lan")
    assert received(fw1, 1, timeout=1) == []  # from a node it no longer hears: refused
    assert fw1.stats()["received"]["refused"]["unknown-node"] == 1


def test_the_default_listen_address_is_our_side_of_the_way_to_redis():
    assert default_listen("redis://:secret@127.0.0.1:6379/0") == ("127.0.0.1", 6380)
    assert default_listen("redis://[::1]:6379/0", port=7000) == ("::1", 7000)
    with pytest.raises(ValueError, match="unix socket"):
        default_listen("unix:///run/redis.sock?db=0")


def test_limits_reach_the_gate(nodes):
    fw1 = nodes("fw1", limits=Limits(max_packet=2000))
    assert fw1.receiver.gate.limits.max_packet == 2000 and fw1.sender.max_packet == 2000


@pytest.mark.parametrize("config, message", [
    (ForwardConfig(mtu=500), "576 to 65535"),
    (ForwardConfig(limits=Limits(max_packet=20)), "40 to 65535"),
    (ForwardConfig(limits=Limits(window=8)), "window"),
    (ForwardConfig(limits=Limits(packets_per_second=0)), "above 0"),
    (ForwardConfig(refresh=20.0, ttl=15.0), "refreshed"),
])  # fmt: skip
def test_bad_settings_are_refused_before_anything_opens(config, message):
    with pytest.raises(ValueError, match=message):
        config.check()
    with pytest.raises(ValueError, match=message):
        ForwardingNode(config, KEY, "lab", "fw1", "redis://127.0.0.1:1/0")


def test_the_defaults_pass():
    ForwardConfig().check()
