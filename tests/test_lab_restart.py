"""Sessions survive a restart of `fw run`: the snapshot taken at SIGTERM is restored at start, so
an established connection goes on; without it the same connection's packets are refused."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest

from tests import netns

pytestmark = [pytest.mark.netns, pytest.mark.root]

POLICY = """\
version: 1
defaults: {action: drop, log: false}
rules:
  - {name: echo, action: accept, proto: tcp, dport: 7002}
"""

ECHO_SERVER = textwrap.dedent("""
    import socket
    listener = socket.create_server(("", 7002))
    connection, _ = listener.accept()
    with connection:
        while data := connection.recv(1000):
            connection.sendall(data)
""")

# One connection; each line on stdin is sent, and the echo (or what went wrong) printed.
CLIENT = textwrap.dedent("""
    import socket, sys
    sock = socket.create_connection(("203.0.113.10", 7002), timeout=3)
    for line in sys.stdin:
        try:
            sock.sendall(line.encode())
            print(sock.recv(1000).decode().strip() or "eof", flush=True)
        except socket.timeout:
            print("timeout", flush=True)
        except OSError as error:
            print(type(error).__name__, flush=True)
""")


def say(client: subprocess.Popen, text: str) -> str:
    client.stdin.write(text + "\n")
    client.stdin.flush()
    return client.stdout.readline().strip()


def quiet(daemon_) -> None:
    """Until the daemon has seen the client's ACK of the echo (4 packets each way from the SYN on):
    a packet in flight while it stops would be lost, and through NAT that costs the connection (the
    server's retransmission, untranslated, reaches the firewall's own stack, which resets it)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        listed = json.loads(daemon_.fw("sessions", "--json").stdout)["sessions"]
        if listed and listed[0]["original"]["packets"] >= 4:
            return
        time.sleep(0.05)
    raise AssertionError(f"the client's last ACK never reached the daemon: {listed}")


# The same through masquerade: the restored session keeps its translation (and its two passes)
MASQUERADE = POLICY + """\
nat:
  - {name: outbound, type: masquerade, src: 198.51.100.0/24, oif: wan}
"""


@pytest.mark.parametrize(("keep_snapshot", "text"), [(True, POLICY), (False, POLICY), (True, MASQUERADE)],
                         ids=["kept", "lost", "kept-masquerade"])
def test_an_established_connection_survives_a_restart(lab, daemon, tmp_path, private_state, keep_snapshot, text):
    policy = tmp_path / "policy.yaml"
    policy.write_text(text)
    first = daemon(policy)
    with netns.Background(lab, "server", [sys.executable, "-c", ECHO_SERVER], lifetime=40, capture=False):
        netns.wait_for_port(lab, "server", 7002)
        client = lab.popen("client", [sys.executable, "-c", CLIENT], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
        try:
            assert say(client, "before") == "before"
            quiet(first)
            assert first.stop() == 0  # SIGTERM: rules removed, the session table saved
            snapshots = list(private_state.glob("sessions-*.jsonl"))
            assert len(snapshots) == 1 and '"dport": 7002' in snapshots[0].read_text()
            if not keep_snapshot:
                snapshots[0].unlink()
            second = daemon(policy)
            answer = say(client, "after")
            stats = json.loads(second.fw("stats", "--json").stdout)
            listed = json.loads(second.fw("sessions", "--json").stdout)["sessions"]
        finally:
            client.stdin.close()
            client.kill()
            client.wait(5)
    if text == MASQUERADE:  # the server knows the client as the firewall's wan address
        assert [(v.get("nat"), v["reply"]["dst"]) for v in listed] == [("nat:outbound", "203.0.113.1")]
    if keep_snapshot:
        assert answer == "after"
        assert stats["packets"]["by_verdict"]["accept"]["established"] >= 2  # "after" and its echo
        assert stats["drops"] == {}
    else:
        assert answer == "timeout"  # a mid-stream packet with no session: dropped (no loose pickup)
        assert stats["drops"]["invalid:no-session"] >= 1
