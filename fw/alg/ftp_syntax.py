"""The arguments of FTP's data-connection announcements, bytes in, (family, address, port) out.

PORT and the 227 reply carry RFC 959's h1,h2,h3,h4,p1,p2. RFC 1123 4.1.2.6 warns that the 227 text
around the numbers is not standardised (parentheses may be missing), so a 227 is searched for the
six numbers; a PORT argument must be exactly them. Spaces around the commas are tolerated. EPRT and
the 229 reply follow RFC 2428: <d>net-prt<d>net-addr<d>tcp-port<d>, and (<d><d><d>tcp-port<d>),
where the delimiter <d> is any printable ASCII character (33-126). EPRT's fields are whatever lies
between the delimiters, so a delimiter that also occurs inside a field gives a malformed argument,
never a misread one. Every failure raises BadArgument with a short reason.

Only the bytes regular expressions below look at untrusted text: digits are [0-9], never Unicode
digits, and numbers are bounded in length before int() sees them.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv6Address

NET_PRT = {b"1": 4, b"2": 6}  # RFC 2428 address families (IANA numbers)

_NUMBER = rb"\s*([0-9]{1,3})\s*"
_SIX_NUMBERS = re.compile(rb"(?<![0-9,])" + b",".join([_NUMBER] * 6) + rb"(?![0-9])(?!\s*,)")
_EXTENDED_PASSIVE = re.compile(rb"\(([\x21-\x7e])\1\1([0-9]{1,5})\1\)")
_PORT_TEXT = re.compile(rb"[0-9]{1,5}")
_ADDRESS_TEXT = {4: re.compile(rb"[0-9]{1,3}(?:\.[0-9]{1,3}){3}"), 6: re.compile(rb"[0-9A-Fa-f:.]{2,45}")}
_ADDRESS_CLASS = {4: IPv4Address, 6: IPv6Address}


class BadArgument(ValueError):
    """An announcement whose argument does not parse: refused as "malformed"."""


def port_argument(arg: bytes) -> tuple[int, bytes, int]:
    """`PORT 198,51,100,10,156,64` -> (4, address, 40000)."""
    match = _SIX_NUMBERS.fullmatch(arg)
    if match is None:
        raise BadArgument("not h1,h2,h3,h4,p1,p2")
    return _host_port(match)


def passive_reply(text: bytes) -> tuple[int, bytes, int]:
    """`227 Entering Passive Mode (203,0,113,10,82,9).`, parentheses or not -> (4, address, 21001)."""
    return passive_reply_span(text)[0]


def passive_reply_span(text: bytes) -> tuple[tuple[int, bytes, int], tuple[int, int]]:
    """`passive_reply`, and where in `text` its six numbers lie, first digit to last (what NAT
    replaces; spaces around them stay)."""
    match = _SIX_NUMBERS.search(text)
    if match is None:
        raise BadArgument("no h1,h2,h3,h4,p1,p2 in the 227 reply")
    return _host_port(match), (match.start(1), match.end(6))


def eprt_argument(arg: bytes) -> tuple[int, bytes, int]:
    """`EPRT |2|2001:db8:1::10|40000|` or `EPRT !1!198.51.100.10!40000!` -> (family, address, port)."""
    if len(arg) < 2 or not 33 <= arg[0] <= 126:
        raise BadArgument("no delimiter")
    fields = arg.split(arg[:1])
    if len(fields) != 5 or fields[0] or fields[4]:
        raise BadArgument("not <d>net-prt<d>net-addr<d>tcp-port<d>")
    family = NET_PRT.get(fields[1])
    if family is None:
        raise BadArgument("net-prt is not 1 or 2")
    return family, address(family, fields[2]), port_number(fields[3])


def extended_passive_reply(text: bytes) -> int:
    """`229 Entering Extended Passive Mode (|||6446|)` -> 6446."""
    return extended_passive_span(text)[0]


def extended_passive_span(text: bytes) -> tuple[int, tuple[int, int]]:
    """`extended_passive_reply`, and the span of <d><d><d>port<d> inside the parentheses."""
    match = _EXTENDED_PASSIVE.search(text)
    if match is None:
        raise BadArgument("no (<d><d><d>port<d>) in the 229 reply")
    return port_number(match.group(2)), (match.start() + 1, match.end() - 1)


def address(family: int, text: bytes) -> bytes:
    """Dotted-quad or RFC 4291 text -> raw address bytes (no zone index, no leading zeros)."""
    if _ADDRESS_TEXT[family].fullmatch(text) is None:
        raise BadArgument(f"not an IPv{family} address")
    try:
        return _ADDRESS_CLASS[family](text.decode("ascii")).packed
    except ValueError:
        raise BadArgument(f"not an IPv{family} address") from None


def port_number(text: bytes) -> int:
    if _PORT_TEXT.fullmatch(text) is None:
        raise BadArgument("port is not a number")
    return _checked_port(int(text))


def _host_port(match: re.Match) -> tuple[int, bytes, int]:
    numbers = [int(n) for n in match.groups()]
    if max(numbers) > 255:
        raise BadArgument("a number above 255")
    return 4, bytes(numbers[:4]), _checked_port(numbers[4] * 256 + numbers[5])


def _checked_port(port: int) -> int:
    if not 0 < port <= 65535:
        raise BadArgument(f"port {port} out of range")
    return port
