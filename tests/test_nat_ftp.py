"""FTP announcements rewritten for NAT in nf_nat_ftp's format, with the length change for seqadj."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fw.alg.ftp_syntax import eprt_argument, extended_passive_reply, passive_reply, port_argument
from fw.nat.ftp import (
    REASON,
    AlgRewriteError,
    FtpNatSession,
    MalformedAnnouncement,
    SplitAnnouncement,
    find_announcement,
    rewrite_line,
    rewrite_payload,
)

NAT4 = ipaddress.ip_address("192.0.2.1").packed
NAT6 = ipaddress.ip_address("2001:db8:ffff::1").packed
CLIENT4 = ipaddress.ip_address("198.51.100.10").packed


def test_port_from_a_client_behind_snat():
    out = rewrite_line(b"PORT 198,51,100,10,156,64\r\n", True, NAT4, 20001)
    assert out.line == b"PORT 192,0,2,1,78,33\r\n" and out.delta == -5
    announced = out.announcement
    assert (announced.command, announced.family, announced.address, announced.port) == ("PORT", 4, CLIENT4, 40000)


def test_port_keeps_the_verb_spelling_and_a_telnet_prefix():
    out = rewrite_line(b"\xff\xf4port   198, 51,100,10,156,64 \r\n", True, NAT4, 40000)
    assert out.line == b"\xff\xf4port   192,0,2,1,156,64 \r\n"


def test_eprt_ipv4_and_ipv6_uncompressed_as_pI6():
    out = rewrite_line(b"EPRT |1|198.51.100.10|40000|\r\n", True, NAT4, 20001)
    assert out.line == b"EPRT |1|192.0.2.1|20001|\r\n" and out.delta == -4
    out = rewrite_line(b"EPRT !2!2001:db8:1::10!40000!\r\n", True, NAT6, 20001)
    assert out.line == b"EPRT |2|2001:0db8:ffff:0000:0000:0000:0000:0001|20001|\r\n"
    assert out.announcement.family == 6
    assert out.announcement.address == ipaddress.ip_address("2001:db8:1::10").packed
    assert out.delta == len(out.line) - len(b"EPRT !2!2001:db8:1::10!40000!\r\n")


def test_227_from_a_server_behind_dnat_keeps_its_text():
    line = b"227 Entering Passive Mode (198,51,100,10,82,9).\r\n"
    out = rewrite_line(line, False, NAT4, 21001)
    assert out.line == b"227 Entering Passive Mode (192,0,2,1,82,9).\r\n"
    assert (out.announcement.command, out.announcement.port, out.delta) == ("PASV", 21001, -4)
    no_parentheses = rewrite_line(b"227 =198,51,100,10,82,9\r\n", False, NAT4, 1024)
    assert no_parentheses.line == b"227 =192,0,2,1,4,0\r\n"


def test_229_port_only_with_the_kernels_delimiter():
    out = rewrite_line(b"229 Entering Extended Passive Mode (!!!6446!)\r\n", False, NAT4, 20001)
    assert out.line == b"229 Entering Extended Passive Mode (|||20001|)\r\n"
    announced = out.announcement
    assert (announced.command, announced.address, announced.port, out.delta) == ("EPSV", None, 6446, 1)


def test_lines_announcing_nothing_and_the_wrong_direction():
    assert rewrite_line(b"USER anonymous\r\n", True, NAT4, 1) is None
    assert rewrite_line(b"200 PORT command successful\r\n", False, NAT4, 1) is None
    assert rewrite_line(b"227 Entering Passive Mode (1,2,3,4,5,6)\r\n", True, NAT4, 1) is None
    assert rewrite_line(b"PORT 1,2,3,4,5,6\r\n", False, NAT4, 1) is None
    assert rewrite_line(b"PORTS 1,2,3,4,5,6\r\n", True, NAT4, 1) is None


@pytest.mark.parametrize(("line", "from_client", "command"), [
    (b"PORT 1,2,3\r\n", True, "PORT"),
    (b"PORT\r\n", True, "PORT"),
    (b"PORT 1,2,3,4,5,600\r\n", True, "PORT"),
    (b"EPRT |3|1.2.3.4|5|\r\n", True, "EPRT"),
    (b"227 nothing here\r\n", False, "PASV"),
    (b"229 Extended (|||99999|)\r\n", False, "EPSV"),
])
def test_malformed_announcements_are_a_clear_refusal(line, from_client, command):
    with pytest.raises(AlgRewriteError) as raised:
        rewrite_line(line, from_client, NAT4, 20001)
    assert raised.value.command == command and raised.value.reason == REASON == "nat:alg-rewrite"


def test_ipv6_cannot_be_put_in_port_or_227():
    with pytest.raises(AlgRewriteError, match="IPv6"):
        rewrite_line(b"PORT 198,51,100,10,156,64\r\n", True, NAT6, 20001)


def test_payload_with_several_lines_and_a_split_announcement():
    payload = b"TYPE I\r\nPORT 198,51,100,10,156,64\r\nLIST\r\n"
    out = rewrite_payload(payload, True, NAT4, 20001)
    assert out.line == b"TYPE I\r\nPORT 192,0,2,1,78,33\r\nLIST\r\n" and out.delta == -5
    assert rewrite_payload(b"NOOP\r\nLIST\r\n", True, NAT4, 1) is None
    assert rewrite_payload(b"RETR some", True, NAT4, 1) is None
    for cut in (b"PORT 198,51,100", b"PO", b"NOOP\r\neprt |1|", b"\xff\xf4port"):
        with pytest.raises(SplitAnnouncement):
            rewrite_payload(cut, True, NAT4, 20001)
    with pytest.raises(SplitAnnouncement):
        rewrite_payload(b"227 Entering Passive Mode (198,51,", False, NAT4, 1)


@given(address=st.binary(min_size=4, max_size=4), port=st.integers(1, 65535),
       old=st.binary(min_size=4, max_size=4), old_port=st.integers(1, 65535))
def test_rewritten_lines_parse_back_to_the_translation(address, port, old, old_port):
    """What we write, the ALG's own parser reads back as the translated address and port."""
    port_line = b"PORT %d,%d,%d,%d,%d,%d\r\n" % (*old, old_port >> 8, old_port & 255)
    new = rewrite_line(port_line, True, address, port).line
    assert port_argument(new[5:-2]) == (4, address, port)
    new = rewrite_line(b"227 ok (%s)\r\n" % port_line[5:-2], False, address, port).line
    assert passive_reply(new) == (4, address, port)
    eprt = b"EPRT |1|%d.%d.%d.%d|%d|\r\n" % (*old, old_port)
    assert eprt_argument(rewrite_line(eprt, True, address, port).line[5:-2]) == (4, address, port)
    epsv = rewrite_line(b"229 ok (|||%d|)\r\n" % old_port, False, address, port).line
    assert extended_passive_reply(epsv) == port


@given(address=st.binary(min_size=16, max_size=16), port=st.integers(1, 65535))
def test_eprt_ipv6_parses_back(address, port):
    line = rewrite_line(b"EPRT |2|2001:db8::1|5|\r\n", True, address, port).line
    assert eprt_argument(line[5:-2]) == (6, address, port)


def test_spaces_around_the_227_numbers_stay():
    out = rewrite_line(b"227 Passive ( 198,51,100,10,82,9 )\r\n", False, NAT4, 21001)
    assert out.line == b"227 Passive ( 192,0,2,1,82,9 )\r\n"


def test_find_then_rewrite_with_the_port_the_pool_chose():
    """The engine first learns what was announced, allocates, then rewrites."""
    payload = b"NOOP\r\nEPRT |1|198.51.100.10|40000|\r\n"
    found = find_announcement(payload, True)
    assert (found.command, found.address, found.port) == ("EPRT", CLIENT4, 40000)
    assert payload[found.start:found.end] == b"|1|198.51.100.10|40000|"
    out = found.rewrite(payload, NAT4, 40001)
    assert out.line == b"NOOP\r\nEPRT |1|192.0.2.1|40001|\r\n" and out.delta == -4
    epsv = find_announcement(b"229 ok (|||5000|)\r\n", False, family=6)
    assert (epsv.family, epsv.address, epsv.port) == (6, None, 5000)


class Chooser:
    """The engine's side: allocate a port for an announcement (here: announced + 1), count calls."""

    def __init__(self, free: bool = True):
        self.calls = []
        self.free = free

    def __call__(self, announcement):
        self.calls.append(announcement)
        return (NAT4, announcement.port + 1) if self.free else None


def test_a_session_rewrites_once_and_a_retransmission_identically():
    session, choose = FtpNatSession(4), Chooser()
    port = b"PORT 198,51,100,10,156,64\r\n"
    first = session.segment(0, 1000, port, choose)
    assert first.line == b"PORT 192,0,2,1,156,65\r\n" and len(choose.calls) == 1
    assert session.seqadj.to_tuple() == ((1000, 0, -4), (0, 0, 0))
    again = session.segment(0, 1000, port, choose)                # the client retransmits
    assert again == first and len(choose.calls) == 1
    assert session.seqadj.to_tuple() == ((1000, 0, -4), (0, 0, 0))
    assert session.segment(0, 1025, b"NOOP\r\n", choose) is None
    reply = session.segment(1, 500, b"227 Entering Passive Mode (198,51,100,10,4,1)\r\n", choose)
    assert reply.line == b"227 Entering Passive Mode (192,0,2,1,4,2)\r\n"
    assert session.seqadj.to_tuple() == ((1000, 0, -4), (500, 0, -4))


def test_a_session_refuses_when_no_port_is_free_and_on_a_split_line():
    session = FtpNatSession(4)
    with pytest.raises(AlgRewriteError, match="no translated port free") as raised:
        session.segment(0, 1, b"EPRT |1|198.51.100.10|40000|\r\n", Chooser(free=False))
    assert raised.value.reason == "nat:alg-rewrite"
    with pytest.raises(SplitAnnouncement):
        session.segment(0, 1, b"EPRT |1|198.51", Chooser())
    assert session.seqadj.to_tuple() == ((0, 0, 0), (0, 0, 0))


def test_a_session_passes_malformed_lines_and_rewrites_a_good_one_behind_them():
    session, choose = FtpNatSession(4), Chooser()
    bad = b"PORT 1,2,3\r\n"
    alone = session.segment(0, 1, bad, choose)
    assert (alone.line, alone.delta, alone.announcement) == (bad, 0, None) and alone.line is bad
    assert [(error.command, type(error)) for error in alone.malformed] == [("PORT", MalformedAnnouncement)]
    assert not choose.calls and session.seqadj.to_tuple() == ((0, 0, 0), (0, 0, 0))
    both = session.segment(0, 13, bad + b"PORT 198,51,100,10,156,64\r\n", choose)
    assert both.line == bad + b"PORT 192,0,2,1,156,65\r\n" and len(both.malformed) == 1 and len(choose.calls) == 1
    reply = session.segment(1, 1, b"227 (198,51,100,10,300,1)\r\n", choose)
    assert reply.line == b"227 (198,51,100,10,300,1)\r\n" and reply.malformed[0].command == "PASV"
    with pytest.raises(MalformedAnnouncement):  # without a list to collect them in: raised
        find_announcement(bad, True)


def test_a_session_forgets_old_segments():
    session, choose = FtpNatSession(4), Chooser()
    for i in range(20):
        session.segment(0, 1000 + 100 * i, b"PORT 198,51,100,10,156,64\r\n", choose)
    assert len(session._done) == 8 and len(choose.calls) == 20


def test_a_session_travels_in_plain_values():
    import json  # noqa: PLC0415

    session = FtpNatSession(6)
    session.segment(0, 7, b"EPRT |2|2001:db8:1::10|40000|\r\n", lambda a: (NAT6, a.port))
    copy = FtpNatSession.from_dict(json.loads(json.dumps(session.to_dict())))
    assert copy.family == 6 and copy.seqadj.to_tuple() == session.seqadj.to_tuple() != ((0, 0, 0), (0, 0, 0))


def test_a_split_announcement_after_complete_lines_is_cut_off_not_dropped():
    session, choose = FtpNatSession(4), Chooser()
    cut = session.segment(0, 100, b"NOOP\r\nPORT 198,51", choose)
    assert (cut.line, cut.delta, cut.announcement) == (b"NOOP\r\n", 0, None) and not choose.calls
    assert session.seqadj.to_tuple() == ((0, 0, 0), (0, 0, 0))            # a cut is not a shift
    both = session.segment(0, 200, b"PORT 198,51,100,10,156,64\r\nEPRT |1|198", choose)
    assert both.line == b"PORT 192,0,2,1,156,65\r\n" and both.delta == -4
    assert session.seqadj.to_tuple() == ((200, 0, -4), (0, 0, 0))
    with pytest.raises(SplitAnnouncement) as raised:                      # nothing before it: drop
        session.segment(0, 300, b"EPRT |1|198", choose)
    assert raised.value.offset == 0
    assert session.segment(0, 400, b"NOOP\r\nRETR fi", choose) is None     # not an announcement


def test_the_split_offset_is_where_the_line_starts():
    with pytest.raises(SplitAnnouncement) as raised:
        find_announcement(b"TYPE I\r\nNOOP\r\n\xff\xf4PO", True)
    assert raised.value.offset == 14 and raised.value.command == "PORT"
