"""Rewrite FTP data-connection announcements for NAT, in the kernel's (nf_nat_ftp.c) format.

How it works. `rewrite_line(line, address, port)` recognises PORT / EPRT (client commands, the verb
case-insensitive, Telnet IAC prefixes skipped, as fw/alg/ftp.py reads them) and the 227 / 229
replies, parses the announcement with fw/alg/ftp_syntax.py (the parser the FTP ALG uses), and
replaces exactly the span nf_conntrack_ftp matches with what nf_nat_ftp_fmt_cmd prints:
- PORT and 227: `%u,%u,%u,%u,%u,%u` (the six numbers only; a 227's text and parentheses stay);
- EPRT: `|1|%pI4|%u|` or `|2|%pI6|%u|` (%pI6: eight groups of four hex digits, uncompressed),
  the family taken from the translated address;
- 229: `|||%u|` inside the parentheses.
It returns a `LineRewrite`: the new line, the length change (for fw/nat/seqadj.py's `record`) and
what the line announced before (the engine builds the data session's expectation and binding from
it). A line that announces nothing returns None.

`rewrite_payload` does the same for a segment's payload: the first announcement among its lines is
rewritten; an announcement without its line end (a command split across segments) raises
`SplitAnnouncement`, for the engine to drop the segment (counted) so the sender retransmits the
whole line.

Failures raise `AlgRewriteError` (a malformed announcement, a PORT/227 that cannot carry an IPv6
address): the engine drops the segment with reason `nat:alg-rewrite`; the control session goes on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fw.alg.ftp_syntax import BadArgument, eprt_argument, extended_passive_span, passive_reply_span, port_argument

REASON = "nat:alg-rewrite"
_COMMAND = re.compile(rb"(?:\xff[\xf0-\xfe])*\s*(PORT|EPRT)\s+", re.IGNORECASE)
_REPLY = re.compile(rb"(227|229)[ -]")
_TELNET = re.compile(rb"\xff[\xf0-\xfe]")
_CLIENT_WORDS = ((b"PORT ", "PORT"), (b"EPRT ", "EPRT"))
_SERVER_WORDS = ((b"227", "PASV"), (b"229", "EPSV"))


class AlgRewriteError(ValueError):
    """An announcement NAT cannot rewrite; `command` names it, the message says why."""

    reason = REASON

    def __init__(self, command: str, detail: str) -> None:
        super().__init__(f"{command}: {detail}")
        self.command = command
        self.detail = detail


class SplitAnnouncement(AlgRewriteError):
    """An announcement whose line end is not in this segment: drop the segment, await the whole."""


@dataclass(frozen=True, slots=True)
class LineRewrite:
    line: bytes          # the rewritten line (or payload, for rewrite_payload)
    delta: int           # len(new) - len(old): the seqadj correction
    command: str         # "PORT", "EPRT", "PASV" (a 227), "EPSV" (a 229)
    family: int          # what the line announced before: family, address (None for 229), port
    address: bytes | None
    port: int


def rewrite_line(line: bytes, from_client: bool, address: bytes, port: int) -> LineRewrite | None:
    """The line with its announcement replaced by `address`:`port`; None if it announces nothing.

    Client lines are read as commands (PORT, EPRT), server lines as replies (227, 229).
    """
    return (_command if from_client else _reply)(line, address, port)


def _command(line: bytes, address: bytes, port: int) -> LineRewrite | None:
    command = _COMMAND.match(line)
    if command is None:
        return None
    verb = command.group(1).upper().decode()
    start = command.end()
    end = max(start, len(line.rstrip()))
    try:
        family, announced, announced_port = (port_argument if verb == "PORT" else eprt_argument)(
            line[start:end])
    except BadArgument as error:
        raise AlgRewriteError(verb, str(error)) from None
    text = _six_numbers(address, port, verb) if verb == "PORT" else _eprt(address, port)
    return _replaced(line, start, end, text, verb, family, announced, announced_port)


def _reply(line: bytes, address: bytes, port: int) -> LineRewrite | None:
    reply = _REPLY.match(line)
    if reply is None:
        return None
    command = "PASV" if reply.group(1) == b"227" else "EPSV"
    try:
        if command == "PASV":
            (family, announced, announced_port), (start, end) = passive_reply_span(line)
            text = _six_numbers(address, port, command)
        else:
            announced_port, (start, end) = extended_passive_span(line)
            family, announced, text = (4 if len(address) == 4 else 6), None, b"|||%d|" % port
    except BadArgument as error:
        raise AlgRewriteError(command, str(error)) from None
    return _replaced(line, start, end, text, command, family, announced, announced_port)


def rewrite_payload(payload: bytes, from_client: bool, address: bytes, port: int,
                    ) -> LineRewrite | None:
    """`rewrite_line` on the first announcing line of a segment's payload (lines end in LF)."""
    start = 0
    while start < len(payload):
        newline = payload.find(b"\n", start)
        end = len(payload) if newline < 0 else newline + 1
        if newline < 0:
            command = _may_announce(payload[start:], from_client)
            if command:
                raise SplitAnnouncement(command, "line end not in this segment")
            return None
        found = rewrite_line(payload[start:end], from_client, address, port)
        if found is not None:
            new = payload[:start] + found.line + payload[end:]
            return LineRewrite(new, found.delta, found.command, found.family, found.address, found.port)
        start = end
    return None


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


def _replaced(line: bytes, start: int, end: int, text: bytes, command: str, family: int,
              announced: bytes | None, announced_port: int) -> LineRewrite:
    new = line[:start] + text + line[end:]
    return LineRewrite(new, len(new) - len(line), command, family, announced, announced_port)
