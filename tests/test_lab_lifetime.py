"""Session lifetime with real sockets through `fw run`: resets on expiry, and a SYN flood that a
legitimate client survives."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from fw.lab import ATTACKER
from tests import netns

pytestmark = [pytest.mark.netns, pytest.mark.root]

IDLE_POLICY = """\
version: 1
defaults: {action: drop, log: false}
rules:
  - name: idle-service
    action: accept
    proto: tcp
    dport: 7000
    timeouts: {tcp_established: 2}
    rst_on_timeout: RST
"""

# The server accepts one connection, answers "hello", then waits (up to 20 s) for what comes next.
SERVER = textwrap.dedent("""
    import json, socket, time
    listener = socket.create_server(("", 7000))
    listener.settimeout(20)
    connection, _ = listener.accept()
    connection.settimeout(15)
    connection.recv(100)
    connection.sendall(b"hello")
    start = time.monotonic()
    try:
        data = connection.recv(100)
        outcome = "eof" if not data else "data"
    except ConnectionResetError:
        outcome = "reset"
    except socket.timeout:
        outcome = "timeout"
    print(json.dumps({"outcome": outcome, "after": round(time.monotonic() - start, 2)}))
""")

# The client says hi, reads hello, stays idle for 5 s (past the 2 s timeout), then speaks again.
CLIENT = textwrap.dedent("""
    import json, socket, time
    sock = socket.create_connection(("203.0.113.10", 7000), timeout=5)
    sock.sendall(b"hi")
    assert sock.recv(100) == b"hello"
    sock.settimeout(5)
    start = time.monotonic()
    try:
        data = sock.recv(100)
        outcome = "eof" if not data else "data"
    except ConnectionResetError:
        outcome = "reset"
    except socket.timeout:
        outcome = "idle"
    after = round(time.monotonic() - start, 2)
    if outcome == "idle":
        sock.sendall(b"are you there?")
        try:
            sock.settimeout(3)
            answer = sock.recv(100)
            outcome = "answered" if answer else "eof"
        except ConnectionResetError:
            outcome = "reset-late"
        except socket.timeout:
            outcome = "silence"
    print(json.dumps({"outcome": outcome, "after": after}))
""")


def run_idle_dialogue(lab, daemon, tmp_path, rst: bool) -> tuple[dict, dict, dict]:
    policy = tmp_path / "idle.yaml"
    policy.write_text(IDLE_POLICY.replace("RST", "true" if rst else "false"))
    firewall = daemon(policy)
    with netns.Background(lab, "server", [sys.executable, "-c", SERVER], lifetime=30) as server:
        netns.wait_for_port(lab, "server", 7000)
        client = lab.run("client", [sys.executable, "-c", CLIENT], timeout=30)
        server_outcome = json.loads(server.wait(30) == 0 and server.stdout)
    stats = json.loads(firewall.fw("stats", "--json").stdout)
    return json.loads(client.stdout), server_outcome, stats


def test_an_idle_session_is_reset_at_both_ends_on_expiry(lab, daemon, tmp_path):
    client, server, stats = run_idle_dialogue(lab, daemon, tmp_path, rst=True)
    # The session's 2 s timeout expires while both sides wait: each end gets an exact RST.
    assert client["outcome"] == "reset" and client["after"] < 4.5, client
    assert server["outcome"] == "reset" and server["after"] < 4.5, server
    assert stats["engine"]["timeout_resets"] == 1
    assert stats["effects"]["packets_sent"] == 2


def test_without_the_option_the_idle_clients_next_packet_is_silently_dropped(lab, daemon, tmp_path):
    client, server, stats = run_idle_dialogue(lab, daemon, tmp_path, rst=False)
    assert client["outcome"] == "silence", client  # its data went nowhere, no answer, no reset
    assert server["outcome"] == "timeout", server  # the server never heard of it
    assert stats["drops"].get("invalid:no-session", 0) >= 1, stats
    assert stats["engine"].get("timeout_resets", 0) == 0


FLOOD_POLICY = """\
version: 1
defaults: {action: drop, log: false}
options:
  new_session_rate: 20
  new_session_burst: 40
  max_half_open_per_source: 50
  overload_seconds: 30
rules:
  - {name: web, action: accept, proto: tcp, src: 198.51.100.0/24, dport: [8080, 7001]}
"""

ECHO_SERVER = textwrap.dedent("""
    import socket, threading
    listener = socket.create_server(("", 7001))
    def serve(connection):
        with connection:
            while data := connection.recv(1000):
                connection.sendall(data)
    while True:
        connection, _ = listener.accept()
        threading.Thread(target=serve, args=(connection,), daemon=True).start()
""")

# A long-lived connection that echoes a message every 0.2 s for `seconds`; counts the answers.
KEEPALIVE_CLIENT = textwrap.dedent("""
    import json, socket, sys, time
    seconds = float(sys.argv[1])
    sock = socket.create_connection(("203.0.113.10", 7001), timeout=3)
    answered = failed = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            sock.sendall(b"ping")
            answered += sock.recv(100) == b"ping"
        except OSError:
            failed += 1
            break
        time.sleep(0.2)
    print(json.dumps({"answered": answered, "failed": failed}))
""")


def test_a_syn_flood_is_contained_while_a_client_keeps_working(lab, daemon, tmp_path):
    lab.add_host(ATTACKER)
    policy = tmp_path / "flood.yaml"
    policy.write_text(FLOOD_POLICY)
    firewall = daemon(policy)
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "index.html").write_text("still here\n")
    with (
        netns.http_server(lab, tmp_path / "www", 8080),
        netns.Background(lab, "server", [sys.executable, "-c", ECHO_SERVER], lifetime=40, capture=False),
    ):
        netns.wait_for_port(lab, "server", 7001)
        keepalive = lab.popen("client", [sys.executable, "-c", KEEPALIVE_CLIENT, "6"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(0.5)
        # A bounded SYN flood: 20,000 SYNs at ~10,000/s, at most 5 s.
        flood = lab.popen(ATTACKER.name, ["timeout", "5", "hping3", "-q", "-S", "-p", "8080", "-i", "u100",
                                          "-c", "20000", "203.0.113.10"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        fetches = [netns.curl(lab, netns.url("203.0.113.10", 8080, "/index.html"), max_time=3)
                   for _ in range(5)]
        flood.wait(10)
        out, err = keepalive.communicate(timeout=15)
    assert [f.stdout for f in fetches] == ["still here\n"] * 5
    kept = json.loads(out)
    assert kept["failed"] == 0 and kept["answered"] >= 20, (kept, err)
    stats = json.loads(firewall.fw("stats", "--json").stdout)
    assert stats["drops"]["flood"] > 1000, stats  # the flood was refused at the firewall
    sessions = json.loads(firewall.fw("sessions", "--json").stdout)["sessions"]
    attacker = ATTACKER.ipv4.split("/")[0]
    from_attacker = [s for s in sessions if s["original"]["src"] == attacker]
    assert 1 <= len(from_attacker) <= 40, "the attacker opened more sessions than its burst allows"
