"""The FTP ALG (fw/alg): control-channel segments in, expectations and refusals out.

Tests read like the dialogue: `ftp.client(b"PASV\\r\\n")`, then `ftp.server(b"227 ...")` returns what
the ALG makes of that segment. Sequence numbers follow on by themselves (the client's wrap around
2**32 early on); `seq=` places a segment elsewhere (retransmissions, holes) without moving them.
The corpus tests replay the control channels of real captures and check that every data connection
in them was expected.
"""

from __future__ import annotations

import glob
import ipaddress
import json
import os
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fw.alg import ALGS, Expectation, FtpAlg, Refusal
from fw.alg.stream import MAX_LINE

CLIENT, SERVER = "198.51.100.10", "203.0.113.10"
CLIENT6, SERVER6 = "2001:db8:1::10", "2001:db8:2::10"
THIRD = "192.0.2.66"
CORPUS = "/work/shared/corpus"


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


class Ftp:
    """One control session seen by the ALG; each call is one TCP segment."""

    def __init__(self, family: int = 4, client_seq: int = 2**32 - 20, server_seq: int = 7000):
        self.family = family
        self.client_ip, self.server_ip = (CLIENT, SERVER) if family == 4 else (CLIENT6, SERVER6)
        self.alg = FtpAlg(family, ip(self.client_ip), ip(self.server_ip))
        self.next = {True: client_seq, False: server_seq}

    def client(self, data: bytes, seq: int | None = None) -> list:
        return self.segment(True, data, seq)

    def server(self, data: bytes, seq: int | None = None) -> list:
        return self.segment(False, data, seq)

    def segment(self, from_client: bool, data: bytes, seq: int | None = None) -> list:
        """The next segment of a direction, or (with `seq`) one out of line, which moves nothing."""
        if seq is None:
            seq = self.next[from_client]
            self.next[from_client] = (seq + len(data)) % 2**32
        return self.alg.feed(from_client, seq % 2**32, data)

    def active(self, port: int, command: str = "PORT") -> Expectation:
        """The server may connect to the client's `port`."""
        return Expectation(self.family, ip(self.server_ip), ip(self.client_ip), port, 6, command)

    def passive(self, port: int, command: str = "PASV") -> Expectation:
        """The client may connect to the server's `port`."""
        return Expectation(self.family, ip(self.client_ip), ip(self.server_ip), port, 6, command)


def reasons(results: list) -> list[str]:
    return [r.reason if isinstance(r, Refusal) else "expect" for r in results]


def test_the_engine_finds_the_ftp_alg_by_its_policy_name():
    assert ALGS["ftp"].cls is FtpAlg and FtpAlg.name == ALGS["ftp"].name == "ftp" and FtpAlg.SPEC is ALGS["ftp"]


# -- active mode: PORT and EPRT ---------------------------------------------------------------


@pytest.mark.parametrize("line", [
    b"PORT 198,51,100,10,156,64\r\n",
    b"port 198,51,100,10,156,64\r\n",                # commands are case-insensitive
    b"Port   198, 51 ,100,10 , 156,64  \r\n",         # odd spacing
    b"PORT 198,51,100,10,156,64\n",                  # a bare LF ends a line too
    b"\xff\xf4\xff\xf2PORT 198,51,100,10,156,64\r\n",  # Telnet IAC IP, IAC DM before the verb
])  # fmt: skip
def test_port_announces_where_the_server_may_connect(line):
    ftp = Ftp()
    assert ftp.client(line) == [ftp.active(40000)]


@pytest.mark.parametrize("line", [
    b"EPRT |1|198.51.100.10|40000|\r\n",
    b"eprt !1!198.51.100.10!40000!\r\n",
    b"EPRT #1#198.51.100.10#40000#\r\n",
    b"EPRT ~1~198.51.100.10~40000~\r\n",
])  # fmt: skip
def test_eprt_takes_any_printable_delimiter(line):
    ftp = Ftp()
    assert ftp.client(line) == [ftp.active(40000, "EPRT")]


@pytest.mark.parametrize("line", [
    b"EPRT |2|2001:db8:1::10|40000|\r\n", b"EPRT !2!2001:DB8:1:0::10!40000!\r\n",
])  # fmt: skip
def test_eprt_over_ipv6(line):
    ftp = Ftp(family=6)
    assert ftp.client(line) == [ftp.active(40000, "EPRT")]


# -- passive mode: 227 and 229 ----------------------------------------------------------------


@pytest.mark.parametrize("reply", [
    b"227 Entering Passive Mode (203,0,113,10,82,9).\r\n",
    b"227 Entering Passive Mode 203,0,113,10,82,9\r\n",   # RFC 1123 4.1.2.6: no parentheses
    b"227 =203,0,113,10,82,9\r\n",
    b"227 entering passive mode ( 203, 0,113 ,10,82 , 9 )\r\n",
    b"227 Entering Passive Mode (203,0,113,10,82,9)\n",
    b"227-Entering Passive Mode (203,0,113,10,82,9)\r\n227 OK\r\n",  # numbers on the first line
    b"227-Here it comes\r\n some text\r\n227 Entering Passive Mode (203,0,113,10,82,9)\r\n",
])  # fmt: skip
def test_227_announces_where_the_client_may_connect(reply):
    ftp = Ftp()
    assert ftp.client(b"PASV\r\n") == []
    assert ftp.server(reply) == [ftp.passive(21001)]


@pytest.mark.parametrize("reply", [
    b"229 Entering Extended Passive Mode (|||21001|)\r\n",
    b"229 entering extended passive mode (!!!21001!)\r\n",
    b"229-Entering Extended Passive Mode (|||21001|)\r\n229 OK\r\n",
])  # fmt: skip
@pytest.mark.parametrize("family", [4, 6])
def test_229_names_only_the_port_of_the_server(reply, family):
    ftp = Ftp(family)
    assert ftp.client(b"EPSV\r\n") == []
    assert ftp.server(reply) == [ftp.passive(21001, "EPSV")]


def test_epsv_with_the_sessions_own_protocol_number():
    ftp = Ftp(family=6)
    ftp.client(b"EPSV 2\r\n")
    assert ftp.server(b"229 (|||21001|)\r\n") == [ftp.passive(21001, "EPSV")]


def test_a_227_line_inside_another_multi_line_reply_is_text():
    ftp = Ftp()
    ftp.client(b"STAT\r\nPASV\r\n")  # pipelined; STAT's reply quotes what looks like a 227
    assert ftp.server(b"211-Status\r\n227 Entering Passive Mode (203,0,113,10,4,1)\r\n211 End\r\n") == []
    assert ftp.server(b"227 Entering Passive Mode (203,0,113,10,82,9)\r\n") == [ftp.passive(21001)]


def test_a_bare_cr_does_not_start_a_line():
    ftp = Ftp()
    ftp.client(b"PASV\r\n")
    assert ftp.server(b"550 x\r227 Entering Passive Mode (203,0,113,10,82,9)\r\n") == []


# -- pairing replies with commands --------------------------------------------------------------


def test_pipelined_pasv_pasv_meet_their_replies_in_order():
    ftp = Ftp()
    assert ftp.client(b"PASV\r\nPASV\r\n") == []
    assert ftp.server(b"227 (203,0,113,10,82,9)\r\n227 (203,0,113,10,82,10)\r\n") == [
        ftp.passive(21001), ftp.passive(21002)]  # fmt: skip


def test_pipelined_commands_and_preliminary_replies():
    ftp = Ftp()
    ftp.client(b"RETR a\r\nEPSV\r\nTYPE I\r\nPASV\r\n")
    assert ftp.server(b"150 Opening\r\n226 Done\r\n") == []  # 1yz does not consume, 226 answers RETR
    assert ftp.server(b"229 (|||21001|)\r\n200 Type set\r\n") == [ftp.passive(21001, "EPSV")]
    assert ftp.server(b"227 (203,0,113,10,82,10)\r\n") == [ftp.passive(21002)]


def test_a_227_without_an_outstanding_pasv_is_refused():
    ftp = Ftp()
    ftp.client(b"TYPE I\r\n")
    [refusal] = ftp.server(b"227 Entering Passive Mode (203,0,113,10,82,9)\r\n")
    assert (refusal.reason, refusal.command) == ("malformed", "PASV")
    assert refusal.detail.startswith("no PASV outstanding: 227 Entering")


def test_a_229_answers_epsv_not_pasv():
    ftp = Ftp()
    ftp.client(b"PASV\r\n")
    assert reasons(ftp.server(b"229 (|||21001|)\r\n")) == ["malformed"]


def test_a_pasv_whose_reply_was_lost_does_not_shift_the_pairing():
    ftp = Ftp()
    ftp.client(b"TYPE I\r\n")
    ftp.client(b"PASV\r\n")
    # the reply to TYPE never reaches us; the 227 still finds its PASV, and only once
    assert ftp.server(b"227 (203,0,113,10,82,9)\r\n") == [ftp.passive(21001)]
    assert reasons(ftp.server(b"227 (203,0,113,10,82,9)\r\n")) == ["malformed"]


def test_a_multi_line_reply_ends_only_at_its_code_and_a_space():
    ftp = Ftp()
    ftp.client(b"PASS x\r\nPASV\r\n")
    assert ftp.server(b"230-Welcome\r\n230-Rules\r\n 230 indented\r\n230\tno\r\n230 OK\r\n") == []
    assert ftp.server(b"227 (203,0,113,10,82,9)\r\n") == [ftp.passive(21001)]


def test_greeting_and_unsolicited_replies_consume_nothing():
    ftp = Ftp()
    ftp.server(b"220-Welcome\r\n220 Ready\r\n")
    ftp.client(b"PASV\r\n")
    assert ftp.server(b"227 (203,0,113,10,82,9)\r\n") == [ftp.passive(21001)]


# -- segmentation, retransmission, holes -------------------------------------------------------


def test_a_command_split_across_segments():
    ftp = Ftp()
    assert ftp.client(b"PORT 198,51,1") == []
    assert ftp.client(b"00,10,156,64\r") == []
    assert ftp.client(b"\n") == [ftp.active(40000)]


def test_a_dialogue_fed_byte_by_byte():
    ftp = Ftp()
    results = []
    for message, from_client in [(b"PASV\r\n", True), (b"227 (203,0,113,10,82,9)\r\n", False),
                                 (b"EPRT |1|198.51.100.10|40000|\r\n", True)]:
        for i in range(len(message)):
            results += ftp.segment(from_client, message[i : i + 1])
    assert results == [ftp.passive(21001), ftp.active(40000, "EPRT")]


def test_a_retransmitted_segment_is_not_parsed_twice():
    ftp = Ftp()
    start = ftp.next[True]
    assert ftp.client(b"PORT 198,51,100,10,156,64\r\n") == [ftp.active(40000)]
    assert ftp.client(b"PORT 198,51,100,10,156,64\r\n", seq=start) == []
    assert ftp.alg.counters["retransmitted"] == 1


def test_a_partial_overlap_parses_only_the_new_bytes():
    ftp = Ftp()
    start = ftp.next[True]
    assert ftp.client(b"PORT 198,51,100,10,156,64\r\nPORT 198,51") == [ftp.active(40000)]
    # the sender re-segments: the old bytes again, then the rest of the second command
    assert ftp.client(b"PORT 198,51,100,10,156,64\r\nPORT 198,51,100,10,156,65\r\n", seq=start) == [
        ftp.active(40001)]  # fmt: skip


def test_payload_after_a_hole_is_not_parsed():
    ftp = Ftp()
    ftp.client(b"USER x\r\n")
    start = ftp.next[True]
    first, second = b"TYPE I\r\n", b"PORT 198,51,100,10,156,64\r\n"
    assert ftp.client(second, seq=start + len(first)) == []  # the hole: `first` is missing
    assert ftp.alg.counters["out_of_order"] == 1
    assert ftp.client(first, seq=start) == []  # fills the hole; `second` was skipped, it is lost
    ftp.next[True] = start + len(first) + len(second)
    assert ftp.client(b"PORT 198,51,100,10,156,65\r\n") == [ftp.active(40001)]  # in step again


def test_after_a_hole_the_stream_resumes_at_the_next_line():
    ftp = Ftp()
    ftp.client(b"USER x\r\n")
    start = ftp.next[True]
    hole, skipped = b"NOOP\r\n", b"PORT 198,51,100,10,156,64\r\nSITE X"  # ends mid-line
    ftp.client(skipped, seq=start + len(hole))
    # the retransmission covers the hole and the skipped bytes and goes on: the rest of the cut line
    # (" PORT ...65", which is no command) is discarded, the next line is read
    rest = b" PORT 198,51,100,10,156,65\r\nPORT 198,51,100,10,156,66\r\n"
    assert ftp.client(hole + skipped + rest, seq=start) == [ftp.active(40002)]


def test_reordered_reply_segments_cost_only_the_late_ones():
    ftp = Ftp()
    ftp.server(b"220 Ready\r\n")
    ftp.client(b"TYPE I\r\nPASV\r\n")
    start = ftp.next[False]
    early, late = b"200 Type set\r\n", b"227 (203,0,113,10,82,9)\r\n"
    assert ftp.server(late, seq=start + len(early)) == []  # arrives first: not parsed
    assert ftp.server(early, seq=start) == []
    ftp.next[False] = start + len(early) + len(late)
    ftp.client(b"PASV\r\n")
    assert ftp.server(b"227 (203,0,113,10,82,10)\r\n") == [ftp.passive(21002)]


def test_a_lost_end_of_a_multi_line_reply_does_not_silence_the_alg():
    ftp = Ftp()
    ftp.client(b"PASS x\r\n")
    start = ftp.next[False]
    ftp.server(b"230-Welcome\r\n")
    ftp.server(b"230 Logged in\r\n", seq=start + 100)  # the banner's end lies behind a hole
    ftp.server(b"x" * 87 + b"\r\n", seq=start + 13)  # the hole is filled
    ftp.next[False] = start + 115
    ftp.client(b"PASV\r\n")
    assert ftp.server(b"227 (203,0,113,10,82,9)\r\n") == [ftp.passive(21001)]


def test_an_overlong_line_is_cut_and_its_tail_never_read_as_a_line():
    ftp = Ftp()
    ftp.client(b"PASV\r\n")
    tail = b"227 Entering Passive Mode (203,0,113,10,82,9)\r\n"
    assert ftp.server(b"550 " + b"x" * (MAX_LINE + 100)) == []
    assert ftp.server(tail) == []
    assert ftp.alg.counters["overlong_lines"] == 1
    ftp.client(b"PASV\r\n")
    assert ftp.server(tail) == [ftp.passive(21001)]


def test_a_cut_port_command_is_refused():
    ftp = Ftp()
    [refusal] = ftp.client(b"PORT 198,51,100,10,156,64" + b" " * MAX_LINE + b"\r\n")
    assert (refusal.reason, refusal.command) == ("malformed", "PORT")
    assert refusal.detail.startswith("line too long: PORT 198,51,100,10,156,64")
    assert len(refusal.detail) < 120


# -- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize("family, line, reason", [
    (4, b"PORT 192,0,2,66,156,64", "bounce"),                      # FTP bounce: a third host
    (4, b"EPRT |1|192.0.2.66|40000|", "bounce"),
    (4, b"PORT 198,51,100,10,0,80", "low-port"),
    (4, b"PORT 198,51,100,10,3,255", "low-port"),                  # 1023
    (4, b"EPRT |2|2001:db8:1::10|40000|", "family-mismatch"),
    (4, b"EPRT |2|::ffff:192.0.2.66|40000|", "family-mismatch"),   # mapped, not the client
    (6, b"PORT 198,51,100,10,156,64", "family-mismatch"),
    (6, b"EPRT |1|198.51.100.10|40000|", "family-mismatch"),
    (6, b"EPRT |2|2001:db8:1::99|40000|", "bounce"),
])  # fmt: skip
def test_refused_active_announcements(family, line, reason):
    ftp = Ftp(family)
    [refusal] = ftp.client(line + b"\r\n")
    assert (refusal.reason, refusal.command, refusal.detail) == (reason, line[:4].decode(), line.decode())


def test_the_lowest_port_allowed_is_1024():
    ftp = Ftp()
    assert ftp.client(b"PORT 198,51,100,10,4,0\r\n") == [ftp.active(1024)]


def test_an_ipv4_mapped_address_equal_to_the_client_is_the_client():
    ftp = Ftp()
    assert ftp.client(b"EPRT |2|::ffff:198.51.100.10|40000|\r\n") == [ftp.active(40000, "EPRT")]


@pytest.mark.parametrize("family, command, reply, reason", [
    (4, b"PASV", b"227 (192,0,2,66,82,9)", "bounce"),
    (4, b"PASV", b"227 (203,0,113,10,0,21)", "low-port"),
    (4, b"EPSV", b"229 (|||22|)", "low-port"),
    (6, b"PASV", b"227 (203,0,113,10,82,9)", "family-mismatch"),
    (4, b"PASV", b"227 Entering Passive Mode", "malformed"),
    (4, b"PASV", b"227 (203,0,113,10,256,9)", "malformed"),
    (4, b"PASV", b"227 (203,0,113,10,0,0)", "malformed"),          # port 0
    (4, b"PASV", b"227 (203,0,113,10,82,9,1)", "malformed"),
    (4, b"EPSV", b"229 (|||0|)", "malformed"),
    (4, b"EPSV", b"229 (|||65536|)", "malformed"),
    (4, b"EPSV", b"229 (||21001|)", "malformed"),
    (4, b"EPSV", b"229 Entering Extended Passive Mode", "malformed"),
])  # fmt: skip
def test_refused_passive_announcements(family, command, reply, reason):
    ftp = Ftp(family)
    ftp.client(command + b"\r\n")
    [refusal] = ftp.server(reply + b"\r\n")
    assert (refusal.reason, refusal.command) == (reason, command.decode())
    assert refusal.detail.endswith(reply.decode())


@pytest.mark.parametrize("line", [
    b"PORT", b"PORT 198,51,100,10,156", b"PORT 198,51,100,10,156,64,1", b"PORT 198,51,100,300,156,64",
    b"PORT 198,51,100,10,0,0", b"PORT a,b,c,d,e,f", b"PORT 198.51.100.10:40000",
    b"PORT 198,51,100,10,\xd9\xa3,64",                        # Unicode digits are not digits
    b"EPRT", b"EPRT |3|198.51.100.10|40000|", b"EPRT |1|198.51.100.10|70000|",
    b"EPRT |1|198.51.100.10|0|", b"EPRT |1|198.51.100.10|40000", b"EPRT |1|198.51.100.010|40000|",
    b"EPRT |1|198.51.100.10|4e4|", b"EPRT 1|198.51.100.10|40000|1", b"EPRT |2|fe80::1%eth0|40000|",
    b"EPRT |2|2001:db8:1::10::1|40000|", b"EPRT \x01\x01\x01198.51.100.10\x0140000\x01",
    b"EPRT |1|198.51.100.10|" + b"9" * 900 + b"|",
])  # fmt: skip
def test_malformed_arguments_are_refused_and_the_session_goes_on(line):
    ftp = Ftp()
    [refusal] = ftp.client(line + b"\r\n")
    assert (refusal.reason, refusal.command) == ("malformed", line[:4].decode())
    assert ftp.client(b"PORT 198,51,100,10,156,64\r\n") == [ftp.active(40000)]


@pytest.mark.parametrize("family, line, reason", [
    (4, b"EPSV 2", "family-mismatch"), (6, b"EPSV 1", "family-mismatch"), (4, b"EPSV 3", "malformed"),
])  # fmt: skip
def test_epsv_for_another_protocol_is_refused_and_its_229_ignored(family, line, reason):
    ftp = Ftp(family)
    assert reasons(ftp.client(line + b"\r\n")) == [reason]
    assert ftp.server(b"229 (|||21001|)\r\n") == []


# -- EPSV ALL (RFC 2428 section 4) ---------------------------------------------------------------


def test_after_epsv_all_only_epsv_sets_up_data_connections():
    ftp = Ftp()
    ftp.client(b"EPSV ALL\r\n")
    ftp.server(b"200 EPSV ALL ok\r\n")
    for line in [b"PORT 198,51,100,10,156,64", b"EPRT |1|198.51.100.10|40000|", b"PASV"]:
        [refusal] = ftp.client(line + b"\r\n")
        assert (refusal.reason, refusal.detail) == ("epsv-all", line.decode())
    # a server that answers the PASV anyway opens nothing, and is not refused a second time
    assert ftp.server(b"500 no\r\n500 no\r\n227 (203,0,113,10,82,9)\r\n") == []
    ftp.client(b"epsv\r\n")
    assert ftp.server(b"229 (|||21001|)\r\n") == [ftp.passive(21001, "EPSV")]


def test_a_port_pipelined_behind_epsv_all_is_refused():
    ftp = Ftp()
    assert reasons(ftp.client(b"Epsv all\r\nPORT 198,51,100,10,156,64\r\n")) == ["epsv-all"]


def test_epsv_all_refused_by_the_server_changes_nothing():
    ftp = Ftp()
    ftp.client(b"EPSV ALL\r\n")
    ftp.server(b"500 Unknown command\r\n")
    assert ftp.client(b"PORT 198,51,100,10,156,64\r\n") == [ftp.active(40000)]


# -- snapshots ----------------------------------------------------------------------------------


def test_state_survives_a_snapshot_mid_dialogue():
    ftp = Ftp()
    ftp.client(b"EPSV ALL\r\nEPSV\r\nPASV\r\nPORT 198,51")  # a partial line, outstanding commands
    ftp.server(b"200 ok\r\n229-Entering Extended Passive Mode (|||21001|)\r\n")  # a reply half done
    ftp.server(b"227 late\r\n", seq=ftp.next[False] + 50)  # something skipped after a hole
    state = json.loads(json.dumps(ftp.alg.to_dict()))
    ftp.alg = FtpAlg.from_dict(state)
    assert ftp.alg.to_dict() == state
    assert ftp.server(b"229 ok\r\n") == [ftp.passive(21001, "EPSV")]
    assert reasons(ftp.client(b",100,10,156,64\r\n")) == ["epsv-all"]


def test_a_snapshot_of_another_format_is_rejected():
    state = Ftp().alg.to_dict()
    with pytest.raises(ValueError):
        FtpAlg.from_dict({**state, "version": 99})


# -- hostile input (hypothesis) -----------------------------------------------------------------

TOKENS = [b"PASV\r\n", b"EPSV\r\n", b"EPSV ALL\r\n", b"227 (203,0,113,10,82,9)\r\n", b"227-",
          b"229 (|||21001|)\r\n", b"PORT 198,51,100,10,156,64\r\n", b"EPRT |1|198.51.100.10|40000|\r\n",
          b"200 ok\r\n", b"150 go\r\n", b"\r\n", b"\n", b"\r", b"\xff\xf4", b"x" * 700]  # fmt: skip
HOSTILE_BYTES = st.lists(st.one_of(st.binary(max_size=64), st.sampled_from(TOKENS)), max_size=6).map(b"".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([4, 6]),
       st.lists(st.tuples(st.booleans(), st.integers(-200, 200) | st.just(0), HOSTILE_BYTES), max_size=30))
def test_arbitrary_segments_never_raise_and_expect_only_the_peers(family, segments):
    ftp = Ftp(family)
    for from_client, shift, data in segments:
        seq = ftp.next[from_client] + shift
        ftp.next[from_client] = (seq + len(data)) % 2**32
        for result in ftp.segment(from_client, data, seq=seq):
            assert isinstance(result, Expectation | Refusal)
            if isinstance(result, Expectation):
                assert {result.src, result.dst} == {ip(ftp.client_ip), ip(ftp.server_ip)}
                assert 1024 <= result.dport <= 65535 and result.family == family
    state = json.loads(json.dumps(ftp.alg.to_dict()))
    assert FtpAlg.from_dict(state).to_dict() == state


DIALOGUE = [
    (False, b"220 Service ready\r\n"), (True, b"USER anonymous\r\n"), (False, b"331 Password?\r\n"),
    (True, b"PASS x\r\n"), (False, b"230-Welcome\r\n 227 (203,0,113,10,4,1) is text here\r\n230 In\r\n"),
    (True, b"TYPE I\r\nPASV\r\n"), (False, b"200 OK\r\n227 Entering Passive Mode (203,0,113,10,82,9)\r\n"),
    (True, b"RETR a\r\n"), (False, b"150 Opening\r\n226 Done\r\n"),
    (True, b"port 198,51,100,10,156,64\n"), (False, b"200 ok\r\n"),
    (True, b"PORT 192,0,2,66,0,80\r\nEPSV\r\n"), (False, b"200 ok\r\n229 (|||21002|)\r\n"),
    (True, b"EPRT !1!198.51.100.10!40001!\r\nEPSV ALL\r\n"), (False, b"200 ok\r\n200 EPSV ALL ok\r\n"),
    (True, b"PASV\r\n"), (False, b"500 No\r\n"), (True, b"QUIT\r\n"), (False, b"221 Bye\r\n"),
]  # fmt: skip


def dialogue_results(cuts: list[list[int]], resend: list[int]) -> list:
    """Feed DIALOGUE cut at `cuts` (per message); after a piece, resend an earlier range if asked."""
    ftp, resend = Ftp(), list(resend)
    results, sent = [], {True: b"", False: b""}
    starts = dict(ftp.next)
    for (from_client, message), points in zip(DIALOGUE, cuts, strict=True):
        bounds = [0, *sorted({p % len(message) for p in points} - {0}), len(message)]
        for a, b in zip(bounds, bounds[1:], strict=False):
            results += ftp.segment(from_client, message[a:b])
            sent[from_client] += message[a:b]
            if resend and (back := resend.pop()) >= 0:  # a retransmission of sent[begin:]
                old = sent[from_client]
                begin = back % len(old)
                results += ftp.segment(from_client, old[begin:], seq=starts[from_client] + begin)
    return results


def test_the_dialogue_line_by_line():
    ftp = Ftp()
    assert dialogue_results([[] for _ in DIALOGUE], []) == [
        ftp.passive(21001), ftp.active(40000),
        Refusal("bounce", "PORT", "PORT 192,0,2,66,0,80"), ftp.passive(21002, "EPSV"),
        ftp.active(40001, "EPRT"), Refusal("epsv-all", "PASV", "PASV"),
    ]  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 200), max_size=6), min_size=len(DIALOGUE), max_size=len(DIALOGUE)),
       st.lists(st.integers(-3, 400), max_size=40))
def test_any_segmentation_and_retransmission_gives_the_same_results(cuts, resend):
    assert dialogue_results(cuts, resend) == dialogue_results([[] for _ in DIALOGUE], [])


# -- the corpus: control channels of real captures ------------------------------------------------


def replay_corpus(name: str):
    """Feed each FTP control session of a capture to its own ALG; return the results in order and
    the data connections (src, dst, dport) the capture holds."""
    from scapy.all import IP, TCP, IPv6, rdpcap  # tests only: never in the per-packet path

    algs, results, data_connections = {}, [], []
    for packet in rdpcap(os.path.join(CORPUS, name)):
        if TCP not in packet or (IP not in packet and IPv6 not in packet):
            continue
        layer, tcp = packet[IP] if IP in packet else packet[IPv6], packet[TCP]
        src, dst = ip(layer.src), ip(layer.dst)
        opening = tcp.flags.S and not tcp.flags.A
        if 21 not in (tcp.sport, tcp.dport):
            if opening:
                src_text, dst_text = str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst))
                data_connections.append((src_text, dst_text, tcp.dport))
            continue
        from_client = tcp.dport == 21
        key = (src, tcp.sport) if from_client else (dst, tcp.dport)
        if opening:
            algs[key] = FtpAlg(4 if IP in packet else 6, src, dst)
        if bytes(tcp.payload):
            results += algs[key].feed(from_client, tcp.seq, bytes(tcp.payload))
    assert all(alg.counters == dict.fromkeys(alg.counters, 0) for alg in algs.values())
    return results, data_connections


def readable(result):
    if isinstance(result, Refusal):
        return (result.reason, result.command, result.detail)
    src, dst = (str(ipaddress.ip_address(a)) for a in (result.src, result.dst))
    return (result.command, src, dst, result.dport)


def mode(command, client, server, ports):
    active = command in ("PORT", "EPRT")
    return [(command, server if active else client, server if not active else client, p) for p in ports]


SANDBOX_C, SANDBOX_S = "172.23.0.3", "172.23.0.2"
SANDBOX6_C, SANDBOX6_S = "fd00:10:16:1::3", "fd00:10:16:1::2"
NETBSD_C, NETBSD_S = "141.142.220.235", "199.233.217.249"
NETBSD6_C, NETBSD6_S = "2001:470:1f11:81f:c999:d94:aa7c:2e3e", "2001:470:4867:99::21"

CORPUS_EXPECTED = {
    "sv-ftp-download-active.pcap": mode("PORT", SANDBOX_C, SANDBOX_S, [44671, 43585, 43439]),
    "sv-ftp-download-passive.pcap": mode("PASV", SANDBOX_C, SANDBOX_S, [21001, 21008, 21008]),
    "sv-ftp-upload-active.pcap": mode("PORT", SANDBOX_C, SANDBOX_S, [35627, 44133, 40173]),
    "sv-ftp-upload-passive.pcap": mode("PASV", SANDBOX_C, SANDBOX_S, [21003, 21003, 21001]),
    "sv-ftp-all-data-ipv4.pcap":
        mode("PASV", SANDBOX_C, SANDBOX_S, [21008, 21003, 21006, 21008, 21007, 21009, 21005])
        + mode("PORT", SANDBOX_C, SANDBOX_S, [45809, 37783, 36011, 33975, 40169, 39459, 35495]),
    "sv-ftp-all-data-ipv6.pcap":
        mode("EPSV", SANDBOX6_C, SANDBOX6_S, [21008, 21003, 21006, 21008, 21002, 21009, 21009])
        + mode("EPRT", SANDBOX6_C, SANDBOX6_S, [40467, 40547, 36713, 42219, 39099, 46525, 37533]),
    "zeek-ftp-ipv4.pcap":
        mode("PASV", NETBSD_C, NETBSD_S, [56666, 56667]) + mode("PORT", NETBSD_C, NETBSD_S, [33582, 37835]),
    "zeek-ftp-ipv6.pcap":
        mode("EPSV", NETBSD6_C, NETBSD6_S, [57086, 57087, 57088])
        + mode("EPRT", NETBSD6_C, NETBSD6_S, [49189, 49190]),
    "sv-ftp-bounce.pcap":
        mode("PORT", "1.1.1.2", "2.2.2.1", [59549]) + [("bounce", "PORT", "PORT 2,2,2,3,0,80")],
    "sv-ftp-eprt-ipv6-over-ipv4.pcap":
        [("family-mismatch", "EPRT", "EPRT |2|2601:191:8500:2e00:7c0f:78e0:dc5b:f7c1|34325|")],
}  # fmt: skip


UNUSED = {"sv-ftp-bounce.pcap": 1}  # session 1's valid PORT: the capture holds no data connection


def test_every_ftp_capture_of_the_corpus_is_covered():
    names = {os.path.basename(p) for p in glob.glob(os.path.join(CORPUS, "*ftp*.pcap"))}
    assert names == set(CORPUS_EXPECTED)


@pytest.mark.parametrize("name", sorted(CORPUS_EXPECTED))
def test_corpus_capture(name):
    results, data_connections = replay_corpus(name)
    assert [readable(r) for r in results] == CORPUS_EXPECTED[name]
    # every data connection of the capture is admitted by an expectation of its own
    expected = Counter(readable(r)[1:] for r in results if isinstance(r, Expectation))
    assert not Counter(data_connections) - expected
    assert expected.total() == len(data_connections) + UNUSED.get(name, 0)
