# cython: annotation_typing=False
"""Pick the translated (address, port) of a new session from a pool: kept when free, else the next.

How it works. A `Pool` is one `nat` entry's addresses (one, or a range a-b, IPv4 or IPv6; none for
masquerade, whose address the caller passes per session) and port range (default 1024-65535;
ICMP query identifiers use the same range when one is given, else 0-65535). For each protocol and
address in use it keeps a bytearray, one byte per port of its range: 1 free, 0 handed out (with a
reference count beside it for a port several sessions share). `allocate` then costs at most two
`bytearray.find` calls (memchr, in C) however full the pool is, plus a call of `taken` per
candidate: no Python loop over 64k ports.

The choice, deterministic (the same calls in the same order give the same answers):
1. the address: the pool's addresses are tried from the one a stable hash (CRC-32) of the original
   source address names (so a client keeps its address, as Linux's find_best_ips_proto), then the
   following ones, wrapping;
2. the port: the original port is kept when it lies in the range (the node's slice) and the
   translated 5-tuple is not `taken` (as Linux: even if the port is in use toward other peers);
   otherwise the next port upward, wrapping within the range, that this pool has not handed out
   and that is not `taken`.
Nothing free at any address: `allocate` returns None (the engine drops with `nat:exhausted`).

`Pool(..., rotate=True)` (full_nat's pools, fw/engine_lb.py): when the original port is not kept,
the search starts after the last port this pool handed out at that address instead of at the
range's start, so a port a session just released is handed out again only after the rest of the
range (as Linux spreads connect()'s ports). The pool only knows whether the firewall's table
holds a tuple; the real server may still hold it in TIME_WAIT (60 s on Linux, longer than fw's
CLOSE timeout of 10 s), and a SYN reusing that tuple then meets the old connection's ACK.

`taken(address, port) -> bool` says whether the session table already holds the translated
5-tuple (the engine knows the peer and protocol); a set of (address, port) pairs works too.
Ports handed out are the pool's until `release`; after a restart or an HA sync the engine calls
`claim` for every restored session.

Active/active HA: with `nodes=N`, node `node` (0..N-1) uses only its own slice of the port range,
the contiguous block [lo + node*size//N, lo + (node+1)*size//N), kept port included, so no two
nodes ever hand out the same translated endpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from zlib import crc32

DEFAULT_PORTS = (1024, 65535)
ICMP_IDS = (0, 65535)
ICMP_PROTOS = frozenset((1, 58))


class Pool:
    """One nat entry's translated addresses and ports (see the module docstring)."""

    __slots__ = ("family", "_first", "_count", "_ranges", "_free", "_refs", "_next")

    def __init__(self, family: int, first: bytes | None = None, last: bytes | None = None,
                 ports: tuple[int, int] | None = None, node: int = 0, nodes: int = 1,
                 rotate: bool = False) -> None:
        if not 0 <= node < nodes:
            raise ValueError(f"node {node} is not among {nodes} nodes")
        self.family = family
        self._first = None if first is None else int.from_bytes(first, "big")
        last_value = self._first if last is None else int.from_bytes(last, "big")
        self._count = 0 if first is None else last_value - self._first + 1
        if first is not None and self._count < 1:
            raise ValueError("an address range whose end is before its start")
        self._ranges = {
            "ports": node_slice(ports or DEFAULT_PORTS, node, nodes),
            "icmp": node_slice(ports or ICMP_IDS, node, nodes),
        }
        self._free: dict[tuple[int, bytes], bytearray] = {}
        self._refs: dict[tuple[int, bytes, int], int] = {}
        # rotate: (proto, address) -> index in the range after the last port handed out there
        self._next: dict[tuple[int, bytes], int] | None = {} if rotate else None

    def port_range(self, proto: int) -> tuple[int, int]:
        """The (first, last) port or identifier this node hands out for `proto`."""
        return self._ranges["icmp" if proto in ICMP_PROTOS else "ports"]

    def allocate(self, proto: int, src: bytes, port: int,
                 taken: Callable[[bytes, int], bool] | Container, address: bytes | None = None,
                 ) -> tuple[bytes, int] | None:
        """The translated (address, port) for a new session from `src`:`port`, or None if full.

        `address` (masquerade) replaces the pool's addresses with that one.
        """
        is_taken = taken if callable(taken) else _pairs(taken)
        for candidate in self._addresses(src, address):
            found = self._port_at(proto, candidate, port, is_taken)
            if found is not None:
                self.claim(proto, candidate, found)
                return candidate, found
        return None

    def claim(self, proto: int, address: bytes, port: int) -> None:
        """Mark `address`:`port` as handed out (a new, restored or synced session)."""
        lo, hi = self.port_range(proto)
        if not lo <= port <= hi:
            return                                  # not ours to hand out (another node's slice)
        key = (proto, address, port)
        self._refs[key] = self._refs.get(key, 0) + 1
        self._bitmap(proto, address)[port - lo] = 0

    def release(self, proto: int, address: bytes, port: int) -> None:
        """A session holding `address`:`port` is gone; the port is free when no other holds it."""
        key = (proto, address, port)
        count = self._refs.get(key, 0)
        if count > 1:
            self._refs[key] = count - 1
            return
        if count:
            del self._refs[key]
            lo = self.port_range(proto)[0]
            self._free[proto, address][port - lo] = 1

    def in_use(self, proto: int) -> int:
        """How many distinct (address, port) pairs of `proto` are handed out (for metrics)."""
        return sum(1 for key in self._refs if key[0] == proto)

    def _addresses(self, src: bytes, address: bytes | None):
        if address is not None:
            yield address
            return
        count = self._count
        if not count:
            return
        width = 4 if self.family == 4 else 16
        start = crc32(src) % count
        for step in range(count):
            yield (self._first + (start + step) % count).to_bytes(width, "big")

    def _port_at(self, proto: int, address: bytes, port: int, is_taken) -> int | None:
        lo, hi = self.port_range(proto)
        if lo <= port <= hi and not is_taken(address, port):
            return port
        free = self._bitmap(proto, address)
        rotating = self._next
        if lo <= port <= hi:
            start = min(max(port + 1, lo), hi + 1) - lo
        else:
            start = 0 if rotating is None else rotating.get((proto, address), 0)
        for begin, end in ((start, len(free)), (0, start)):
            index = free.find(1, begin, end)
            while index >= 0:
                if not is_taken(address, lo + index):
                    if rotating is not None:
                        rotating[proto, address] = index + 1
                    return lo + index
                index = free.find(1, index + 1, end)
        return None

    def _bitmap(self, proto: int, address: bytes) -> bytearray:
        free = self._free.get((proto, address))
        if free is None:
            lo, hi = self.port_range(proto)
            free = self._free[proto, address] = bytearray(b"\x01") * (hi - lo + 1)
        return free


def node_slice(ports: tuple[int, int], node: int, nodes: int) -> tuple[int, int]:
    """Node `node` of `nodes`: its contiguous share of the inclusive range `ports`."""
    lo, hi = ports
    size = hi - lo + 1
    first, last = lo + node * size // nodes, lo + (node + 1) * size // nodes - 1
    if last < first:
        raise ValueError(f"the range {lo}-{hi} has no port for node {node} of {nodes}")
    return first, last


def _pairs(container: Container) -> Callable[[bytes, int], bool]:
    return lambda address, port: (address, port) in container
