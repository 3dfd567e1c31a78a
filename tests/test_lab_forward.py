"""The forwarding pieces in the HA lab (fw.sync.lab): forwarded packets between fw1 and fw2 over the
sync link, and the delay proxy between fw1 and Redis (the sync of one node made slow)."""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
import textwrap

import pytest

from fw.sync.lab import REDIS_PORT, HaLab
from tests import delay_proxy, forward_peer, netns
from tests.test_lab_ha import PASSWORD, Cluster, cluster, fetches, web  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.netns, pytest.mark.root]

SYNC_KEY = b"a-shared-key-for-the-lab-cluster-0123456789"
PEER = [sys.executable, forward_peer.__file__]
# Round trips to Redis (RESP over a plain socket): AUTH, then N PINGs, each timed; JSON on stdout.
PINGS = textwrap.dedent("""
    import json, socket, sys, time
    host, port, password, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    sock = socket.create_connection((host, port), timeout=10)
    sock.sendall(b"AUTH %s\\r\\n" % password.encode())
    assert sock.recv(100) == b"+OK\\r\\n"
    times = []
    for _ in range(count):
        started = time.monotonic()
        sock.sendall(b"PING\\r\\n")
        assert sock.recv(100) == b"+PONG\\r\\n"
        times.append(time.monotonic() - started)
    print(json.dumps(times))
""")


@pytest.fixture
def ha_lab(lab_prefix):
    lab = HaLab(lab_prefix())
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def test_forwarded_packets_cross_the_sync_link_and_attacks_are_refused(ha_lab):
    count, size = 200, 1400
    argv = [*PEER, "receive", "--key", SYNC_KEY.hex(), "--listen", "192.0.2.2:6380", "--node", "fw2", "--peers", "fw1",
            "--datagrams", count + forward_peer.ATTACKS, "--lifetime", 30]  # fmt: skip
    receiver = netns.Background(ha_lab, "fw2", argv, lifetime=40)
    netns.wait_for_port(ha_lab, "fw2", 6380, "udp")
    ha_lab.run("fw1", [*PEER, "send", "--key", SYNC_KEY.hex(), "--node", "fw1", "--to", "192.0.2.2:6380",
                       "--count", count, "--size", size, "--attacks"], timeout=30)  # fmt: skip
    got = receiver.json(timeout=30)
    expected = hashlib.sha256(b"".join(forward_peer.packet(i, size) for i in range(count))).hexdigest()
    assert got["admitted"] == count and got["sha256"] == expected and got["sources"] == ["192.0.2.1"]
    assert got["refused"] == {"too-large": 1, "malformed": 1, "unknown-node": 1, "replayed": 3, "forged": 1,
                              "stale": 0, "rate": 0}  # fmt: skip


def pings(lab: HaLab, name: str, host: str, port: int, count: int = 5) -> list[float]:
    done = lab.run(name, [sys.executable, "-c", PINGS, host, port, PASSWORD, count], timeout=30)
    return json.loads(done.stdout)


def test_the_delay_proxy_slows_one_nodes_redis_and_only_that_one(ha_lab):
    redis = netns.Background(ha_lab, "redis", ha_lab.redis_argv(PASSWORD), lifetime=60, capture=False)
    proxy = None
    try:
        netns.wait_for_port(ha_lab, "redis", REDIS_PORT)
        proxy = netns.Background(ha_lab, "fw1", [sys.executable, delay_proxy.__file__, "--listen", "127.0.0.1:16379",
                                                 "--upstream", f"{ha_lab.redis_address}:{REDIS_PORT}",
                                                 "--delay-ms", 100, "--lifetime", 40, "--mark", "0x4"],
                                 lifetime=50)  # fmt: skip
        netns.wait_for_port(ha_lab, "fw1", 16379)
        slow = pings(ha_lab, "fw1", "127.0.0.1", 16379)
        fast = pings(ha_lab, "fw2", ha_lab.redis_address, REDIS_PORT)
        assert min(slow) >= 0.2 and statistics.median(slow) <= 0.2 + 0.15  # 100 ms each way, measured
        assert statistics.median(fast) < 0.05
        proxy.process.terminate()
        assert proxy.wait(10) == 0
        counters = json.loads(proxy.stdout.decode().splitlines()[-1])
        assert counters["connections"] == 1 and counters["bytes:down"] > 0
    finally:
        if proxy is not None:
            proxy.stop()
        redis.stop()


# -- the hold alone with fw1's sync delayed: the baseline owner forwarding is to beat ----------------


def start_through(ha: Cluster, firewall: str, url: str) -> netns.Daemon:
    """`fw run --sync URL` on `firewall` (the cluster's key and name), stopped by the cluster."""
    options = ["--sync", url, "--node-id", firewall, "--sync-key-file", str(ha.key), "--cluster", "lab"]
    daemon = netns.Daemon(ha.lab.view(firewall), ha.policy, ha.tmp / f"{firewall}.log", *options)
    ha.daemons.append(daemon)
    daemon.wait_ready()
    return daemon


@pytest.mark.parametrize("delay_ms", [20, 200])
def test_with_fw1s_sync_delayed_the_hold_shows_the_waits(cluster, web, delay_ms, record_property):  # noqa: F811
    """fw1 reaches Redis through the delay proxy: its announcements reach fw2 `delay` late, and fw2's
    reach it as late. 20 ms: the hold (50 ms) mostly covers it, the waits grow by the delay (one may
    still run out: fw1's announcement also waits its turn). 200 ms: the hold runs out every time, the
    held packets are dropped and TCP's retransmissions carry the fetches, seconds late. (The wait
    figures cover the packets that passed after a wait.)"""
    lab = cluster.lab
    proxy = netns.Background(lab, "fw1", [sys.executable, delay_proxy.__file__, "--listen", "127.0.0.1:16379",
                                          "--upstream", f"{lab.redis_address}:{REDIS_PORT}", "--delay-ms", delay_ms,
                                          "--lifetime", 150], lifetime=160, capture=False)  # fmt: skip
    try:
        netns.wait_for_port(lab, "fw1", 16379)
        fw1 = start_through(cluster, "fw1", f"redis://:{PASSWORD}@127.0.0.1:16379/0")
        fw2 = start_through(cluster, "fw2", lab.redis_url(PASSWORD))
        cluster.wait_peers(fw1, fw2)
        results = fetches(cluster, 10, max_time=20)  # retransmissions: 1 s, 3 s, 7 s after the SYN
        seconds = sorted(s for _, s, _ in results)
        hold1, hold2 = cluster.stats(fw1)["sync"]["hold"], cluster.stats(fw2)["sync"]["hold"]
    finally:
        proxy.stop()
    figures = {"delay_ms": delay_ms, "fetch_ms": {"median": round(statistics.median(seconds) * 1000, 1),
                                                  "worst": round(seconds[-1] * 1000, 1)},
               "fw1_hold": {key: hold1[key] for key in ("held", "accepted", "dropped")} | hold1["wait"],
               "fw2_hold": {key: hold2[key] for key in ("held", "accepted", "dropped")} | hold2["wait"]}  # fmt: skip
    print(f"\nHA lab, fw1's sync delayed {delay_ms} ms, hold alone: {json.dumps(figures)}")
    record_property("delayed_sync_figures", json.dumps(figures))
    assert [code for code, _, _ in results] == [0] * 10
    if delay_ms < 50:  # the hold covers the delay: held packets passed, after about the delay
        assert hold1["accepted"] + hold2["accepted"] >= 10
        assert min(hold1["wait"]["median_ms"], hold2["wait"]["median_ms"]) >= delay_ms * 0.8
        assert statistics.median(seconds) < 0.9
    else:  # the hold runs out: held packets dropped, fetches wait for retransmissions (1 s and more).
        # Every SYN-ACK held at fw2 is dropped (fw1's news takes 200 ms); at fw1 a retransmission held
        # while fw2's news is already on its way may still pass.
        assert hold2["accepted"] == 0 and hold2["dropped"] >= 10 and hold1["dropped"] >= 1
        assert statistics.median(seconds) >= 0.9


def test_the_default_listen_address_is_each_nodes_sync_side(ha_lab):
    probe = "import sys; from fw.sync.forwarding.node import default_listen; print(*default_listen(sys.argv[1]))"
    for name, expected in (("fw1", "192.0.2.1 6380"), ("fw2", "192.0.2.2 6380")):
        done = ha_lab.run(name, [sys.executable, "-c", probe, ha_lab.redis_url(PASSWORD)])
        assert done.stdout.strip() == expected
