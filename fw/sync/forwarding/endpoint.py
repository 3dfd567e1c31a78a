"""The forwarding link's sockets: a non-blocking UDP receiver for the daemon's poll loop, a sender.

How it works. `Receiver` binds one UDP socket (the node's `--forward-listen` address), marked with
SO_MARK before it binds so that its traffic through hooked INPUT/OUTPUT chains is never queued to
ourselves, non-blocking: the loop polls `fileno()` and calls `receive()`, which reads what is
waiting (up to a batch, so one peer cannot starve the queue) and passes each datagram through the
Gate; it returns the admitted ones and counts the rest. `Sender.send()` seals a packet
(wire.Sealer) and sends it without waiting: a full socket buffer or an unreachable peer is counted
and the packet is given up (the caller then decides it locally or drops it). `Sender.forward()` first
splits a TCP packet that would not fit the sync link's MTU in one datagram (GSO super-packets,
fw.packet.gso) and sends each segment flagged SEGMENT; a packet that fits gets its transport checksum computed in
full (gso.finish: NFQUEUE hands up CHECKSUM_PARTIAL packets as they are). A sender may share the receiver's socket,
so that its datagrams leave from the published listen address.
"""

from __future__ import annotations

import errno
import socket
import time
from collections import Counter
from collections.abc import Callable

from fw.packet import gso
from fw.sync.forwarding.gate import MAX_PACKET, Gate, Refused
from fw.sync.forwarding.wire import OVERHEAD_MAX, Datagram, Sealer

SO_MARK = getattr(socket, "SO_MARK", 36)
SO_RCVBUFFORCE, SO_SNDBUFFORCE = 33, 32  # Linux's numbers (not in the socket module)
BUFFER = 4 << 20  # socket buffer asked for (the kernel doubles it for its bookkeeping)
BATCH = 256  # datagrams read per receive() call at most
DATAGRAM_MAX = 65535
DEFAULT_PORT = 6380


def udp_socket(family: int, mark: int = 0) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if mark:
            sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _buffer(sock: socket.socket, option: int, size: int) -> None:
    """A socket buffer of `size` bytes: forced past net.core.[rw]mem_max where we may (root)."""
    forced = {socket.SO_RCVBUF: SO_RCVBUFFORCE, socket.SO_SNDBUF: SO_SNDBUFFORCE}[option]
    try:
        sock.setsockopt(socket.SOL_SOCKET, forced, size)
    except OSError:  # not CAP_NET_ADMIN: capped by the sysctl
        sock.setsockopt(socket.SOL_SOCKET, option, size)


def parse_address(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """ "192.0.2.1:6380", "[2001:db8::1]:6380", or an address alone -> (address, port); ValueError."""
    host, port = text, str(default_port)
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text}: expected [ADDRESS]:PORT")
            port = rest[1:]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text}: the port is not 1 to 65535")
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        raise ValueError(f"{text}: {host!r} is not an IP address") from None
    return host, int(port)


class Receiver:
    """The listening socket and its gate; `receive()` when `fileno()` is readable."""

    def __init__(self, gate: Gate, address: tuple[str, int], mark: int = 0, buffer: int = BUFFER,
                 on_refused: Callable[[Refused, tuple], None] | None = None):  # fmt: skip
        """`on_refused(refusal, source)`: told of each refused datagram (the daemon's throttled
        anomaly events, fw.sync.forwarding.report.anomaly)."""
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.sock = udp_socket(family, mark)
        try:
            _buffer(self.sock, socket.SO_RCVBUF, buffer)
            self.sock.bind(address)
        except OSError:
            self.sock.close()
            raise
        self.gate = gate
        self.on_refused = on_refused
        self.counters: Counter = Counter()

    @property
    def address(self) -> tuple[str, int]:
        return self.sock.getsockname()[:2]

    def fileno(self) -> int:
        return self.sock.fileno()

    def receive(self, batch: int = BATCH, wall=time.time, mono=time.monotonic) -> list[tuple[Datagram, tuple]]:
        """The admitted datagrams waiting on the socket (with their source addresses), at most `batch`."""
        admitted, now_wall, now_mono = [], wall(), mono()
        for _ in range(batch):
            try:
                raw, source = self.sock.recvfrom(DATAGRAM_MAX)
            except BlockingIOError:
                break
            except OSError as error:  # ICMP errors of our own sends surface here (ECONNREFUSED)
                self.counters["errors:" + (errno.errorcode.get(error.errno) or "unknown")] += 1
                continue
            self.counters["datagrams"] += 1
            try:
                admitted.append((self.gate.admit(raw, now_wall, now_mono), source))
            except Refused as refusal:  # counted by the gate
                if self.on_refused is not None:
                    self.on_refused(refusal, source)
        return admitted

    def stats(self) -> dict:
        return {**self.gate.stats(), **dict(self.counters)}

    def close(self) -> None:
        self.sock.close()


class Sender:
    """Seals and sends packets to peers without waiting; counts what went and what did not."""

    def __init__(self, sealer: Sealer, mark: int = 0, sock: socket.socket | None = None, mtu: int = 1500,
                 max_packet: int = MAX_PACKET, clock=time.time):  # fmt: skip
        """`mtu`: the sync link's; `max_packet`: the largest packet the peers' gates take."""
        self.sealer = sealer
        self.mtu = mtu
        self.max_packet = max_packet
        self.mark = mark
        self.clock = clock
        self.shared = sock
        self.own: dict[int, socket.socket] = {}
        self.counters: Counter = Counter()

    def _socket_for(self, address: tuple[str, int]) -> socket.socket:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        if self.shared is not None and self.shared.family == family:
            return self.shared
        sock = self.own.get(family)
        if sock is None:
            sock = self.own[family] = udp_socket(family, self.mark)
            _buffer(sock, socket.SO_SNDBUF, BUFFER)
        return sock

    def send(self, address: tuple[str, int], packet: bytes, hook: int, iif: str | None, oif: str | None,
             mark: int = 0, segment: bool = False) -> bool:
        """Send one packet to the peer at `address`; False (counted) if it could not go now."""
        datagram = self.sealer.seal(packet, self.clock(), hook, iif, oif, mark, segment)
        try:
            self._socket_for(address).sendto(datagram, address)
        except OSError as error:  # EAGAIN/ENOBUFS (buffer full), ECONNREFUSED, EHOSTUNREACH, EMSGSIZE...
            self.counters["failed:" + (errno.errorcode.get(error.errno) or "unknown")] += 1
            return False
        self.counters["sent"] += 1
        self.counters["bytes"] += len(packet)
        return True

    def forward(self, address: tuple[str, int], packet: bytes, hook: int, iif: str | None, oif: str | None,
                mark: int = 0) -> int:
        """Send a packet as it came from the queue: a TCP packet too large for the link's MTU (GSO) is
        split first, each segment in its own datagram. The number of datagrams sent; 0 if none
        could go (a packet too large that cannot be split is counted `too-large`)."""
        room = self.mtu - (48 if ":" in address[0] else 28) - OVERHEAD_MAX
        if len(packet) <= room:  # its checksum may be the pseudo-header's only (CHECKSUM_PARTIAL)
            return int(self.send(address, gso.finish(packet), hook, iif, oif, mark))
        try:
            segments = gso.segment(packet, room - gso.header_room(packet))
        except ValueError:  # not TCP, or cut: as it is if the receiver takes it (IP fragments on the link)
            if len(packet) > self.max_packet:
                self.counters["too-large"] += 1
                return 0
            return int(self.send(address, gso.finish(packet), hook, iif, oif, mark))
        self.counters["segmented"] += 1
        sent = 0
        for piece in segments:
            sent += self.send(address, piece, hook, iif, oif, mark, segment=True)
        return sent

    def stats(self) -> dict:
        return dict(self.counters)

    def close(self) -> None:
        for sock in self.own.values():
            sock.close()
        self.own.clear()
