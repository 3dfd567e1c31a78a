"""fw.drivers.nat_queue without a kernel: what the handler gives the engine for each hook, the mark
it ORs in, partial checksums and packets above the copy range (fakes for the packet and routes)."""

from __future__ import annotations

import textwrap

from fw.drivers.nat_queue import NatPacketHandler
from fw.drivers.nfqueue_socket import NFQA_SKB_CSUMNOTREADY, NFQA_SKB_GSO
from fw.drivers.routes import Route, Routes
from fw.engine import Engine, EngineConfig
from fw.engine_nat_passes import NAT_MARK
from fw.nat.rewrite import l4_checksum_valid
from fw.packet import flow_text, parse
from fw.policy import load_policy
from tests.packets import seg

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


def handler(tmp_path):
    path = tmp_path / "nat.yaml"
    path.write_text(textwrap.dedent(POLICY))
    engine = Engine(load_policy(path), EngineConfig(events=False))
    return NatPacketHandler(engine, False, lambda effects: None, lambda *a: None, FakeRoutes(), clock=lambda: 100.0)


def test_the_passes_mark_and_checksums(tmp_path):
    judge = handler(tmp_path)
    syn = bytearray(seg("198.51.100.10:40000", "192.0.2.80:80", "S", seq=1))
    syn[36:38] = b"\x00\x01"  # partial: whatever the pseudo-header sum was
    first = FakePacket(bytes(syn), hook=0, skb_info=NFQA_SKB_CSUMNOTREADY)
    judge(first)
    assert first.verdict == "accept" and first.new_payload is None  # nothing changes before routing
    assert first.new_mark == 0x5 | NAT_MARK  # the operator's bits kept
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
                             "route_lookups": 0}


def test_a_packet_above_the_copy_range_is_refused_and_counted(tmp_path):
    judge = handler(tmp_path)
    judge(FakePacket(seg("198.51.100.10:40000", "192.0.2.80:80", "S", seq=1), hook=0))
    data = seg("192.0.2.80:80", "203.0.113.1:40000", "SA", seq=7, ack=2, payload=b"x" * 100)
    cut = FakePacket(data[:-40], hook=0, cap_len=len(data))
    judge(cut)
    assert cut.verdict == "drop" and judge.stats()["nat_too_long"] == 1
