"""What a node accepts of the forwarded packets it receives, and why it refuses the rest.

How it works. `Gate.admit(raw, now_wall, now_mono)` takes one datagram (fw.sync.forwarding.wire)
and returns its `Datagram` or raises `Refused` with the reason, counted in `Gate.refused`. The
checks, cheapest first, so that a flood of junk costs little:

- `too-large`: the datagram (or the packet in it) is larger than the limit;
- `malformed`: it does not follow the format (magic, version, flags, lengths, names, IP version);
- `unknown-node`: its sender is not a peer we know (our own id included: a loop);
- `replayed`: its sequence number is below the sender's window or already seen there (checked
  before the tag, as RFC 4303 3.4.3 does, and recorded only after it);
- `forged`: its HMAC-SHA256 tag is wrong (another key, another cluster, a changed byte);
- `stale`: its timestamp is more than `max_age` seconds off our wall clock (a capture replayed to a
  node that restarted and lost its windows);
- `rate`: the sender went over its token buckets (packets and bytes per second, with a burst): the
  link cannot be used to flood through the firewall, even by a peer.

The replay window is RFC 4303's (section 3.4.3 and appendix A): per sender, the highest sequence
number seen and a bitmap of the `WINDOW` numbers below it; a datagram above the top slides the
window, one inside it is accepted once, one below it is refused. The first datagram of a sender
sets its window. Pure: no I/O; clocks are arguments.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from fw.sync.forwarding.wire import HEADER_MAX, TAG_SIZE, Datagram, Malformed, authentic, keyed, parse

REASONS = ("too-large", "malformed", "unknown-node", "replayed", "forged", "stale", "rate")
WINDOW = 1024  # sequence numbers remembered below the highest (reordering on the link)
MAX_PACKET = 9216  # bytes of L3 packet (jumbo frames; GSO packets are segmented before they go)
MAX_AGE = 30.0  # seconds either side of our clock
RATE_PACKETS = 20000.0  # per second and sender
RATE_BYTES = 40e6  # per second and sender (320 Mbit/s)
BURST_SECONDS = 0.2  # a bucket holds this many seconds of its rate


class Refused(Exception):
    """A datagram we do not act on; `reason` is one of REASONS (the counter it went to)."""

    def __init__(self, reason: str, detail: str = "", node: str | None = None):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.node = node  # the sender the datagram claims, once its header could be read


class ReplayWindow:
    """RFC 4303's anti-replay window for one sender: `seen(seq)` before the tag, `mark(seq)` after."""

    __slots__ = ("size", "top", "bits")

    def __init__(self, size: int = WINDOW):
        self.size = size
        self.top: int | None = None
        self.bits = 0  # bit i: top - i was seen

    def seen(self, seq: int) -> bool:
        """True if `seq` is a replay: already seen, or too old to tell."""
        if self.top is None or seq > self.top:
            return False
        offset = self.top - seq
        return offset >= self.size or bool(self.bits >> offset & 1)

    def mark(self, seq: int) -> None:
        """Record an authentic `seq` (call after `seen` said no)."""
        if self.top is None:
            self.top, self.bits = seq, 1
        elif seq > self.top:
            shift = seq - self.top
            self.bits = (self.bits << shift | 1) & ((1 << self.size) - 1) if shift < self.size else 1
            self.top = seq
        else:
            self.bits |= 1 << (self.top - seq)


class TokenBucket:
    """`rate` tokens a second, at most `burst` kept; `take(n, now)` spends n or refuses."""

    __slots__ = ("rate", "burst", "tokens", "when")

    def __init__(self, rate: float, burst: float, now: float):
        self.rate, self.burst, self.tokens, self.when = rate, burst, burst, now

    def take(self, amount: float, now: float) -> bool:
        if now > self.when:
            self.tokens = min(self.burst, self.tokens + (now - self.when) * self.rate)
            self.when = now
        if self.tokens < amount:
            return False
        self.tokens -= amount
        return True


@dataclass(frozen=True)
class Limits:
    max_packet: int = MAX_PACKET
    max_age: float = MAX_AGE
    packets_per_second: float = RATE_PACKETS
    bytes_per_second: float = RATE_BYTES
    burst_seconds: float = BURST_SECONDS
    window: int = WINDOW


class _Sender:
    """What the gate keeps per peer: its replay window and its two buckets."""

    __slots__ = ("window", "packets", "bytes")

    def __init__(self, limits: Limits, now: float):
        self.window = ReplayWindow(limits.window)
        burst = limits.burst_seconds
        self.packets = TokenBucket(limits.packets_per_second, max(1.0, limits.packets_per_second * burst), now)
        self.bytes = TokenBucket(limits.bytes_per_second, max(float(limits.max_packet),
                                                              limits.bytes_per_second * burst), now)


class Gate:
    """The receiving side's checks for one node: `admit` or refuse, counting both."""

    def __init__(self, key: bytes, node: str, known: Callable[[str], bool], limits: Limits | None = None):
        """`key`: the forwarding key (wire.forwarding_key); `known(node)`: is it a peer of ours."""
        self.prepared = keyed(key)
        self.node = node
        self.known = known
        self.limits = limits or Limits()
        self.max_datagram = HEADER_MAX + self.limits.max_packet + TAG_SIZE
        self.senders: dict[str, _Sender] = {}
        self.refused: Counter = Counter()
        self.accepted: Counter = Counter()  # by sender
        self.accepted_bytes = 0

    def admit(self, raw: bytes, now_wall: float, now_mono: float) -> Datagram:
        """The datagram's fields if it passes every check; Refused (counted) if not."""
        try:
            datagram = self._check(raw, now_wall, now_mono)
        except Refused as refusal:
            self.refused[refusal.reason] += 1
            raise
        self.accepted[datagram.node] += 1
        self.accepted_bytes += len(datagram.packet)
        return datagram

    def _check(self, raw: bytes, now_wall: float, now_mono: float) -> Datagram:
        if len(raw) > self.max_datagram:
            raise Refused("too-large", f"{len(raw)} bytes")
        try:
            datagram = parse(raw)
        except Malformed as error:
            raise Refused("malformed", str(error)) from None
        if len(datagram.packet) > self.limits.max_packet:
            raise Refused("too-large", f"a packet of {len(datagram.packet)} bytes", datagram.node)
        if datagram.node == self.node or not self.known(datagram.node):
            raise Refused("unknown-node", "not a peer of ours", datagram.node)
        sender = self.senders.get(datagram.node)
        if sender is not None and sender.window.seen(datagram.seq):
            raise Refused("replayed", f"seq {datagram.seq}", datagram.node)
        if not authentic(self.prepared, raw):
            raise Refused("forged", "a wrong tag", datagram.node)
        if abs(now_wall - datagram.ts_ms / 1000) > self.limits.max_age:
            raise Refused("stale", f"{now_wall - datagram.ts_ms / 1000:.1f} s off our clock", datagram.node)
        if sender is None:  # only an authentic datagram makes room for its sender
            sender = self.senders[datagram.node] = _Sender(self.limits, now_mono)
        sender.window.mark(datagram.seq)
        if not sender.packets.take(1, now_mono):
            raise Refused("rate", "over its packet rate", datagram.node)
        if not sender.bytes.take(len(datagram.packet), now_mono):
            sender.packets.tokens += 1  # not spent: the packet does not pass
            raise Refused("rate", "over its byte rate", datagram.node)
        return datagram

    def forget(self, node: str) -> None:
        """Drop a peer's window and buckets (it left the cluster)."""
        self.senders.pop(node, None)

    def stats(self) -> dict:
        return {"accepted": sum(self.accepted.values()), "accepted_bytes": self.accepted_bytes,
                "by_sender": dict(self.accepted), "refused": {reason: self.refused[reason] for reason in REASONS}}
