"""Policy power and the edges, live through `fw run` in the lab: what the client's stack sees.

A reject on the wire (TCP reset: "connection refused"; ICMP administratively prohibited: "no route
to host" for IPv4, "permission denied" for IPv6), a per-rule limit over which connections are
refused and under which they come back when one closes, the reload re-check that resets the
sessions a new policy refuses (and its dry run that changes nothing), spoofed sources dropped by
zone, path-MTU discovery through a smaller-MTU link (the firewall's own "packet too big" on its
OUTPUT hook, and a router's beyond it on FORWARD, with its "time exceeded"), and TCP keepalives
across an idle timeout; and the dry run and re-check with one worker per queue.
"""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from tests import netns

pytestmark = [pytest.mark.netns, pytest.mark.root]

SERVER4, SERVER6 = "203.0.113.10", "2001:db8:2::10"
CLIENT4, CLIENT6 = "198.51.100.10", "2001:db8:1::10"

# Echoes every connection's bytes back, until the peer closes; many connections at once, both families.
ECHO_SERVER = textwrap.dedent("""
    import socket, sys, threading
    listeners = []
    for port in sys.argv[1:]:
        listener = socket.create_server(("::", int(port)), family=socket.AF_INET6, dualstack_ipv6=True)
        listeners.append(listener)
    def serve(connection):
        with connection:
            try:
                while data := connection.recv(1000):
                    connection.sendall(data)
            except OSError:
                pass
    def accept(listener):
        while True:
            connection, _ = listener.accept()
            threading.Thread(target=serve, args=(connection,), daemon=True).start()
    for listener in listeners:
        threading.Thread(target=accept, args=(listener,), daemon=True).start()
    threading.Event().wait()
""")


def echo_server(lab, *ports: int, lifetime: float = 40):
    server = netns.Background(lab, "server", [sys.executable, "-c", ECHO_SERVER, *ports], lifetime,
                              capture=False)
    for port in ports:
        netns.wait_for_port(lab, "server", port)
    return server


def client_script(lab, script: str, *args, timeout: float = 30) -> dict:
    done = lab.run("client", [sys.executable, "-c", textwrap.dedent(script), *map(str, args)], timeout=timeout)
    return json.loads(done.stdout)


def write_policy(tmp_path, text: str, name: str = "policy.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def stats_of(firewall) -> dict:
    return json.loads(firewall.fw("stats", "--json").stdout)


# -- a reject on the wire -----------------------------------------------------------------------------

REJECTS = """
version: 1
defaults: {action: drop}
rules:
  - {name: no-tcp, action: reject, proto: tcp, dport: 7101}
  - {name: no-udp, action: reject, proto: udp, dport: 7102}
"""

UDP_CLIENT = """
    import errno, json, socket, sys
    address = sys.argv[1]
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.settimeout(3)
    sock.connect((address, 7102))
    sock.send(b"hello")
    try:
        sock.recv(100)
        outcome = "answer"
    except socket.timeout:
        outcome = "timeout"
    except OSError as error:
        outcome = errno.errorcode[error.errno]
    print(json.dumps({"outcome": outcome}))
"""


@pytest.mark.parametrize("server, udp_error", [(SERVER4, "EHOSTUNREACH"), (SERVER6, "EACCES")])
def test_a_reject_reaches_the_client_and_its_stack_reports_it(lab, daemon, tmp_path, server, udp_error):
    firewall = daemon(write_policy(tmp_path, REJECTS))
    # TCP: a RST in the SYN's name; curl says "connection refused" at once (exit 7), not a timeout.
    fetched = netns.curl(lab, netns.url(server, 7101), max_time=5)
    assert fetched.returncode == 7, fetched.stderr
    assert "Connection refused" in fetched.stderr or "Couldn't connect" in fetched.stderr, fetched.stderr
    # UDP: ICMP 3/13 (IPv4: the kernel reports EHOSTUNREACH, "no route to host") or ICMPv6 1/1
    # (administratively prohibited: EACCES) on the connected socket.
    assert client_script(lab, UDP_CLIENT, server) == {"outcome": udp_error}
    drops = stats_of(firewall)["drops"]
    assert drops == {"rule:no-tcp": 1, "rule:no-udp": 1}, drops


# -- per-rule limits ------------------------------------------------------------------------------------

LIMITED = """
version: 1
defaults: {action: drop}
rules:
  - name: echo
    action: accept
    proto: tcp
    dport: 7100
    limit: {per_source: 2, over: reject}
    log: true
    log_limit: 1/minute
"""

# Opens two connections and holds them, tries a third, closes one cleanly, tries again.
LIMIT_CLIENT = """
    import errno, json, socket, sys
    address = sys.argv[1]
    def attempt():
        try:
            sock = socket.create_connection((address, 7100), timeout=3)
            sock.sendall(b"ping")
            assert sock.recv(100) == b"ping"
            return sock, "ok"
        except OSError as error:
            return None, errno.errorcode.get(error.errno, str(error))
    first, a = attempt()
    second, b = attempt()
    _, c = attempt()
    first.shutdown(socket.SHUT_WR)
    while first.recv(100):
        pass
    first.close()
    fourth, d = attempt()
    print(json.dumps([a, b, c, d]))
"""


@pytest.mark.parametrize("server", [SERVER4, SERVER6])
def test_a_per_source_limit_refuses_the_third_connection_and_frees_a_place_on_close(
        lab, daemon, tmp_path, server):
    firewall = daemon(write_policy(tmp_path, LIMITED))
    with echo_server(lab, 7100):
        outcomes = client_script(lab, LIMIT_CLIENT, server)
    assert outcomes == ["ok", "ok", "ECONNREFUSED", "ok"]
    stats = stats_of(firewall)
    assert stats["drops"] == {"limit:echo": 1}
    # The client has exited: its connections closed, and a session in TIME_WAIT no longer counts.
    assert stats["limits"] == {"echo": {"sessions": 0, "sources": 0}}
    assert stats["sessions"]["active"] == 3
    assert stats["packets"]["by_verdict"]["accept"]["rule:echo"] == 3
    # Three sessions and one refusal wanted a log event; the rule's log_limit let one through.
    assert stats["engine"]["log_suppressed:echo"] == 3


# -- the reload re-check ---------------------------------------------------------------------------------

BEFORE = """
version: 1
defaults: {action: drop}
options: {rst_on_timeout: true}
rules:
  - {name: keep, action: accept, proto: tcp, dport: 7100}
  - {name: going, action: accept, proto: tcp, dport: 7103}
"""
AFTER = """
version: 1
defaults: {action: drop}
options: {reload_recheck: true}
rules:
  - {name: keep, action: accept, proto: tcp, dport: 7100}
"""

# Holds one connection to each port; on "go" from stdin, uses both and reports what happened.
HOLDER = """
    import errno, json, socket, sys
    address = sys.argv[1]
    held = {port: socket.create_connection((address, port), timeout=3) for port in (7100, 7103)}
    for sock in held.values():
        sock.sendall(b"hi")
        assert sock.recv(100) == b"hi"
    print("ready", flush=True)
    sys.stdin.readline()
    outcome = {}
    for port, sock in held.items():
        try:
            sock.settimeout(3)
            data = sock.recv(100)  # a reset already received shows here
            outcome[port] = "eof" if not data else "data"
        except socket.timeout:
            try:
                sock.sendall(b"again")
                outcome[port] = "ok" if sock.recv(100) == b"again" else "eof"
            except OSError as error:
                outcome[port] = errno.errorcode.get(error.errno, str(error))
        except OSError as error:
            outcome[port] = errno.errorcode.get(error.errno, str(error))
    print(json.dumps(outcome), flush=True)
"""


def test_a_reload_recheck_resets_the_refused_sessions_and_its_dry_run_changes_nothing(
        lab, daemon, tmp_path):
    firewall = daemon(write_policy(tmp_path, BEFORE))
    after = write_policy(tmp_path, AFTER, "after.yaml")
    with echo_server(lab, 7100, 7103):
        holder = lab.popen("client", ["timeout", "30", sys.executable, "-c", textwrap.dedent(HOLDER), SERVER4],
                           stdin=-1, stdout=-1, text=True)
        try:
            assert holder.stdout.readline().strip() == "ready"
            dry = firewall.fw("reload", "--dry-run", str(after))
            lines = dry.stdout.splitlines()
            assert lines[0].startswith(f"policy {after} is valid (1 rule, 0 sets, default drop")
            assert len(lines) == 3 and "dport=7103" in lines[1] and "rule=going" in lines[1], lines
            assert lines[2] == "a re-check would close 1 sessions (reload_recheck is on: a reload closes them)"
            assert stats_of(firewall)["policy"]["reloads"] == 0
            assert len(json.loads(firewall.fw("sessions", "--json").stdout)["sessions"]) == 2
            done = firewall.fw("reload", str(after))
            assert done.stdout.strip().endswith("; the re-check closed 1 sessions"), done.stdout
            holder.stdin.write("go\n")
            holder.stdin.flush()
            outcome = json.loads(holder.stdout.readline())
        finally:
            holder.kill()
            holder.wait(5)
    assert outcome == {"7100": "ok", "7103": "ECONNRESET"}, outcome
    stats = stats_of(firewall)
    assert stats["engine"]["recheck_closed"] == 1 and stats["engine"]["recheck_resets"] == 1
    assert stats["effects"]["packets_sent"] == 2  # a RST to each end


# -- anti-spoofing ----------------------------------------------------------------------------------------

ZONED = """
version: 1
defaults: {action: drop}
zones:
  inside: {interfaces: [lan], addresses: [198.51.100.0/24, "2001:db8:1::/64"]}
  outside: {interfaces: [wan], addresses: any}
options: {spoof_check: MODE}
rules:
  - {name: out, action: accept, proto: tcp, dport: 7100, from_zone: inside, to_zone: outside}
  - {name: any-udp, action: accept, proto: udp, dport: 9999}
"""


def test_a_source_from_the_wrong_side_is_dropped_as_spoof(lab, daemon, tmp_path):
    policy = write_policy(tmp_path, ZONED.replace("MODE", "strict"))
    firewall = daemon(policy)
    with echo_server(lab, 7100):
        assert client_script(lab, LIMIT_CLIENT, SERVER4) == ["ok"] * 4  # the inside, from the inside
    # The server forges the inside's addresses (and an IPv6 one with a raw socket's help from hping3).
    forge = ["hping3", "-q", "-2", "-a", "198.51.100.77", "-p", "9999", "-c", "3", "-i", "u20000", CLIENT4]
    lab.run("server", forge, check=False, timeout=20)
    stats = stats_of(firewall)
    assert stats["drops"].get("spoof") == 3, stats["drops"]
    assert "rule:any-udp" not in stats["packets"]["by_verdict"]["accept"]
    # The same packets with the check off: the rule admits them (the check is what dropped them).
    policy.write_text(ZONED.replace("MODE", "off"))
    firewall.fw("reload")
    lab.run("server", forge, check=False, timeout=20)
    stats = stats_of(firewall)
    assert stats["packets"]["by_verdict"]["accept"].get("rule:any-udp") == 3
    assert stats["drops"].get("spoof") == 3


# -- path-MTU discovery through a smaller link -------------------------------------------------------------

PMTU = """
version: 1
defaults: {action: drop}
rules:
  - {name: upload, action: accept, proto: tcp, dport: 7104}
  - {name: datagrams, action: accept, proto: udp, dport: 7105}
"""

# A connected UDP socket to argv[1]:argv[2] with "don't fragment" (IP(V6)_PMTUDISC_DO), and a
# function that waits (3 s at most) for the path MTU the kernel learnt (IP_MTU / IPV6_MTU).
DATAGRAM_SOCKET = """
    import errno, json, socket, sys, time
    address = sys.argv[1]
    v6 = ":" in address
    sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    level = socket.IPPROTO_IPV6 if v6 else socket.IPPROTO_IP
    # IP(V6)_RECVERR, IP_TTL / IPV6_UNICAST_HOPS, IP(V6)_MTU_DISCOVER, IP(V6)_MTU
    recverr, hops, discover, mtu_option = (25, 16, 23, 24) if v6 else (11, 2, 10, 14)
    sock.setsockopt(level, discover, 2)
    sock.connect((address, int(sys.argv[2])))
    sock.settimeout(3)
    def learnt_mtu():
        deadline = time.monotonic() + 3
        while sock.getsockopt(level, mtu_option) == 1500 and time.monotonic() < deadline:
            time.sleep(0.02)
        return sock.getsockopt(level, mtu_option)
"""

# Sends a small datagram, then a 1400-byte one, waits for the path MTU the kernel learnt from the
# "packet too big" answer, then checks that a second one is refused locally (EMSGSIZE).
PMTU_CLIENT = DATAGRAM_SOCKET + """
    sock.send(b"small")  # opens the session (a packet over the link's MTU never reaches FORWARD)
    assert sock.recv(100) == b"small"
    sock.send(b"x" * 1400)
    mtu = learnt_mtu()
    try:
        sock.send(b"x" * 1400)
        second = "sent"
    except OSError as error:
        second = errno.errorcode.get(error.errno, str(error))
    print(json.dumps({"mtu": mtu, "second": second}))
"""


@pytest.mark.parametrize("server", [SERVER4, SERVER6])
def test_path_mtu_discovery_through_a_smaller_link(lab, daemon, tmp_path, server):
    # The firewall's wan link is 1280 bytes, the hosts' 1500: the firewall's own kernel answers
    # the client's bigger packets with "packet too big", which leaves through OUTPUT, hooked here:
    # the engine must take it as related to the client's session, or the transfer stalls.
    lab.run(lab.firewall, ["ip", "link", "set", "wan", "mtu", "1280"])
    firewall = daemon(write_policy(tmp_path, PMTU), "--hooks", "forward,output")
    with netns.udp_echo(lab, 7105, count=5, lifetime=20):
        learnt = client_script(lab, PMTU_CLIENT, server, 7105)
    assert learnt == {"mtu": 1280, "second": "EMSGSIZE"}, (learnt, stats_of(firewall)["packets"])
    accepted = stats_of(firewall)["packets"]["by_verdict"]["accept"]
    assert accepted.get("related:icmp") == 1, accepted
    # TCP: the client's segments grow to its MSS (1460 for IPv4), the firewall answers "too big"
    # and the connection goes on in smaller segments (the client forgot the UDP lesson first).
    lab.run("client", ["ip", "-4" if server == SERVER4 else "-6", "route", "flush", "cache"])
    with netns.tcp_sink(lab, 7104, lifetime=30) as sink:
        sent = netns.tcp_send(lab, server, 7104, 300_000, seed=18)
        received = sink.json()
    assert received == sent
    accepted = stats_of(firewall)["packets"]["by_verdict"]["accept"]
    assert accepted.get("related:icmp", 0) >= 2, accepted  # the datagram's error and the upload's


# -- TCP keepalives across an idle timeout ------------------------------------------------------------------

KEEPALIVE_POLICY = """
version: 1
defaults: {action: drop}
rules:
  - name: idle
    action: accept
    proto: tcp
    dport: 7100
    timeouts: {tcp_established: 2}
    rst_on_timeout: true
"""

# Connects (with kernel keepalive probes every second after one idle second, or none), stays idle
# for 6 s, three times the session's timeout, then speaks again.
IDLE_CLIENT = """
    import errno, json, socket, sys, time
    sock = socket.create_connection((sys.argv[1], 7100), timeout=3)
    if sys.argv[2] == "keepalive":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 5)
    sock.sendall(b"hi")
    assert sock.recv(100) == b"hi"
    sock.settimeout(6)
    try:
        data = sock.recv(100)
        outcome = "eof" if not data else "data"
    except socket.timeout:
        sock.sendall(b"still there?")
        sock.settimeout(3)
        try:
            outcome = "answered" if sock.recv(100) == b"still there?" else "eof"
        except socket.timeout:
            outcome = "silence"
        except OSError as error:
            outcome = errno.errorcode.get(error.errno, str(error))
    except OSError as error:
        outcome = errno.errorcode.get(error.errno, str(error))
    print(json.dumps({"outcome": outcome}))
"""


@pytest.mark.parametrize("server", [SERVER4, SERVER6])
@pytest.mark.parametrize("probes, outcome", [("keepalive", "answered"), ("none", "ECONNRESET")])
def test_keepalive_probes_keep_an_idle_session_and_without_them_it_is_reset(
        lab, daemon, tmp_path, server, probes, outcome):
    firewall = daemon(write_policy(tmp_path, KEEPALIVE_POLICY))
    with echo_server(lab, 7100):
        result = client_script(lab, IDLE_CLIENT, server, probes)
    assert result == {"outcome": outcome}
    stats = stats_of(firewall)
    if probes == "keepalive":
        assert stats["engine"].get("timeout_resets", 0) == 0 and not stats["drops"], stats
    else:
        assert stats["engine"]["timeout_resets"] == 1


# -- with one worker per queue --------------------------------------------------------------------------


def test_with_queues_the_dry_run_and_the_recheck_reach_every_worker(lab, daemon, tmp_path):
    from tests.test_workers import POLICY as WORKERS_POLICY
    from tests.test_workers import SOURCES, exchange

    for address in SOURCES:  # many address pairs, so that both queues get sessions
        lab.run("client", ["ip", "addr", "add", f"{address}/24", "dev", "eth0"])
    firewall = daemon(write_policy(tmp_path, WORKERS_POLICY), "--queues", "0-1")
    with netns.udp_echo(lab, 7777, count=len(SOURCES), lifetime=30):
        assert exchange(lab, 7777) == {source: "echo" for source in SOURCES}
    text = WORKERS_POLICY.replace("[7777, 7778]", "7778") + "options: {reload_recheck: true}\n"
    closing = write_policy(tmp_path, text, "closing.yaml")
    dry = firewall.fw("reload", "--dry-run", str(closing)).stdout.splitlines()
    assert dry[-1] == "a re-check would close 16 sessions (reload_recheck is on: a reload closes them)"
    assert sorted(line.split()[4] for line in dry[1:-1]) == sorted(f"src={s}" for s in SOURCES)
    stats = stats_of(firewall)
    assert stats["sessions"]["active"] == 16 and all(w["sessions"] for w in stats["workers"])
    done = firewall.fw("reload", str(closing))
    assert done.stdout.strip().endswith("; the re-check closed 16 sessions"), done.stdout
    assert stats_of(firewall)["sessions"]["active"] == 0


# -- ICMP errors from a router beyond the firewall -------------------------------------------------------

BEYOND = {4: ("192.0.2.1", "192.0.2.0/24", "203.0.113.10"), 6: ("2001:db8:3::1", "2001:db8:3::/64", SERVER6)}
ROUTED = """
version: 1
defaults: {action: drop}
rules:
  - {name: datagrams, action: accept, proto: udp, dport: 7106}
"""

# With IP_RECVERR: a datagram with a hop limit of 2 dies at the router behind the firewall (time
# exceeded); then a 1400-byte one with "don't fragment" meets its 1280-byte link (packet too big).
ROUTED_CLIENT = DATAGRAM_SOCKET + """
    sock.setsockopt(level, recverr, 1)
    sock.setsockopt(level, hops, 2)
    sock.send(b"short-lived")
    try:
        sock.recv(100)
        expired = "answer"
    except socket.timeout:
        expired = "timeout"
    except OSError as error:
        expired = errno.errorcode.get(error.errno, str(error))
    sock.setsockopt(level, hops, 64)
    sock.send(b"x" * 1400)
    print(json.dumps({"expired": expired, "mtu": learnt_mtu()}))
"""


@pytest.mark.parametrize("family", [4, 6])
def test_time_exceeded_and_packet_too_big_from_a_router_beyond_are_related(lab, daemon, tmp_path, family):
    target, network, router = BEYOND[family]
    ip = ["ip", f"-{family}"]
    # The server becomes a router to a 1280-byte link (a veth pair of its own) where `target` lives.
    lab.run("server", ["sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])
    lab.run("server", ["ip", "link", "add", "beyond", "mtu", "1280", "type", "veth", "peer", "name", "far"])
    lab.run("server", ["ip", "link", "set", "far", "up"])
    lab.run("server", ["ip", "link", "set", "beyond", "up"])
    lab.run("server", [*ip, "route", "add", network, "dev", "beyond"])
    lab.run(lab.firewall, [*ip, "route", "add", network, "via", router])
    firewall = daemon(write_policy(tmp_path, ROUTED))
    assert client_script(lab, ROUTED_CLIENT, target, 7106) == {"expired": "EHOSTUNREACH", "mtu": 1280}
    accepted = stats_of(firewall)["packets"]["by_verdict"]["accept"]
    assert accepted == {"rule:datagrams": 1, "established": 1, "related:icmp": 2}, accepted
