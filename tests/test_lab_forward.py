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

pytestmark = [pytest.mark.netns, pytest.mark.root]

PASSWORD = "lab-redis-password"
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
