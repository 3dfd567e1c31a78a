"""Sessions survive a restart of `fw run`: the snapshot taken at SIGTERM is restored at start, so
an established connection goes on; without it the same connection's packets are refused.

A restart under load (`fw stop --keep-rules`, then `fw run`): a transfer through masquerade, and one
through a port forward, runs across it and arrives intact; the rules stayed (fail-closed: the packets
of the gap were dropped and retransmitted) and the new daemon adopted the binding the kernel held.
The same restart with a plain stop (`fw stop`, as SIGTERM: the rules removed for a moment) loses the
connection: a client packet of the gap reaches the server untranslated, which resets it. SIGUSR2 is
`fw stop --keep-rules`: the filter rules stay too (`kept-sigusr2`).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from fw.drivers.nat_kernel import KERNEL_NAT_MARK
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


@pytest.mark.parametrize(("keep_snapshot", "text", "signum"), [
    (True, POLICY, signal.SIGTERM), (False, POLICY, signal.SIGTERM), (True, MASQUERADE, signal.SIGTERM),
    (True, POLICY, signal.SIGUSR2),
], ids=["kept", "lost", "kept-masquerade", "kept-sigusr2"])
def test_an_established_connection_survives_a_restart(lab, daemon, tmp_path, private_state, keep_snapshot, text,
                                                      signum):
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
            first.process.send_signal(signum)  # SIGTERM: rules removed, the session table saved
            assert first.process.wait(10) == 0
            rules = lab.run(lab.firewall, ["iptables-save", "-t", "filter"]).stdout
            assert ("-j FW-FORWARD" in rules) == (signum == signal.SIGUSR2)  # SIGUSR2: kept for a restart
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


# A paced upload to the server's tcp-sink (tests/netns.py): 16 KiB every 10 ms until stdin closes, then
# the sha256 of what was sent. The server's ACKs come back to the translated address all the time.
PACED_SENDER = textwrap.dedent("""
    import hashlib, json, random, select, socket, sys
    rng, digest, total = random.Random(7), hashlib.sha256(), 0
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20) as sock:
        print("connected", flush=True)
        while not select.select([sys.stdin], [], [], 0.01)[0]:
            chunk = rng.randbytes(16384)
            sock.sendall(chunk)
            digest.update(chunk)
            total += len(chunk)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)  # the sink closes once it has read everything
    print(json.dumps({"sha256": digest.hexdigest(), "bytes": total}), flush=True)
""")

# The lan address's port 8081 forwarded to the server's sink (the destination only).
PORT_FORWARD = POLICY + """\
  - {name: forward, action: accept, proto: tcp, dst: 198.51.100.1, dport: 8081}
nat:
  - {name: forward, type: dnat, proto: tcp, dst: 198.51.100.1, dport: 8081, to: "203.0.113.10:7002"}
"""


def moved(daemon_, packets: int, timeout: float = 15.0) -> dict:
    """Until this daemon has accepted `packets` packets of established sessions, the kernel holding
    the session's binding: its `fw stats`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = json.loads(daemon_.fw("stats", "--json").stdout)
        if stats["packets"]["by_verdict"]["accept"].get("established", 0) >= packets \
                and stats["nat"]["kernel_bindings_active"] == 1:
            return stats
        time.sleep(0.05)
    raise AssertionError(f"the transfer did not move through the daemon: {stats}")


@pytest.mark.parametrize(("text", "address", "port", "stop"), [
    (MASQUERADE, "203.0.113.10", 7002, "keep-rules"),
    (PORT_FORWARD, "198.51.100.1", 8081, "keep-rules"),
    (MASQUERADE, "203.0.113.10", 7002, "plain"),
], ids=["masquerade", "port-forward", "masquerade-plain-stop-loses-it"])
def test_a_transfer_through_nat_goes_on_across_a_restart(lab, daemon, tmp_path, text, address, port, stop):
    policy = tmp_path / "policy.yaml"
    policy.write_text(text)
    first = daemon(policy)
    sink = netns.tcp_sink(lab, 7002, lifetime=40)
    sender = lab.popen("client", [sys.executable, "-c", PACED_SENDER, address, str(port)], stdin=subprocess.PIPE,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert sender.stdout.readline().strip() == "connected"
        moved(first, 30)
        if stop == "keep-rules":
            assert "its rules stay" in first.fw("stop", "--keep-rules").stdout  # returns once it has exited
            assert first.process.wait(5) == 0
            kept = first.lab.run(first.lab.firewall, ["iptables-save", "-t", "mangle"]).stdout
            assert "-j FW-PREROUTING" in kept  # still there: the gap's packets dropped, not passed untranslated
        else:  # as SIGTERM: rules removed, the gap's packets pass untranslated
            assert "its rules are removed" in first.fw("stop").stdout and first.process.wait(5) == 0
        second = daemon(policy)
        if stop == "plain":  # a packet of the gap passed untranslated: the server reset the client
            errors = sender.communicate(timeout=30)[1]
            assert sender.returncode != 0 and "ConnectionResetError" in errors, errors
            return
        moved(second, 30)  # the transfer goes on through the new daemon
        sent = json.loads(sender.communicate(timeout=30)[0])  # (stdin closed: the sender finishes)
        received = sink.json()
        stats = json.loads(second.fw("stats", "--json").stdout)
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait(5)
        sink.stop()
    assert received == sent  # intact: every byte, in order
    assert re.search(r"took over the \d+ rules and chains fw \(pid \d+\) kept for this restart", second.log_text())
    assert stats["nat"]["kernel_bindings_adopted"] == 1  # the binding the kernel kept was taken over
    assert stats["nat"]["kernel_binding_stale_drops"] == 0
    assert stats["drops"] == {}
    # No daemon comes back: `fw cleanup` (the unit's ExecStopPost) leaves the kept rules and bindings
    # for the next run; `fw cleanup --all` removes them
    second.fw("stop", "--keep-rules")
    held = ["conntrack", "-L", "-m", f"{KERNEL_NAT_MARK}/{KERNEL_NAT_MARK}"]
    assert "mark=" in lab.run(lab.firewall, held).stdout
    assert "kept for a restart stay" in second.fw("cleanup").stdout
    assert "-j FW-PREROUTING" in lab.run(lab.firewall, ["iptables-save"]).stdout
    assert "mark=" in lab.run(lab.firewall, held).stdout
    cleaned = second.fw("cleanup", "--all").stdout
    assert "chain FW-PREROUTING" in cleaned and "1 kernel conntrack entries holding a NAT binding" in cleaned
    assert "FW-" not in lab.run(lab.firewall, ["iptables-save"]).stdout
    assert "mark=" not in lab.run(lab.firewall, held).stdout
