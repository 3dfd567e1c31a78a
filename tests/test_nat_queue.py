"""fw.drivers.nat_queue without a kernel: what the handler gives the engine for each hook, the mark
it ORs in, partial checksums and packets above the copy range (fakes for the packet and routes)."""

from __future__ import annotations

import textwrap

from fw.drivers.nat_queue import NatPacketHandler, _kernel_tuple
from fw.drivers.nfqueue_socket import NFQA_SKB_CSUMNOTREADY, NFQA_SKB_GSO
from fw.drivers.offload import CTA_TUPLE_PROTO, attributes, tuple_attrs
from fw.drivers.routes import Route, Routes
from fw.engine import Engine, EngineConfig
from fw.engine_nat_passes import NAT_MARK, ONE_PASS_MARK, UNJUDGED_MARK
from fw.nat.rewrite import l4_checksum_valid
from fw.packet import flow_text, parse
from fw.policy import load_policy
from tests.packets import icmp_echo_pkt, seg, udp_pkt

POLICY = """
version: 1
defaults: {action: drop}
rules:
  - {name: out, action: accept, src: 198.51.100.0/24}
nat:
  - {name: outbound, type: masquerade, src: 198.51.100.0/24, oif: wan}
"""
PUBLIC = bytes([203, 0, 113, 1])


class FakeRoutes(Routes):
    """The kernel's answers made up: the firewall's PUBLIC address is local, the rest leaves by wan."""

    def _ask(self, family, dst):
        return Route(None, PUBLIC, True) if dst == PUBLIC else Route("wan", PUBLIC, False)


class FakePacket:
    def __init__(self, data, hook, skb_info=0, mark=0x5, cap_len=None):
        self.payload, self.hook, self.skb_info, self.mark, self.cap_len = data, hook, skb_info, mark, cap_len
        self.indev = self.outdev = 0
        self.verdict = self.new_mark = self.new_payload = None

    def get_payload(self):
        return self.payload

    def get_mark(self):
        return self.mark

    def set_mark(self, mark):
        self.new_mark = mark

    def set_payload(self, data):
        self.new_payload = data

    def accept(self):
        self.verdict = "accept"

    def drop(self):
        self.verdict = "drop"

    checksum_not_ready = property(lambda self: bool(self.skb_info & NFQA_SKB_CSUMNOTREADY))
    gso = property(lambda self: bool(self.skb_info & NFQA_SKB_GSO))
    truncated = property(lambda self: self.cap_len is not None and self.cap_len > len(self.payload))


def handler(tmp_path, text=POLICY):
    path = tmp_path / "nat.yaml"
    path.write_text(textwrap.dedent(text))
    engine = Engine(load_policy(path), EngineConfig(events=False))
    return NatPacketHandler(engine, False, lambda effects: None, lambda *a: None, FakeRoutes(), clock=lambda: 100.0)


def test_the_passes_mark_and_checksums(tmp_path):
    judge = handler(tmp_path)
    syn = bytearray(seg("198.51.100.10:40000", "192.0.2.80:80", "S", seq=1))
    syn[36:38] = b"\x00\x01"  # partial: whatever the pseudo-header sum was
    first = FakePacket(bytes(syn), hook=0, skb_info=NFQA_SKB_CSUMNOTREADY)
    judge(first)
    assert first.verdict == "accept" and first.new_payload is None  # nothing changes before routing
    assert first.new_mark == 0x5 | NAT_MARK | ONE_PASS_MARK  # the operator's bits kept; one pass asked
    second = FakePacket(bytes(syn), hook=4, skb_info=NFQA_SKB_CSUMNOTREADY, mark=first.new_mark)
    judge(second)
    assert second.verdict == "accept"
    assert flow_text(parse(second.new_payload)) == "tcp 203.0.113.1:40000 -> 192.0.2.80:80"
    assert l4_checksum_valid(second.new_payload, parse(second.new_payload))
    reply = FakePacket(seg("192.0.2.80:80", "203.0.113.1:40000", "SA", seq=7, ack=2), hook=0,
                       skb_info=NFQA_SKB_CSUMNOTREADY | NFQA_SKB_GSO)
    judge(reply)
    assert flow_text(parse(reply.new_payload)) == "tcp 192.0.2.80:80 -> 198.51.100.10:40000"
    assert reply.new_mark is None  # no second pass for it
    assert judge.stats() == {"partial_checksums": 2, "tcp_gso_partial": 1, "nat_too_long": 0,
                             "first_pass": 2, "second_pass": 1, "one_pass": 0, "route_lookups": 0,
                             "kernel_entries_deleted": 0, "kernel_bits_cleared": 0, "kernel_errors": 0}


def test_a_packet_above_the_copy_range_is_refused_and_counted(tmp_path):
    judge = handler(tmp_path)
    judge(FakePacket(seg("198.51.100.10:40000", "192.0.2.80:80", "S", seq=1), hook=0))
    data = seg("192.0.2.80:80", "203.0.113.1:40000", "SA", seq=7, ack=2, payload=b"x" * 100)
    cut = FakePacket(data[:-40], hook=0, cap_len=len(data))
    judge(cut)
    assert cut.verdict == "drop" and judge.stats()["nat_too_long"] == 1


class FakeKernel:
    """KernelEntries' requests, recorded instead of sent."""

    def __init__(self):
        self.deleted, self.cleared = [], []

    def delete(self, family, proto, src, dst, sport, dport):
        self.deleted.append(flow_text(parse(seg(f"{_ip(src)}:{sport}", f"{_ip(dst)}:{dport}", "A"))))

    def clear(self, data, bit):
        self.cleared.append((flow_text(parse(data)), bit))

    def stats(self):
        return {}


def _ip(raw: bytes) -> str:
    return ".".join(map(str, raw))


def test_one_pass_after_routing_and_the_kernel_entries(tmp_path):
    """A packet the rules let by before routing (UNJUDGED_MARK) is judged after routing with its
    input interface; when the client's TCP session is established the entry of its SYN goes (the
    kernel finds the client's later packets invalid there); a `nat:first-pass` drop clears the bit."""
    judge = handler(tmp_path)
    judge.kernel = kernel = FakeKernel()
    judge._ifnames.update({3: "lan", 4: "wan"})
    c, s = "198.51.100.10:40000", "192.0.2.80:80"
    judge(FakePacket(seg(c, s, "S", seq=1), hook=0))
    judge(FakePacket(seg(s, "203.0.113.1:40000", "SA", seq=7, ack=2), hook=0))
    assert kernel.deleted == []
    ack = FakePacket(seg(c, s, "A", seq=2, ack=8), hook=0)
    judge(ack)
    assert ack.new_mark & ONE_PASS_MARK and kernel.deleted == ["tcp 198.51.100.10:40000 -> 192.0.2.80:80"]
    data = FakePacket(seg(c, s, "PA", seq=2, ack=8, payload=b"GET /"), hook=4, mark=NAT_MARK | UNJUDGED_MARK)
    data.indev, data.outdev = 3, 4
    judge(data)
    assert data.verdict == "accept" and flow_text(parse(data.new_payload)) == "tcp 203.0.113.1:40000 -> 192.0.2.80:80"
    assert judge.verdicts.accepted["established"] == 3 and "nat:after-routing" not in judge.verdicts.accepted
    stray = FakePacket(seg("198.51.100.10:40001", s, "A", seq=2, ack=8), hook=4, mark=NAT_MARK | UNJUDGED_MARK)
    stray.indev, stray.outdev = 3, 4
    judge(stray)  # no session, not a SYN: dropped by the tracker as the first pass would
    assert stray.verdict == "drop" and kernel.cleared == []
    stats = judge.stats()
    assert (stats["first_pass"], stats["second_pass"], stats["one_pass"]) == (3, 0, 2)


def test_a_packet_needing_the_first_pass_has_its_bit_cleared(tmp_path):
    """A stale bit (the engine's session gone, and the policy now forwards the port): the packet is
    dropped as `nat:first-pass` and its kernel entry's bit cleared."""
    judge = handler(tmp_path, POLICY + "  - {name: fwd, type: dnat, proto: udp, dst: 192.0.2.9, to: 198.51.100.20}\n")
    judge.kernel = kernel = FakeKernel()
    stale = FakePacket(udp_pkt("198.51.100.10:3000", "192.0.2.9:53", b"q"), hook=4, mark=NAT_MARK | UNJUDGED_MARK)
    judge(stale)
    assert stale.verdict == "drop" and judge.verdicts.dropped["nat:first-pass"] == 1
    assert kernel.cleared == [("udp 198.51.100.10:3000 -> 192.0.2.9:53", ONE_PASS_MARK)]


def test_the_kernel_tuple_of_a_cleared_bit():
    """The ctnetlink tuple of the entry a packet made: TCP/UDP ports, an echo request's id, type and code."""
    family, attrs = _kernel_tuple(udp_pkt("198.51.100.10:3000", "192.0.2.9:53", b"q"))
    assert family == 4 and attrs == tuple_attrs(4, 17, bytes([198, 51, 100, 10]), bytes([192, 0, 2, 9]), 3000, 53)
    family, attrs = _kernel_tuple(icmp_echo_pkt("198.51.100.10", "192.0.2.9", 0x4242, 1))
    top = attributes(attrs)
    assert attributes(top[CTA_TUPLE_PROTO]) == {1: b"\x01", 4: b"\x42\x42", 5: b"\x08", 6: b"\x00"}
    assert _kernel_tuple(icmp_echo_pkt("192.0.2.9", "198.51.100.10", 0x4242, 1, reply=True)) is None


def test_the_engine_reads_its_routes_from_the_snapshot_the_driver_keeps(tmp_path):
    dnat = POLICY + "  - {name: web, type: dnat, proto: tcp, dst: 203.0.113.1, dport: 80, to: 10.0.0.5}\n"
    judge = handler(tmp_path, dnat)
    target, server = (4, bytes([10, 0, 0, 5])), (4, bytes([192, 0, 2, 80]))
    assert judge.engine.nat.route_targets == {target}
    syn = FakePacket(seg("198.51.100.10:40000", "192.0.2.80:80", "S", seq=1), hook=0)
    judge(syn)
    # before judging: the packet's destination and the policy's dnat target, in the engine's snapshot
    assert judge.engine.nat.routes is judge.routes.table
    assert judge.routes.table[server] == ("wan", PUBLIC) and judge.routes.table[target] == ("wan", PUBLIC)
    assert syn.verdict == "accept" and syn.new_mark & NAT_MARK  # masqueraded on the route's source
    judge.forget_interfaces()  # every second: the cache goes, the policy's targets are asked again
    assert set(judge.routes.table) == {target}
    # without the destination's route in the snapshot, masquerade has no address: refused, no I/O
    judge.engine.nat.routes = {}
    refused = judge.engine.process(seg("198.51.100.10:40001", "192.0.2.81:80", "S", seq=1), 101.0, "lan", "wan",
                                   hook="prerouting", partial=False)
    assert refused.reason == "nat:exhausted"


def test_a_known_destination_is_read_by_number_without_asking_again(tmp_path):
    """The handler reads an IPv4 packet's route from `Routes.by_v4` (for addresses above
    127.255.255.255 too: compiled, the key is an unsigned long); `of_packet` (a slice, a tuple, a
    round trip for a new one) only for a destination not seen yet; `forget` empties both."""
    judge = handler(tmp_path)
    asked = []
    of_packet = judge.routes.of_packet
    judge.routes.of_packet = lambda data: asked.append(data[16:20]) or of_packet(data)
    for sport in (40000, 40001, 40002):
        syn = FakePacket(seg(f"198.51.100.10:{sport}", "203.0.113.80:80", "S", seq=1), hook=0)
        judge(syn)
        assert syn.verdict == "accept" and syn.new_mark & NAT_MARK  # routed out by wan: masqueraded
    assert asked == [bytes([203, 0, 113, 80])]
    assert judge.routes.by_v4 == {0xCB007150: Route("wan", PUBLIC, False)}
    judge.forget_interfaces()
    assert judge.routes.by_v4 == {}
    judge(FakePacket(seg("198.51.100.10:40003", "203.0.113.80:80", "S", seq=1), hook=0))
    assert len(asked) == 2
