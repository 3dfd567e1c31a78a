"""HA everywhere, in the HA lab (fw.sync.lab: client -> fw1 -> server, server -> fw2 -> client,
Redis on the sync link), one lab and one redis-server for the module, and two pairs of daemons,
each started once (a cluster name of its own: neither sees the other's sessions); every test puts
the routes back at its end:
- `--queues 0-1 --offload` on both nodes: fetches from several client addresses (spread over the
  workers by the kernel's hash) pass, and ICMP errors (port unreachable) of sessions opened on fw1
  reach the client through fw2; a session offloaded on fw1 (both directions through it) is still
  announced, and its expiry still synced: fw2 takes the flow over mid-way, after more than its
  timeout without a packet in fw1's engine;
- one queue, no offload: FTP with lftp, passive and active, the control connection's directions
  through different firewalls; then ownership: fw1 killed mid-stream, the flow through fw2 takes
  the session over (owner fw2); fw1 started again does not take it back, and the flow back
  through fw1 goes on (this test ends the pair: it comes last).

Every daemon holds a packet that waits for a peer's session up to HOLD_MS (`--sync-hold-ms`), not
the default 50 ms: these tests check that sessions and expectations reach the other node, not how
fast (tests/test_lab_ha.py measures the hold). On a machine shared with other labs the announcement
of a new session (fw1's engine, Redis, fw2's reader, each a process waiting for a CPU) sometimes
took longer than 50 ms: fw2 dropped the server's SYN-ACK as `invalid:no-session` and the server's
retransmission a second later passed. A session that never arrives is still dropped, after HOLD_MS.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fw.sync.lab import HaLab
from tests import ftp_lab, netns
from tests.conftest import node_failed
from tests.test_lab_ha import ECHO_CLIENT, ECHO_SERVER, PASSWORD, say

pytestmark = [pytest.mark.netns, pytest.mark.root]

POLICY = """\
version: 1
defaults: {action: drop, log: false}
sets:
  clients: [198.51.100.0/24, "2001:db8:1::/64"]
rules:
  - {name: allow-web, action: accept, proto: tcp, src: $clients, dport: 8080}
  - {name: echo, action: accept, proto: tcp, src: $clients, dport: 7002}
  - {name: udp-probe, action: accept, proto: udp, src: $clients, dport: 7009}
  - {name: ftp, action: accept, proto: tcp, src: $clients, dport: 21, alg: ftp}
"""
ESTABLISHED = 4  # seconds: the pair with offload times established sessions out this soon
HOLD_MS = 1000  # a packet waits this long for a peer's session (module docstring)
SHORT_TIMEOUTS = POLICY + f"timeouts: {{tcp_established: {ESTABLISHED}}}\n"
CLIENT_ADDRESSES = [f"198.51.100.{n}" for n in range(11, 19)]  # beside .10: spread over the workers
# A UDP probe to a port nobody listens on: the server's ICMP port unreachable must come back.
UDP_PROBE = textwrap.dedent("""
    import socket, sys
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((sys.argv[1], 0))
    sock.connect(("203.0.113.10", 7009))
    sock.settimeout(4)
    try:
        sock.send(b"probe")
        sock.recv(100)
        print("answered")
    except ConnectionRefusedError:
        print("refused")
    except socket.timeout:
        print("timeout")
""")


class Cluster:
    """The module's HA lab with redis; `start` runs a daemon on fw1 or fw2 (stopped by `stop_all`)."""

    def __init__(self, lab: HaLab, tmp: Path):
        self.lab, self.tmp = lab, tmp
        self.key = tmp / "sync.key"
        self.key.write_text("a-shared-key-for-the-lab-cluster-0123456789\n")
        self.key.chmod(0o600)
        self.redis = netns.Background(lab, "redis", lab.redis_argv(PASSWORD), lifetime=600, capture=False)
        netns.wait_for_port(lab, "redis", 6379)
        self.daemons: list[netns.Daemon] = []
        self.pairs: dict[str, tuple] = {}
        self.failed = False
        self.problems: list[str] = []

    def pair(self, name: str, *args: str, policy: str = POLICY) -> tuple[netns.Daemon, netns.Daemon]:
        """fw1 and fw2 of cluster `name`, started with ARGS at the first call (the other pair's
        daemons stopped first: one daemon per namespace)."""
        if name not in self.pairs:
            self.problems += self.stop_all()
            made = tuple(self.start(firewall, *args, cluster=name, policy=policy) for firewall in ("fw1", "fw2"))
            self.wait_peers(*made)
            self.pairs[name] = made
        return self.pairs[name]

    def start(self, firewall: str, *args: str, cluster: str, policy: str = POLICY) -> netns.Daemon:
        path = self.tmp / f"policy-{len(self.daemons)}.yaml"
        path.write_text(policy)
        options = ["--sync", self.lab.redis_url(PASSWORD), "--node-id", firewall, "--sync-key-file", str(self.key),
                   "--cluster", cluster, "--sync-hold-ms", str(HOLD_MS)]  # fmt: skip
        daemon = netns.Daemon(self.lab.view(firewall), path, self.tmp / f"{cluster}-{firewall}-{len(self.daemons)}.log",
                              *options, *args)  # fmt: skip
        self.daemons.append(daemon)
        daemon.wait_ready(timeout=30)
        return daemon

    @staticmethod
    def stats(daemon: netns.Daemon) -> dict:
        return json.loads(daemon.fw("stats", "--json").stdout)

    @staticmethod
    def sessions(daemon: netns.Daemon) -> list[dict]:
        return json.loads(daemon.fw("sessions", "--json").stdout)["sessions"]

    def wait_for(self, what, timeout: float = 15.0, step: float = 0.2):
        """Poll `what()` until it returns something true; that value."""
        deadline = time.monotonic() + timeout
        while True:
            value = what()
            if value:
                return value
            assert time.monotonic() < deadline, f"not within {timeout:g} s: {what.__doc__ or what}"
            time.sleep(step)

    def wait_peers(self, *daemons: netns.Daemon) -> None:
        def heard():
            """every daemon hears the others and loaded the snapshot"""
            views = [self.stats(daemon)["sync"] for daemon in daemons]
            return all(view["loaded"] and sum(p.get("alive", True) for p in view["peers"].values()) >= len(daemons) - 1
                       for view in views)  # fmt: skip

        self.wait_for(heard, timeout=20)

    def route(self, host: str, via: str) -> None:
        """The default route of `host` (client or server) through fw1 or fw2."""
        side = "lan" if host == "client" else "wan"
        address = {"lan": {"fw1": "198.51.100.1", "fw2": "198.51.100.2"},
                   "wan": {"fw1": "203.0.113.1", "fw2": "203.0.113.2"}}[side][via]  # fmt: skip
        self.lab.run(host, ["ip", "route", "replace", "default", "via", address])

    def routes_back(self) -> None:
        self.route("client", "fw1")
        self.route("server", "fw2")

    def stop_all(self) -> list[str]:
        problems = []
        for daemon in self.daemons:
            status = daemon.stop()
            if daemon.process.returncode not in (0, -9) and status != 0:
                problems.append(f"{daemon.log.name}: exit status {status} after SIGTERM")
            if self.failed or problems:
                sys.stderr.write(f"--- {daemon.log.name} ---\n{daemon.log_text()}\n")
        self.daemons, self.pairs = [], {}
        return problems


@pytest.fixture(scope="module")
def module_cluster(lab_prefix, tmp_path_factory):
    if reason := netns.unavailable_reason():
        pytest.skip(reason)
    lab = HaLab(lab_prefix())
    made = None
    try:
        lab.up()
        for address in CLIENT_ADDRESSES:
            lab.run("client", ["ip", "addr", "add", f"{address}/24", "dev", "eth0"])
        made = Cluster(lab, tmp_path_factory.mktemp("ha-more"))
        yield made
    finally:
        problems = made.problems + made.stop_all() if made is not None else []
        if made is not None:
            made.redis.stop()
        lab.down()
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture
def cluster(module_cluster, request):
    yield module_cluster
    module_cluster.failed |= node_failed(request.node)
    module_cluster.routes_back()


def echo_client(lab, source: str = "198.51.100.10") -> subprocess.Popen:
    code = ECHO_CLIENT.replace('create_connection(("203.0.113.10", 7002), timeout=3)',
                               f'create_connection(("203.0.113.10", 7002), timeout=3, source_address=("{source}", 0))')
    return lab.popen("client", [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def close(client: subprocess.Popen) -> None:
    client.stdin.close()
    client.kill()
    client.wait(5)


def workers_and_offload(cluster):
    return cluster.pair("workers-offload", "--queues", "0-1", "--offload", policy=SHORT_TIMEOUTS)


def test_sync_with_two_workers_on_each_node(cluster, tmp_path, record_property):
    lab = cluster.lab
    fw1, fw2 = workers_and_offload(cluster)
    site = tmp_path / "site"
    site.mkdir()
    (site / "page.txt").write_text("through two workers on each of two firewalls\n" * 50)
    started = time.monotonic()
    with netns.http_server(lab, site, port=8080, lifetime=60):
        codes = []
        for address in CLIENT_ADDRESSES:
            done = netns.curl(lab, netns.url("203.0.113.10", 8080, "/page.txt"), max_time=8,
                              extra=("--interface", address, "-o", "/dev/null", "-w", "%{http_code}"))
            codes.append((address, done.returncode, done.stdout))
        probes = [lab.run("client", [sys.executable, "-c", UDP_PROBE, address], check=False, timeout=20).stdout.strip()
                  for address in CLIENT_ADDRESSES[:4]]  # fmt: skip
    seconds = time.monotonic() - started
    assert codes == [(address, 0, "200") for address in CLIENT_ADDRESSES]
    assert probes == ["refused"] * 4  # fw2 let the server's port unreachable through: related to fw1's session
    one, two = cluster.stats(fw1), cluster.stats(fw2)
    per_queue = {name: {queue: row["packets"] for queue, row in enumerate(stats["workers"])}
                 for name, stats in (("fw1", one), ("fw2", two))}  # fmt: skip
    print(f"\nHA lab, --queues 0-1 --offload on both nodes: 8 fetches and 4 probes in {seconds:.1f} s; packets "
          f"per worker {per_queue}; fw2 held {two['sync']['hold']['held']}, wait {two['sync']['hold']['wait']}")
    record_property("ha_queues", json.dumps(per_queue))
    assert one["packets"]["by_verdict"]["accept"]["rule:allow-web"] == len(CLIENT_ADDRESSES)
    assert two["packets"]["by_verdict"]["accept"].get("related:icmp", 0) >= 4
    owners = {s["owner"] for s in cluster.sessions(fw2) if s["rule"] in ("allow-web", "udp-probe")}
    assert owners == {"fw1"}  # (web sessions may have timed out already: 4 s once established)
    assert two["drops"].get("invalid:no-session", 0) == 0, two["sync"]["hold"]
    assert "sync: node fw2, cluster workers-offload" in fw2.fw("stats").stdout  # the workers' line, merged


def test_an_offloaded_session_is_announced_and_its_expiry_synced(cluster):
    """Both directions through fw1 (the server's route too): the kernel passes the flow on fw1, the
    engine sees no packet of it for longer than its timeout (4 s); fw1 keeps the session (read back
    from conntrack) and tells fw2, whose copy is still there when the flow moves to it."""
    lab = cluster.lab
    fw1, fw2 = workers_and_offload(cluster)
    cluster.route("server", "fw1")
    with netns.Background(lab, "server", [sys.executable, "-c", ECHO_SERVER], lifetime=90, capture=False):
        netns.wait_for_port(lab, "server", 7002)
        client = echo_client(lab)
        try:
            assert say(client, "first") == "first"
            cluster.wait_for(lambda: cluster.stats(fw1)["offload"]["active"] >= 1)
            before = cluster.stats(fw1)
            seen = before["packets"]["by_verdict"]["accept"].get("established", 0)
            refreshed = before["sync"]["announced"].get("refresh", 0)
            started = time.monotonic()
            while time.monotonic() - started < ESTABLISHED + 2.5:  # beyond the timeout, in the kernel only
                assert say(client, "offloaded") == "offloaded"
                time.sleep(0.3)
            one = cluster.stats(fw1)
            assert one["packets"]["by_verdict"]["accept"].get("established", 0) <= seen + 2  # in the kernel
            assert one["sync"]["announced"].get("refresh", 0) > refreshed  # its deadline moved: fw2 was told
            copies = [s for s in cluster.sessions(fw2) if s["rule"] == "echo"]
            assert len(copies) == 2 and {s["owner"] for s in copies} == {"fw1"}  # in each of fw2's workers
            cluster.route("client", "fw2")
            cluster.route("server", "fw2")
            moved = say(client, "moved")
            seen = {"fw1": cluster.stats(fw1)["sync"], "fw2": cluster.stats(fw2)["sync"],
                    "fw2 echo sessions": [s for s in cluster.sessions(fw2) if s["rule"] == "echo"]}
        finally:
            close(client)
    assert moved == "moved", seen
    two = cluster.stats(fw2)
    assert two["packets"]["by_verdict"]["accept"].get("established", 0) >= 2
    assert two["drops"].get("invalid:no-session", 0) == 0, two["sync"]["hold"]


def plain(cluster):
    return cluster.pair("plain")


@pytest.mark.parametrize("passive", [True, False], ids=["passive", "active"])
def test_ftp_across_asymmetric_paths(cluster, tmp_path, passive):
    """The control connection's commands cross fw1, its replies fw2. Passive: fw2 sees the 227
    without the PASV and opens the expectation, which fw1 needs for the client's data connection.
    Active: fw1 sees the PORT, fw2 needs the expectation for the server's data connection."""
    lab = cluster.lab
    fw1, fw2 = plain(cluster)
    data = ftp_lab.random_bytes(7, 300_000)
    before = [related_ftp(cluster, fw) for fw in (fw1, fw2)]
    with ftp_lab.FtpServer(lab, tmp_path / "ftp", lifetime=60) as server:
        server.publish("download.bin", data)
        done = ftp_lab.lftp(lab, ftp_lab.ftp_url("203.0.113.10"), [f"get -O {tmp_path} download.bin"],
                            passive=passive, net_timeout=8, timeout=40)
        announced = server.data_commands()
    assert done.returncode == 0, f"lftp failed: {done.stdout}{done.stderr}"
    assert ftp_lab.sha256(tmp_path / "download.bin") == ftp_lab.sha256(data)
    assert announced and announced[0].split()[0] in (("PASV", "EPSV") if passive else ("PORT", "EPRT"))
    related = [related_ftp(cluster, fw) - n for fw, n in zip((fw1, fw2), before, strict=True)]
    assert related[0 if passive else 1] >= 1  # the data connection's first packet, where it arrived


def related_ftp(cluster, daemon) -> int:
    return cluster.stats(daemon)["packets"]["by_verdict"]["accept"].get("related:ftp", 0)


def test_a_dead_owners_sessions_move_and_stay_moved(cluster):
    lab = cluster.lab
    fw1, fw2 = plain(cluster)
    with netns.Background(lab, "server", [sys.executable, "-c", ECHO_SERVER], lifetime=90, capture=False):
        netns.wait_for_port(lab, "server", 7002)
        client = echo_client(lab)
        try:
            assert say(client, "before") == "before"
            fw1.process.kill()  # a crash: fw1 passes nothing from now on
            fw1.process.wait(5)
            cluster.route("client", "fw2")

            def fw1_dead():
                """fw2 no longer counts fw1 as alive"""
                return not cluster.stats(fw2)["sync"]["peers"].get("fw1", {}).get("alive", True)

            cluster.wait_for(fw1_dead, timeout=10)
            during = say(client, "during")
            echo_at_fw2 = [s for s in cluster.sessions(fw2) if s["rule"] == "echo"]
            again = cluster.start("fw1", cluster="plain")
            cluster.wait_peers(again, fw2)
            echo_at_fw1 = [s for s in cluster.sessions(again) if s["rule"] == "echo"]
            cluster.route("client", "fw1")  # back through fw1: it decides, the session stays fw2's
            after = say(client, "after")
            later = ([s["owner"] for s in cluster.sessions(again) if s["rule"] == "echo"],
                     [s["owner"] for s in cluster.sessions(fw2) if s["rule"] == "echo"])
            stats = cluster.stats(fw2)
        finally:
            close(client)
    assert (during, after) == ("during", "after")
    assert [s["owner"] for s in echo_at_fw2] == ["fw2"]  # taken over on its first packet after fw1 died
    assert stats["sync"]["claimed"]["taken"] >= 1
    assert [s["owner"] for s in echo_at_fw1] == ["fw2"]  # fw1 came back and found it moved
    assert later == (["fw2"], ["fw2"])  # packets through fw1 again: it did not take the session back


