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
(`keyed` sets the key up once). Pure: no I/O; clocks are arguments. What a receiver refuses,
and why, is fw.sync.forwarding.gate.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
from typing import NamedTuple

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
NODE_BYTES = re.compile(NAME.pattern.encode())
IFNAME_BYTES = re.compile(rb"[!-.0-~]{1,15}")  # printable ASCII but space and slash


class Malformed(ValueError):
    """A datagram that does not follow the format; the message says what is wrong."""


def forwarding_key(sync_key: bytes, cluster: str) -> bytes:
    """The key of the cluster's forwarding tags, derived from its sync key."""
    return hmac.new(sync_key, KEY_LABEL + cluster.encode(), hashlib.sha256).digest()


class Datagram(NamedTuple):
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


def parse(raw: bytes) -> Datagram:
    """The fields of a datagram; Malformed if it does not follow the format (tag not checked)."""
    if len(raw) < HEADER.size + TAG_SIZE:
        raise Malformed(f"{len(raw)} bytes, shorter than a header and a tag")
    magic, version, flags, seq, ts_ms, hook, n, i, o, mark = HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise Malformed("not a forwarded packet (magic)")
    if version != VERSION:
        raise Malformed(f"format version {version}, we speak {VERSION}")
    if not flags & FORWARDED or flags & ~KNOWN_FLAGS or (hook > HOOKS["POSTROUTING"] and hook != UNKNOWN_HOOK):
        raise Malformed(f"flags 0x{flags:02x}, hook {hook}")
    at, start = HEADER.size + n, HEADER.size + n + i + o
    if not 1 <= n <= 64 or i > IFNAME_MAX or o > IFNAME_MAX or start >= len(raw) - TAG_SIZE:
        raise Malformed("a name's length is out of range, or no packet")
    if NODE_BYTES.fullmatch(raw, HEADER.size, at) is None:
        raise Malformed("the node id is not a node name")
    bad_iif = i and IFNAME_BYTES.fullmatch(raw, at, at + i) is None
    if bad_iif or (o and IFNAME_BYTES.fullmatch(raw, at + i, start) is None):
        raise Malformed("an interface name is not one")
    if raw[start] >> 4 not in (4, 6):
        raise Malformed(f"IP version {raw[start] >> 4}")
    return Datagram(flags, seq, ts_ms, hook, raw[HEADER.size:at].decode(), raw[at:at + i].decode() if i else None,
                    raw[at + i:start].decode() if o else None, mark, raw[start:-TAG_SIZE])  # fmt: skip


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
        self._names: dict[tuple, tuple[int, int, bytes]] = {}  # (iif, oif) -> lengths, node+iif+oif bytes

    def _encoded(self, iif: str | None, oif: str | None) -> tuple[int, int, bytes]:
        iif_raw, oif_raw = (iif or "").encode("ascii"), (oif or "").encode("ascii")
        for raw in (iif_raw, oif_raw):
            if raw and IFNAME_BYTES.fullmatch(raw) is None:
                raise ValueError(f"{raw!r} is not an interface name (at most 15 characters)")
        if len(self._names) > 1024:
            self._names.clear()
        names = self._names[iif, oif] = (len(iif_raw), len(oif_raw), self.node + iif_raw + oif_raw)
        return names

    def seal(self, packet: bytes, now_wall: float, hook: int = UNKNOWN_HOOK, iif: str | None = None,
             oif: str | None = None, mark: int = 0, segment: bool = False) -> bytes:
        """One datagram carrying `packet`; ValueError for names or numbers the format cannot carry."""
        names = self._names.get((iif, oif)) or self._encoded(iif, oif)
        if not packet or packet[0] >> 4 not in (4, 6):
            raise ValueError("not an IPv4 or IPv6 packet")
        try:
            head = HEADER.pack(MAGIC, VERSION, FORWARDED | (SEGMENT if segment else 0), self.seq + 1,
                               int(now_wall * 1000), hook, len(self.node), names[0], names[1], mark)  # fmt: skip
        except struct.error as error:  # a hook over 255, a mark over 32 bits
            raise ValueError(str(error)) from None
        self.seq += 1
        body = b"".join((head, names[2], packet))
        mac = self._mac.copy()
        mac.update(body)
        return body + mac.digest()
