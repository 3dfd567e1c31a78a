"""`fw replay` through NAT: the `nat` and `translation` fields, and `--write` read back with scapy.

A corpus FTP capture (16 flows, active and passive) is replayed through a snat policy. The capture
was taken without NAT, so the test first makes the capture the firewall would have seen: the
server's packets addressed to the client's translated address (the same length as text, so that
no PORT line changes length and the server's numbers need no shift; the shift itself is tested
packet by packet in tests/test_engine_nat_ftp.py). Every packet must then be accepted as without
NAT, and the written capture must hold exactly the accepted packets as they left: the client's
source translated, the server's replies sent back to the client, the PORT lines rewritten, every
checksum equal to scapy's recomputation.
"""

from __future__ import annotations

import json
import textwrap

import pytest
from click.testing import CliRunner
from scapy.layers.inet import IP, TCP
from scapy.utils import rdpcap, wrpcap

from fw.cli import main
from tests.test_engine_nat import checked
from tests.test_replay_corpus import CORPUS

CAPTURE = CORPUS / "sv-ftp-all-data-ipv4.pcap"
CLIENT, SERVER, TRANSLATED = "172.23.0.3", "172.23.0.2", "172.23.0.9"
POLICY = f"""
version: 1
rules:
  - {{name: ftp, action: accept, proto: tcp, dport: 21, alg: ftp}}
nat:
  - {{name: out, type: snat, src: {CLIENT}, to: {TRANSLATED}}}
"""

pytestmark = pytest.mark.skipif(not CAPTURE.is_file(), reason=f"no corpus capture {CAPTURE}")


def as_the_firewall_sees_it(path, capture=CAPTURE, sender=SERVER, field="dst"):
    """The capture with `sender`'s packets' `field` set to the translated address (snat: the
    server's replies to the client's translated address; dnat: the client's packets to the
    public address)."""
    packets = rdpcap(str(capture))
    for packet in packets:
        if IP in packet and packet[IP].src == sender:
            setattr(packet[IP], field, TRANSLATED)
            del packet[IP].chksum
            del packet[TCP].chksum
    wrpcap(str(path), packets)
    return len(packets)


def test_replay_through_snat_written_and_read_back(tmp_path):
    capture, written, policy = tmp_path / "in.pcap", tmp_path / "out.pcap", tmp_path / "nat.yaml"
    count = as_the_firewall_sees_it(capture)
    policy.write_text(textwrap.dedent(POLICY))
    result = CliRunner().invoke(main, ["replay", str(capture), "--policy", str(policy), "--json",
                                       "--write", str(written)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == count and all(row["verdict"] == "accept" for row in rows)
    assert {row["reason"] for row in rows} == {"rule:ftp", "established", "related:ftp"}
    assert all("nat" in row for row in rows)  # every packet belongs to a translated session
    firsts = [row for row in rows if "translation" in row]
    assert len(firsts) == 16 and {row["translation"] for row in firsts} == {"nat:out"}
    first = rows[0]
    assert first["flow"] == f"tcp {CLIENT}:59968 -> {SERVER}:21"
    assert first["nat"] == f"tcp {TRANSLATED}:59968 -> {SERVER}:21"
    out = rdpcap(str(written))
    assert len(out) == count and f"written: {count} packets" in result.stderr
    ports = 0
    for packet, row in zip(out, rows, strict=True):
        data = bytes(packet)
        checked(data)
        ip = IP(data)
        assert f"tcp {ip.src}:{ip[TCP].sport} -> {ip.dst}:{ip[TCP].dport}" == row["nat"]
        assert (ip.src, ip.dst) in ((TRANSLATED, SERVER), (SERVER, CLIENT))
        payload = bytes(ip[TCP].payload)
        if payload.startswith(b"PORT"):
            assert payload.startswith(b"PORT 172,23,0,9,")
            ports += 1
    assert ports == 7  # the capture's seven PORT commands


def test_write_refuses_to_overwrite_the_capture(tmp_path):
    capture = tmp_path / "in.pcap"
    as_the_firewall_sees_it(capture)
    policy = tmp_path / "nat.yaml"
    policy.write_text(textwrap.dedent(POLICY))
    result = CliRunner().invoke(main, ["replay", str(capture), "--policy", str(policy), "--write", str(capture)])
    assert result.exit_code == 1 and "would overwrite" in result.output


def test_passive_ftp_replayed_through_a_port_forward(tmp_path):
    """sv-ftp-download-passive: the client reaches the server at a public address (dnat); the
    server's 227 names its own address, rewritten to the public one, and the client's data
    connections to it are forwarded."""
    capture = CORPUS / "sv-ftp-download-passive.pcap"
    seen, written, policy = tmp_path / "in.pcap", tmp_path / "out.pcap", tmp_path / "dnat.yaml"
    count = as_the_firewall_sees_it(seen, capture, sender=CLIENT, field="dst")
    policy.write_text(textwrap.dedent(f"""
        version: 1
        rules: [{{name: ftp, action: accept, proto: tcp, dport: 21, alg: ftp}}]
        nat: [{{name: in, type: dnat, proto: tcp, dst: {TRANSLATED}, to: {SERVER}}}]
    """))
    result = CliRunner().invoke(main, ["replay", str(seen), "--policy", str(policy), "--json", "--write", str(written)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    plain = CliRunner().invoke(main, ["replay", str(capture), "--policy", str(policy), "--json"])
    untranslated = [json.loads(line) for line in plain.stdout.splitlines()]
    assert all("nat" not in row for row in untranslated)  # the capture as is: nothing to translate
    assert [(r["verdict"], r["reason"], r["state"]) for r in rows] == \
        [(r["verdict"], r["reason"], r["state"]) for r in untranslated]
    assert all(row["verdict"] == "accept" for row in rows) and "related:ftp" in {row["reason"] for row in rows}
    opened = [row for row in rows if row["reason"] in ("rule:ftp", "related:ftp")]
    assert [row["translation"] for row in rows if "translation" in row] == ["nat:in"] * len(opened)
    passive = 0
    for packet in rdpcap(str(written)):
        data = bytes(packet)
        checked(data)
        ip = IP(data)
        assert (ip.src, ip.dst) in ((CLIENT, SERVER), (TRANSLATED, CLIENT))
        if bytes(ip[TCP].payload).startswith(b"227"):
            assert b"(172,23,0,9," in bytes(ip[TCP].payload)
            passive += 1
    assert passive == 3 and len(rdpcap(str(written))) == count  # the capture's three 227 replies


def test_replay_fields_and_write_for_drops_errors_hairpin_and_untranslated_packets(tmp_path):
    """A made capture: a translated datagram, one refused (`nat:exhausted`: no `nat`, not
    written), an ICMP error about the first (related: `nat`, no `translation`), a hairpin SYN
    (two names joined by `,`), an untranslated SYN (no field, written as it came). The written
    capture holds exactly the accepted packets, in order, as they left."""
    from fw.packet import flow_text, parse
    from tests.packets import icmp_error_pkt, seg, udp_pkt

    frames = [
        udp_pkt("198.51.100.10:6000", "192.0.2.80:53", b"q"),
        udp_pkt("198.51.100.11:6001", "192.0.2.81:53", b"q"),
        icmp_error_pkt("192.0.2.254", "203.0.113.1", 3, 3, udp_pkt("203.0.113.1:5000", "192.0.2.80:53", b"q")),
        seg("198.51.100.30:41000", "203.0.113.1:8080", "S", seq=1),
        seg("198.51.100.10:40000", "198.51.100.99:22", "S", seq=1),
    ]
    capture, written, policy = tmp_path / "in.pcap", tmp_path / "out.pcap", tmp_path / "nat.yaml"
    packets = [IP(frame) for frame in frames]
    for n, packet in enumerate(packets):
        packet.time = 1000 + n / 10
    wrpcap(str(capture), packets)
    policy.write_text(textwrap.dedent("""
        version: 1
        rules: [{name: all, action: accept}]
        nat:
          - {name: web-in, type: dnat, proto: tcp, dst: 203.0.113.1, dport: 8080, to: "198.51.100.20:80"}
          - {name: hairpin, type: snat, src: 198.51.100.0/24, dst: 198.51.100.20, to: 203.0.113.1}
          - {name: tiny, type: snat, proto: udp, to: 203.0.113.1, ports: "5000-5000"}
    """))
    result = CliRunner().invoke(main, ["replay", str(capture), "--policy", str(policy), "--json",
                                       "--write", str(written)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    fields = [(row["verdict"], row["reason"], row.get("nat"), row.get("translation")) for row in rows]
    assert fields == [
        ("accept", "rule:all", "udp 203.0.113.1:5000 -> 192.0.2.80:53", "nat:tiny"),
        ("drop", "nat:exhausted", None, None),
        ("accept", "related:icmp", "icmp 192.0.2.254 -> 198.51.100.10 type 3 code 3", None),
        ("accept", "rule:all", "tcp 203.0.113.1:41000 -> 198.51.100.20:80", "nat:web-in,nat:hairpin"),
        ("accept", "rule:all", None, None),
    ]
    out = [bytes(packet) for packet in rdpcap(str(written))]
    for data in out:
        checked(data)
    assert [flow_text(parse(data)) for data in out] == [rows[0]["nat"], rows[2]["nat"], rows[3]["nat"], rows[4]["flow"]]
    assert out[3] == frames[4]
