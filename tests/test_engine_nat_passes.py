"""The live daemon's two NAT passes (fw/engine_nat_passes.py) against the engine's one pass.

Every packet goes through an engine at the before-routing hook and, when marked, again at the
after-routing hook; what leaves must be byte for byte what the one-pass engine (replay) gives, and
between the passes the packet must carry its source as it arrived (the kernel drops a packet with
one of its own addresses as source before routing) and its destination translated (routing
follows it). Masquerade takes the address the driver's route input gives."""

from __future__ import annotations

import ipaddress

import pytest

from fw.decision import RewritePacket, SetMark
from fw.engine_nat_passes import (
    AFTER_REASON,
    AFTER_ROUTING,
    BEFORE_ROUTING,
    FIRST_PASS_REASON,
    FROM_FIREWALL,
    NAT_MARK,
    ONE_PASS,
    ONE_PASS_MARK,
    TO_FIREWALL,
)
from fw.nat.rewrite import l4_checksum_valid
from fw.packet import flow_text, parse
from tests.packets import icmp_echo_pkt, icmp_error_pkt, seg, udp_pkt
from tests.test_engine_nat import INSIDE, POLICY, PUBLIC, make_engine

HAIRPIN = POLICY + '  - {name: hairpin, type: snat, src: 198.51.100.0/24, dst: 198.51.100.20, to: 203.0.113.1}\n'
MASQUERADE = """
version: 1
defaults: {action: drop}
rules:
  - {name: out, action: accept, src: 198.51.100.0/24}
nat:
  - {name: outbound, type: masquerade, src: 198.51.100.0/24, oif: wan}
"""


def address(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


def rewritten(decision) -> bytes | None:
    found = [e.data for e in decision.effects if type(e) is RewritePacket]
    return found[-1] if found else None


def marked(decision) -> bool:
    return any(type(e) is SetMark and e.mark & NAT_MARK for e in decision.effects)


class TwoPasses:
    """An engine driven as the daemon drives it: (first decision, bytes between, bytes out)."""

    def __init__(self, engine):
        self.engine = engine

    def __call__(self, data: bytes, now: float = 100.0, local: bool = False, partial: bool = False):
        first = self.engine.process(data, now, "lan", None, hook=TO_FIREWALL if local else BEFORE_ROUTING,
                                    partial=partial)
        if first.verdict != "accept":
            return first, None, None
        between = rewritten(first) or data
        if not marked(first):
            return first, between, between
        # a verdict with a new payload makes the kernel take the checksum as final; without one it
        # stays partial for the second pass
        second = self.engine.process(between, now, None, "wan", hook=AFTER_ROUTING,
                                     partial=partial and rewritten(first) is None)
        assert (second.verdict, second.reason) == ("accept", AFTER_REASON), second
        return first, between, rewritten(second) or between


def same_as_one_pass(tmp_path, text, packets, own=(PUBLIC,)):
    """Each packet through both engines: the same verdicts and bytes out; between the passes no
    source is one of the firewall's `own` addresses."""
    one, two = make_engine(tmp_path, text), TwoPasses(make_engine(tmp_path, text))
    results = []
    for data in packets:
        expected = one.process(data, 100.0)
        first, between, leaving = two(data)
        assert (first.verdict, first.reason) == (expected.verdict, expected.reason)
        if expected.verdict == "accept":
            assert leaving == (rewritten(expected) or data)
            assert address(parse(between).src) not in own, flow_text(parse(between))
        results.append((first, between, leaving))
    return results


def test_snat_source_after_routing(tmp_path):
    c, s = "198.51.100.10:40000", "192.0.2.80:80"
    results = same_as_one_pass(tmp_path, POLICY, [
        seg(c, s, "S", seq=100),
        seg(s, f"{PUBLIC}:40000", "SA", seq=300, ack=101),
        seg(c, s, "A", seq=101, ack=301),
        seg(s, f"{PUBLIC}:40000", "PA", seq=301, ack=101, payload=b"hello"),
    ])
    (syn, between, leaving), (synack, back, _), *_ = results
    assert flow_text(parse(between)) == "tcp 198.51.100.10:40000 -> 192.0.2.80:80"  # untouched before routing
    assert flow_text(parse(leaving)) == "tcp 203.0.113.1:40000 -> 192.0.2.80:80"
    assert marked(syn) and not marked(synack)  # the reply's destination is all it changes
    assert flow_text(parse(back)) == "tcp 192.0.2.80:80 -> 198.51.100.10:40000"


def test_port_forward_reply_source_after_routing(tmp_path):
    client = "192.0.2.7:5555"
    results = same_as_one_pass(tmp_path, POLICY, [
        seg(client, f"{PUBLIC}:8080", "S", seq=10),
        seg(f"{INSIDE}:80", client, "SA", seq=70, ack=11),
        udp_pkt("192.0.2.7:3000", f"{PUBLIC}:53", b"q"),
        udp_pkt(f"{INSIDE}:53", "192.0.2.7:3000", b"a"),
    ])
    (syn, between, _), (synack, back, leaving), *_ = results
    assert not marked(syn) and marked(synack)
    assert flow_text(parse(between)) == "tcp 192.0.2.7:5555 -> 198.51.100.20:80"  # routed to the inside
    assert flow_text(parse(back)) == "tcp 198.51.100.20:80 -> 192.0.2.7:5555"
    assert flow_text(parse(leaving)) == "tcp 203.0.113.1:8080 -> 192.0.2.7:5555"


def test_hairpin_finds_its_session_between_the_passes(tmp_path):
    c = "198.51.100.30:41000"
    results = same_as_one_pass(tmp_path, HAIRPIN, [
        seg(c, f"{PUBLIC}:8080", "S", seq=1),
        seg(f"{INSIDE}:80", f"{PUBLIC}:41000", "SA", seq=9, ack=2),
        seg(c, f"{PUBLIC}:8080", "A", seq=2, ack=10),
    ])
    (_, between, leaving), (_, back, returned), _ = results
    assert flow_text(parse(between)) == "tcp 198.51.100.30:41000 -> 198.51.100.20:80"
    assert flow_text(parse(leaving)) == "tcp 203.0.113.1:41000 -> 198.51.100.20:80"
    assert flow_text(parse(back)) == "tcp 198.51.100.20:80 -> 198.51.100.30:41000"
    assert flow_text(parse(returned)) == "tcp 203.0.113.1:8080 -> 198.51.100.30:41000"


def test_echo_and_errors_through_snat(tmp_path):
    c, s = "198.51.100.10", "192.0.2.80"
    probe = udp_pkt(f"{c}:40100", f"{s}:33434", b"probe")
    translated = udp_pkt(f"{PUBLIC}:40100", f"{s}:33434", b"probe")
    same_as_one_pass(tmp_path, POLICY, [
        icmp_echo_pkt(c, s, 0x4242, 1),
        icmp_echo_pkt(s, PUBLIC, 0x4242, 1, reply=True),
        probe,
        icmp_error_pkt(s, PUBLIC, 3, 3, translated),
    ])


def test_error_about_a_forwarded_packet_gets_its_source_after_routing(tmp_path):
    client = "192.0.2.7:5555"
    engine = TwoPasses(make_engine(tmp_path))
    engine(udp_pkt(client, f"{PUBLIC}:53", b"q"))
    forwarded = udp_pkt(client, f"{INSIDE}:53", b"q")
    first, between, leaving = engine(icmp_error_pkt(INSIDE, "192.0.2.7", 3, 3, forwarded))
    assert first.reason == "related:icmp" and marked(first)
    assert address(parse(between).src) == INSIDE      # not the firewall's own address before routing
    error = parse(leaving)
    assert (address(error.src), address(error.dst)) == (PUBLIC, "192.0.2.7")
    assert flow_text(error.inner) == "udp 192.0.2.7:5555 -> 203.0.113.1:53"


def test_masquerade_takes_the_routes_address(tmp_path):
    engine = make_engine(tmp_path, MASQUERADE)
    def route(family, dst):
        return ("wan", bytes([203, 0, 113, 1]))

    engine.nat.route = route
    two = TwoPasses(engine)
    first, between, leaving = two(seg("198.51.100.10:40000", "192.0.2.80:80", "S", seq=1))
    assert first.reason == "rule:out" and first.session.nat.names == "nat:outbound"
    assert flow_text(parse(leaving)) == "tcp 203.0.113.1:40000 -> 192.0.2.80:80"
    _, back, _ = two(seg("192.0.2.80:80", f"{PUBLIC}:40000", "SA", seq=5, ack=2), local=True)
    assert flow_text(parse(back)) == "tcp 192.0.2.80:80 -> 198.51.100.10:40000"
    # the firewall's own traffic is not the NAT's: passed untouched, not judged
    own = two(seg("192.0.2.80:22", f"{PUBLIC}:50000", "A", seq=5, ack=2), local=True)[0]
    assert (own.verdict, own.reason, own.session) == ("accept", "to-firewall", None)
    # no route input (replay): masquerade does not apply
    replayed = make_engine(tmp_path, MASQUERADE).process(seg("198.51.100.10:40001", "192.0.2.80:80", "S"), 1.0)
    assert replayed.reason == "rule:out" and replayed.session.nat is None


def test_a_partial_checksum_leaves_complete(tmp_path):
    """With NFQA_SKB_CSUMNOTREADY the L4 field holds only the pseudo-header sum: the packet must
    leave with the whole checksum computed (the verdict makes the kernel take the field as final)."""
    packet = bytearray(seg("198.51.100.10:40000", "192.0.2.80:80", "PA", seq=1, payload=b"x" * 300))
    packet[36:38] = b"\x12\x34"  # whatever the field holds: not a valid checksum
    engine = make_engine(tmp_path, POLICY.replace("defaults: {action: drop}", "options: {tcp_loose: true}\n"
                                                 "defaults: {action: drop}"))
    first, _between, leaving = TwoPasses(engine)(bytes(packet), partial=True)
    assert first.verdict == "accept", first
    assert l4_checksum_valid(leaving, parse(leaving))


@pytest.mark.parametrize("hook", ["before", "elsewhere"])
def test_an_unknown_hook_is_refused(tmp_path, hook):
    with pytest.raises(ValueError):
        make_engine(tmp_path).process(udp_pkt("198.51.100.10:1", "192.0.2.1:2"), 1.0, hook=hook)


def test_the_firewalls_own_error_quotes_what_the_sender_sent(tmp_path):
    """A "fragmentation needed" the firewall sends about a server's packet between the passes (its
    destination already the client's): the server knows the packet as sent to the NAT address."""
    engine = make_engine(tmp_path)
    two = TwoPasses(engine)
    c, s = "198.51.100.10:40000", "192.0.2.80:80"
    two(seg(c, s, "S", seq=1))
    _, between, _ = two(seg(s, f"{PUBLIC}:40000", "SA", seq=9, ack=2), local=True)
    assert flow_text(parse(between)) == "tcp 192.0.2.80:80 -> 198.51.100.10:40000"
    own = icmp_error_pkt("198.51.100.1", "192.0.2.80", 3, 4, between)
    decision = engine.process(own, 100.0, None, "wan", hook=FROM_FIREWALL)
    assert (decision.verdict, decision.reason) == ("accept", "related:icmp")
    error = parse(rewritten(decision))
    assert (address(error.src), address(error.dst)) == ("198.51.100.1", "192.0.2.80")
    assert flow_text(error.inner) == "tcp 192.0.2.80:80 -> 203.0.113.1:40000"
    # an error about anything else passes as it is
    other = icmp_error_pkt("198.51.100.1", "192.0.2.99", 11, 0, seg("192.0.2.99:5", c, "S"))
    passed = engine.process(other, 100.0, None, "wan", hook=FROM_FIREWALL)
    assert (passed.verdict, passed.reason, passed.effects) == ("accept", "from-firewall", ())


def test_a_restarted_daemon_goes_on_with_the_restored_sessions(tmp_path):
    """Sessions restored from a snapshot (before the first packet, as fw.runner does) are split
    for two passes on the first hooked packet; the hairpin one is found between the passes."""
    first = TwoPasses(make_engine(tmp_path, HAIRPIN))
    c = "198.51.100.30:41000"
    first(seg(c, f"{PUBLIC}:8080", "S", seq=1))
    first(seg(f"{INSIDE}:80", f"{PUBLIC}:41000", "SA", seq=9, ack=2))
    first(seg("198.51.100.10:40000", "192.0.2.80:80", "S", seq=100))
    saved = first.engine.snapshot(0.0)
    again = make_engine(tmp_path, HAIRPIN)
    assert again.restore(saved, 100.0, 0.0) == 2
    two = TwoPasses(again)
    _, between, leaving = two(seg(c, f"{PUBLIC}:8080", "A", seq=2, ack=10))
    assert flow_text(parse(between)) == "tcp 198.51.100.30:41000 -> 198.51.100.20:80"
    assert flow_text(parse(leaving)) == "tcp 203.0.113.1:41000 -> 198.51.100.20:80"
    _, _, leaving = two(seg("192.0.2.80:80", f"{PUBLIC}:40000", "SA", seq=5, ack=101), local=True)
    assert flow_text(parse(leaving)) == "tcp 192.0.2.80:80 -> 198.51.100.10:40000"


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("partial", [False, True])
def test_64k_gso_segments_both_ways_leave_whole_with_sound_checksums(tmp_path, family, partial):
    """GSO/GRO packets of 64 KiB through an established snat session, both directions, both passes:
    the whole payload kept, the translated addresses, the checksum sound (complete: updated;
    partial: computed over the whole segment) and, complete, equal to the one pass's bytes."""
    c, s, nat = (("198.51.100.10:40000", "192.0.2.80:80", f"{PUBLIC}:40000") if family == 4 else
                 ("[2001:db8:1::10]:40000", "[2001:db8:2::80]:80", "[2001:db8:ff::1]:40000"))
    one, two = make_engine(tmp_path), TwoPasses(make_engine(tmp_path))
    for data in (seg(c, s, "S", seq=100), seg(s, nat, "SA", seq=300, ack=101), seg(c, s, "A", seq=101, ack=301)):
        one.process(data, 100.0)
        assert two(data)[0].verdict == "accept"
    size = 65535 - 20 - (20 if family == 4 else 0)
    body = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    for data, flow in ((seg(c, s, "PA", seq=101, ack=301, payload=body), f"tcp {nat.replace(':40000', '')}"),
                       (seg(s, nat, "PA", seq=301, ack=101 + size, payload=body), None)):
        sent = bytearray(data)
        head = 20 if family == 4 else 40
        if partial:
            sent[head + 16:head + 18] = b"\x12\x34"  # the kernel's pseudo-header sum, whatever it is
        expected = rewritten(one.process(data, 100.0))
        first, _between, leaving = two(bytes(sent), partial=partial)
        assert first.verdict == "accept", first
        packet = parse(leaving)
        assert len(leaving) == len(data) and packet.payload == body
        assert l4_checksum_valid(leaving, packet)
        if flow is not None:
            assert flow_text(packet).startswith(flow)
        else:
            assert flow_text(packet).endswith(c)
        if not partial:
            assert leaving == expected


@pytest.mark.parametrize(("client", "server"), [("198.51.100.10:5000", "192.0.2.80:53"),
                                                ("[2001:db8:1::10]:5000", "[2001:db8:2::80]:53")])
def test_a_partial_udp_checksum_leaves_complete_both_ways(tmp_path, client, server):
    """UDP with NFQA_SKB_CSUMNOTREADY (the sender's stack left the pseudo-header sum): the datagram
    and its answer leave with the whole checksum computed, IPv4 and IPv6."""
    two = TwoPasses(make_engine(tmp_path))
    head = 20 if "." in client else 40
    nat = f"{PUBLIC}:5000" if "." in client else "[2001:db8:ff::1]:5000"
    for data, flow_end in ((udp_pkt(client, server, b"q" * 200), f" -> {server}"),
                           (udp_pkt(server, nat, b"a" * 300), f" -> {client}")):
        garbled = bytearray(data)
        garbled[head + 6:head + 8] = b"\x12\x34"
        first, _between, leaving = two(bytes(garbled), partial=True)
        assert first.verdict == "accept", first
        packet = parse(leaving)
        assert flow_text(packet).endswith(flow_end) and l4_checksum_valid(leaving, packet)


# -- one pass after routing (ONE_PASS) ---------------------------------------------------------------


def asked(decision) -> bool:
    return any(type(e) is SetMark and e.mark & ONE_PASS_MARK for e in decision.effects)


class OnePass(TwoPasses):
    """The daemon with the one-pass rules: a packet whose kernel entry (its tuple as it arrived)
    carries the bit is judged after routing only; the first pass's ask sets the bit, a
    `nat:first-pass` drop clears it. Returns (decision, bytes out, hook taken)."""

    def __init__(self, engine):
        super().__init__(engine)
        self.bits: set = set()

    @staticmethod
    def entry(data: bytes) -> tuple:
        pkt = parse(data)
        return pkt.proto, pkt.src, pkt.dst, pkt.sport, pkt.dport

    def __call__(self, data: bytes, now: float = 100.0, local: bool = False, partial: bool = False):
        entry = self.entry(data)
        if entry in self.bits:
            decision = self.engine.process(data, now, "lan", "wan", hook=ONE_PASS, partial=partial)
            if decision.reason == FIRST_PASS_REASON:
                self.bits.discard(entry)
            return decision, rewritten(decision) or data, ONE_PASS
        first, _between, leaving = super().__call__(data, now, local, partial)
        if first.verdict == "accept" and asked(first):
            self.bits.add(entry)
        return first, leaving, BEFORE_ROUTING


def session_counts(engine) -> list:
    return sorted((s.orig_packets, s.orig_bytes, s.reply_packets, s.reply_bytes, str(s.state))
                  for s in engine.table.values())


def test_one_pass_after_routing_leaves_the_same_bytes_and_counts_once(tmp_path):
    """snat's client packets and a port forward's replies, once their first packet asked: one trip
    after routing, the same verdicts, reasons and bytes as the engine's one pass (replay), every
    session counter counted once."""
    c, s, client = "198.51.100.10:40000", "192.0.2.80:80", "192.0.2.7:5555"
    packets = [
        seg(c, s, "S", seq=100),
        seg(s, f"{PUBLIC}:40000", "SA", seq=300, ack=101),
        seg(c, s, "A", seq=101, ack=301),
        seg(c, s, "PA", seq=101, ack=301, payload=b"GET /"),
        seg(s, f"{PUBLIC}:40000", "PA", seq=301, ack=106, payload=b"hello"),
        seg(c, s, "A", seq=106, ack=306),
        seg(c, s, "FA", seq=106, ack=306),
        seg(client, f"{PUBLIC}:8080", "S", seq=10),
        seg(f"{INSIDE}:80", client, "SA", seq=70, ack=11),
        seg(client, f"{PUBLIC}:8080", "A", seq=11, ack=71),
        seg(f"{INSIDE}:80", client, "PA", seq=71, ack=11, payload=b"page"),
        udp_pkt("198.51.100.10:3000", "192.0.2.53:53", b"q1"),
        udp_pkt("198.51.100.10:3000", "192.0.2.53:53", b"q2"),
        icmp_echo_pkt("198.51.100.10", "192.0.2.80", 0x4242, 1),
        icmp_echo_pkt("198.51.100.10", "192.0.2.80", 0x4242, 2),
    ]
    one, driven = make_engine(tmp_path), OnePass(make_engine(tmp_path))
    hooks = []
    for data in packets:
        expected = one.process(data, 100.0)
        decision, leaving, hook = driven(data)
        hooks.append(hook)
        assert (decision.verdict, decision.reason) == (expected.verdict, expected.reason), flow_text(parse(data))
        assert leaving == (rewritten(expected) or data)
        assert not (hook == ONE_PASS and marked(decision))  # no second trip after it
    # the SYN asks; the kernel's entry then says one pass for the client's later packets; the
    # replies that change destination (snat) and the forwarded client's packets keep the first pass
    assert hooks == [BEFORE_ROUTING, BEFORE_ROUTING, ONE_PASS, ONE_PASS, BEFORE_ROUTING, ONE_PASS, ONE_PASS,
                     BEFORE_ROUTING, BEFORE_ROUTING, BEFORE_ROUTING, ONE_PASS,
                     BEFORE_ROUTING, ONE_PASS, BEFORE_ROUTING, ONE_PASS]
    assert session_counts(driven.engine) == session_counts(one)
    assert {k: v for k, v in driven.engine.counters.items() if v} == {k: v for k, v in one.counters.items() if v}


def test_one_pass_computes_a_partial_checksum_whole(tmp_path):
    engine = OnePass(make_engine(tmp_path))
    c, s = "198.51.100.10:40000", "192.0.2.80:80"
    engine(seg(c, s, "S", seq=1))
    engine(seg(s, f"{PUBLIC}:40000", "SA", seq=9, ack=2))
    for payload in (b"x" * 300, b"y" * 7):
        packet = bytearray(seg(c, s, "PA", seq=2, ack=10, payload=payload))
        packet[36:38] = b"\x12\x34"
        decision, leaving, hook = engine(bytes(packet), partial=True)
        assert hook == ONE_PASS and decision.verdict == "accept"
        assert flow_text(parse(leaving)) == "tcp 203.0.113.1:40000 -> 192.0.2.80:80"
        assert l4_checksum_valid(leaving, parse(leaving))
    datagram = bytearray(udp_pkt("198.51.100.10:3000", "192.0.2.53:53", b"q" * 40))
    engine(bytes(datagram))
    datagram[26:28] = b"\x43\x21"
    decision, leaving, hook = engine(bytes(datagram), partial=True)
    assert hook == ONE_PASS and l4_checksum_valid(leaving, parse(leaving))


def test_one_pass_judges_a_packet_whose_session_went_away_or_sends_it_round_the_first_pass(tmp_path):
    """The kernel entry keeps its bit after the engine's session is gone (expired, killed, a restart
    without snapshot, a reload): judged as new after routing when the policy translates no
    destination; else dropped as `nat:first-pass`, counted, and the bit cleared."""
    text = POLICY + "  - {name: late, type: dnat, proto: udp, dst: 192.0.2.99, dport: 53, to: 198.51.100.20}\n"
    driven = OnePass(make_engine(tmp_path, text))
    query = udp_pkt("198.51.100.10:3000", "192.0.2.53:53", b"q")
    driven(query)
    driven.engine = make_engine(tmp_path, text)  # a restart: the kernel entry and its bit are still there
    decision, leaving, hook = driven(query)
    assert (hook, decision.verdict, decision.reason) == (ONE_PASS, "accept", "rule:out")
    assert flow_text(parse(leaving)) == "udp 203.0.113.1:3000 -> 192.0.2.53:53"
    assert driven.entry(query) in driven.bits
    # a tuple whose bit a session without dnat left, now met by a dnat entry
    forwarded = udp_pkt("198.51.100.10:3001", "192.0.2.99:53", b"q")
    driven.bits.add(driven.entry(forwarded))
    decision, leaving, hook = driven(forwarded)
    assert (hook, decision.verdict, decision.reason) == (ONE_PASS, "drop", FIRST_PASS_REASON)
    assert driven.engine.counters["nat_first_pass_needed"] == 1
    assert not any(type(e) is RewritePacket for e in decision.effects)
    assert driven.entry(forwarded) not in driven.bits  # the next one goes round the first pass
    decision, leaving, hook = driven(forwarded)
    assert (hook, decision.verdict) == (BEFORE_ROUTING, "accept")
    assert flow_text(parse(leaving)) == "udp 198.51.100.10:3001 -> 198.51.100.20:53"  # dnat (no snat inside)
    # a policy that drops it now: dropped by the rules, as in the first pass
    driven.engine = make_engine(tmp_path, POLICY.replace("- {name: out, action: accept, src: $inside}", ""))
    decision, _, hook = driven(query)
    assert (hook, decision.verdict, decision.reason) == (ONE_PASS, "drop", "default")


def test_an_alg_session_and_errors_keep_two_passes(tmp_path):
    text = POLICY.replace("rules:\n", "rules:\n  - {name: ftp, action: accept, proto: tcp, dport: 21, alg: ftp}\n")
    driven = OnePass(make_engine(tmp_path, text))
    c, s = "198.51.100.10:40000", "192.0.2.21:21"
    syn, _, _ = driven(seg(c, s, "S", seq=1))
    assert marked(syn) and not asked(syn)  # the FTP control session: seqadj and rewrites in the first pass
    # an ICMP error that reaches the one-pass hook (the rules let RELATED packets by only before
    # routing, so only a stale entry could) goes round the first pass
    probe = udp_pkt("198.51.100.10:40100", "192.0.2.80:33434", b"probe")
    driven(probe)
    error = icmp_error_pkt("198.51.100.10", "192.0.2.80", 3, 3, udp_pkt("192.0.2.80:33434", "198.51.100.10:40100"))
    decision = driven.engine.process(error, 100.0, "lan", "wan", hook=ONE_PASS)
    assert (decision.verdict, decision.reason) == ("drop", FIRST_PASS_REASON)


def test_one_pass_after_a_reload_and_a_kill(tmp_path):
    """A reload that keeps the session: its packets go on in one pass, translated as before; a
    reload whose recheck refuses it, or a kill: the next packet is judged as new, by the policy in
    force (here refused by the rules, as it would be before routing)."""
    engine = make_engine(tmp_path)
    driven = OnePass(engine)
    query = udp_pkt("198.51.100.10:3000", "192.0.2.53:53", b"q")
    driven(query)
    more = POLICY + "  - {name: more, type: snat, src: 10.0.0.0/8, to: 203.0.113.9}\n"
    engine.swap_policy(make_engine(tmp_path, more).policy)
    decision, leaving, hook = driven(query)
    assert (hook, decision.verdict, decision.reason) == (ONE_PASS, "accept", "established")
    assert flow_text(parse(leaving)) == "udp 203.0.113.1:3000 -> 192.0.2.53:53"
    session = decision.session
    engine.kill(session, 100.0)
    decision, leaving, hook = driven(query)
    assert (hook, decision.verdict, decision.reason) == (ONE_PASS, "accept", "rule:out")  # judged again: new
    refusing = make_engine(tmp_path, POLICY.replace("- {name: out, action: accept, src: $inside}", ""))
    engine.swap_policy(refusing.policy)
    assert engine.recheck(100.0) and engine.counters["recheck_closed"] >= 1
    decision, leaving, hook = driven(query)
    assert (hook, decision.verdict, decision.reason) == (ONE_PASS, "drop", "default")


def test_masquerade_in_ipv6_and_only_out_of_its_interface(tmp_path):
    """IPv6 masquerade takes the route's preferred source (RTA_PREFSRC) on the entry's oif; a
    destination routed out of another interface is not masqueraded."""
    engine = make_engine(tmp_path, MASQUERADE.replace("src: 198.51.100.0/24}", 'src: "2001:db8:1::/64"}').replace(
        "src: 198.51.100.0/24, oif: wan}", 'src: "2001:db8:1::/64", oif: wan}'))
    wan = ipaddress.ip_address("2001:db8:2::1").packed

    def route(family, dst):
        assert family == 6
        return ("wan", wan) if dst[:6] == ipaddress.ip_address("2001:db8:2::").packed[:6] else ("dmz", None)

    engine.nat.route = route
    two = TwoPasses(engine)
    client, server = "[2001:db8:1::10]:40000", "[2001:db8:2::80]:80"
    first, between, leaving = two(seg(client, server, "S", seq=1))
    assert first.session.nat.names == "nat:outbound" and between == seg(client, server, "S", seq=1)
    assert flow_text(parse(leaving)) == "tcp [2001:db8:2::1]:40000 -> [2001:db8:2::80]:80"
    assert l4_checksum_valid(leaving, parse(leaving))
    _, back, _ = two(seg(server, "[2001:db8:2::1]:40000", "SA", seq=5, ack=2), local=True)
    assert flow_text(parse(back)) == "tcp [2001:db8:2::80]:80 -> [2001:db8:1::10]:40000"
    ping = two(icmp_echo_pkt(client, server, ident=4000, seq=1))[2]
    assert flow_text(parse(ping)) == "icmpv6 2001:db8:2::1 -> 2001:db8:2::80 type 128 code 0"
    other, _, out = two(seg(client, "[2001:db8:3::80]:80", "S", seq=1))
    assert other.verdict == "accept" and other.session.nat is None
    assert flow_text(parse(out)) == "tcp [2001:db8:1::10]:40000 -> [2001:db8:3::80]:80"
