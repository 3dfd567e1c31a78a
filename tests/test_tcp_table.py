"""Every cell of the TCP transition table, driven through tcp_update from a track in that state.

The expectations below are written out from nf_conntrack_proto_tcp.c's tcp_conntracks (v6.x) and the
switch that follows it in tcp_packet, not read from fw.conntrack.tcp, so a wrong cell fails.
Each state is reached by real packets (client ISN 1000, server ISN 5000); each probe is in window.
"""

from __future__ import annotations

import copy

import pytest

from fw.conntrack import tcp
from fw.conntrack.tcp import TcpState
from fw.packet import parse
from tests.packets import seg

C, S = "198.51.100.10:40000", "203.0.113.10:80"
STATES = ("NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK",
          "TIME_WAIT", "CLOSE", "SYN_SENT2")  # fmt: skip
IG, IV, FLAGS, REOPEN = "ignored", "invalid:state", "invalid:flags", "reopen"
SS, SR, ES, FW, CW, LA, TW, CL, S2 = ("SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT",
                                      "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2")  # fmt: skip

# fmt: off
EXPECTED = {
    "original": {
        #          NONE SYN_SENT SYN_RECV EST  FIN_W CLOSE_W LAST_A TIME_W  CLOSE   SYN_SENT2
        "syn":    (SS,  SS,      IG,      IG,  IG,   IG,     IG,    REOPEN, REOPEN, S2),
        "synack": (IV,  IV,      SR,      IV,  IV,   IV,     IV,    IV,     IV,     SR),
        "fin":    (IV,  IV,      FW,      FW,  LA,   LA,     LA,    TW,     CL,     IV),
        "ack":    (ES,  IV,      ES,      ES,  CW,   CW,     TW,    TW,     CL,     IV),
        "rst":    (IV,  CL,      CL,      CL,  CL,   CL,     CL,    CL,     CL,     CL),
        "none":   (FLAGS,) * 10,
    },
    "reply": {
        "syn":    (IV,  S2,      IV,      IV,  IV,   IV,     IV,    REOPEN, IV,     S2),
        "synack": (IV,  SR,      IG,      IG,  IG,   IG,     IG,    IG,     IG,     SR),
        "fin":    (IV,  IV,      FW,      FW,  LA,   LA,     LA,    TW,     CL,     IV),
        "ack":    (IV,  IG,      SR,      ES,  CW,   CW,     TW,    TW,     CL,     IG),
        "rst":    (IV,  CL,      CL,      CL,  CL,   CL,     CL,    CL,     CL,     CL),
        "none":   (FLAGS,) * 10,
    },
}
# fmt: on
CLASS_FLAGS = {"syn": "S", "synack": "SA", "fin": "FA", "ack": "A", "rst": "RA", "none": ""}

# Packets that bring a fresh connection to each state: (from client?, flags, seq, ack).
OPEN = [(True, "S", 1000, 0)]
SIMULTANEOUS = OPEN + [(False, "S", 5000, 0)]
RECV = OPEN + [(False, "SA", 5000, 1001)]
ESTAB = RECV + [(True, "A", 1001, 5001)]
FIN_WAIT = ESTAB + [(True, "FA", 1001, 5001)]
CLOSE_WAIT = FIN_WAIT + [(False, "A", 5001, 1002)]
LAST_ACK = CLOSE_WAIT + [(False, "FA", 5001, 1002)]
TIME_WAIT = LAST_ACK + [(True, "A", 1002, 5002)]
CLOSED = ESTAB + [(True, "R", 1001, 0)]
PATHS = {"NONE": None, "SYN_SENT": OPEN, "SYN_RECV": RECV, "ESTABLISHED": ESTAB, "FIN_WAIT": FIN_WAIT,
         "CLOSE_WAIT": CLOSE_WAIT, "LAST_ACK": LAST_ACK, "TIME_WAIT": TIME_WAIT, "CLOSE": CLOSED,
         "SYN_SENT2": SIMULTANEOUS}  # fmt: skip


def packet(from_client: bool, flags: str, seq: int, ack: int):
    src, dst = (C, S) if from_client else (S, C)
    return parse(seg(src, dst, flags, seq=seq, ack=ack))


def track_in(state: str) -> tcp.TcpTrack:
    path = PATHS[state]
    if path is None:
        return tcp.TcpTrack()
    first, *rest = path
    track = tcp.tcp_new(packet(*first))
    for step in rest:
        assert tcp.tcp_update(track, packet(*step), step[0]) is None, step
    assert track.state.name == state
    return track


def probe(track: tcp.TcpTrack, original: bool, flag_class: str):
    """An in-window packet of that class: seq where the sender is, ack where the receiver is."""
    sender, receiver = track.seen[0 if original else 1], track.seen[1 if original else 0]
    isn = 1000 if original else 5000
    if flag_class in ("syn", "synack"):  # a (retransmitted) SYN carries the ISN
        seq = (sender.td_end - 1) if sender.td_maxwin else isn
    else:
        seq = sender.td_end if sender.td_maxwin else isn
    ack = receiver.td_end if flag_class != "syn" else 0
    return packet(original, CLASS_FLAGS[flag_class], seq, ack)


CELLS = [
    (direction, flag_class, index, state)
    for direction in ("original", "reply")
    for flag_class in CLASS_FLAGS
    for index, state in enumerate(STATES)
]


@pytest.mark.parametrize(("direction", "flag_class", "index", "state"), CELLS)
def test_cell(direction, flag_class, index, state):
    expected = EXPECTED[direction][flag_class][index]
    track = track_in(state)
    before = tcp.to_dict(track)
    result = tcp.tcp_update(track, probe(track, direction == "original", flag_class), direction == "original")
    if expected == IG:
        assert result is None
        assert track.state.name == state
        after = tcp.to_dict(track)
        assert (after["original"], after["reply"]) == (before["original"], before["reply"])
    elif expected in (IV, FLAGS):
        assert result == expected
        assert tcp.to_dict(track) == before  # an invalid packet changes nothing
    elif expected == REOPEN:
        assert result is tcp.REOPEN
        assert track.state.name == state
    else:
        assert result is None
        assert track.state is TcpState[expected]


def test_the_table_has_one_cell_per_direction_class_and_state():
    assert len(tcp.TCP_TRANSITIONS) == 2
    assert all(len(rows) == 6 and all(len(row) == 10 for row in rows) for rows in tcp.TCP_TRANSITIONS)
    assert len(CELLS) == 120


# tcp_valid_flags, written out: FIN=1 SYN=2 RST=4 PSH=8 ACK=16 URG=32 ECE=64 CWR=128.
KERNEL_VALID = {2, 2 | 32, 2 | 16, 4, 4 | 16, 1 | 16, 1 | 16 | 32, 16, 16 | 32}


@pytest.mark.parametrize("flags", range(256))
def test_valid_flags_and_class_of_every_flag_byte(flags):
    core = flags & ~(8 | 64 | 128)  # PSH, ECE and CWR never matter
    track = track_in("ESTABLISHED")
    pkt = packet(True, "A", 1001, 5001)
    pkt.flags = flags
    result = tcp.tcp_update(track, pkt, True)
    if core not in KERNEL_VALID:
        assert result == "invalid:flags"
        assert tcp.tcp_new(pkt) == "invalid:flags"
    else:
        assert result != "invalid:flags"
    expected_class = ("rst" if flags & 4 else ("synack" if flags & 16 else "syn") if flags & 2
                      else "fin" if flags & 1 else "ack" if flags & 16 else "none")  # fmt: skip
    assert tcp.FLAG_CLASS_NAMES[tcp.flag_class(flags)] == expected_class


def test_state_names_and_timeout_keys():
    assert [tcp.STATE_NAMES[s] for s in TcpState] == list(STATES)
    assert [tcp.TIMEOUT_KEYS[TcpState[name]] for name in STATES[1:]] == [
        "tcp_syn_sent", "tcp_syn_recv", "tcp_established", "tcp_fin_wait", "tcp_close_wait",
        "tcp_last_ack", "tcp_time_wait", "tcp_close", "tcp_syn_sent",
    ]  # fmt: skip
    assert tcp.DEFAULT_TIMEOUTS == {
        "tcp_syn_sent": 120, "tcp_syn_recv": 60, "tcp_established": 7440, "tcp_fin_wait": 120,
        "tcp_close_wait": 60, "tcp_last_ack": 30, "tcp_time_wait": 120, "tcp_close": 10,
        "tcp_unacknowledged": 300, "udp": 30, "udp_stream": 120, "icmp": 30, "ftp_expectation": 300,
    }  # fmt: skip


def test_invalid_cells_leave_a_deep_copy_equal():
    track = track_in("SYN_SENT")
    snapshot = copy.deepcopy(tcp.to_dict(track))
    assert tcp.tcp_update(track, packet(True, "A", 1001, 5001), True) == "invalid:state"
    assert tcp.to_dict(track) == snapshot


def syn_the_long_way(pkt) -> tcp.TcpTrack:
    """A new track for a SYN as tcp_new made it before its SYN case was written out: the
    originator's values, then tcp_update."""
    track = tcp.TcpTrack()
    track.o_end = track.o_maxend = tcp._seq_end(pkt)
    track.o_maxwin = pkt.window or 1
    track.o_flags, track.o_scale = tcp._offered(pkt)
    assert tcp.tcp_update(track, pkt, True) is None
    return track


@pytest.mark.parametrize("flags", ["S", "SU", "SP", "SEC"])
@pytest.mark.parametrize("seq", [0, 1000, 0x7FFFFFFF, 0xFFFFFFFF])
@pytest.mark.parametrize("win", [0, 1, 512, 65535])
@pytest.mark.parametrize("options", [{}, {"mss": 1460, "wscale": 7, "sack_perm": True, "ts": (1, 0)},
                                     {"wscale": 20}, {"sack_perm": True}])
@pytest.mark.parametrize("payload", [b"", b"x" * 100])
def test_tcp_new_on_a_syn_is_tcp_update_on_a_new_track(flags, seq, win, options, payload):
    pkt = parse(seg(C, S, flags, seq=seq, win=win, payload=payload, **options))
    track, expected = tcp.tcp_new(pkt), syn_the_long_way(pkt)
    assert track.state is expected.state is TcpState.SYN_SENT
    assert track.data == expected.data
