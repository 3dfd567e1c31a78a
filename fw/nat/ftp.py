"""Rewrite FTP data-connection announcements for NAT, in the kernel's (nf_nat_ftp.c) format.

How it works. `find_announcement(payload, from_client)` finds the first line of a segment's
payload that announces a data connection: PORT / EPRT from the client (the verb case-insensitive,
Telnet IAC prefixes skipped, as fw/alg/ftp.py reads them), the 227 / 229 replies from the server.
It parses the announcement with fw/alg/ftp_syntax.py (the FTP ALG's own parser) and returns an
`Announcement`: what was announced (so the engine can pick the translated port, keeping this one
when free) and the span nf_conntrack_ftp matches. `Announcement.rewrite(payload, address, port)`
replaces that span with what nf_nat_ftp_fmt_cmd prints:
- PORT and 227: `%u,%u,%u,%u,%u,%u` (the six numbers only; a 227's text and parentheses stay);
- EPRT: `|1|%pI4|%u|` or `|2|%pI6|%u|` (%pI6: eight groups of four hex digits, uncompressed),
  the family taken from the translated address;
- 229: `|||%u|` inside the parentheses;
and gives a `LineRewrite`: the new payload and its length change (for fw/nat/seqadj.py's `record`).
`rewrite_payload` / `rewrite_line` do both steps at once. The kernel formats are checked against
nf_nat_ftp itself in tests/test_lab_nat_ftp_kernel.py.

An announcement without its line end in the segment (a command split across segments) raises
`SplitAnnouncement`, for the engine to drop the segment (counted) so that the sender retransmits the
whole line; a line that may still become one ("PO") counts.

A malformed announcement (a PORT, EPRT, 227 or 229 line whose argument does not parse) is no
announcement: nothing can be rewritten in it and no data connection follows from it. `FtpNatSession`
passes it on as it is (`LineRewrite.malformed` says why) and goes on to the segment's next lines; the
engine sends the segment on unchanged but for its headers, counted, and the server answers the line
(500/501) as it would without NAT: the control session goes on. Without a collecting list,
`find_announcement` raises it (`MalformedAnnouncement`). A rewrite that cannot be done (no
translated port free, a PORT/227 that cannot carry an IPv6 address) raises `AlgRewriteError`: the
engine drops the segment with reason `nat:alg-rewrite`, as nf_nat_ftp drops a packet it cannot
mangle.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from fw.alg.ftp_syntax import BadArgument, eprt_argument, extended_passive_span, passive_reply_span, port_argument
from fw.nat.seqadj import SeqAdj

REASON = "nat:alg-rewrite"
_COMMAND = re.compile(rb"(?:\xff[\xf0-\xfe])*\s*(PORT|EPRT)\s+", re.IGNORECASE)
_REPLY = re.compile(rb"(227|229)[ -]")
_TELNET = re.compile(rb"\xff[\xf0-\xfe]")
_CLIENT_WORDS = ((b"PORT ", "PORT"), (b"EPRT ", "EPRT"))
_SERVER_WORDS = ((b"227", "PASV"), (b"229", "EPSV"))
REMEMBERED = 8  # rewritten segments kept per session for retransmissions


class AlgRewriteError(ValueError):
    """An announcement NAT cannot rewrite; `command` names it, the message says why."""

    reason = REASON

    def __init__(self, command: str, detail: str) -> None:
        super().__init__(f"{command}: {detail}")
        self.command = command
        self.detail = detail


class MalformedAnnouncement(AlgRewriteError):
    """A PORT, EPRT, 227 or 229 line whose argument does not parse: passed on as it is (docstring)."""


class SplitAnnouncement(AlgRewriteError):
    """An announcement whose line end is not in this segment; `offset`: where its line starts.

    The segment cannot go out as it is (the line could not be rewritten once its first part left).
    If the line starts the segment (offset 0) the segment is dropped; the sender retransmits from
    there, the line whole. Otherwise `FtpNatSession` keeps the complete lines before it and cuts the
    rest: dropping the whole segment would not do, since the sender would cut its retransmission
    at the same place (an MSS-sized segment), again and again.
    """

    def __init__(self, command: str, detail: str, offset: int = 0) -> None:
        super().__init__(command, detail)
        self.offset = offset


@dataclass(frozen=True, slots=True)
class Announcement:
    """Where a payload announces a data connection, and what it announced.

    `start`/`end`: the span nf_conntrack_ftp matches (what gets replaced), in the payload.
    """

    command: str         # "PORT", "EPRT", "PASV" (a 227), "EPSV" (a 229)
    family: int          # the announced family (a 229: the session's, given by the caller)
    address: bytes | None  # None for a 229 (port only)
    port: int
    start: int
    end: int

    def rewrite(self, payload: bytes, address: bytes, port: int) -> LineRewrite:
        """The payload with this announcement saying `address`:`port` (nf_nat_ftp's format)."""
        if self.command in ("PORT", "PASV"):
            text = _six_numbers(address, port, self.command)
        elif self.command == "EPRT":
            text = _eprt(address, port)
        else:
            text = b"|||%d|" % port
        new = payload[:self.start] + text + payload[self.end:]
        return LineRewrite(new, len(new) - len(payload), self)


@dataclass(frozen=True, slots=True)
class LineRewrite:
    line: bytes          # the rewritten line (or payload)
    delta: int           # len(new) - len(old): the seqadj correction (SeqAdj.record)
    announcement: Announcement | None  # what the line announced before (None: only cut, or nothing)
    malformed: tuple[MalformedAnnouncement, ...] = ()  # announcing lines left as they are


class FtpNatSession:
    """One translated FTP control session: its announcements rewritten, its SeqAdj kept.

    `segment(direction, seq, payload, choose)` for every control segment with payload (direction 0:
    from the client; `seq` as the sender sent it): when the payload announces a data connection,
    `choose(announcement)` gives the translated (address, port) (the engine allocates it and sets up
    the expectation; None: nothing free), the payload is rewritten and the length change recorded in
    `seqadj`. A retransmission (same direction, seq and payload) gets the same rewrite again
    without a second `choose`, so it leaves identical. A payload ending in the first part of an
    announcing line loses that part (cut, not a shift: the sender sends it again); the result's
    `line` is the payload to send (fw.nat.rewrite.with_payload). Malformed announcing lines are
    skipped, left as they are, and listed in the result's `malformed` (with `line` the payload
    itself when nothing else changed). The engine then shifts every segment of the session with
    `seqadj.shift` (the rewritten one included). Raises AlgRewriteError when nothing is free and
    SplitAnnouncement when the segment starts with the announcing line's first part (drop it,
    counted; the sender sends it again whole).
    """

    __slots__ = ("family", "seqadj", "_done")

    def __init__(self, family: int, seqadj: SeqAdj | None = None) -> None:
        self.family = family
        self.seqadj = seqadj or SeqAdj()
        self._done: dict[tuple[int, int], tuple[bytes, LineRewrite]] = {}

    def segment(self, direction: int, seq: int, payload: bytes,
                choose: Callable[[Announcement], tuple[bytes, int] | None]) -> LineRewrite | None:
        done = self._done.get((direction, seq))
        if done is not None and done[0] == payload:
            return done[1]
        kept = payload
        malformed: list[MalformedAnnouncement] = []
        try:
            found = find_announcement(payload, direction == 0, self.family, malformed)
        except SplitAnnouncement as split:
            if not split.offset:
                raise
            kept = payload[:split.offset]           # the complete lines go, the rest comes again
            found = find_announcement(kept, direction == 0, self.family, malformed)
        if found is None:
            return None if kept is payload and not malformed else LineRewrite(kept, 0, None, tuple(malformed))
        target = choose(found)
        if target is None:
            raise AlgRewriteError(found.command, "no translated port free for the data connection")
        result = found.rewrite(kept, *target)
        if malformed:
            result = LineRewrite(result.line, result.delta, found, tuple(malformed))
        self.seqadj.record(direction, seq, result.delta)
        self._done[direction, seq] = (payload, result)
        if len(self._done) > REMEMBERED:
            del self._done[next(iter(self._done))]
        return result

    def to_dict(self) -> dict:
        """Plain values for snapshots and HA sync: the family and the seq adjustment (the memory
        of rewritten segments is not carried: a retransmission across a restart is rewritten anew)."""
        return {"family": self.family, "seqadj": [list(way) for way in self.seqadj.to_tuple()]}

    @classmethod
    def from_dict(cls, data: dict) -> FtpNatSession:
        return cls(data["family"], SeqAdj.from_tuple(data["seqadj"]))


def find_announcement(payload: bytes, from_client: bool, family: int = 4,
                      malformed: list | None = None) -> Announcement | None:
    """The first announcement among the complete lines of a segment's payload, or None.

    Client lines are read as commands (PORT, EPRT), server lines as replies (227, 229); `family`
    is the control session's, for a 229. A malformed announcing line raises MalformedAnnouncement,
    or, given a `malformed` list, is appended to it and skipped. Raises SplitAnnouncement when the
    payload ends in the first part of an announcing line, wherever the complete ones are.
    """
    tail = payload.rfind(b"\n") + 1
    command = _may_announce(payload[tail:], from_client)
    if command:
        raise SplitAnnouncement(command, "line end not in this segment", tail)
    start = 0
    read = _command if from_client else _reply
    while start < tail:
        newline = payload.find(b"\n", start)
        try:
            found = read(payload, start, newline + 1, family)
        except MalformedAnnouncement as error:
            if malformed is None:
                raise
            malformed.append(error)
            found = None
        if found is not None:
            return found
        start = newline + 1
    return None


def rewrite_payload(payload: bytes, from_client: bool, address: bytes, port: int,
                    ) -> LineRewrite | None:
    """The first announcement of `payload` rewritten to `address`:`port`, or None."""
    found = find_announcement(payload, from_client, 4 if len(address) == 4 else 6)
    return None if found is None else found.rewrite(payload, address, port)


def rewrite_line(line: bytes, from_client: bool, address: bytes, port: int) -> LineRewrite | None:
    """One whole line (with its line end) rewritten; None if it announces nothing."""
    return rewrite_payload(line, from_client, address, port)


def _command(payload: bytes, start: int, end: int, family: int) -> Announcement | None:
    command = _COMMAND.match(payload, start, end)
    if command is None:
        return None
    verb = command.group(1).upper().decode()
    arg_start = command.end()
    arg_end = max(arg_start, start + len(payload[start:end].rstrip()))
    try:
        announced = (port_argument if verb == "PORT" else eprt_argument)(payload[arg_start:arg_end])
    except BadArgument as error:
        raise MalformedAnnouncement(verb, str(error)) from None
    return Announcement(verb, *announced, arg_start, arg_end)


def _reply(payload: bytes, start: int, end: int, family: int) -> Announcement | None:
    reply = _REPLY.match(payload, start, end)
    if reply is None:
        return None
    line = payload[start:end]
    try:
        if reply.group(1) == b"227":
            (announced_family, address, port), (first, last) = passive_reply_span(line)
            return Announcement("PASV", announced_family, address, port, start + first, start + last)
        port, (first, last) = extended_passive_span(line)
    except BadArgument as error:
        raise MalformedAnnouncement("PASV" if reply.group(1) == b"227" else "EPSV", str(error)) from None
    return Announcement("EPSV", family, None, port, start + first, start + last)


def _may_announce(fragment: bytes, from_client: bool) -> str:
    """The command a line's first part starts or may still start ("PO", "22"), else ""."""
    text = _TELNET.sub(b"", fragment).lstrip().upper()
    if not text:
        return ""
    for word, command in (_CLIENT_WORDS if from_client else _SERVER_WORDS):
        if text.startswith(word) or word.startswith(text):
            return command
    return ""


def _six_numbers(address: bytes, port: int, command: str) -> bytes:
    if len(address) != 4:
        raise AlgRewriteError(command, "an IPv6 address cannot be written as h1,h2,h3,h4,p1,p2")
    return b"%d,%d,%d,%d,%d,%d" % (*address, port >> 8, port & 0xFF)


def _eprt(address: bytes, port: int) -> bytes:
    if len(address) == 4:
        return b"|1|%d.%d.%d.%d|%d|" % (*address, port)
    groups = b":".join(address[i:i + 2].hex().encode() for i in range(0, 16, 2))
    return b"|2|%s|%d|" % (groups, port)
