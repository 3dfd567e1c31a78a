"""NAT in the engine, playbook style: each packet's verdict, reason and state, and the bytes it
leaves with (a RewritePacket effect), read back with scapy, whose checksum recomputation must agree."""

from __future__ import annotations

import ipaddress
import textwrap

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPerror6, IPv6

from fw.decision import LogEvent, RewritePacket
from fw.engine import Engine, EngineConfig
from fw.packet import flow_text, parse
from fw.policy import load_policy
from tests.packets import icmp_echo_pkt, icmp_error_pkt, seg, udp_pkt

C = "198.51.100.10:40000"       # a client on the inside
S = "192.0.2.80:80"             # a server on the outside
PUBLIC = "203.0.113.1"          # the firewall's outside address (snat), the forwarded address (dnat)
INSIDE = "198.51.100.20"        # the server behind the port forward

POLICY = """
version: 1
defaults: {action: drop}
sets:
  inside: [198.51.100.0/24, "2001:db8:1::/64"]
rules:
  - {name: out, action: accept, src: $inside}
  - {name: web-in, action: accept, proto: tcp, dst: 203.0.113.1, dport: 8080}
  - {name: dns-in, action: accept, proto: udp, dst: 203.0.113.1, dport: 53}
nat:
  - {name: web-in, type: dnat, proto: tcp, dst: 203.0.113.1, dport: 8080, to: "198.51.100.20:80"}
  - {name: dns-in, type: dnat, proto: udp, dst: 203.0.113.1, dport: 53, to: "198.51.100.20"}
  - {name: outbound, type: snat, src: $inside, dst: {not: [198.51.100.0/24]}, to: 203.0.113.1}
  - {name: outbound6, type: snat, src: $inside, to: "2001:db8:ff::1"}
"""


def make_engine(tmp_path, text=POLICY, events=False):
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(text))
    return Engine(load_policy(path), EngineConfig(events=events))


@pytest.fixture
def engine(tmp_path):
    return make_engine(tmp_path)


def out(decision) -> bytes:
    """The bytes the packet leaves with (its own if the engine did not rewrite it)."""
    rewrites = [e.data for e in decision.effects if isinstance(e, RewritePacket)]
    assert len(rewrites) <= 1
    return rewrites[0] if rewrites else None


def checked(data: bytes):
    """Parse with scapy; every checksum must equal scapy's own recomputation."""
    packet = IP(data) if data[0] >> 4 == 4 else IPv6(data)
    again = packet.copy()
    for layer in (IP, TCP, UDP, ICMP, IPerror, TCPerror):
        if again.haslayer(layer) and hasattr(again[layer], "chksum") and layer not in (IPerror, TCPerror):
            del again[layer].chksum
    if IPv6 in packet:
        for layer in packet.layers():
            if hasattr(again.getlayer(layer), "cksum"):
                del again.getlayer(layer).cksum
    rebuilt = again.__class__(bytes(again))
    assert bytes(rebuilt) == data, "a checksum differs from scapy's recomputation"
    return packet


def leaves(decision, flow: str):
    """The packet was accepted, rewritten to `flow` (SPEC's text), with sound checksums."""
    assert decision.verdict == "accept", decision
    data = out(decision)
    assert data is not None, "not rewritten"
    assert flow_text(parse(data)) == flow
    return checked(data)


def step(engine, data, now=100.0):
    return engine.process(data, now)


def test_snat_keeps_the_port_and_translates_both_ways(engine):
    syn = step(engine, seg(C, S, "S", seq=100))
    assert (syn.reason, syn.state) == ("rule:out", "SYN_SENT")
    leaves(syn, "tcp 203.0.113.1:40000 -> 192.0.2.80:80")
    assert syn.session.nat.names == "nat:outbound"
    synack = step(engine, seg(S, f"{PUBLIC}:40000", "SA", seq=300, ack=101))
    assert (synack.reason, synack.state) == ("established", "SYN_RECV")
    leaves(synack, "tcp 192.0.2.80:80 -> 198.51.100.10:40000")
    ack = step(engine, seg(C, S, "A", seq=101, ack=301))
    assert ack.state == "ESTABLISHED"
    leaves(ack, "tcp 203.0.113.1:40000 -> 192.0.2.80:80")
    data = step(engine, seg(S, f"{PUBLIC}:40000", "PA", seq=301, ack=101, payload=b"hello"))
    assert leaves(data, "tcp 192.0.2.80:80 -> 198.51.100.10:40000")[TCP].load == b"hello"
    assert len(engine.table) == 1 and len(engine.table.sessions) == 2 and len(list(engine.table)) == 1
    # the translated packet itself (a capture after the firewall) is no packet of the session
    assert step(engine, seg(f"{PUBLIC}:40000", S, "A", seq=101, ack=306)).reason == "invalid:state"


def test_snat_takes_the_next_port_when_the_translated_tuple_is_in_use(engine):
    step(engine, seg(C, S, "S", seq=1))
    other = step(engine, seg("198.51.100.11:40000", S, "S", seq=1))
    leaves(other, "tcp 203.0.113.1:40001 -> 192.0.2.80:80")
    reply = step(engine, seg(S, f"{PUBLIC}:40001", "SA", seq=5, ack=2))
    leaves(reply, "tcp 192.0.2.80:80 -> 198.51.100.11:40000")
    # a port below the pool's range (1024-65535) is not kept
    low = step(engine, seg("198.51.100.12:999", S, "S", seq=1))
    leaves(low, "tcp 203.0.113.1:1024 -> 192.0.2.80:80")


def test_port_forward(engine):
    client = "192.0.2.7:5555"
    syn = step(engine, seg(client, f"{PUBLIC}:8080", "S", seq=10))
    assert (syn.reason, syn.session.nat.names) == ("rule:web-in", "nat:web-in")
    leaves(syn, "tcp 192.0.2.7:5555 -> 198.51.100.20:80")
    synack = step(engine, seg(f"{INSIDE}:80", client, "SA", seq=70, ack=11))
    leaves(synack, "tcp 203.0.113.1:8080 -> 192.0.2.7:5555")
    # a UDP forward without a port keeps the port
    query = step(engine, udp_pkt("192.0.2.7:3000", f"{PUBLIC}:53", b"q"))
    leaves(query, "udp 192.0.2.7:3000 -> 198.51.100.20:53")
    answer = step(engine, udp_pkt(f"{INSIDE}:53", "192.0.2.7:3000", b"a"))
    assert answer.state == "REPLIED"
    leaves(answer, "udp 203.0.113.1:53 -> 192.0.2.7:3000")


def test_hairpin_both_translations(tmp_path):
    """An inside client reaches the inside server through the public address: dnat, then snat
    (matched on the translated destination: the outbound entry excludes the inside, so a hairpin
    entry is needed)."""
    text = POLICY + '  - {name: hairpin, type: snat, src: 198.51.100.0/24, dst: 198.51.100.20, to: 203.0.113.1}\n'
    engine = make_engine(tmp_path, text)
    syn = step(engine, seg("198.51.100.30:41000", f"{PUBLIC}:8080", "S", seq=1))
    assert syn.session.nat.names == "nat:web-in,nat:hairpin"
    leaves(syn, "tcp 203.0.113.1:41000 -> 198.51.100.20:80")
    synack = step(engine, seg(f"{INSIDE}:80", f"{PUBLIC}:41000", "SA", seq=9, ack=2))
    leaves(synack, "tcp 203.0.113.1:8080 -> 198.51.100.30:41000")


def test_icmp_echo_id_translated(engine):
    request = step(engine, icmp_echo_pkt(C, S, ident=7, seq=1))
    packet = leaves(request, "icmp 203.0.113.1 -> 192.0.2.80 type 8 code 0")
    assert packet[ICMP].id == 1024  # ids use the pool's range (1024-65535): 7 is outside it
    reply = step(engine, icmp_echo_pkt(S, PUBLIC, ident=1024, seq=1, reply=True))
    assert reply.state == "REPLIED"
    assert leaves(reply, "icmp 192.0.2.80 -> 198.51.100.10 type 0 code 0")[ICMP].id == 7
    # an id in the range is kept while its translated tuple is free, else the next free one
    kept = step(engine, icmp_echo_pkt("198.51.100.11", S, ident=5000, seq=1))
    assert leaves(kept, "icmp 203.0.113.1 -> 192.0.2.80 type 8 code 0")[ICMP].id == 5000
    moved = step(engine, icmp_echo_pkt("198.51.100.12", S, ident=5000, seq=1))
    assert leaves(moved, "icmp 203.0.113.1 -> 192.0.2.80 type 8 code 0")[ICMP].id == 5001
    answer = step(engine, icmp_echo_pkt(S, PUBLIC, ident=5001, seq=1, reply=True))
    assert leaves(answer, "icmp 192.0.2.80 -> 198.51.100.12 type 0 code 0")[ICMP].id == 5000


def test_icmp_errors_quoting_translated_packets(engine):
    step(engine, seg(C, S, "S", seq=100))
    left = seg(f"{PUBLIC}:40000", S, "S", seq=100)  # the SYN as it left
    router = "192.0.2.254"
    error = step(engine, icmp_error_pkt(router, PUBLIC, 11, 0, left))
    assert error.reason == "related:icmp"
    packet = leaves(error, "icmp 192.0.2.254 -> 198.51.100.10 type 11 code 0")
    quoted = packet[IPerror]
    assert (quoted.src, quoted.dst, packet[TCPerror].sport) == ("198.51.100.10", "192.0.2.80", 40000)
    # port forward: the server's error about the reply it sent goes back out from the public address
    step(engine, seg("192.0.2.7:5555", f"{PUBLIC}:8080", "S", seq=10))
    reply_left = seg(f"{PUBLIC}:8080", "192.0.2.7:5555", "SA", seq=70, ack=11)
    unreachable = step(engine, icmp_error_pkt("192.0.2.7", PUBLIC, 3, 3, reply_left))
    packet = leaves(unreachable, "icmp 192.0.2.7 -> 198.51.100.20 type 3 code 3")
    assert (packet[IPerror].src, packet[TCPerror].sport) == (INSIDE, 80)
    forwarded_left = seg("192.0.2.7:5555", f"{INSIDE}:80", "S", seq=10)
    from_inside = step(engine, icmp_error_pkt("198.51.100.254", "192.0.2.7", 3, 4, forwarded_left))
    packet = leaves(from_inside, "icmp 203.0.113.1 -> 192.0.2.7 type 3 code 4")
    assert (packet[IPerror].dst, packet[TCPerror].dport) == (PUBLIC, 8080)


def test_icmp_error_quoting_an_echo(engine):
    step(engine, icmp_echo_pkt(C, S, ident=7, seq=1))
    left = icmp_echo_pkt(PUBLIC, S, ident=1024, seq=1)
    error = step(engine, icmp_error_pkt("192.0.2.254", PUBLIC, 3, 1, left, full=True))
    packet = leaves(error, "icmp 192.0.2.254 -> 198.51.100.10 type 3 code 1")
    assert packet[IPerror].src == "198.51.100.10"


def test_ipv6_snat(engine):
    client, server = "[2001:db8:1::10]:40000", "[2001:db8:2::80]:443"
    syn = step(engine, seg(client, server, "S", seq=1))
    leaves(syn, "tcp [2001:db8:ff::1]:40000 -> [2001:db8:2::80]:443")
    synack = step(engine, seg(server, "[2001:db8:ff::1]:40000", "SA", seq=3, ack=2))
    leaves(synack, "tcp [2001:db8:2::80]:443 -> [2001:db8:1::10]:40000")
    ping = step(engine, icmp_echo_pkt(client, server, ident=4000, seq=1))
    leaves(ping, "icmpv6 2001:db8:ff::1 -> 2001:db8:2::80 type 128 code 0")


def test_exhausted_pool_drops_and_counts(tmp_path):
    engine = make_engine(tmp_path, """
        version: 1
        rules: [{name: out, action: accept}]
        nat: [{name: tiny, type: snat, proto: udp, to: 203.0.113.1, ports: "5000-5001"}]
    """, events=True)
    for port in (6000, 6001):
        assert out(step(engine, udp_pkt(f"198.51.100.10:{port}", "192.0.2.80:53"))) is not None
    refused = step(engine, udp_pkt("198.51.100.10:6002", "192.0.2.80:53"))
    assert (refused.verdict, refused.reason, refused.session) == ("drop", "nat:exhausted", None)
    assert engine.counters["nat_exhausted"] == 1
    (event,) = [e.event for e in refused.effects if type(e) is LogEvent]  # an EVE drop event
    assert (event["event_type"], event["fw"], event["src_port"]) == (
        "drop", {"verdict": "drop", "reason": "nat:exhausted"}, 6002)
    # a port in the range is kept when its translated tuple is free (as Linux), handed out or not
    kept = step(engine, udp_pkt("198.51.100.11:5000", "192.0.2.81:53"))
    leaves(kept, "udp 203.0.113.1:5000 -> 192.0.2.81:53")
    # a session that expires gives its port back
    engine.expire(100.0 + 31)
    assert len(engine.table) == 0 and not engine.table.sessions
    assert out(step(engine, udp_pkt("198.51.100.10:6003", "192.0.2.80:53"), now=140.0)) is not None


def test_untranslated_sessions_carry_nothing(engine):
    decision = step(engine, seg(C, "198.51.100.99:22", "S"))  # inside to inside: no entry applies
    assert decision.verdict == "accept" and out(decision) is None and decision.session.extra is None


def test_snapshot_keeps_the_translation(engine, tmp_path):
    step(engine, seg(C, S, "S", seq=100))
    step(engine, seg(S, f"{PUBLIC}:40000", "SA", seq=300, ack=101))
    snapshot = engine.snapshot(0.0)
    assert snapshot["version"] == 1
    fresh = make_engine(tmp_path)
    assert fresh.restore(snapshot, 100.5, 0.0) == 1
    ack = step(fresh, seg(C, S, "A", seq=101, ack=301), now=101.0)
    leaves(ack, "tcp 203.0.113.1:40000 -> 192.0.2.80:80")
    reply = step(fresh, seg(S, f"{PUBLIC}:40000", "A", seq=301, ack=101), now=101.0)
    leaves(reply, "tcp 192.0.2.80:80 -> 198.51.100.10:40000")
    # the restored port is held: a new session from another client gets the next one
    leaves(step(fresh, seg("198.51.100.11:40000", S, "S"), now=101.0), "tcp 203.0.113.1:40001 -> 192.0.2.80:80")
    # and an old snapshot record without "nat" still loads
    del snapshot["sessions"][0]["nat"]
    assert make_engine(tmp_path).restore(snapshot, 100.5, 0.0) == 1



def test_resets_at_expiry_use_each_sides_addresses_and_no_offload(tmp_path):
    from fw.decision import OffloadSession, SendPacket

    engine = make_engine(tmp_path, POLICY.replace("{name: out, action: accept, src: $inside}",
                                                  "{name: out, action: accept, src: $inside, rst_on_timeout: true}"))
    engine.config.offload = True
    step(engine, seg(C, S, "S", seq=100))
    step(engine, seg(S, f"{PUBLIC}:40000", "SA", seq=300, ack=101))
    established = step(engine, seg(C, S, "A", seq=101, ack=301))
    assert not [e for e in established.effects if isinstance(e, OffloadSession)]
    resets = [parse(e.data) for e in engine.expire(100.0 + 10 ** 6) if isinstance(e, SendPacket)]
    assert sorted(flow_text(p) for p in resets) == [
        "tcp 192.0.2.80:80 -> 198.51.100.10:40000", "tcp 203.0.113.1:40000 -> 192.0.2.80:80"]
    assert {p.seq for p in resets} == {101, 301}


def test_an_operators_kill_resets_both_ends_in_their_own_addresses(tmp_path):
    from fw.decision import SendPacket, SessionClosed

    engine = make_engine(tmp_path, POLICY.replace("{name: out, action: accept, src: $inside}",
                                                  "{name: out, action: accept, src: $inside, rst_on_timeout: true}"))
    step(engine, seg(C, S, "S", seq=100))
    step(engine, seg(S, f"{PUBLIC}:40000", "SA", seq=300, ack=101))
    step(engine, seg(C, S, "A", seq=101, ack=301))
    session = next(iter(engine.table.values()))
    effects = engine.kill(session, 101.0)
    resets = [parse(e.data) for e in effects if isinstance(e, SendPacket)]
    assert sorted(flow_text(p) for p in resets) == [
        "tcp 192.0.2.80:80 -> 198.51.100.10:40000", "tcp 203.0.113.1:40000 -> 192.0.2.80:80"]
    assert {p.seq for p in resets} == {101, 301}
    assert isinstance(effects[-1], SessionClosed) and engine.counters["kill_resets"] == 1
    step(engine, seg(C, S, "S", seq=500))  # the same connection again: a peer's removal sends none
    step(engine, seg(S, f"{PUBLIC}:40000", "SA", seq=700, ack=501))
    step(engine, seg(C, S, "A", seq=501, ack=701))
    session = next(iter(engine.table.values()))
    assert session.state.name == "ESTABLISHED"
    assert not [e for e in engine.kill(session, 102.0, "peer-removed") if isinstance(e, SendPacket)]


def test_icmpv6_error_through_snat(engine):
    client, server = "[2001:db8:1::10]:40000", "[2001:db8:2::80]:443"
    step(engine, seg(client, server, "S", seq=1))
    left = seg("[2001:db8:ff::1]:40000", server, "S", seq=1)
    too_big = step(engine, icmp_error_pkt("2001:db8:2::fe", "2001:db8:ff::1", 2, 0, left, rest=1280))
    assert too_big.reason == "related:icmp"
    packet = leaves(too_big, "icmpv6 2001:db8:2::fe -> 2001:db8:1::10 type 2 code 0")
    assert packet[IPerror6].src == "2001:db8:1::10" and packet[TCPerror].sport == 40000


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_translation_of_packets_with_ip_options_or_extension_headers(family, proto):
    """The established path's Translation.apply beyond bare headers: equal to scapy's packet."""
    from scapy.layers.inet import IPOption_RR
    from scapy.layers.inet6 import IPv6ExtHdrDestOpt

    from fw.nat.rewrite import Translation

    client, server, nat = (("198.51.100.10", "192.0.2.80", "203.0.113.1") if family == 4
                           else ("2001:db8:1::10", "2001:db8:2::80", "2001:db8:ff::1"))
    layer = TCP if proto == "tcp" else UDP

    def build(src, sport):
        head = IP(src=src, dst=server, options=[IPOption_RR()]) if family == 4 else \
            IPv6(src=src, dst=server) / IPv6ExtHdrDestOpt()
        return bytes(head / layer(sport=sport, dport=80) / b"payload")

    before, after = build(client, 40000), build(nat, 41000)
    packet = parse(before)
    assert packet.l4_offset > (20 if family == 4 else 40)
    raw = [ipaddress.ip_address(a).packed for a in (client, server, nat)]
    translation = Translation(family, 6 if proto == "tcp" else 17, (raw[0], raw[1], 40000, 80),
                              (raw[2], raw[1], 41000, 80))
    assert translation.apply(before, packet) == after


def test_ipv6_port_forward_hairpin_echo_ids_errors_and_exhaustion(tmp_path):
    """Each kind in IPv6 as in IPv4: a port forward both ways, hairpin (both at once), an echo's id
    translated there and back, an ICMPv6 error about the forwarded packet from the inside, and a
    pool of one port exhausted."""
    engine = make_engine(tmp_path, """
        version: 1
        rules: [{name: all, action: accept}]
        nat:
          - {name: web6, type: dnat, proto: tcp, dst: "2001:db8:ff::1", dport: 8080, to: "[2001:db8:1::20]:80"}
          - {name: hair6, type: snat, src: "2001:db8:1::/64", dst: "2001:db8:1::20", to: "2001:db8:ff::1"}
          - {name: out6, type: snat, src: "2001:db8:1::/64", to: "2001:db8:ff::1", ports: "7000-7000"}
    """, events=True)
    outside, public, inside = "[2001:db8:2::7]:5555", "[2001:db8:ff::1]:8080", "[2001:db8:1::20]:80"
    syn = step(engine, seg(outside, public, "S", seq=10))
    assert syn.session.nat.names == "nat:web6"
    leaves(syn, "tcp [2001:db8:2::7]:5555 -> [2001:db8:1::20]:80")
    synack = step(engine, seg(inside, outside, "SA", seq=70, ack=11))
    leaves(synack, "tcp [2001:db8:ff::1]:8080 -> [2001:db8:2::7]:5555")
    # the inside router's error about the forwarded SYN goes out from the public address
    forwarded = seg(outside, inside, "S", seq=10)
    error = step(engine, icmp_error_pkt("2001:db8:1::fe", "2001:db8:2::7", 1, 4, forwarded))
    packet = leaves(error, "icmpv6 2001:db8:ff::1 -> 2001:db8:2::7 type 1 code 4")
    assert (packet[IPerror6].dst, packet[TCPerror].dport) == ("2001:db8:ff::1", 8080)
    # hairpin: an inside client through the public address
    hair = step(engine, seg("[2001:db8:1::30]:41000", public, "S", seq=1))
    assert hair.session.nat.names == "nat:web6,nat:hair6"
    leaves(hair, "tcp [2001:db8:ff::1]:41000 -> [2001:db8:1::20]:80")
    leaves(step(engine, seg(inside, "[2001:db8:ff::1]:41000", "SA", seq=9, ack=2)),
           "tcp [2001:db8:ff::1]:8080 -> [2001:db8:1::30]:41000")
    # an echo takes the one port of out6 as its id, and its reply gets the client's id back
    request = step(engine, icmp_echo_pkt("[2001:db8:1::10]:0", "[2001:db8:2::80]:0", ident=4000, seq=1))
    assert leaves(request, "icmpv6 2001:db8:ff::1 -> 2001:db8:2::80 type 128 code 0")[ICMPv6EchoRequest].id == 7000
    reply = step(engine, icmp_echo_pkt("[2001:db8:2::80]:0", "[2001:db8:ff::1]:0", ident=7000, seq=1, reply=True))
    assert reply.state == "REPLIED"
    assert leaves(reply, "icmpv6 2001:db8:2::80 -> 2001:db8:1::10 type 129 code 0")[ICMPv6EchoReply].id == 4000
    # the pool's one port is the echo's: a UDP flow takes its own (per protocol); a second one has none
    leaves(step(engine, udp_pkt("[2001:db8:1::10]:6000", "[2001:db8:2::80]:53")),
           "udp [2001:db8:ff::1]:7000 -> [2001:db8:2::80]:53")
    refused = step(engine, udp_pkt("[2001:db8:1::11]:6001", "[2001:db8:2::81]:53"))
    assert (refused.verdict, refused.reason) == ("drop", "nat:exhausted")
    assert engine.counters["nat_exhausted"] == 1
    (event,) = [e.event for e in refused.effects if type(e) is LogEvent]
    assert (event["src_ip"], event["fw"]["reason"]) == ("2001:db8:1::11", "nat:exhausted")


def test_a_reload_keeps_translations_and_pools_and_a_changed_entry_takes_new_sessions(engine, tmp_path):
    step(engine, seg(C, S, "S", seq=100))
    leaves(step(engine, seg("198.51.100.12:999", S, "S", seq=1)), "tcp 203.0.113.1:1024 -> 192.0.2.80:80")
    engine.swap_policy(make_engine(tmp_path, POLICY).policy)  # the same policy, loaded again
    leaves(step(engine, seg(S, f"{PUBLIC}:40000", "SA", seq=300, ack=101)), "tcp 192.0.2.80:80 -> 198.51.100.10:40000")
    # the pool was kept: 1024 is still handed out, to another server too
    leaves(step(engine, seg("198.51.100.13:998", "192.0.2.81:80", "S", seq=1)), "tcp 203.0.113.1:1025 -> 192.0.2.81:80")
    # the entry changed (another address and range): open sessions keep theirs, new ones take the new
    changed = POLICY.replace("to: 203.0.113.1}", 'to: 203.0.113.9, ports: "30000-30009"}')
    engine.swap_policy(make_engine(tmp_path, changed).policy)
    leaves(step(engine, seg(C, S, "A", seq=101, ack=301)), "tcp 203.0.113.1:40000 -> 192.0.2.80:80")
    leaves(step(engine, seg(S, f"{PUBLIC}:40000", "A", seq=301, ack=101)), "tcp 192.0.2.80:80 -> 198.51.100.10:40000")
    leaves(step(engine, seg("198.51.100.14:40000", S, "S", seq=1)), "tcp 203.0.113.9:30000 -> 192.0.2.80:80")


def test_a_killed_session_gives_back_both_keys_and_its_port(tmp_path):
    engine = make_engine(tmp_path, """
        version: 1
        rules: [{name: out, action: accept}]
        nat: [{name: tiny, type: snat, to: 203.0.113.1, ports: "5000-5000"}]
    """)
    syn = step(engine, seg("198.51.100.10:6000", S, "S", seq=1))
    assert len(engine.table.sessions) == 2
    assert step(engine, seg("198.51.100.11:6001", "192.0.2.81:80", "S", seq=1)).reason == "nat:exhausted"
    engine.kill(syn.session, 101.0)
    assert len(engine.table) == 0 and not engine.table.sessions
    assert step(engine, seg(S, f"{PUBLIC}:5000", "SA", seq=1, ack=2)).reason == "invalid:no-session"
    again = step(engine, seg("198.51.100.11:6001", "192.0.2.81:80", "S", seq=1))
    leaves(again, "tcp 203.0.113.1:5000 -> 192.0.2.81:80")


def test_a_port_forward_whose_reply_tuple_is_in_use_is_refused_as_exhausted(tmp_path):
    """A dnat takes no pool port, but its reply tuple must be free: the same client port already
    talks to the inside server directly (an untranslated session with that key)."""
    engine = make_engine(tmp_path, POLICY.replace(
        "rules:\n", "rules:\n  - {name: direct, action: accept, proto: tcp, dst: 198.51.100.20, dport: 80}\n"))
    client = "192.0.2.7:5555"
    direct = step(engine, seg(client, f"{INSIDE}:80", "S", seq=1))  # no entry translates it
    assert direct.verdict == "accept" and out(direct) is None
    refused = step(engine, seg(client, f"{PUBLIC}:8080", "S", seq=1))
    assert (refused.verdict, refused.reason, refused.session) == ("drop", "nat:exhausted", None)
    assert engine.counters["nat_exhausted"] == 1 and len(engine.table) == 1
    other = step(engine, seg("192.0.2.7:5556", f"{PUBLIC}:8080", "S", seq=1))
    leaves(other, "tcp 192.0.2.7:5556 -> 198.51.100.20:80")
