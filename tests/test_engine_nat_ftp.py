"""FTP and TFTP through NAT in the engine: announcements rewritten (nf_nat_ftp's format), seq/ack/SACK
shifted both ways, data sessions translated to match, retransmissions, split commands, bad lines."""

from __future__ import annotations

import pytest
from scapy.layers.inet import TCP

from fw.decision import LogEvent
from tests.packets import seg, udp_pkt
from tests.test_engine_nat import leaves, make_engine, out
from tests.test_engine_nat import step as run

C = "198.51.100.10:40000"     # an inside client (snat to 203.0.113.1)
S = "192.0.2.21:21"           # an outside server
T = "203.0.113.1:40000"       # the client as the server sees it
OUTSIDE = "192.0.2.7:5555"    # an outside client of the forwarded server
PUBLIC = "203.0.113.1:21"     # ... which it reaches here
INSIDE = "198.51.100.20:21"   # the forwarded server

POLICY = """
version: 1
defaults: {action: drop}
rules:
  - {name: ftp-out, action: accept, proto: tcp, src: 198.51.100.0/24, dport: 21, alg: ftp}
  - {name: ftp-in, action: accept, proto: tcp, dst: 203.0.113.1, dport: 21, alg: ftp}
  - {name: tftp-out, action: accept, proto: udp, src: 198.51.100.0/24, dport: 69, alg: tftp}
nat:
  - {name: ftp-in, type: dnat, proto: tcp, dst: 203.0.113.1, dport: 21, to: "198.51.100.20"}
  - {name: outbound, type: snat, src: 198.51.100.0/24, dst: {not: [198.51.100.0/24]}, to: 203.0.113.1}
"""

PORT = b"PORT 198,51,100,10,156,64\r\n"          # 40000 = 156 * 256 + 64
PORT_OUT = b"PORT 203,0,113,1,156,64\r\n"        # two bytes shorter
DELTA = len(PORT_OUT) - len(PORT)


@pytest.fixture
def engine(tmp_path):
    return make_engine(tmp_path, POLICY, events=True)


def open_control(engine, client=C, server=S):
    """The control session's handshake; the reply comes from the server's side as it sees the client."""
    syn = run(engine, seg(client, server, "S", seq=1000, sack_perm=True))
    assert syn.reason.startswith("rule:ftp") and out(syn) is not None
    synack = seg(server_side(syn), client_seen(syn), "SA", seq=5000, ack=1001, sack_perm=True)
    assert run(engine, synack).state == "SYN_RECV"
    assert run(engine, seg(client, server, "A", seq=1001, ack=5001)).state == "ESTABLISHED"
    return syn.session


def server_side(syn) -> str:
    s, _t, sp, _tp = syn.session.nat.reply
    return f"{'.'.join(map(str, s))}:{sp}"


def client_seen(syn) -> str:
    _s, t, _sp, tp = syn.session.nat.reply
    return f"{'.'.join(map(str, t))}:{tp}"


def tcp(decision):
    return leaves(decision, decision_flow(decision))[TCP]


def decision_flow(decision):
    from fw.packet import flow_text, parse

    return flow_text(parse(out(decision)))


def test_active_ftp_through_snat(engine):
    session = open_control(engine)
    port = run(engine, seg(C, S, "PA", seq=1001, ack=5001, payload=PORT))
    assert port.reason == "established"
    sent = leaves(port, "tcp 203.0.113.1:40000 -> 192.0.2.21:21")[TCP]
    assert (sent.load, sent.seq) == (PORT_OUT, 1001)
    # the server acknowledges the shorter line; the client sees its own numbers
    reply = run(engine, seg(S, T, "PA", seq=5001, ack=1001 + len(PORT_OUT), payload=b"200 PORT ok\r\n"))
    assert reply.verdict == "accept"
    assert tcp(reply).ack == 1001 + len(PORT)
    # the next client segment moves by the change in length
    later = run(engine, seg(C, S, "PA", seq=1001 + len(PORT), ack=5014, payload=b"RETR f\r\n"))
    assert tcp(later).seq == 1001 + len(PORT_OUT)
    # a retransmission of the PORT leaves exactly as the first time
    again = run(engine, seg(C, S, "PA", seq=1001, ack=5001, payload=PORT))
    assert out(again) == out(port)
    # the server connects to the announced (translated) endpoint: related, and sent to the client
    data = run(engine, seg("192.0.2.21:20", T, "S", seq=77))
    assert (data.verdict, data.reason) == ("accept", "related:ftp")
    leaves(data, "tcp 192.0.2.21:20 -> 198.51.100.10:40000")
    assert data.session.parent is session and data.session.nat.names == "nat:outbound"
    synack = run(engine, seg(C, "192.0.2.21:20", "SA", seq=9, ack=78))
    leaves(synack, "tcp 203.0.113.1:40000 -> 192.0.2.21:20")


def test_sack_blocks_shifted_back(engine):
    open_control(engine)
    run(engine, seg(C, S, "PA", seq=1001, ack=5001, payload=PORT))
    after = 1001 + len(PORT)
    run(engine, seg(C, S, "PA", seq=after + 10, ack=5001, payload=b"NOOP\r\n"))  # a hole before it
    start, end = after + 10 + DELTA, after + 16 + DELTA                            # as the server saw it
    sack = run(engine, seg(S, T, "A", seq=5001, ack=after + DELTA, sack=((start, end),)))
    assert sack.verdict == "accept", sack
    sent = tcp(sack)
    assert sent.ack == after
    (blocks,) = [value for kind, value in sent.options if kind == "SAck"]
    assert blocks == (after + 10, after + 16)


def test_passive_ftp_to_a_forwarded_server(engine):
    syn = run(engine, seg(OUTSIDE, PUBLIC, "S", seq=1000))
    assert (syn.reason, syn.session.nat.names) == ("rule:ftp-in", "nat:ftp-in")
    leaves(syn, "tcp 192.0.2.7:5555 -> 198.51.100.20:21")
    run(engine, seg(INSIDE, OUTSIDE, "SA", seq=5000, ack=1001))
    run(engine, seg(OUTSIDE, PUBLIC, "A", seq=1001, ack=5001))
    run(engine, seg(OUTSIDE, PUBLIC, "PA", seq=1001, ack=5001, payload=b"PASV\r\n"))
    line = b"227 Entering Passive Mode (198,51,100,20,200,10).\r\n"
    reply = run(engine, seg(INSIDE, OUTSIDE, "PA", seq=5001, ack=1007, payload=line))
    assert reply.verdict == "accept"
    assert engine.counters["alg_refused"] == 0           # no bounce: the server names its own address
    assert tcp(reply).load == b"227 Entering Passive Mode (203,0,113,1,200,10).\r\n"
    data = run(engine, seg("192.0.2.7:6000", "203.0.113.1:51210", "S", seq=1))
    assert data.reason == "related:ftp"
    leaves(data, "tcp 192.0.2.7:6000 -> 198.51.100.20:51210")
    answer = run(engine, seg("198.51.100.20:51210", "192.0.2.7:6000", "SA", seq=8, ack=2))
    leaves(answer, "tcp 203.0.113.1:51210 -> 192.0.2.7:6000")
    # the client's next command is acknowledged in the server's numbers
    shorter = len(line) - len(tcp(reply).load)
    ack = run(engine, seg(OUTSIDE, PUBLIC, "PA", seq=1007, ack=5001 + len(line) - shorter, payload=b"LIST\r\n"))
    assert tcp(ack).ack == 5001 + len(line)


def test_split_port_command_first_part_dropped(engine):
    open_control(engine)
    first = run(engine, seg(C, S, "PA", seq=1001, ack=5001, payload=PORT[:12]))
    assert (first.verdict, first.reason) == ("drop", "nat:alg-rewrite")
    assert engine.counters["nat_alg_split"] == 1
    whole = run(engine, seg(C, S, "PA", seq=1001, ack=5001, payload=PORT))
    assert tcp(whole).load == PORT_OUT


def test_a_split_line_after_complete_ones_is_cut_off_then_sent_whole(engine):
    """NOOP and the first part of a PORT in one segment: the NOOP goes (the segment cut, counted),
    the server acknowledges it, and the client sends the PORT again, whole, rewritten."""
    open_control(engine)
    first = run(engine, seg(C, S, "PA", seq=1001, ack=5001, payload=b"NOOP\r\n" + PORT[:12]))
    assert first.verdict == "accept" and (tcp(first).load, tcp(first).seq) == (b"NOOP\r\n", 1001)
    assert engine.counters["nat_alg_split"] == 1
    assert tcp(run(engine, seg(S, T, "A", seq=5001, ack=1007))).ack == 1007
    whole = run(engine, seg(C, S, "PA", seq=1007, ack=5001, payload=PORT))
    assert (tcp(whole).load, tcp(whole).seq) == (PORT_OUT, 1007)
    assert tcp(run(engine, seg(S, T, "A", seq=5001, ack=1007 + len(PORT_OUT)))).ack == 1007 + len(PORT)


def test_a_split_227_from_a_forwarded_server_is_dropped_then_rewritten_whole(engine):
    run(engine, seg(OUTSIDE, PUBLIC, "S", seq=1000))
    run(engine, seg(INSIDE, OUTSIDE, "SA", seq=5000, ack=1001))
    run(engine, seg(OUTSIDE, PUBLIC, "A", seq=1001, ack=5001))
    line = b"227 Entering Passive Mode (198,51,100,20,200,10).\r\n"
    first = run(engine, seg(INSIDE, OUTSIDE, "PA", seq=5001, ack=1001, payload=line[:30]))
    assert (first.verdict, first.reason, engine.counters["nat_alg_split"]) == ("drop", "nat:alg-rewrite", 1)
    whole = run(engine, seg(INSIDE, OUTSIDE, "PA", seq=5001, ack=1001, payload=line))
    assert tcp(whole).load == b"227 Entering Passive Mode (203,0,113,1,200,10).\r\n"


def ftp_events(decision) -> list[tuple[str, str, str]]:
    return [(e.event["ftp"]["refused"], e.event["ftp"]["command"], e.event["ftp"]["detail"])
            for e in decision.effects if type(e) is LogEvent and e.event["event_type"] == "ftp"]


def test_a_malformed_port_leaves_as_it_is_and_the_control_session_goes_on(engine):
    """Nothing to rewrite in it: the line leaves unchanged (headers translated), opens nothing, is
    counted and logged (NAT's refusal and the ALG's, as without NAT); the server's 501 comes back,
    and the client's next PORT is rewritten as usual."""
    open_control(engine)
    line = b"PORT 1,2,3\r\n"
    bad = run(engine, seg(C, S, "PA", seq=1001, ack=5001, payload=line))
    assert (bad.verdict, bad.reason) == ("accept", "established")
    sent = leaves(bad, "tcp 203.0.113.1:40000 -> 192.0.2.21:21")[TCP]
    assert (sent.load, sent.seq) == (line, 1001)
    assert not engine.expectations
    assert (engine.counters["nat_alg_rewrite"], engine.counters["alg_refused:malformed"]) == (1, 1)
    assert ftp_events(bad) == [("nat:alg-rewrite", "PORT", "not h1,h2,h3,h4,p1,p2; left as it is"),
                               ("malformed", "PORT", "not h1,h2,h3,h4,p1,p2: PORT 1,2,3")]
    assert [e.event["src_ip"] for e in bad.effects if type(e) is LogEvent] == ["198.51.100.10"] * 2
    answer = run(engine, seg(S, T, "PA", seq=5001, ack=1001 + len(line), payload=b"501 Illegal PORT command.\r\n"))
    assert answer.verdict == "accept" and tcp(answer).ack == 1001 + len(line)   # nothing shifted
    good = run(engine, seg(C, S, "PA", seq=1001 + len(line), ack=5028, payload=PORT))
    assert (tcp(good).load, tcp(good).seq) == (PORT_OUT, 1001 + len(line))
    assert engine.counters["nat_alg_rewrite"] == 1 and len(engine.expectations) == 1


def test_a_malformed_line_after_a_rewrite_is_shifted_and_a_good_one_behind_it_rewritten(engine):
    """Earlier rewrites' shift applies to the malformed line's segment too; in a segment of several
    lines the malformed one stays as it is and the well-formed PORT behind it is rewritten."""
    open_control(engine)
    run(engine, seg(C, S, "PA", seq=1001, ack=5001, payload=PORT))
    after = 1001 + len(PORT)
    payload = b"EPRT |3|1.2.3.4|5|\r\n" + PORT
    both = run(engine, seg(C, S, "PA", seq=after, ack=5001, payload=payload))
    assert both.verdict == "accept"
    assert (tcp(both).load, tcp(both).seq) == (b"EPRT |3|1.2.3.4|5|\r\n" + PORT_OUT, after + DELTA)
    assert engine.counters["nat_alg_rewrite"] == 1
    assert [refused for refused, *_ in ftp_events(both)] == ["nat:alg-rewrite", "malformed"]


def test_a_malformed_227_from_a_forwarded_server_leaves_as_it_is(engine):
    passive_to_the_forwarded_server(engine, b"PASV\r\n")
    line = b"227 Entering Passive Mode (198,51,100,20,300,10).\r\n"
    reply = run(engine, seg(INSIDE, OUTSIDE, "PA", seq=5001, ack=1007, payload=line))
    assert reply.verdict == "accept" and tcp(reply).load == line
    leaves(reply, "tcp 203.0.113.1:21 -> 192.0.2.7:5555")
    assert not engine.expectations and engine.counters["nat_alg_rewrite"] == 1
    assert [(refused, command) for refused, command, _ in ftp_events(reply)] == [
        ("nat:alg-rewrite", "PASV"), ("malformed", "PASV")]


def test_no_free_data_port_drops_the_announcement(engine):
    """A rewrite that cannot be done (another control session's expectations hold every port from
    the server to 203.0.113.1): the segment is dropped as nat:alg-rewrite, counted and logged,
    nothing recorded; the client's next line goes on."""
    from fw.alg import ALGS, Expectation

    session = open_control(engine)
    other = open_control(engine, client="198.51.100.11:40000")
    server, translated = bytes([192, 0, 2, 21]), bytes([203, 0, 113, 1])
    for port in range(1024, 65536):
        engine.expectations.expect(other, Expectation(4, server, translated, port, command="PORT"), ALGS["ftp"], 0.0)
    bad = run(engine, seg(C, S, "PA", seq=1001, ack=5001, payload=PORT))
    assert (bad.verdict, bad.reason) == ("drop", "nat:alg-rewrite")
    assert engine.counters["nat_alg_rewrite"] == 1 and session.nat.ports is None and not session.expectations
    assert ftp_events(bad) == [("nat:alg-rewrite", "PORT", "no translated port free for the data connection")]
    assert tcp(run(engine, seg(C, S, "PA", seq=1001, ack=5001, payload=b"NOOP\r\n"))).load == b"NOOP\r\n"


def test_port_of_another_address_is_not_rewritten_and_refused(engine):
    open_control(engine)
    bounce = b"PORT 192,0,2,99,156,64\r\n"
    decision = run(engine, seg(C, S, "PA", seq=1001, ack=5001, payload=bounce))
    assert decision.verdict == "accept" and tcp(decision).load == bounce
    assert engine.counters["alg_refused:bounce"] == 1
    assert not engine.expectations


def test_data_port_taken_moves_up(engine):
    open_control(engine)
    open_control(engine, client="198.51.100.11:40000")
    run(engine, seg(C, S, "PA", seq=1001, ack=5001, payload=PORT))
    other = b"PORT 198,51,100,11,156,64\r\n"
    decision = run(engine, seg("198.51.100.11:40000", S, "PA", seq=1001, ack=5001, payload=other))
    # the second control session's client was translated to 203.0.113.1:40001; its data port
    # 40000 is already expected from this server: 40001 is announced
    assert tcp(decision).load == b"PORT 203,0,113,1,156,65\r\n"


def test_tftp_through_snat(engine):
    request = run(engine, udp_pkt("198.51.100.10:3000", "192.0.2.69:69", b"\x00\x01file\x00octet\x00"))
    assert request.reason == "rule:tftp-out"
    leaves(request, "udp 203.0.113.1:3000 -> 192.0.2.69:69")
    data = run(engine, udp_pkt("192.0.2.69:4000", "203.0.113.1:3000", b"\x00\x03\x00\x01data"))
    assert (data.verdict, data.reason) == ("accept", "related:tftp")
    leaves(data, "udp 192.0.2.69:4000 -> 198.51.100.10:3000")
    ack = run(engine, udp_pkt("198.51.100.10:3000", "192.0.2.69:4000", b"\x00\x04\x00\x01"))
    leaves(ack, "udp 203.0.113.1:3000 -> 192.0.2.69:4000")


def test_eprt_through_ipv6_snat(tmp_path):
    engine = make_engine(tmp_path, """
        version: 1
        rules: [{name: ftp6, action: accept, proto: tcp, src: "2001:db8:1::/64", dport: 21, alg: ftp}]
        nat: [{name: out6, type: snat, src: "2001:db8:1::/64", to: "2001:db8:ff::1"}]
    """)
    client, server = "[2001:db8:1::10]:40000", "[2001:db8:2::21]:21"
    syn = run(engine, seg(client, server, "S", seq=1000))
    assert syn.session.nat.names == "nat:out6"
    run(engine, seg(server, "[2001:db8:ff::1]:40000", "SA", seq=5000, ack=1001))
    run(engine, seg(client, server, "A", seq=1001, ack=5001))
    eprt = run(engine, seg(client, server, "PA", seq=1001, ack=5001, payload=b"EPRT |2|2001:db8:1::10|50000|\r\n"))
    assert tcp(eprt).load == b"EPRT |2|2001:0db8:00ff:0000:0000:0000:0000:0001|50000|\r\n"
    data = run(engine, seg("[2001:db8:2::21]:20", "[2001:db8:ff::1]:50000", "S", seq=1))
    assert data.reason == "related:ftp"
    leaves(data, "tcp [2001:db8:2::21]:20 -> [2001:db8:1::10]:50000")


def test_snapshot_keeps_the_shift_and_the_data_port(engine, tmp_path):
    open_control(engine)
    run(engine, seg(C, S, "PA", seq=1001, ack=5001, payload=PORT))
    fresh = make_engine(tmp_path, POLICY, events=True)
    assert fresh.restore(engine.snapshot(0.0), 100.5, 0.0) == 1
    later = run(fresh, seg(C, S, "PA", seq=1001 + len(PORT), ack=5001, payload=b"RETR f\r\n"), now=101.0)
    assert tcp(later).seq == 1001 + len(PORT_OUT)
    data = run(fresh, seg("192.0.2.21:20", T, "S", seq=77), now=101.0)
    assert data.reason == "related:ftp"
    leaves(data, "tcp 192.0.2.21:20 -> 198.51.100.10:40000")


def test_a_retransmission_after_a_restart_announces_the_same_port(engine, tmp_path):
    """The restored session does not remember the rewritten segment, and the restored expectation
    holds the port it announced: the retransmission must still say the same (else a line of
    another length would not match the recorded shift). 40035 is "156,99": the next is "156,100"."""
    open_control(engine)
    line = b"PORT 198,51,100,10,156,99\r\n"  # 40035
    first = tcp(run(engine, seg(C, S, "PA", seq=1001, ack=5001, payload=line)))
    assert first.load == b"PORT 203,0,113,1,156,99\r\n"
    fresh = make_engine(tmp_path, POLICY, events=True)
    assert fresh.restore(engine.snapshot(0.0), 100.5, 0.0) == 1 and len(fresh.expectations) == 1
    again = tcp(run(fresh, seg(C, S, "PA", seq=1001, ack=5001, payload=line), now=101.0))
    assert (again.load, again.seq) == (first.load, first.seq)
    later = run(fresh, seg(C, S, "PA", seq=1001 + len(line), ack=5001, payload=b"RETR f\r\n"), now=101.0)
    assert tcp(later).seq == 1001 + len(first.load)
    data = run(fresh, seg("192.0.2.21:20", "203.0.113.1:40035", "S", seq=77), now=101.0)
    assert data.reason == "related:ftp"
    leaves(data, "tcp 192.0.2.21:20 -> 198.51.100.10:40035")


def test_a_reload_without_nat_keeps_open_sessions_translated(engine, tmp_path):
    open_control(engine)
    engine.swap_policy(make_engine(tmp_path, POLICY.split("nat:")[0]).policy)
    later = run(engine, seg(S, T, "PA", seq=5001, ack=1001, payload=b"220 hi\r\n"))
    leaves(later, "tcp 192.0.2.21:21 -> 198.51.100.10:40000")
    fresh = run(engine, seg("198.51.100.12:40000", S, "S", seq=1))
    assert fresh.verdict == "accept" and out(fresh) is None


def passive_to_the_forwarded_server(engine, command: bytes) -> None:
    """The outside client's control session with the forwarded server, and its PASV or EPSV."""
    run(engine, seg(OUTSIDE, PUBLIC, "S", seq=1000))
    run(engine, seg(INSIDE, OUTSIDE, "SA", seq=5000, ack=1001))
    run(engine, seg(OUTSIDE, PUBLIC, "A", seq=1001, ack=5001))
    run(engine, seg(OUTSIDE, PUBLIC, "PA", seq=1001, ack=5001, payload=command))


def test_extended_passive_through_a_port_forward(engine):
    passive_to_the_forwarded_server(engine, b"EPSV\r\n")
    line = b"229 Entering Extended Passive Mode (|||50001|)\r\n"
    reply = run(engine, seg(INSIDE, OUTSIDE, "PA", seq=5001, ack=1007, payload=line))
    assert tcp(reply).load == line and engine.counters["alg_refused"] == 0
    data = run(engine, seg("192.0.2.7:6001", "203.0.113.1:50001", "S", seq=1))
    assert data.reason == "related:ftp"
    leaves(data, "tcp 192.0.2.7:6001 -> 198.51.100.20:50001")


LONGER_POLICY = """
version: 1
rules:
  - {name: ftp-out, action: accept, proto: tcp, src: 10.0.0.0/24, dport: 21, alg: ftp, rst_on_timeout: true}
nat:
  - {name: outbound, type: snat, src: 10.0.0.0/24, to: 203.0.113.222}
"""


def test_a_longer_line_keeps_the_window_tracking_consistent_and_resets_exact(tmp_path):
    """A rewrite that makes the line longer (+5 bytes): the server acknowledges beyond anything
    the client sent in its own numbers; the tracker must see the ack in the client's numbers
    (track_view) or it would refuse it, and the later segments move both ways. A reset at expiry
    then carries the number each end expects in its own sequence space."""
    from fw.decision import SendPacket
    from fw.packet import parse

    engine = make_engine(tmp_path, LONGER_POLICY, events=True)
    client, server, seen = "10.0.0.1:40000", "192.0.2.21:21", "203.0.113.222:40000"
    run(engine, seg(client, server, "S", seq=1000))
    run(engine, seg(server, seen, "SA", seq=5000, ack=1001))
    assert run(engine, seg(client, server, "A", seq=1001, ack=5001)).state == "ESTABLISHED"
    line, rewritten = b"PORT 10,0,0,1,156,64\r\n", b"PORT 203,0,113,222,156,64\r\n"
    delta = len(rewritten) - len(line)
    assert delta == 5
    port = run(engine, seg(client, server, "PA", seq=1001, ack=5001, payload=line))
    assert tcp(port).load == rewritten
    after = 1001 + len(line)
    # the server acknowledges the longer line and answers; several rounds, both ways
    for n in range(3):
        command = f"NOOP{n}\r\n".encode()
        server_seq = 5001 + 13 * n
        answer = run(engine, seg(server, seen, "PA", seq=server_seq, ack=after + delta, payload=b"200 Done ok\r\n"))
        assert answer.verdict == "accept", answer
        assert tcp(answer).ack == after
        sent = run(engine, seg(client, server, "PA", seq=after, ack=server_seq + 13, payload=command))
        assert sent.verdict == "accept", sent
        assert (tcp(sent).seq, tcp(sent).ack) == (after + delta, server_seq + 13)
        after += len(command)
    last = run(engine, seg(server, seen, "A", seq=5001 + 39, ack=after + delta))
    assert last.verdict == "accept" and tcp(last).ack == after
    # expiry with rst_on_timeout: the server expects the client's next byte in its numbers (+5)
    resets = {parse(e.data).dst: parse(e.data) for e in engine.expire(10 ** 6) if isinstance(e, SendPacket)}
    to_server, to_client = resets[bytes([192, 0, 2, 21])], resets[bytes([10, 0, 0, 1])]
    assert (to_server.src, to_server.sport, to_server.seq) == (bytes([203, 0, 113, 222]), 40000, after + delta)
    assert (to_client.src, to_client.sport, to_client.seq) == (bytes([192, 0, 2, 21]), 21, 5001 + 39)


TFTP_FORWARD = """
version: 1
defaults: {action: drop}
rules:
  - {name: tftp-in, action: accept, proto: udp, dst: [203.0.113.1, "2001:db8:ff::1"], dport: 69, alg: tftp}
nat:
  - {name: tftp-in, type: dnat, proto: udp, dst: 203.0.113.1, dport: 69, to: "198.51.100.20"}
  - {name: tftp6-in, type: dnat, proto: udp, dst: "2001:db8:ff::1", dport: 69, to: "2001:db8:1::20"}
"""


@pytest.mark.parametrize(("client", "public", "inside"), [
    ("192.0.2.7", "203.0.113.1", "198.51.100.20"), ("[2001:db8:2::7]", "[2001:db8:ff::1]", "[2001:db8:1::20]")])
def test_tftp_to_a_forwarded_server(tmp_path, client, public, inside):
    """The forwarded server answers from a new port: related (its expectation in the server side's
    terms), and it leaves from the public address with that port; the client's ack goes back in."""
    engine = make_engine(tmp_path, TFTP_FORWARD)
    request = run(engine, udp_pkt(f"{client}:3000", f"{public}:69", b"\x00\x01file\x00octet\x00"))
    leaves(request, f"udp {client}:3000 -> {inside}:69")
    data = run(engine, udp_pkt(f"{inside}:4000", f"{client}:3000", b"\x00\x03\x00\x01data"))
    assert (data.verdict, data.reason) == ("accept", "related:tftp")
    leaves(data, f"udp {public}:4000 -> {client}:3000")
    ack = run(engine, udp_pkt(f"{client}:3000", f"{public}:4000", b"\x00\x04\x00\x01"))
    assert ack.state == "REPLIED"
    leaves(ack, f"udp {client}:3000 -> {inside}:4000")


def test_a_recheck_after_a_reload_resets_both_ends_in_their_own_numbers(tmp_path):
    """A reload whose rules refuse an open translated FTP control session (reload_recheck): it is
    closed, each end gets a RST with the addresses it knows and the sequence number it expects
    (after the PORT's shift), and its pool port goes back."""
    from fw.decision import SendPacket
    from fw.packet import parse

    engine = make_engine(tmp_path, LONGER_POLICY)
    client, server, seen = "10.0.0.1:40000", "192.0.2.21:21", "203.0.113.222:40000"
    run(engine, seg(client, server, "S", seq=1000))
    run(engine, seg(server, seen, "SA", seq=5000, ack=1001))
    run(engine, seg(client, server, "A", seq=1001, ack=5001))
    line = b"PORT 10,0,0,1,156,64\r\n"
    run(engine, seg(client, server, "PA", seq=1001, ack=5001, payload=line))
    run(engine, seg(server, seen, "A", seq=5001, ack=1001 + len(line) + 5))
    engine.swap_policy(make_engine(tmp_path, LONGER_POLICY.replace("dport: 21,", "dport: 2121,")).policy)
    effects = engine.recheck(200.0)
    resets = {parse(e.data).dst: parse(e.data) for e in effects if isinstance(e, SendPacket)}
    to_server, to_client = resets[bytes([192, 0, 2, 21])], resets[bytes([10, 0, 0, 1])]
    assert (to_server.src, to_server.sport, to_server.seq) == (bytes([203, 0, 113, 222]), 40000, 1001 + len(line) + 5)
    assert (to_client.src, to_client.sport, to_client.seq) == (bytes([192, 0, 2, 21]), 21, 5001)
    assert len(engine.table) == 0 and not engine.table.sessions


def test_client_sack_blocks_about_a_forwarded_servers_shifted_data(engine):
    """The other direction of test_sack_blocks_shifted_back: the forwarded server's 227 changed
    length; the outside client's ack and SACK edges (its numbers) go back in the server's."""
    open_forwarded = [seg(OUTSIDE, PUBLIC, "S", seq=1000, sack_perm=True),
                      seg(INSIDE, OUTSIDE, "SA", seq=5000, ack=1001, sack_perm=True),
                      seg(OUTSIDE, PUBLIC, "A", seq=1001, ack=5001),
                      seg(OUTSIDE, PUBLIC, "PA", seq=1001, ack=5001, payload=b"PASV\r\n")]
    for data in open_forwarded:
        assert run(engine, data).verdict == "accept"
    line = b"227 Entering Passive Mode (198,51,100,20,200,10).\r\n"
    sent = tcp(run(engine, seg(INSIDE, OUTSIDE, "PA", seq=5001, ack=1007, payload=line)))
    delta = len(sent.load) - len(line)
    assert delta == -2
    after = 5001 + len(line)
    run(engine, seg(INSIDE, OUTSIDE, "PA", seq=after + 10, ack=1007, payload=b"150 go\r\n"))  # a hole before it
    start, end = after + 10 + delta, after + 18 + delta                                    # as the client saw it
    sack = run(engine, seg(OUTSIDE, PUBLIC, "A", seq=1007, ack=after + delta, sack=((start, end),)))
    assert sack.verdict == "accept", sack
    back = tcp(sack)
    assert back.ack == after
    (blocks,) = [value for kind, value in back.options if kind == "SAck"]
    assert blocks == (after + 10, after + 18)
