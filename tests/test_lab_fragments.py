"""Fragments through `fw run`: the kernel reassembles them before the queue, so even fragments
sent last-first reach the engine as one datagram and pass."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests import netns

pytestmark = [pytest.mark.netns, pytest.mark.root]

POLICY = """\
version: 1
defaults: {action: drop, log: false}
rules:
  - {name: udp-service, action: accept, proto: udp, dport: 9999}
"""

RECEIVER = textwrap.dedent("""
    import json, socket, sys
    family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((sys.argv[1], 9999))
    sock.settimeout(5)
    try:
        data, _ = sock.recvfrom(65535)
        print(json.dumps({"bytes": len(data)}))
    except socket.timeout:
        print(json.dumps({"bytes": 0}))
""")

# Fragments of one 4000-byte datagram, sent in reverse order (scapy builds test packets only).
SENDER = textwrap.dedent("""
    import sys
    from scapy.all import IP, IPv6, IPv6ExtHdrFragment, UDP, Raw, fragment, fragment6, send
    src, dst = sys.argv[1], sys.argv[2]
    payload = bytes(range(256)) * 15 + bytes(160)
    if ":" in dst:
        packet = IPv6(src=src, dst=dst) / IPv6ExtHdrFragment() / UDP(sport=40000, dport=9999) / Raw(payload)
        pieces = fragment6(packet, 1280)
    else:
        pieces = fragment(IP(src=src, dst=dst) / UDP(sport=40000, dport=9999) / Raw(payload), fragsize=1400)
    send(list(reversed(pieces)), verbose=False)
""")


@pytest.mark.parametrize("client,server", [("198.51.100.10", "203.0.113.10"), ("2001:db8:1::10", "2001:db8:2::10")])
def test_fragments_in_reverse_order_are_reassembled_and_pass(lab, daemon, tmp_path, client, server):
    policy = tmp_path / "udp.yaml"
    policy.write_text(POLICY)
    firewall = daemon(policy)
    receiver = lab.popen("server", [sys.executable, "-c", RECEIVER, server], stdout=subprocess.PIPE)
    netns.wait_for_port(lab, "server", 9999, proto="udp")
    lab.run("client", [sys.executable, "-c", SENDER, client, server], timeout=30)
    out, _ = receiver.communicate(timeout=10)
    assert json.loads(out) == {"bytes": 4000}
    stats = json.loads(firewall.fw("stats", "--json").stdout)
    assert stats["packets"]["by_verdict"]["accept"].get("rule:udp-service") == 1  # one whole datagram
    assert "fragment" not in stats["drops"]
