"""Forwarded packets on the wire: a binary header, the packet's L3 bytes, an HMAC-SHA256 tag.

How it works. A node that holds a packet of a session another node owns sends it to the owner in
one UDP datagram (docs/forwarding.md). Layout, network byte order:

```
offset size  field
 0      2    magic b"FW"
 2      1    version (1)
 3      1    flags: 0x01 FORWARDED (always set: the packet was forwarded once and is never
             forwarded again), 0x02 SEGMENT (one segment of a GSO packet the sender split)
 4      8    seq: the sender's counter, +1 per datagram, starting at its wall clock in
             microseconds (a restarted sender goes on above its old numbers)
12      8    ts: the sender's wall clock, milliseconds
20      1    hook: where the sender's kernel queued the packet (netfilter's numbers:
             0 PREROUTING, 1 INPUT, 2 FORWARD, 3 OUTPUT, 4 POSTROUTING; 255 unknown)
21      1    N: length of the sender's node id (1-64, A-Z a-z 0-9 _ . : -)
22      1    I: length of the input interface's name (0-15, 0: none)
23      1    O: length of the output interface's name (0-15, 0: none)
24      4    mark: the packet's netfilter mark on the sender
28      N    node id; then I bytes of iif, O bytes of oif
...          the packet: IPv4 or IPv6 L3 bytes, as NFQUEUE gave them (GSO packets segmented)
end-32  32   HMAC-SHA256 of everything before it, keyed with the forwarding key
```

The forwarding key is derived from the cluster's sync key (fw.sync.codec.load_key) and the
cluster's name: HMAC-SHA256(sync key, "fw forwarding 1" NUL cluster). A tag can therefore never be
taken for a sync message's MAC, and clusters sharing a key never accept each other's packets.

`Sealer.seal` builds datagrams (each call takes the next sequence number); `parse` reads a
datagram's fields without trusting them and `authentic` checks its tag in constant time
(`keyed` sets the key up once). Pure:
no I/O; clocks are arguments. What a receiver refuses, and why, is fw.sync.forwarding.gate.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from fw.sync.codec import NAME

MAGIC = b"FW"
VERSION = 1
FORWARDED = 0x01
SEGMENT = 0x02
KNOWN_FLAGS = FORWARDED | SEGMENT
HOOKS = {"PREROUTING": 0, "INPUT": 1, "FORWARD": 2, "OUTPUT": 3, "POSTROUTING": 4}
UNKNOWN_HOOK = 255
IFNAME_MAX = 15  # IFNAMSIZ - 1
TAG_SIZE = 32
HEADER = struct.Struct("!2sBBQQBBBBI")
HEADER_MAX = HEADER.size + 64 + 2 * IFNAME_MAX
OVERHEAD_MAX = HEADER_MAX + TAG_SIZE  # bytes a datagram adds to the packet, at most
KEY_LABEL = b"fw forwarding 1\0"


class Malformed(ValueError):
    """A datagram that does not follow the format; the message says what is wrong."""


def forwarding_key(sync_key: bytes, cluster: str) -> bytes:
    """The key of the cluster's forwarding tags, derived from its sync key."""
    return hmac.new(sync_key, KEY_LABEL + cluster.encode(), hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class Datagram:
    """A datagram's fields as read (`parse`), not yet authenticated."""

    flags: int
    seq: int
    ts_ms: int
    hook: int
    node: str
    iif: str | None
    oif: str | None
    mark: int
    packet: bytes

    @property
    def segment(self) -> bool:
        return bool(self.flags & SEGMENT)


def _name(raw: bytes, what: str) -> str:
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise Malformed(f"{what} is not ASCII") from None
    if not text.isprintable() or " " in text or "/" in text:
        raise Malformed(f"{what} {text!r} is not an interface name")
    return text


def parse(raw: bytes) -> Datagram:
    """The fields of a datagram; Malformed if it does not follow the format (tag not checked)."""
    if len(raw) < HEADER.size + TAG_SIZE:
        raise Malformed(f"{len(raw)} bytes, shorter than a header and a tag")
    magic, version, flags, seq, ts_ms, hook, n, i, o, mark = HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise Malformed("not a forwarded packet (magic)")
    if version != VERSION:
        raise Malformed(f"format version {version}, we speak {VERSION}")
    if not flags & FORWARDED or flags & ~KNOWN_FLAGS:
        raise Malformed(f"flags 0x{flags:02x}")
    if hook > HOOKS["POSTROUTING"] and hook != UNKNOWN_HOOK:
        raise Malformed(f"hook {hook}")
    if not 1 <= n <= 64 or i > IFNAME_MAX or o > IFNAME_MAX:
        raise Malformed("a name's length is out of range")
    start = HEADER.size + n + i + o
    end = len(raw) - TAG_SIZE
    if start >= end:
        raise Malformed("no packet")
    node = raw[HEADER.size:HEADER.size + n].decode("ascii", "replace")
    if not NAME.fullmatch(node):
        raise Malformed("the node id is not a node name")
    at = HEADER.size + n
    iif = _name(raw[at:at + i], "iif") if i else None
    oif = _name(raw[at + i:start], "oif") if o else None
    packet = raw[start:end]
    if packet[0] >> 4 not in (4, 6):
        raise Malformed(f"IP version {packet[0] >> 4}")
    return Datagram(flags, seq, ts_ms, hook, node, iif, oif, mark, packet)


def keyed(key: bytes):
    """An HMAC-SHA256 object with the key set up, to be copied per datagram (cheaper than new)."""
    return hmac.new(key, digestmod=hashlib.sha256)


def authentic(prepared, raw: bytes) -> bool:
    """Whether the datagram's tag is right (constant-time comparison); `prepared` is keyed(key)."""
    mac = prepared.copy()
    mac.update(memoryview(raw)[:-TAG_SIZE])
    return hmac.compare_digest(mac.digest(), raw[-TAG_SIZE:])


class Sealer:
    """Builds our datagrams for one cluster's key and our node id."""

    def __init__(self, key: bytes, node: str, first_seq: int):
        if not NAME.fullmatch(node):
            raise ValueError("a node id is 1-64 of A-Z a-z 0-9 _ . : -")
        self.node = node.encode("ascii")
        self.seq = first_seq
        self._mac = keyed(key)

    def seal(self, packet: bytes, now_wall: float, hook: int = UNKNOWN_HOOK, iif: str | None = None,
             oif: str | None = None, mark: int = 0, segment: bool = False) -> bytes:
        """One datagram carrying `packet`; ValueError for names or numbers the format cannot carry."""
        iif_raw, oif_raw = (iif or "").encode("ascii"), (oif or "").encode("ascii")
        if len(iif_raw) > IFNAME_MAX or len(oif_raw) > IFNAME_MAX:
            raise ValueError("an interface name has at most 15 characters")
        if not packet or packet[0] >> 4 not in (4, 6):
            raise ValueError("not an IPv4 or IPv6 packet")
        self.seq += 1
        flags = FORWARDED | (SEGMENT if segment else 0)
        head = HEADER.pack(MAGIC, VERSION, flags, self.seq, int(now_wall * 1000), hook, len(self.node),
                           len(iif_raw), len(oif_raw), mark)  # fmt: skip
        body = b"".join((head, self.node, iif_raw, oif_raw, packet))
        mac = self._mac.copy()
        mac.update(body)
        return body + mac.digest()
