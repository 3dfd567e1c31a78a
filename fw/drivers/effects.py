"""Carrying out the engine's effects: packets out of raw sockets, events into the EVE log.

How it works: a SendPacket holds a complete IP packet (a TCP reset or an ICMP unreachable, checksums
included). IPv4 goes out of an AF_INET/IPPROTO_RAW socket (IP_HDRINCL implied), IPv6 out of an
AF_INET6/IPPROTO_RAW socket (the header is ours too); the destination for sendto() is read from the
packet. Both sockets carry SO_MARK = the daemon's mark, which our OUTPUT chain exempts from the queue,
so the daemon never judges its own packets. A LogEvent goes to the EveLog, if there is one.

The other effects go to whoever subscribed to their kind (`Effects.on(kind, handler)`): the
offload driver takes OffloadSession and SessionClosed, HA sync the session effects. Session
effects nobody subscribed to are dropped quietly (most daemons run without sync or offload);
other kinds without a handler are counted as `unsupported:KIND`, not fatal. SetMark and
RewritePacket act on the packet's verdict, so fw.drivers.nfqueue's PacketHandler applies them
(and calls this only when a decision has other effects too: NAT's passes mostly have none).
"""

from __future__ import annotations

import socket
from collections import Counter

from fw.decision import SESSION_EFFECTS, LogEvent, RewritePacket, SendPacket, SetMark
from fw.drivers.eve import EveLog
from fw.drivers.iptables import DEFAULT_MARK

SO_MARK = getattr(socket, "SO_MARK", 36)


def marked_socket(family: int, kind: int, proto: int, mark: int) -> socket.socket:
    """A socket whose packets carry `mark` (needs CAP_NET_ADMIN), so our chains let them be."""
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
    return sock


class RawSender:
    """Send complete IPv4/IPv6 packets."""

    def __init__(self, mark: int = DEFAULT_MARK):
        self.v4 = marked_socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW, mark)
        try:
            self.v6 = marked_socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW, mark)
        except OSError:  # IPv6 disabled in this kernel
            self.v6 = None

    def send(self, family: int, data: bytes) -> None:
        if family in (4, socket.AF_INET):
            self.v4.sendto(data, (socket.inet_ntop(socket.AF_INET, data[16:20]), 0))
        elif family in (6, socket.AF_INET6) and self.v6 is not None:
            self.v6.sendto(data, (socket.inet_ntop(socket.AF_INET6, data[24:40]), 0))
        else:
            raise OSError(f"cannot send an IPv{family} packet")

    def close(self) -> None:
        self.v4.close()
        if self.v6 is not None:
            self.v6.close()


class Effects:
    """Callable on a tuple of effects; counts what it did in `counters`."""

    def __init__(self, sender: RawSender | None, log: EveLog | None):
        self.sender = sender
        self.log = log
        self.counters: Counter = Counter()
        self.last_error: str | None = None
        self.event_sinks: list = []  # more places events go (the store's writer): sink(event)
        self.effect_sinks: list = []  # told of every tuple of effects first (fw.feed): sink(effects)
        self.handlers: dict[type, list] = {}  # effect kind -> [handler(effect)]

    def on(self, kind: type, handler) -> None:
        """Call `handler(effect)` for every effect of this kind (in subscription order)."""
        self.handlers.setdefault(kind, []).append(handler)

    def __call__(self, effects) -> None:
        for sink in self.effect_sinks:
            sink(effects)
        for effect in effects:
            kind = type(effect)
            if kind is LogEvent:
                for sink in self.event_sinks:
                    sink(effect.event)
                if self.log is not None:
                    self.log.write(effect.event)
                    self.counters["events_logged"] += 1
                else:
                    self.counters["events_unlogged"] += 1
            elif kind is SendPacket:
                self._send(effect)
            else:
                handlers = self.handlers.get(kind)
                if handlers is not None:
                    for handler in handlers:
                        handler(effect)
                elif kind not in SESSION_EFFECTS and kind is not SetMark and kind is not RewritePacket:
                    self.counters["unsupported:" + kind.__name__] += 1

    def _send(self, effect: SendPacket) -> None:
        if self.sender is None:
            self.counters["send_errors"] += 1
            return
        try:
            self.sender.send(effect.family, effect.data)
            self.counters["packets_sent"] += 1
        except (OSError, IndexError, ValueError) as exc:
            self.counters["send_errors"] += 1
            self.last_error = str(exc)

    def close(self) -> None:
        if self.sender is not None:
            self.sender.close()
        if self.log is not None:
            self.log.close()
