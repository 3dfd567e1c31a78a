"""Listen-address publication (fw.sync.forwarding.directory) against a real redis-server: each node
publishes where it listens, peers read it, entries refresh, expire when their node dies, and entries
written without the key are ignored and counted."""

from __future__ import annotations

import time

import pytest

from fw.sync.codec import canonical
from fw.sync.forwarding.directory import Directory, DirectoryThread, Unusable
from fw.sync.forwarding.wire import forwarding_key
from fw.sync.link import client_for
from tests.test_sync_helpers import KEY, RedisServer, need_redis

pytestmark = need_redis
FKEY = forwarding_key(KEY, "lab")
NOW = 1_764_176_983.0


@pytest.fixture
def redis_server():
    server = RedisServer(password="secret-of-redis", tcp=True).start()
    yield server
    server.close()


@pytest.fixture
def client(redis_server):
    made = client_for(redis_server.url)
    yield made
    made.close()


def wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_nodes_publish_and_read_each_others_addresses(client):
    fw1, fw2, fw3 = (Directory("lab", name, FKEY) for name in ("fw1", "fw2", "fw3"))
    fw1.publish(client, ("192.0.2.1", 6380), time.time())
    fw2.publish(client, ("2001:db8:3::2", 7000), time.time())
    assert fw3.fetch(client, time.time()) == {"fw1": ("192.0.2.1", 6380), "fw2": ("2001:db8:3::2", 7000)}
    assert fw1.fetch(client, time.time()) == {"fw2": ("2001:db8:3::2", 7000)}  # its own is left out
    assert sorted(client.keys("fw:lab:forward:*")) == [b"fw:lab:forward:fw1", b"fw:lab:forward:fw2"]
    assert 14_000 < client.pttl("fw:lab:forward:fw1") <= 15_000  # expires unless refreshed
    fw1.withdraw(client)
    assert fw3.fetch(client, time.time()) == {"fw2": ("2001:db8:3::2", 7000)}


def test_entries_written_without_the_key_or_for_another_node_are_ignored_and_counted(client):
    fw1, fw2 = Directory("lab", "fw1", FKEY), Directory("lab", "fw2", FKEY)
    stranger = Directory("lab", "fw3", forwarding_key(b"a-key-that-is-not-the-cluster-key", "lab"))
    stranger.publish(client, ("192.0.2.66", 6380), time.time())  # signed with another key
    client.set("fw:lab:forward:fw4", fw1.entry(("192.0.2.1", 6380), time.time()))  # fw1's entry under fw4's name
    client.set("fw:lab:forward:fw5", b"not json")
    fields = {"v": 1, "cluster": "lab", "node": "fw6", "addr": "192.0.2.6", "port": 6380, "ts": time.time()}
    client.set("fw:lab:forward:fw6", canonical({**fields, "mac": "0" * 64}))
    old = Directory("lab", "fw7", FKEY)
    client.set("fw:lab:forward:fw7", old.entry(("192.0.2.7", 6380), time.time() - 3600))  # an old entry put back
    assert fw2.fetch(client, time.time()) == {}
    assert dict(fw2.refused) == {"forged": 2, "malformed": 2, "stale": 1}


def test_read_entry_refuses_each_way_an_entry_can_be_wrong():
    directory = Directory("lab", "fw2", FKEY)
    good = Directory("lab", "fw1", FKEY).entry(("192.0.2.1", 6380), NOW)
    assert directory.read_entry("fw1", good, NOW) == ("192.0.2.1", 6380)
    other_cluster = Directory("other", "fw1", FKEY).entry(("192.0.2.1", 6380), NOW)
    cases = {"malformed": [b"[1]", b"{}", good.replace(b'"port":6380', b'"port":"6380"'), other_cluster],
             "forged": [good.replace(b"192.0.2.1", b"192.0.2.9")],
             "stale": [Directory("lab", "fw1", FKEY).entry(("192.0.2.1", 6380), NOW - 100),
                       Directory("lab", "fw1", FKEY).entry(("192.0.2.1", 6380), NOW + 100)]}  # fmt: skip
    for reason, blobs in cases.items():
        for blob in blobs:
            with pytest.raises(Unusable) as caught:
                directory.read_entry("fw1", blob, NOW)
            assert caught.value.reason == reason, blob


def test_threads_publish_refresh_and_forget_a_dead_node(redis_server, client):
    fw1 = DirectoryThread(redis_server.url, Directory("lab", "fw1", FKEY, ttl=1.0), ("192.0.2.1", 6380), refresh=0.2)
    changes = []
    fw2 = DirectoryThread(redis_server.url, Directory("lab", "fw2", FKEY, ttl=1.0), ("192.0.2.2", 6380), refresh=0.2,
                          on_change=changes.append)  # fmt: skip
    fw1.start()
    fw2.start()
    try:
        assert wait_for(lambda: fw2.peers == {"fw1": ("192.0.2.1", 6380)} and fw1.peers == {"fw2": ("192.0.2.2", 6380)})
        rounds = fw1.counters["rounds"]
        assert wait_for(lambda: fw1.counters["rounds"] >= rounds + 5)  # refreshed: the entry outlives its ttl
        assert client.exists("fw:lab:forward:fw1") and fw2.peers == {"fw1": ("192.0.2.1", 6380)}
        fw1.close(withdraw=False)  # dies: stops refreshing, its entry expires by itself
        assert wait_for(lambda: fw2.peers == {}, timeout=5)
        assert changes[0] == {"fw1": ("192.0.2.1", 6380)} and changes[-1] == {}
        assert fw2.stats()["peers"] == {} and fw2.stats()["rounds"] > 5
    finally:
        fw1.close(withdraw=False)
        fw2.close()
    assert not client.exists("fw:lab:forward:fw2")  # a clean stop withdraws at once


def test_a_thread_survives_redis_going_away_and_publishes_again_when_it_is_back(redis_server, client):
    fw1 = DirectoryThread(redis_server.url, Directory("lab", "fw1", FKEY, ttl=2.0), ("192.0.2.1", 6380), refresh=0.1)
    fw1.start()
    try:
        assert wait_for(lambda: client.exists("fw:lab:forward:fw1"))
        redis_server.kill()
        assert wait_for(lambda: fw1.counters["errors"] >= 1)
        redis_server.process = None
        restarted = RedisServer(password=redis_server.password, tcp=True)
        restarted.port = redis_server.port
        restarted.start()
        try:
            again = client_for(restarted.url)
            assert wait_for(lambda: again.exists("fw:lab:forward:fw1"), timeout=15)
            again.close()
        finally:
            restarted.close()
    finally:
        fw1.close(withdraw=False)
