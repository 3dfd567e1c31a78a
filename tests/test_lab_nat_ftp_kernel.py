"""fw.nat.ftp and fw.nat.seqadj against the Linux kernel's own FTP NAT (nf_nat_ftp, seqadj).

The lab's firewall namespace runs the kernel's NAT with its FTP helper (no fw daemon): MASQUERADE
on the wan side, and a DNAT from the firewall's lan address port 2121 to the server's port 21. A
scripted control channel (tests/nat_wire.py ftp-client / ftp-server) sends one announcement per
connection, never in a direction's first segment (nf_conntrack_ftp only reads a segment that
starts after a line end it saw): PORT, EPRT (IPv4, and IPv6 where the kernel writes %pI6), and from
the server behind the DNAT a 227 and a 229 (with leading zeros, so that every rewrite changes the
length). Checked:
- the line the far side receives is what fw.nat.ftp.rewrite_line makes of the line sent, for the
  address and port the kernel chose (the kernel's format, byte for byte);
- every segment's seq and ack, captured on both sides, are what fw.nat.seqadj predicts from one
  `record` of the rewrite's length change.
"""

from __future__ import annotations

import ipaddress
import json
import sys

import pytest

from fw.alg.ftp_syntax import eprt_argument, extended_passive_reply, passive_reply, port_argument
from fw.nat.ftp import rewrite_line
from fw.nat.seqadj import SeqAdj
from fw.packet import parse
from tests import netns
from tests.test_lab_nat_kernel import WIRE, Capture

pytestmark = [pytest.mark.netns, pytest.mark.root]

WAN4, WAN6, LAN4 = "203.0.113.1", "2001:db8:2::1", "198.51.100.1"
SERVER4, SERVER6 = "203.0.113.10", "2001:db8:2::10"
FORWARDED_PORT = 2121

SCENARIOS = {
    "port": (SERVER4, 21, True, WAN4, [b"USER ftp\r\n", b"PORT 198,51,100,10,156,64\r\n", b"NOOP\r\n"],
             [b"220 hi\r\n", b"331 ok\r\n", b"200 PORT ok\r\n", b"200 NOOP ok\r\n"]),
    "eprt": (SERVER4, 21, True, WAN4, [b"USER ftp\r\n", b"EPRT |1|198.51.100.10|40001|\r\n", b"NOOP\r\n"],
             [b"220 hi\r\n", b"331 ok\r\n", b"200 EPRT ok\r\n", b"200 NOOP ok\r\n"]),
    "eprt6": (SERVER6, 21, True, WAN6, [b"USER ftp\r\n", b"EPRT |2|2001:db8:1::10|40002|\r\n", b"NOOP\r\n"],
              [b"220 hi\r\n", b"331 ok\r\n", b"200 EPRT ok\r\n", b"200 NOOP ok\r\n"]),
    "pasv": (LAN4, FORWARDED_PORT, False, LAN4, [b"PASV\r\n", b"NOOP\r\n"],
             [b"220 hi\r\n", b"227 Entering Passive Mode (203,000,113,010,117,048).\r\n", b"200 NOOP ok\r\n"]),
    "epsv": (LAN4, FORWARDED_PORT, False, LAN4, [b"EPSV\r\n", b"NOOP\r\n"],
             [b"220 hi\r\n", b"229 Entering Extended Passive Mode (|||03000|)\r\n", b"200 NOOP ok\r\n"]),
}


@pytest.fixture
def kernel_ftp_nat(lab):
    fw = lab.firewall
    for tool in ("iptables", "ip6tables"):
        lab.run(fw, [tool, "-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE"])
        for port in ("21", str(FORWARDED_PORT)):
            lab.run(fw, [tool, "-t", "raw", "-A", "PREROUTING", "-p", "tcp", "--dport", port,
                         "-j", "CT", "--helper", "ftp"])
    lab.run(fw, ["iptables", "-t", "nat", "-A", "PREROUTING", "-i", "lan", "-d", LAN4, "-p", "tcp",
                 "--dport", str(FORWARDED_PORT), "-j", "DNAT", "--to-destination", f"{SERVER4}:21"])
    return lab


def announced(line: bytes, from_client: bool) -> tuple:
    """(address or None, port) a line announces, with the FTP ALG's parser."""
    if from_client:
        verb, _, arg = line.strip().partition(b" ")
        family, address, port = (port_argument if verb == b"PORT" else eprt_argument)(arg)
        return address, port
    if line.startswith(b"227"):
        return passive_reply(line)[1:]
    return None, extended_passive_reply(line)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_ftp_rewrite_and_seqadj_equal_the_kernels(kernel_ftp_nat, name):
    lab = kernel_ftp_nat
    target, port, from_client, nat_address, client_lines, server_lines = SCENARIOS[name]
    at_client = Capture(lab, "client", 1000, port=port)
    at_server = Capture(lab, "server", 1000, port=21)
    server = netns.Background(lab, "server", [sys.executable, WIRE, "ftp-server", "--port", "21",
                                              *(line.hex() for line in server_lines)], 20)
    netns.wait_for_port(lab, "server", 21)
    client = lab.run("client", [sys.executable, str(WIRE), "ftp-client", "--address", target, "--port",
                                str(port), *(line.hex() for line in client_lines)])
    client_received = bytes.fromhex(json.loads(client.stdout)["received"])
    server_received = bytes.fromhex(server.json()["received"])
    client_packets, server_packets = at_client.stop(), at_server.stop()

    sent = client_lines if from_client else server_lines
    got = (server_received if from_client else client_received).splitlines(keepends=True)
    index = 1          # the kernel's helper never reads a direction's first segment (find_nl_seq)
    kernel_line = got[index]
    new_address, new_port = announced(kernel_line, from_client)
    ours = rewrite_line(sent[index], from_client, ipaddress.ip_address(nat_address).packed, new_port)
    assert ours.line == kernel_line and ours.delta != 0     # every scenario shifts the numbers
    assert new_address in (None, ipaddress.ip_address(nat_address).packed)

    _check_sequence_numbers(client_packets, server_packets, from_client, sent[index], ours.delta)


def _check_sequence_numbers(client_packets, server_packets, from_client, line, delta) -> None:
    """Pair each segment with itself on the far side; SeqAdj predicts the far side's numbers."""
    pairs = [_pairs(client_packets, server_packets), _pairs(server_packets, client_packets)]
    direction = 0 if from_client else 1
    rewritten = [near for near, _ in pairs[direction] if bytes(parse(near).payload) == line]
    assert len(rewritten) == 1
    adj = SeqAdj()
    adj.record(direction, parse(rewritten[0]).seq, delta)
    checked = 0
    for way in (0, 1):
        for near, far in pairs[way]:
            packet = parse(near)
            buf = bytearray(near)
            adj.shift(buf, packet.l4_offset, way)
            predicted, seen = parse(bytes(buf)), parse(far)
            assert (predicted.seq, predicted.ack, predicted.tsval, predicted.tsecr) == \
                (seen.seq, seen.ack, seen.tsval, seen.tsecr), (way, packet)
            checked += 1
    assert checked >= 10


def _pairs(near_side, far_side) -> list:
    """(packet as sent on the near side, the same packet received on the far side), in order."""
    sent = [data for outgoing, data in near_side if outgoing]
    received = [data for outgoing, data in far_side if not outgoing]
    return list(zip(sent, received, strict=False))
