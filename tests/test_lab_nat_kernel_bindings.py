"""The kernel holds established sessions' NAT bindings (fw.drivers.nat_kernel), live.

One lab (prefix `nk`), one daemon: masquerade toward the server, a port forward (the firewall's lan address port
8081 to the server's 8080) and a virtual server (the lan address port 8090 to the server's 8080),
and a port forward into the client side (the firewall's wan address port 8082 to the client's 8080:
the destination only). A few MB go through each (TCP, IPv4; masquerade IPv6 too) and UDP datagrams
through masquerade: the data arrives intact (sha256), the `nat` counters of `fw stats` say the
kernel made the bindings, and `conntrack -L` in the firewall's namespace shows the translated entry
(its reply tuple the translated one) while the flow runs. When the daemon exits, no entry it made
and none of its rules is left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from fw.drivers.nat_kernel import KERNEL_NAT_MARK
from fw.lab import Lab, fw_argv, start_daemon, wait_daemon_ready
from tests import netns

pytestmark = [pytest.mark.netns, pytest.mark.root]

POLICY = """\
version: 1
defaults: {action: drop}
sets:
  clients: [198.51.100.0/24, "2001:db8:1::/64"]
rules:
  - {name: out, action: accept, src: $clients}
  - {name: into-client, action: accept, proto: tcp, dst: 203.0.113.1, dport: 8082}
nat:
  - {name: into-client, type: dnat, proto: tcp, dst: 203.0.113.1, dport: 8082, to: "198.51.100.10:8080"}
  - {name: fwd, type: dnat, proto: tcp, dst: 198.51.100.1, dport: 8081, to: "203.0.113.10:8080"}
  - {name: outbound, type: masquerade, src: $clients, dst: [203.0.113.10, "2001:db8:2::10"], oif: wan}
virtual_servers:
  - name: web
    address: 198.51.100.1
    proto: tcp
    port: 8090
    real_servers:
      - {address: 203.0.113.10, port: 8080}
"""
SERVER = {4: "203.0.113.10", 6: "2001:db8:2::10"}
FIREWALL_WAN = {4: "203.0.113.1", 6: "2001:db8:2::1"}
LAN = "198.51.100.1"
CLIENT = "198.51.100.10"
BULK = 4 * 2**20 + 777


class Running:
    def __init__(self, lab: Lab, process, log):
        self.lab, self.process, self.log = lab, process, log

    def stats(self) -> dict:
        return json.loads(self.lab.run(self.lab.firewall, fw_argv("stats", "--json")).stdout)["nat"]

    def conntrack(self, *args: str) -> str:
        return self.lab.run(self.lab.firewall, ["conntrack", "-L", *args], check=False).stdout


@pytest.fixture(scope="module")
def nk_lab(tmp_path_factory):
    if reason := netns.unavailable_reason():
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("nat-kernel")
    policy = folder / "nat.yaml"
    policy.write_text(POLICY)
    log = folder / "daemon.log"
    built = Lab(f"nk{os.getpid() % 100000}-")
    process = None
    try:
        built.up()
        process = start_daemon(built, policy, log)
        wait_daemon_ready(built, process, 30)
        yield Running(built, process, log)
    finally:
        status = None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                status = process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        built.down()
        if process is not None and status not in (0, None):
            sys.stderr.write(f"--- daemon log ---\n{log.read_text(errors='replace')}\n")


def _bulk(running: Running, address: str, port: int, seed: int, sender_name: str = "client",
          sink_name: str = "server") -> tuple[dict, str]:
    """BULK bytes from the client to address:port (the server's sink on 8080): what was sent, what
    arrived, and `conntrack -L` of the firewall while the connection was still open (the sender
    holds it open, all sent, until the entry is seen or 20 s have passed)."""
    lab = running.lab
    sink = netns.tcp_sink(lab, 8080, name=sink_name, lifetime=30)
    sender = lab.popen(sender_name, netns.script("tcp-send", "--address", address, "--port", port, "--bytes", BULK,
                                              "--seed", seed, "--timeout", 20, "--hold"),
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    entries = ""
    deadline = time.monotonic() + 20
    family = "ipv6" if ":" in address else "ipv4"
    while sender.poll() is None and time.monotonic() < deadline \
            and not any(_mark(line) & KERNEL_NAT_MARK and f"dport={port} " in line for line in entries.splitlines()):
        entries = running.conntrack("-p", "tcp", "-f", family)
    out, err = sender.communicate(b"close\n", timeout=30)
    assert sender.returncode == 0, err
    sent = json.loads(out)
    received = sink.json()
    assert received == sent  # intact: every byte, in order
    return sent, entries


@pytest.mark.parametrize(("family", "address", "port", "translated"), [
    # A port forward into the client side: the destination only (the reply from the client).
    (4, FIREWALL_WAN[4], 8082, f"src={CLIENT} dst={SERVER[4]} sport=8080"),
    (4, SERVER[4], 8080, f"dst={FIREWALL_WAN[4]}"),       # masquerade: the reply goes to the firewall's address
    (6, SERVER[6], 8080, f"dst={FIREWALL_WAN[6]}"),
    # A port forward and a virtual server toward the server: masqueraded too (both translations).
    (4, LAN, 8081, f"src={SERVER[4]} dst={FIREWALL_WAN[4]} sport=8080"),
    (4, LAN, 8090, f"src={SERVER[4]} dst={FIREWALL_WAN[4]} sport=8080"),
], ids=["dnat-only", "masquerade4", "masquerade6", "port-forward", "virtual-server"])
def test_a_bulk_transfer_is_carried_by_the_kernels_binding(nk_lab, family, address, port, translated):
    before = nk_lab.stats()
    names = ("server", "client") if port == 8082 else ("client", "server")
    _sent, entries = _bulk(nk_lab, address, port, port + family, *names)
    after = nk_lab.stats()
    assert after["kernel_bindings_made"] == before["kernel_bindings_made"] + 1, json.dumps(after)
    assert after["kernel_bindings_failed"] == before["kernel_bindings_failed"], after
    # The kernel's entry has the translated reply tuple, and is the daemon's (its connmark bit).
    assert any(f"dport={port} " in line and translated in line and _mark(line) & KERNEL_NAT_MARK
               for line in entries.splitlines()), entries


def _mark(line: str) -> int:
    return int(line.split("mark=")[1].split()[0]) if "mark=" in line else 0


def test_udp_through_masquerade_is_carried_by_the_kernel_after_the_first_reply(nk_lab):
    lab = nk_lab.lab
    before = nk_lab.stats()
    echo = netns.udp_echo(lab, 5353, count=40, lifetime=20)
    payloads = [bytes([n]) * 64 for n in range(30)]
    replies = netns.udp_exchange(lab, SERVER[4], 5353, payloads)
    assert replies == payloads
    echo.stop()
    after = nk_lab.stats()
    assert after["kernel_bindings_made"] == before["kernel_bindings_made"] + 1, json.dumps(after)


def test_after_the_daemon_exits_no_entry_and_no_rule_of_it_remains(nk_lab):
    lab = nk_lab.lab
    netns.tcp_sink(lab, 8080, lifetime=30)
    holder = lab.popen("client", [sys.executable, "-c", (
        "import socket, time; s = socket.create_connection(('203.0.113.10', 8080)); s.sendall(b'x' * 1000); "
        "time.sleep(30)")], stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while nk_lab.stats()["kernel_bindings_active"] == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert nk_lab.stats()["kernel_bindings_active"] >= 1
        marked = ["-m", f"{KERNEL_NAT_MARK}/{KERNEL_NAT_MARK}"]
        assert "dport=8080" in lab.run(lab.firewall, ["conntrack", "-L", *marked], check=False).stdout
        nk_lab.process.terminate()
        assert nk_lab.process.wait(15) == 0
        left = lab.run(lab.firewall, ["conntrack", "-L", *marked], check=False).stdout
        assert "dport" not in left, left
        for tool in ("iptables", "ip6tables"):
            rules = lab.run(lab.firewall, [f"{tool}-save"]).stdout
            assert "fw-daemon" not in rules and "FW-" not in rules, rules
        nft = lab.run(lab.firewall, ["nft", "list", "ruleset"], check=False).stdout
        assert "fw-daemon" not in nft
    finally:
        holder.kill()
        holder.wait(5)
