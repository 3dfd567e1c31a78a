"""NAT in the HA lab (fw.sync.lab: client -> fw1 -> server, server -> fw2 -> client, Redis on the
sync link), one lab and one redis-server for the module (tests/test_lab_ha_more.py's fixtures):
- `--sync` with an `snat` to a shared address (100.64.0.1 and 2001:db8:64::1, on neither
  firewall: the server's route to it is its default, fw2): fw1 translates the client's packets,
  fw2 the replies, from the binding fw1 announced. HTTP fetches pass without a retransmission: a
  reply held at fw2 for the session's news is released by the news (its tuple is the binding's
  reply key, not the session's) and leaves translated (judged again through the NAT handler, its
  new payload given); with `--offload` on both, a 20 MB download is whole and each node offloads
  its direction once its kernel entry holds the binding;
- a connection half-closed by the client (fw1 announces FIN_WAIT) while the server sends more
  through fw2: fw2's copy, replaced by the news, hands its kernel entry over (the lines stay
  offloaded, not rewritten in user space);
- a translated connection across a failure, with `--sync-defer` (the SYN, deferred, leaves translated):
  fw1 killed mid-stream, the client's route moved to fw2 (which claims the session and translates
  the client's packets with the same address and port: fw1's slice of the port range), then fw1
  started again (its table from Redis) and the route back: the server sees one peer throughout;
- `--offload` with masquerade on one firewall (both directions through fw1, no sync): once the
  kernel holds an established session's binding (fw.drivers.nat_kernel) the session is offloaded
  too (the entry made with both bits): a 20 MB download is whole (sha256), the `offload` counters
  say it was offloaded and the queue saw few of its packets; after the daemon exits, no kernel
  entry with either bit and no rule of it is left.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
import time

import pytest

from fw.drivers.nat_kernel import KERNEL_NAT_MARK
from fw.drivers.offload import OFFLOAD_MARK
from tests import netns
from tests import test_lab_ha_more as more
from tests.test_lab_ha import ECHO_CLIENT, say

pytestmark = [pytest.mark.netns, pytest.mark.root]
module_cluster, cluster = more.module_cluster, more.cluster  # the fixtures: one lab and redis for the module

SHARED = "100.64.0.1"  # the cluster's translated address: routed to the firewalls, held by neither
SHARED6 = "2001:db8:64::1"
BURST = 30  # lines the burst server sends after the client's FIN, 50 ms apart
POLICY = f"""\
version: 1
defaults: {{action: drop, log: false}}
sets:
  clients: [198.51.100.0/24, "2001:db8:1::/64"]
rules:
  - {{name: allow-web, action: accept, proto: tcp, src: $clients, dport: 8080}}
  - {{name: echo, action: accept, proto: tcp, src: $clients, dport: 7002}}
  - {{name: burst, action: accept, proto: tcp, src: $clients, dport: 7003}}
nat:
  - {{name: shared, type: snat, src: 198.51.100.0/24, to: {SHARED}}}
  - {{name: shared6, type: snat, src: "2001:db8:1::/64", to: "{SHARED6}"}}
"""
MASQUERADE = """\
version: 1
defaults: {action: drop, log: false}
sets:
  clients: [198.51.100.0/24]
rules:
  - {name: allow-web, action: accept, proto: tcp, src: $clients, dport: 8080}
nat:
  - {name: out, type: masquerade, src: $clients, oif: wan}
"""
FIRST_SLICE = range(1024, 33280)  # fw1's half of 1024-65535 (--nat-slices 2: docs/sync.md)
BULK = 20 * 2**20 + 333
# The echo server of tests/test_lab_ha.py, answering with the peer it sees: "LINE from ADDRESS:PORT".
# "ready" to the client's request (while the session is established: fw2's kernel entry is made),
# then after the client's FIN, BURST lines and the server's FIN.
BURST_SERVER = textwrap.dedent(f"""
    import socket, time
    listener = socket.create_server(("", 7003))
    connection, _ = listener.accept()
    with connection:
        connection.recv(1000)
        connection.sendall(b"ready\\n")
        while connection.recv(1000):
            pass
        for n in range({BURST}):
            connection.sendall(b"line %d\\n" % n)
            time.sleep(0.05)
""")
BURST_CLIENT = textwrap.dedent("""
    import socket, time
    sock = socket.create_connection(("203.0.113.10", 7003), timeout=3)
    sock.settimeout(10)
    sock.sendall(b"go\\n")
    data = sock.recv(1000)
    time.sleep(0.3)
    sock.shutdown(socket.SHUT_WR)
    try:
        while chunk := sock.recv(1000):
            data += chunk
    except OSError as error:
        print(type(error).__name__)
    print(len(data.splitlines()))
""")
ECHO_SERVER = textwrap.dedent("""
    import socket, sys
    listener = socket.create_server(("", int(sys.argv[1])))
    connection, peer = listener.accept()
    with connection:
        while data := connection.recv(1000):
            connection.sendall(data.strip() + f" from {peer[0]}:{peer[1]}\\n".encode())
""")
def test_fetches_through_a_shared_snat_address_on_asymmetric_paths(cluster, tmp_path, record_property):
    """Then, with `--offload` on both: a 20 MB download, each node offloading its direction once its
    kernel entry holds the binding (fw1 the client's ACKs, fw2 the server's data)."""
    lab = cluster.lab
    fw1, fw2 = cluster.pair("nat", "--offload", policy=POLICY)
    site = tmp_path / "site"
    site.mkdir()
    body = "translated by one firewall, back by the other\n" * 100
    (site / "page.txt").write_text(body)
    data = hashlib.shake_128(b"through two firewalls, offloaded").digest(BULK)
    (site / "bulk.bin").write_bytes(data)
    results = []
    with netns.http_server(lab, site, port=8080, lifetime=60):
        for server in ["203.0.113.10"] * 8 + ["2001:db8:2::10"] * 4:
            done = netns.curl(lab, netns.url(server, 8080, "/page.txt"), max_time=8,
                              extra=("-w", "\n%{time_total}"))
            text, _, seconds = done.stdout.rpartition("\n")
            results.append((done.returncode, text == body, float(seconds or 8)))
        one, two = cluster.stats(fw1), cluster.stats(fw2)
        sessions = [s for s in cluster.sessions(fw2) if s["rule"] == "allow-web"]
        bulk = netns.curl(lab, netns.url("203.0.113.10", 8080, "/bulk.bin"), max_time=60,
                          extra=("-o", str(tmp_path / "bulk.bin")))
    after = [cluster.stats(fw) for fw in (fw1, fw2)]
    trips = [sum(s["nat"][k] - b["nat"][k] for k in ("first_pass", "second_pass", "one_pass"))
             for s, b in zip(after, (one, two), strict=True)]
    offloaded = [s["offload"].get("offloaded_translated", 0) - b["offload"].get("offloaded_translated", 0)
                 for s, b in zip(after, (one, two), strict=True)]
    worst = max(seconds for _, _, seconds in results)
    print(f"\nHA lab, 12 fetches through snat {SHARED} and {SHARED6}: worst {worst * 1000:.0f} ms; fw2 held "
          f"{two['sync']['hold']['held']}, wait {two['sync']['hold']['wait']}; then 20 MB offloaded "
          f"{offloaded}, queue trips {trips} (fw1, fw2); drops {[s['drops'] for s in after]}")
    record_property("ha_nat_worst_fetch_ms", round(worst * 1000))
    assert [(code, same) for code, same, _ in results] == [(0, True)] * 12, results
    assert one["packets"]["by_verdict"]["accept"]["rule:allow-web"] == 12
    assert "rule:allow-web" not in two["packets"]["by_verdict"]["accept"]  # replies only through fw2
    assert len(sessions) == 12 and {s["owner"] for s in sessions} == {"fw1"}
    assert sorted(s["reply"]["dst"] for s in sessions) == [SHARED] * 8 + [SHARED6] * 4  # fw2 holds fw1's bindings
    assert all(s["reply"]["dport"] in FIRST_SLICE for s in sessions)  # ports from fw1's slice
    assert two["nat"]["first_pass"] > 0  # fw2 translated the replies back
    assert two["drops"].get("invalid:no-session", 0) == 0, two["sync"]["hold"]
    assert two["sync"]["hold"]["dropped"] == 0
    # A reply held for its session's news (fw2 heard of it after the server answered) is released
    # by the news and leaves translated: no retransmission (1 s), no wait for the hold's end (1 s).
    assert worst < 0.9, results
    assert bulk.returncode == 0, bulk.stderr
    assert hashlib.sha256((tmp_path / "bulk.bin").read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert min(offloaded) >= 1 and max(trips) < 50, (offloaded, trips)  # the handshake and the close


def test_peer_news_hands_the_kernel_entry_to_the_new_copy(cluster):
    """The client sends its request and its FIN through fw1, which announces the new state; fw2
    applies it by replacing its copy (Engine.adopt) while the server sends BURST more lines through
    it. The copy takes fw2's kernel entry (binding, offload) over: the lines pass in the kernel. (Before
    the fix, fw2 deleted the entry: every later line took the queue, rewritten in user space.)"""
    lab = cluster.lab
    fw1, fw2 = cluster.pair("nat", "--offload", policy=POLICY)
    with netns.Background(lab, "server", [sys.executable, "-c", BURST_SERVER], lifetime=60, capture=False):
        netns.wait_for_port(lab, "server", 7003)
        before = cluster.stats(fw2)
        done = lab.run("client", [sys.executable, "-c", BURST_CLIENT], check=False, timeout=30)
    after = cluster.stats(fw2)
    nat = {k: after["nat"].get(k, 0) - before["nat"].get(k, 0)
           for k in ("first_pass", "kernel_bindings_made", "kernel_bindings_carried", "kernel_binding_stale_drops")}
    print(f"\nHA lab, snat: {BURST} lines after the client's FIN, fw2: {nat}")
    assert done.stdout.split() == [str(BURST + 1)], done.stdout + done.stderr
    assert nat["kernel_bindings_made"] == 1 and nat["kernel_bindings_carried"] >= 1, nat
    assert nat["first_pass"] < BURST // 2, nat  # the handshake, the server's FIN: not the lines
    assert nat["kernel_binding_stale_drops"] == 0


def test_a_translated_session_survives_its_firewall_killed_and_started_again(cluster):
    """With `--sync-defer` (a pair of its own): the connection's SYN waits for Redis, and leaves
    with the mark and payload it was given (translated), as an accepted packet does."""
    lab = cluster.lab
    fw1, fw2 = cluster.pair("nat-defer", "--sync-defer", policy=POLICY)
    with netns.Background(lab, "server", [sys.executable, "-c", ECHO_SERVER, "7002"], lifetime=90, capture=False):
        netns.wait_for_port(lab, "server", 7002)
        client = lab.popen("client", [sys.executable, "-c", ECHO_CLIENT], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
        try:
            before = say(client, "before")
            deferred = cluster.stats(fw1)["sync"]["defer"]["deferred"]
            fw1.process.kill()  # a crash: its rules stay (fail-closed), its kernel entries too
            fw1.process.wait(5)
            cluster.route("client", "fw2")

            def fw1_dead():
                """fw2 no longer counts fw1 as alive"""
                return not cluster.stats(fw2)["sync"]["peers"].get("fw1", {}).get("alive", True)

            cluster.wait_for(fw1_dead, timeout=10)
            during = say(client, "during")  # fw2 translates both ways now, with fw1's binding
            owners_during = [s["owner"] for s in cluster.sessions(fw2) if s["rule"] == "echo"]
            again = cluster.start("fw1", "--sync-defer", cluster="nat-defer", policy=POLICY)
            cluster.wait_peers(again, fw2)
            restored = [s for s in cluster.sessions(again) if s["rule"] == "echo"]
            cluster.route("client", "fw1")
            after = say(client, "after")
            stats, two = cluster.stats(again), cluster.stats(fw2)
        finally:
            client.stdin.close()
            client.kill()
            client.wait(5)
    print(f"\nHA lab, snat: fw1 killed, fw2 took over, fw1 back: {(before, during, after)}; fw1 again: nat "
          f"{ {k: v for k, v in stats['nat'].items() if k.startswith('kernel')} }")
    peers = {line.partition(" from ")[2] for line in (before, during, after)}
    assert [line.partition(" from ")[0] for line in (before, during, after)] == ["before", "during", "after"], \
        (before, during, after)
    assert len(peers) == 1 and next(iter(peers)).startswith(SHARED + ":"), peers  # one peer seen throughout
    assert int(next(iter(peers)).rpartition(":")[2]) in FIRST_SLICE
    assert owners_during == ["fw2"]  # claimed on its first packet through fw2
    assert [s["reply"]["dst"] for s in restored] == [SHARED]  # fw1's table came back from Redis
    assert stats["sync"]["snapshot_sessions"] >= 1
    assert stats["drops"].get("invalid:no-session", 0) == 0
    assert deferred >= 1  # the SYN, which then left translated: fw2 never saw an untranslated reply
    assert two["drops"].get("invalid:state", 0) == 0 and two["sync"]["hold"]["dropped"] == 0, two["sync"]["hold"]


def conntrack_bits(lab, firewall: str) -> list[str]:
    """The kernel entries of `firewall` with the offload or kernel NAT bit in their mark."""
    listed = lab.run(firewall, ["conntrack", "-L"], check=False).stdout.splitlines()
    return [line for line in listed if "mark=" in line
            and int(line.split("mark=")[1].split()[0]) & (OFFLOAD_MARK | KERNEL_NAT_MARK)]


def test_offload_passes_a_masqueraded_download_once_the_kernel_holds_its_binding(cluster, tmp_path, record_property):
    lab = cluster.lab
    cluster.problems += cluster.stop_all()  # one daemon, no sync: both directions through fw1
    cluster.route("server", "fw1")
    path = tmp_path / "offload.yaml"
    path.write_text(MASQUERADE)
    daemon = netns.Daemon(lab.view("fw1"), path, tmp_path / "offload.log", "--offload")
    cluster.daemons.append(daemon)
    daemon.wait_ready(timeout=30)
    site = tmp_path / "site"
    site.mkdir()
    data = hashlib.shake_128(b"offloaded through masquerade").digest(BULK)
    (site / "bulk.bin").write_bytes(data)
    received = tmp_path / "bulk.bin"
    with netns.http_server(lab, site, port=8080, lifetime=90):
        started = time.monotonic()
        done = netns.curl(lab, netns.url("203.0.113.10", 8080, "/bulk.bin"), max_time=60,
                          extra=("-o", str(received)))
        seconds = time.monotonic() - started
    stats = json.loads(daemon.fw("stats", "--json").stdout)
    during = conntrack_bits(lab, "fw1")
    nat, offload = stats["nat"], stats["offload"]
    trips = nat["first_pass"] + nat["second_pass"] + nat["one_pass"]
    print(f"\nHA lab, fw1 alone, --offload, masquerade: 20 MB in {seconds:.2f} s, queue trips {trips}, "
          f"offload {offload}, kernel bindings {nat['kernel_bindings_made']}")
    record_property("offload_nat", json.dumps({"seconds": round(seconds, 2), "trips": trips, **offload}))
    status = daemon.stop()
    after_exit = conntrack_bits(lab, "fw1")
    rules = lab.run("fw1", ["sh", "-c", "iptables-save; ip6tables-save"]).stdout
    assert done.returncode == 0, done.stderr
    assert hashlib.sha256(received.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert nat["kernel_bindings_made"] >= 1
    assert offload["offloaded_translated"] >= 1 and offload["offloaded"] >= 1, offload
    assert offload["netlink_errors"] == {}, offload
    assert trips < 50, nat  # 20 MB: hundreds of segments and ACKs (the client's ACKs alone: over 100 without
    # the offload rules before the one-pass ones): the handshake and the close only
    assert any("src=198.51.100.10" in line for line in during), during  # the entry: the binding and the bit
    assert status == 0
    assert after_exit == [], after_exit
    assert "fw-daemon" not in rules
