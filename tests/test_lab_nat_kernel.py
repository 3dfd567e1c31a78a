"""fw.nat.rewrite against the Linux kernel's own NAT: the same translation, the same bytes.

The lab's firewall namespace runs the kernel's MASQUERADE (iptables and ip6tables, no fw daemon).
The client sends exact packets through a raw socket; AF_PACKET captures on the client's and the
server's eth0 record each packet before and after the kernel translated it: UDP (also with a zero
checksum), a TCP SYN with options and the server's RST, ICMP echo and reply, the server's own ICMP
port unreachable about the UDP datagram, and ICMP errors the server sends about a SYN it dropped,
quoting the whole SYN or only its first 8 TCP bytes. For each pair, fw.nat.rewrite given the
translation the kernel chose (its port, its address) must produce exactly the bytes the kernel put
on the wire, once the forwarding hop's TTL decrement is applied. This checks the checksum updates,
and for ICMP errors the translated quoted header (Linux's nf_nat_icmp_reply_translation), against
the reference itself. A second test does the same for a port forward (DNAT) combined with
MASQUERADE: every field of the tuple changes, both ways.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fw.nat.rewrite import Manip, l4_checksum_valid, recompute_l4_checksum, rewrite
from fw.packet import build, parse
from fw.packet.checksum import pseudo_header_sum, update16
from fw.packet.constants import ACK, SYN

pytestmark = [pytest.mark.netns, pytest.mark.root]

WIRE = Path(__file__).with_name("nat_wire.py")
CLIENT = {4: "198.51.100.10", 6: "2001:db8:1::10"}
SERVER = {4: "203.0.113.10", 6: "2001:db8:2::10"}
CLOSED_UDP, CLOSED_TCP, DROPPED_TCP = 9, 9, 7
OPTIONS = build.tcp_options(mss=1460, sack_perm=True, ts=(11, 0), wscale=7)


class Capture:
    """`nat_wire.py capture` in a namespace, ready once it printed "ready"."""

    def __init__(self, lab, name: str, count: int, port: int | None = None) -> None:
        argv = ["timeout", "--kill-after=2", "20", sys.executable, str(WIRE), "capture",
                "--count", str(count), "--lifetime", "15", *(["--port", str(port)] if port else [])]
        self.process = lab.popen(name, argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)
        assert self.process.stdout.readline().strip() == b"ready", self.process.stderr.read()

    def stop(self) -> list[tuple[bool, bytes]]:
        """End the capture now (SIGTERM: it prints what it has) and return its packets."""
        self.process.terminate()
        return self.packets()

    def packets(self) -> list[tuple[bool, bytes]]:
        out, err = self.process.communicate(timeout=30)
        assert self.process.returncode == 0, err
        return [(outgoing, bytes.fromhex(text)) for outgoing, text in json.loads(out.splitlines()[-1])]


def send(lab, name: str, packets: list[bytes]) -> None:
    lab.run(name, [sys.executable, str(WIRE), "send", *(p.hex() for p in packets)])


def client_packets(family: int) -> list[bytes]:
    c, s = CLIENT[family], SERVER[family]
    packets = [
        build.udp(c, s, 40001, CLOSED_UDP, b"to a closed port"),
        build.tcp(c, s, 40002, CLOSED_TCP, 1000, 0, SYN, 64240, OPTIONS),
        build.tcp(c, s, 40003, DROPPED_TCP, 2000, 0, SYN, 64240, OPTIONS),
        build.tcp(c, s, 40004, DROPPED_TCP, 3000, 0, SYN, 64240, OPTIONS),
        build.icmp_echo(c, s, 0x4242, 1, b"echo through NAT"),
    ]
    if family == 4:   # a UDP datagram without a checksum (IPv6 forbids it)
        datagram = build.udp(c, s, 40005, CLOSED_UDP, b"no checksum")
        packets.append(datagram[:26] + b"\0\0" + datagram[28:])
    return packets


def hop(data: bytes) -> bytes:
    """The packet after a router's TTL / hop limit decrement (IPv4: header checksum updated)."""
    if data[0] >> 4 == 6:
        return data[:7] + bytes([data[7] - 1]) + data[8:]
    word = int.from_bytes(data[8:10], "big")
    check = update16(int.from_bytes(data[10:12], "big"), word, word - 0x100)
    return data[:8] + bytes([data[8] - 1]) + data[9:10] + check.to_bytes(2, "big") + data[12:]


def flow(data: bytes) -> tuple:
    """What pairs a packet before and after NAT (whose source address, port or id changed)."""
    p = parse(data)
    return p.proto, p.dst, p.dport, p.seq, p.icmp_seq, bytes(p.payload)


@pytest.fixture
def kernel_nat(lab):
    """The lab with MASQUERADE on the firewall's wan side and a server that drops SYNs to port 7."""
    for tool in ("iptables", "ip6tables"):
        lab.run(lab.firewall, [tool, "-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE"])
        lab.run("server", [tool, "-A", "INPUT", "-p", "tcp", "--dport", str(DROPPED_TCP), "-j", "DROP"])
    return lab


@pytest.mark.parametrize("family", [4, 6])
def test_rewrite_equals_the_kernels_masquerade(kernel_nat, family):
    lab = kernel_nat
    sent = client_packets(family)
    count = 2 * len(sent) - 2                  # every packet and an answer, but the dropped SYNs
    at_client, at_server = Capture(lab, "client", count), Capture(lab, "server", count)
    send(lab, "client", sent)
    client_seen, server_seen = at_client.packets(), at_server.packets()
    originals = [data for outgoing, data in client_seen if outgoing]   # as the client's kernel sent
    returned = [data for outgoing, data in client_seen if not outgoing]
    forwarded = [data for outgoing, data in server_seen if not outgoing]
    answers = [data for outgoing, data in server_seen if outgoing]
    assert len(originals) == len(forwarded) == len(sent), (client_seen, server_seen)

    by_flow = {flow(data): data for data in forwarded}
    translated = {}
    for original in originals:
        after = by_flow[flow(original)]
        before, seen = parse(original), parse(after)
        manip = Manip(src=seen.src, sport=seen.icmp_id if before.proto in (1, 58) else seen.sport)
        assert hop(rewrite(original, before, manip)) == after, (original.hex(), after.hex())
        translated[(before.proto, seen.sport or seen.icmp_id)] = before

    # the kernel's answers to the client (RST, echo reply, port unreachable) translated back
    for answer in answers:
        if l4_checksum_valid(answer, parse(answer)):
            expected = hop(_translate_back(answer, translated))
            assert expected in returned, (answer.hex(), [r.hex() for r in returned])
        else:                        # an IPv6 RST leaves the server's kernel with a partial checksum
            _check_partial(answer, translated, returned)

    # ICMP errors the server sends about the SYNs it dropped: quoting all of it, and 8 bytes of TCP
    dropped = [data for data in forwarded if parse(data).dport == DROPPED_TCP]
    errors = [_icmp_error(family, dropped[0], full=True), _icmp_error(family, dropped[1], full=False)]
    at_client, at_server = Capture(lab, "client", 2), Capture(lab, "server", 2)
    send(lab, "server", errors)
    returned = [data for outgoing, data in at_client.packets() if not outgoing]
    sent_errors = [data for outgoing, data in at_server.packets() if outgoing]   # the kernel set ids
    assert len(sent_errors) == len(returned) == 2
    for error in sent_errors:
        assert hop(_translate_back(error, translated)) in returned, (error.hex(), [r.hex() for r in returned])


def _check_partial(answer: bytes, translated: dict, returned: list[bytes]) -> None:
    """The kernel NAT keeps a partial checksum partial (the new pseudo-header's sum); fw, whose
    verdict makes the checksum final, computes it: equal once the kernel's is completed."""
    ours = hop(_translate_back(answer, translated, partial=True))
    mine = parse(ours)
    assert l4_checksum_valid(ours, mine)
    kernels = [r for r in returned if flow(r)[:4] == flow(ours)[:4]]
    assert len(kernels) == 1
    kernel = bytearray(kernels[0])
    at = mine.l4_offset + 16
    field = int.from_bytes(kernel[at:at + 2], "big")
    pseudo = pseudo_header_sum(mine.src, mine.dst, mine.proto, mine.ip_len - mine.l4_offset) % 0xFFFF
    assert field == (pseudo or 0xFFFF)               # the partial format: the folded pseudo sum
    recompute_l4_checksum(kernel, mine.l4_offset, mine.ip_len, mine.proto, mine.family)
    assert bytes(kernel) == ours


def _icmp_error(family: int, about: bytes, full: bool) -> bytes:
    """An ICMP "fragmentation needed" / ICMPv6 "packet too big" from the server about `about`."""
    head = parse(about).l4_offset
    quoted = about if full else about[:head + 8]
    if family == 4:
        return build.icmp_error(SERVER[4], parse(about).src, 3, 4, quoted, rest=1400)
    return build.icmp_error(SERVER[6], parse(about).src, 2, 0, quoted, rest=1280)


def _translate_back(answer: bytes, translated: dict, partial: bool = False) -> bytes:
    """What fw.nat.rewrite makes of a server's packet to the NAT address, for the client."""
    packet = parse(answer)
    if packet.inner is not None:
        quoted = packet.inner
        key = (quoted.proto, quoted.sport or quoted.icmp_id)
        original = translated[key]
        port = original.icmp_id if original.proto in (1, 58) else original.sport
        return rewrite(answer, packet, Manip(dst=original.src),
                       inner=Manip(src=original.src, sport=port))
    key = (packet.proto, packet.dport or packet.icmp_id)
    original = translated[key]
    port = original.icmp_id if original.proto in (1, 58) else original.sport
    return rewrite(answer, packet, Manip(dst=original.src, dport=port), partial=partial)


def test_the_helpers_read_like_the_kernel():
    """hop() is the kernel's ip_decrease_ttl: the header checksum stays valid."""
    from fw.packet.checksum import verify  # noqa: PLC0415
    data = build.tcp(CLIENT[4], SERVER[4], 1, 2, 3, 4, SYN | ACK)
    assert verify(hop(data)[:20]) and hop(data)[8] == data[8] - 1


LAN_GATEWAY = {4: "198.51.100.1", 6: "2001:db8:1::1"}


@pytest.mark.parametrize("family", [4, 6])
def test_rewrite_equals_the_kernels_port_forward_with_masquerade(kernel_nat, family):
    """A port forward (DNAT to the server's closed ports) with MASQUERADE on the way out: both
    translations at once, both ways, and the server's port unreachable about the forwarded datagram
    (outer source and quoted destination translated back)."""
    lab = kernel_nat
    tool, gateway = ("iptables" if family == 4 else "ip6tables"), LAN_GATEWAY[family]
    server = SERVER[family] if family == 4 else f"[{SERVER[family]}]"
    for proto, port in (("udp", "8080"), ("tcp", "8081")):
        lab.run(lab.firewall, [tool, "-t", "nat", "-A", "PREROUTING", "-i", "lan", "-p", proto,
                               "--dport", port, "-j", "DNAT", "--to-destination", f"{server}:9"])
    c = CLIENT[family]
    sent = [build.udp(c, gateway, 40011, 8080, b"forwarded"),
            build.tcp(c, gateway, 40012, 8081, 5000, 0, SYN, 64240, OPTIONS)]
    at_client, at_server = Capture(lab, "client", 4), Capture(lab, "server", 4)
    send(lab, "client", sent)
    client_seen, server_seen = at_client.packets(), at_server.packets()
    originals = {_payload_key(d): parse(d) for outgoing, d in client_seen if outgoing}
    returned = [d for outgoing, d in client_seen if not outgoing]
    for outgoing, data in server_seen:
        seen = parse(data)
        if not outgoing:              # forwarded: every field of the tuple may have changed
            raw_original = next(d for o, d in client_seen if o and _payload_key(d) == _payload_key(data))
            manip = Manip(seen.src, seen.dst, seen.sport, seen.dport)
            assert hop(rewrite(raw_original, parse(raw_original), manip)) == data
            continue
        about = seen.proto if seen.inner is None else seen.inner.proto    # an answer to which one
        original = next(p for p in originals.values() if p.proto == about)
        back = Manip(original.dst, original.src, original.dport, original.sport)
        inner = Manip(original.src, original.dst, original.sport, original.dport)
        partial = not l4_checksum_valid(data, seen)
        ours = hop(rewrite(data, seen, back, inner=inner, partial=partial))
        if partial:
            _check_completed(ours, returned)
        else:
            assert ours in returned, (data.hex(), [r.hex() for r in returned])


def _payload_key(data: bytes) -> tuple:
    p = parse(data)
    return p.proto, p.seq, bytes(p.payload)


def _check_completed(ours: bytes, returned: list[bytes]) -> None:
    """`ours` (checksum completed) equals the kernel's partial-checksum packet once completed."""
    mine = parse(ours)
    for candidate in returned:
        kernel = bytearray(candidate)
        if parse(candidate).proto != mine.proto or len(kernel) != len(ours):
            continue
        recompute_l4_checksum(kernel, mine.l4_offset, mine.ip_len, mine.proto, mine.family)
        if bytes(kernel) == ours:
            return
    raise AssertionError(f"{ours.hex()} not among {[r.hex() for r in returned]}")
