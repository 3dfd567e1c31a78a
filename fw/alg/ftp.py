"""The FTP ALG: control-channel payload in, expectations (pinholes for data sessions) out.

How it works. Each direction is a LineStream (fw/alg/stream.py): in-order bytes, each once, cut
into lines. Client lines are commands, looked up in COMMANDS by their verb (case-insensitive,
Telnet IAC prefixes such as ABOR's IP/DM dropped); server lines are replies (RFC 959 4.2: "227 "
is final, "227-" opens a multi-line reply that only "227 " closes; lines in between are text).

Active mode: PORT / EPRT from the client announce where the server shall connect; the expectation
is src=server, dst=the announced address, which must be the client's own control address.
Passive mode: the 227 / 229 reply announces where the client shall connect: src=client,
dst=the server's control address (a 227 names it, and it must be that address; a 229 names only
the port). Any source port is admitted: real servers do not always use port 20.

Replies are paired with commands through `pending`, a FIFO of the client's outstanding commands:
every final reply (2yz-5yz; 1yz is preliminary) consumes one entry, so pipelined commands meet
their own replies. A 227 (229) consumes up to and including the oldest outstanding PASV (EPSV):
servers answer in order, so entries before it lost their replies (payload we could not parse).
A 227/229 with no PASV/EPSV outstanding is refused as "malformed" (and logged): it is a broken
server, a desynchronised stream or injected text, and an operator wants to see all three. Replies
with nothing pending (the 220 greeting, an unsolicited 421) consume nothing.

`unpaired` (set by HA sync, fw.sync.tracker, on the sessions of a sync cluster): a firewall on an
asymmetric path may see the server's replies but never the client's commands, which cross its
peer. There a 227/229 with no PASV/EPSV outstanding is judged on its own (the address must be the
server's, the port 1024 or above), as nf_conntrack_ftp judges every one; one that meets its command
is paired as always. Its expectation travels to the peer with the session (the client's data
connection crosses the peer too).

EPSV ALL (RFC 2428 4) takes effect when the client sends it, so that a PORT pipelined behind it is
refused too; a final reply other than 2yz to it lifts it again. Afterwards PORT, EPRT and PASV are
refused as "epsv-all". A command refused on sight is queued as "!VERB", so the reply it draws is
paired but neither used nor refused twice.

Refusals: an address other than the peer's own ("bounce", RFC 2577), a port below 1024
("low-port"), an address of the other family ("family-mismatch"; an IPv4-mapped IPv6 address
equal to the peer's IPv4 address is accepted as that address), an argument that does not parse
or a line cut at MAX_LINE ("malformed"). The control session always continues.
"""

from __future__ import annotations

import re
from collections import deque

from fw.alg.base import AlgSpec, Expectation, Refusal, shorten
from fw.alg.ftp_syntax import (
    BadArgument,
    eprt_argument,
    extended_passive_reply,
    passive_reply,
    port_argument,
)
from fw.alg.stream import LOST, LineStream

FORMAT_VERSION = 1
MAX_PENDING = 64  # outstanding commands remembered; the oldest is dropped beyond (and counted)
FIRST_PRIVILEGED = 1024  # announced ports below are refused ("low-port")
IPV4_MAPPED_PREFIX = bytes(10) + b"\xff\xff"  # RFC 4291 2.5.5.2
FAMILY_NUMBER = {4: b"1", 6: b"2"}  # EPSV's optional argument, RFC 2428 net-prt

_TELNET_COMMANDS = re.compile(rb"(?:\xff[\xf0-\xfe])+")  # IAC IP, IAC DM ... before ABOR
_REPLY = re.compile(rb"[1-5][0-9][0-9](?:[ -]|$)")


class FtpAlg:
    """Per-control-session FTP state. `feed` is the only entry point the engine uses per packet."""

    name = "ftp"
    SPEC: AlgSpec  # set below the class
    __slots__ = ("family", "client", "server", "peers", "_streams", "_pending", "_dropped", "_epsv_all",
                 "_multiline", "_first_line", "unpaired")  # fmt: skip

    def __init__(self, family: int, client: bytes, server: bytes) -> None:
        self.family = family
        self.client = client
        self.server = server
        self.peers = None  # fw.alg.Peers, set by AlgSpec.create (NAT: peers.translated)
        self._streams = (LineStream(), LineStream())  # [from_client]: server's, client's bytes
        self._pending: deque[str] = deque()  # outstanding client commands, oldest first
        self._dropped = 0  # pending entries dropped at MAX_PENDING
        self._epsv_all = False
        self._multiline: bytes | None = None  # the code of a multi-line reply in progress
        self._first_line: bytes | None = None  # its first line (a 227 may carry the numbers there)
        self.unpaired = False  # HA sync: a 227/229 without its command is judged alone (see above)

    def feed(self, from_client: bool, seq: int, payload: bytes) -> list[Expectation | Refusal]:
        """Payload of one TCP segment of the control session; seq is its first payload byte's."""
        lines: list = []
        self._streams[from_client].feed(seq, payload, lines)
        if not lines:
            return lines
        out: list[Expectation | Refusal] = []
        on_line = self._command if from_client else self._reply
        for item in lines:
            if item is LOST:
                if not from_client:  # a reply's end may have been lost: start afresh
                    self._multiline = self._first_line = None
            else:
                on_line(item[0], item[1], out)
        return out

    @property
    def counters(self) -> dict[str, int]:
        """Segments and lines this ALG could not use (the engine counts Refusals itself)."""
        streams = self._streams
        return {
            "retransmitted": sum(s.retransmitted for s in streams),
            "out_of_order": sum(s.out_of_order for s in streams),
            "overlong_lines": sum(s.overlong for s in streams),
            "pending_dropped": self._dropped,
        }

    # -- client to server: commands -----------------------------------------------------------

    def _command(self, line: bytes, truncated: bool, out: list) -> None:
        telnet = _TELNET_COMMANDS.match(line)
        words = (line[telnet.end() :] if telnet else line).split(None, 1)
        if not words:
            return  # an empty line: servers may or may not answer it, so expect nothing
        verb = words[0].upper()
        handler = COMMANDS.get(verb)
        if handler is None:
            self._expect_reply(verb.decode() if verb.isalpha() and len(verb) <= 4 else "?")
            return
        arg = words[1].strip() if len(words) > 1 else b""
        handler(self, arg, line, truncated, out)

    def _port(self, arg: bytes, line: bytes, truncated: bool, out: list) -> None:
        self._expect_reply("PORT")
        if self._refused_on_sight("PORT", line, truncated, out):
            return
        try:
            out.append(self._judge("PORT", *port_argument(arg), active=True, line=line))
        except BadArgument as error:
            out.append(_malformed("PORT", line, error))

    def _eprt(self, arg: bytes, line: bytes, truncated: bool, out: list) -> None:
        self._expect_reply("EPRT")
        if self._refused_on_sight("EPRT", line, truncated, out):
            return
        try:
            out.append(self._judge("EPRT", *eprt_argument(arg), active=True, line=line))
        except BadArgument as error:
            out.append(_malformed("EPRT", line, error))

    def _pasv(self, arg: bytes, line: bytes, truncated: bool, out: list) -> None:
        refused = self._refused_on_sight("PASV", line, truncated, out)
        self._expect_reply("!PASV" if refused else "PASV")

    def _epsv(self, arg: bytes, line: bytes, truncated: bool, out: list) -> None:
        refusal = None
        if truncated:
            refusal = Refusal("malformed", "EPSV", "line too long: " + shorten(line))
        elif arg.upper() == b"ALL":
            self._epsv_all = True
            self._expect_reply("EPSV ALL")
            return
        elif arg and arg in FAMILY_NUMBER.values() and arg != FAMILY_NUMBER[self.family]:
            refusal = Refusal("family-mismatch", "EPSV", shorten(line))
        elif arg and arg != FAMILY_NUMBER[self.family]:
            refusal = Refusal("malformed", "EPSV", shorten(line))
        if refusal is not None:
            out.append(refusal)
        self._expect_reply("EPSV" if refusal is None else "!EPSV")

    def _refused_on_sight(self, command: str, line: bytes, truncated: bool, out: list) -> bool:
        if self._epsv_all:
            out.append(Refusal("epsv-all", command, shorten(line)))
        elif truncated:
            out.append(Refusal("malformed", command, "line too long: " + shorten(line)))
        else:
            return False
        return True

    def _expect_reply(self, command: str) -> None:
        if len(self._pending) >= MAX_PENDING:
            self._pending.popleft()
            self._dropped += 1
        self._pending.append(command)

    # -- server to client: replies ------------------------------------------------------------

    def _reply(self, line: bytes, truncated: bool, out: list) -> None:
        code = self._multiline
        if code is not None:  # inside a multi-line reply: only "<code> " ends it
            if line[:3] == code and line[3:4] in (b" ", b""):
                first, self._multiline, self._first_line = self._first_line, None, None
                self._final_reply(code, line, truncated, first, out)
            return
        if _REPLY.match(line) is None:
            return  # not a reply line: nothing to pair
        if line[3:4] == b"-":
            self._multiline, self._first_line = line[:3], None if truncated else line
            return
        self._final_reply(line[:3], line, truncated, None, out)

    def _final_reply(self, code: bytes, line: bytes, truncated: bool, first, out: list) -> None:
        if code[0] == 0x31:
            return  # 1yz: preliminary, the command's final reply is still to come
        announcing = ANNOUNCING_REPLIES.get(code)
        if announcing is None:
            if self._pending and self._pending.popleft() == "EPSV ALL" and code[0] != 0x32:
                self._epsv_all = False  # the server refused EPSV ALL
            return
        command, handler = announcing
        entry = self._take(command)
        if entry is None and self.unpaired:
            entry = command  # the command crossed the peer (an asymmetric path): judged on its own
        if entry is None:
            out.append(Refusal("malformed", command, f"no {command} outstanding: " + shorten(line)))
        elif entry != command:
            return  # "!PASV": refused when the client sent it, not refused twice
        elif truncated:
            out.append(_malformed(command, line, "line too long"))
        else:  # the numbers are on the final line, or on the first line of a multi-line reply
            out.append(handler(self, [line[4:]] if first is None else [line[4:], first[4:]], line))

    def _take(self, command: str) -> str | None:
        """Consume the pending entries up to and including the oldest `command` (or "!command")."""
        refused = "!" + command
        pending = self._pending
        for index, entry in enumerate(pending):
            if entry == command or entry == refused:
                for _ in range(index + 1):
                    pending.popleft()
                return entry
        return None

    def _entering_passive(self, texts: list, line: bytes) -> Expectation | Refusal:
        for text in texts:
            try:
                return self._judge("PASV", *passive_reply(text), active=False, line=line)
            except BadArgument as error:
                reason = error
        return _malformed("PASV", line, reason)

    def _entering_extended_passive(self, texts: list, line: bytes) -> Expectation | Refusal:
        for text in texts:
            try:
                port = extended_passive_reply(text)
            except BadArgument as error:
                reason = error
                continue
            return self._judge("EPSV", self.family, self.server, port, active=False, line=line)
        return _malformed("EPSV", line, reason)

    # -- the checks every announcement passes ------------------------------------------------

    def _judge(self, command: str, family: int, address: bytes, port: int, *, active: bool,
               line: bytes) -> Expectation | Refusal:
        """Active: the server connects to the client; passive: the client connects to the server.

        Through NAT (peers.translated) an active announcement is read as the server sees it (the
        engine rewrote it to the client's translated address), and its expectation is for the
        server's real address; a passive one names the address the client connected to."""
        if active:
            ends = self.peers.outside if self.peers is not None else None
            peer, src = (self.client, self.server) if ends is None else (ends.client, ends.server)
        else:
            peer, src = self.server, self.client
        if family != self.family:
            if _same_address_other_family(address, self.family) != peer:
                return Refusal("family-mismatch", command, shorten(line))
            address = peer
        elif address != peer:
            return Refusal("bounce", command, shorten(line))
        if port < FIRST_PRIVILEGED:
            return Refusal("low-port", command, shorten(line))
        return Expectation(self.family, src, address, port, 6, command)

    # -- snapshots ----------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """Plain data (JSON-ready) for snapshots and HA sync."""
        return {
            "alg": self.name, "version": FORMAT_VERSION, "family": self.family,
            "client": self.client.hex(), "server": self.server.hex(),
            "client_stream": self._streams[True].to_dict(),
            "server_stream": self._streams[False].to_dict(),
            "pending": list(self._pending), "pending_dropped": self._dropped,
            "epsv_all": self._epsv_all,
            "multiline": None if self._multiline is None else self._multiline.decode("ascii"),
            "first_line": None if self._first_line is None else self._first_line.hex(),
            **({"unpaired": True} if self.unpaired else {}),
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> FtpAlg:
        if d.get("alg") != cls.name or d.get("version") != FORMAT_VERSION:
            raise ValueError(f"not an ftp ALG state of version {FORMAT_VERSION}")
        alg = cls(int(d["family"]), bytes.fromhex(d["client"]), bytes.fromhex(d["server"]))
        alg._streams = (LineStream.from_dict(d["server_stream"]), LineStream.from_dict(d["client_stream"]))
        alg._pending = deque(str(entry) for entry in d["pending"][-MAX_PENDING:])
        alg._dropped = int(d["pending_dropped"])
        alg._epsv_all = bool(d["epsv_all"])
        alg._multiline = None if d["multiline"] is None else d["multiline"].encode("ascii")[:3]
        alg._first_line = None if d["first_line"] is None else bytes.fromhex(d["first_line"])
        alg.unpaired = bool(d.get("unpaired", False))
        return alg

    def __repr__(self) -> str:
        return f"FtpAlg(pending={list(self._pending)}, epsv_all={self._epsv_all})"


FtpAlg.SPEC = AlgSpec(name="ftp", proto=6, ports=(21,), timeout_key="ftp_expectation", default_timeout=300,
                      reason="related:ftp", event_type="ftp", cls=FtpAlg)
COMMANDS = {b"PORT": FtpAlg._port, b"EPRT": FtpAlg._eprt, b"PASV": FtpAlg._pasv, b"EPSV": FtpAlg._epsv}
ANNOUNCING_REPLIES = {  # final reply code -> (the command it answers, how to read it)
    b"227": ("PASV", FtpAlg._entering_passive),
    b"229": ("EPSV", FtpAlg._entering_extended_passive),
}


def _same_address_other_family(address: bytes, family: int) -> bytes | None:
    """The IPv4-mapped IPv6 form of an IPv4 address, or the IPv4 address an IPv6 one maps."""
    if family == 6:
        return IPV4_MAPPED_PREFIX + address
    return address[12:] if address[:12] == IPV4_MAPPED_PREFIX else None


def _malformed(command: str, line: bytes, reason) -> Refusal:
    return Refusal("malformed", command, f"{reason}: " + shorten(line))
