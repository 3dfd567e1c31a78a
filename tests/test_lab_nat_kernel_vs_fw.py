"""The kernel as the reference for the daemon: the same traffic through Linux's own NAT and through
`fw run`, and what the server (and the client) sees compared.

One lab for the module. First the firewall namespace runs the kernel's NAT (no fw daemon):
MASQUERADE out of `wan`, a DNAT from the firewall's lan address port 2121 to the server's FTP port,
and the `ftp` conntrack helper on ports 21 and 2121. Then its rules are flushed and `fw run` runs
the equivalent policy (a masquerade entry out of `wan`, a dnat entry, the FTP ALG). Each time:
- an HTTP request from the client's port 40123 to a server that answers with the peer it saw: the
  address and the port (kept, as Linux keeps it when free);
- lftp through masquerade, passive and active, and passive through the port forward: a 1 MiB file,
  its sha256 on the client; from vsftpd's log the client address it saw on the control connection,
  the address its PORT commands carried (rewritten to the firewall's) and whether their port is the
  one the client announced (lftp's debug output), the address vsftpd sent in its 227 and the one
  the client was told (through the port forward: rewritten to the address the client reached).
Both runs must give the same observations (about 7 s on an idle machine). `fw run` warns that the
masquerade entry's ports overlap ip_local_port_range (fw/drivers/local_ports.py).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from fw.lab import Lab
from tests import ftp_lab, netns
from tests.ftp_lab import FtpServer, random_bytes, sha256

pytestmark = [pytest.mark.netns, pytest.mark.root]

SERVER, LAN, WAN = "203.0.113.10", "198.51.100.1", "203.0.113.1"
FORWARDED_PORT, CLIENT_PORT = 2121, 40123
POLICY = f"""\
version: 1
defaults: {{action: drop}}
rules:
  - {{name: ftp, action: accept, proto: tcp, src: 198.51.100.0/24, dport: [21, {FORWARDED_PORT}], alg: ftp}}
  - {{name: out, action: accept, src: 198.51.100.0/24}}
nat:
  - {{name: ftp-fwd, type: dnat, proto: tcp, dst: {LAN}, dport: {FORWARDED_PORT}, to: "{SERVER}:21"}}
  - {{name: outbound, type: masquerade, src: 198.51.100.0/24, oif: wan}}
"""
KERNEL_NAT = [
    ["-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE"],
    ["-t", "nat", "-A", "PREROUTING", "-i", "lan", "-d", LAN, "-p", "tcp", "--dport", str(FORWARDED_PORT),
     "-j", "DNAT", "--to-destination", f"{SERVER}:21"],
    *(["-t", "raw", "-A", "PREROUTING", "-p", "tcp", "--dport", port, "-j", "CT", "--helper", "ftp"]
      for port in ("21", str(FORWARDED_PORT))),
]
# Answers one HTTP request per connection with the peer address and port it saw.
PEER_SERVER = """
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", int(sys.argv[1])))
server.listen()
while True:
    conn, (address, port) = server.accept()
    with conn:
        conn.recv(4096)
        conn.sendall(f"HTTP/1.0 200 OK\\r\\nContent-Type: text/plain\\r\\n\\r\\n{address} {port}\\n".encode())
"""
CLIENT_SEEN = re.compile(r'Client "([^"]+)", "(PORT|PASV|EPRT|EPSV)')
PORT_ARGUMENT = re.compile(r"PORT (\d+),(\d+),(\d+),(\d+),(\d+),(\d+)")
PASSIVE_REPLY = re.compile(r"227 [^(]*\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)")


@pytest.fixture(scope="module")
def nat_lab(lab_prefix, tmp_path_factory):
    """The lab, an FTP server with a 1 MiB file, and the peer-reporting HTTP server."""
    if reason := netns.unavailable_reason():
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("kernel-vs-fw")
    built = Lab(lab_prefix())
    ftp = peers = None
    try:
        built.up()
        ftp = FtpServer(built, folder / "ftp", port_20=True, lifetime=300).start()
        ftp.publish("one.bin", random_bytes(14, 2**20))
        (folder / "peer.py").write_text(PEER_SERVER)
        peers = netns.Background(built, "server", [sys.executable, folder / "peer.py", 8080], 300)
        netns.wait_for_port(built, "server", 8080)
        yield built, ftp, folder
    finally:
        if peers is not None:
            peers.stop()
        if ftp is not None:
            ftp.stop()
        built.down()


def observe(lab: Lab, ftp: FtpServer, folder: Path) -> dict:
    """What one run of the traffic shows at the server and the client."""
    seen = {}
    done = netns.curl(lab, netns.url(SERVER, 8080), max_time=10, extra=("--local-port", str(CLIENT_PORT)))
    assert done.returncode == 0, f"curl exit {done.returncode}: {done.stderr}"
    seen["http peer"] = done.stdout.strip()
    expected = sha256(ftp.root / "one.bin")
    for name, host, port, passive in (("masquerade, passive", SERVER, 21, True),
                                      ("masquerade, active", SERVER, 21, False),
                                      ("port forward, passive", LAN, FORWARDED_PORT, True)):
        ftp.log.write_text("")
        received = folder / name.replace(", ", "-").replace(" ", "-")
        received.mkdir(parents=True, exist_ok=True)
        done = ftp_lab.lftp(lab, f"ftp://{host}:{port}", ["debug 9", f"get -O {received} one.bin"],
                            passive=passive)
        assert done.returncode == 0, f"{name}: lftp failed: {done.stdout}{done.stderr}"
        log = ftp.log.read_text(errors="replace")
        seen[name] = {
            "file": sha256(received / "one.bin") == expected,
            "control from": sorted(set(CLIENT_SEEN.findall(log)))[0][0] if CLIENT_SEEN.search(log) else None,
            "PORT address": sorted({".".join(m[:4]) for m in PORT_ARGUMENT.findall(log)}),
            # the port the client announced arrives unchanged (kept: it was free)
            "PORT port kept": sorted({m[4:] for m in PORT_ARGUMENT.findall(log)})
            == sorted({m[4:] for m in PORT_ARGUMENT.findall(done.stderr)}),
            "227 sent": sorted({".".join(m[:4]) for m in PASSIVE_REPLY.findall(log)}),
            # what the client was told: the address it reached
            "227 told": sorted({".".join(m[:4]) for m in PASSIVE_REPLY.findall(done.stderr)}),
        }
    return seen


def test_fw_run_translates_as_the_kernels_own_nat(nat_lab):
    lab, ftp, folder = nat_lab
    fw = lab.firewall
    for rule in KERNEL_NAT:
        lab.run(fw, ["iptables", "-w", "5", *rule])
    try:
        kernel = observe(lab, ftp, folder / "kernel")
    finally:
        for table in ("nat", "raw"):
            lab.run(fw, ["iptables", "-w", "5", "-t", table, "-F"])
        lab.run(fw, ["conntrack", "-F"], check=False)
    assert kernel["http peer"] == f"{WAN} {CLIENT_PORT}"  # the reference: masqueraded, the port kept
    assert kernel["masquerade, active"]["PORT address"] == [WAN]
    assert kernel["masquerade, active"]["PORT port kept"]
    assert kernel["port forward, passive"]["227 told"] == [LAN]
    assert all(kernel[name]["file"] for name in kernel if name != "http peer")

    from fw.lab import start_daemon, wait_daemon_ready

    policy = folder / "nat.yaml"
    policy.write_text(POLICY)
    log = folder / "daemon.log"
    process = start_daemon(lab, policy, log)
    try:
        wait_daemon_ready(lab, process, 30)
        daemon = observe(lab, ftp, folder / "fw")
    finally:
        process.terminate()
        status = process.wait(15)
    output = log.read_text(errors="replace")
    assert status == 0, output[-2000:]
    assert daemon == kernel
    # the masquerade entry's default ports (1024-65535) overlap the namespace's ephemeral range
    assert "warning: nat entry 'outbound'" in output and "ip_local_port_range" in output
