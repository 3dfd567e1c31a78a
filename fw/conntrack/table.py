"""The session table: one record per tracked flow, found in one dict lookup from either direction.

How it works: a session is stored once, under a canonical key `(proto, low_addr, high_addr,
low_port, high_port)` where the lower (address, port) endpoint comes first, so the packets of both
directions build the same key; the direction is whether the packet's source is the session's
original source. ICMP echo uses the identifier as both ports.

Expiry is a timer wheel of one-second slots kept in a heap of due slots. A packet only moves a
session's `deadline` (a float store); when a slot comes due, each session in it either expires or,
if its deadline moved on, is filed again under its new slot. A session whose deadline moves
*earlier* than its slot (a state with a shorter timeout) is filed again at once. So neither a
packet nor `expire(now)` costs more as the table grows.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

UNREPLIED = "UNREPLIED"
REPLIED = "REPLIED"

# Session.flags bits
ASSURED = 1  # traffic seen both ways (TCP: established); evicted last
SEEN_REPLY = 2
RELATED = 4  # opened through an expectation (an ALG) or a related ICMP error
LOOSE = 8  # picked up mid-stream (tcp_loose)
HALF_OPEN = 16  # counted in its source's half-open sessions (flood limits)
FLAG_NAMES = {ASSURED: "assured", SEEN_REPLY: "seen-reply", RELATED: "related", LOOSE: "loose",
              HALF_OPEN: "half-open"}


def flow_key(proto: int, src: bytes, dst: bytes, sport: int, dport: int) -> tuple:
    """The canonical key of the flow this packet belongs to (the same for both directions)."""
    if src < dst or (src == dst and sport <= dport):
        return (proto, src, dst, sport, dport)
    return (proto, dst, src, dport, sport)


class Session:
    """One tracked flow. The original direction is that of the packet that opened it."""

    __slots__ = (
        "key", "proto", "family", "src", "dst", "sport", "dport",
        "state", "tcp", "timeouts", "deadline", "slot",
        "orig_packets", "orig_bytes", "reply_packets", "reply_bytes",
        "rule", "policy_rev", "created", "last_seen", "flags",
        "alg", "parent", "expectations", "rst_on_timeout", "owner",
    )  # fmt: skip

    def __init__(self, key, proto, family, src, dst, sport, dport, state, now):
        self.key = key
        self.proto = proto
        self.family = family
        self.src = src
        self.dst = dst
        self.sport = sport
        self.dport = dport
        self.state = state
        self.tcp = None
        self.timeouts = None
        self.deadline = now
        self.slot = 0
        self.orig_packets = 0
        self.orig_bytes = 0
        self.reply_packets = 0
        self.reply_bytes = 0
        self.rule = None
        self.policy_rev = None
        self.created = now
        self.last_seen = now
        self.flags = 0
        self.alg = None
        self.parent = None
        self.expectations = None
        self.rst_on_timeout = False
        self.owner = None

    @property
    def state_name(self) -> str:
        state = self.state
        return state if isinstance(state, str) else state.name

    def is_original(self, src: bytes, sport: int) -> bool:
        return src == self.src and sport == self.sport


class SessionTable:
    """Sessions by canonical key, with a timer wheel for expiry."""

    def __init__(self) -> None:
        self.sessions: dict[tuple, Session] = {}
        self._slots: dict[int, list[Session]] = {}
        self._due: list[int] = []  # heap of slot numbers that have a list in _slots

    def __len__(self) -> int:
        return len(self.sessions)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self.sessions.values()))

    def get(self, key: tuple) -> Session | None:
        return self.sessions.get(key)

    def add(self, session: Session) -> None:
        self.sessions[session.key] = session
        session.slot = 0
        self.reschedule(session)

    def remove(self, session: Session) -> None:
        if self.sessions.get(session.key) is session:
            del self.sessions[session.key]
        session.slot = -1  # stale entries in the wheel are skipped

    def reschedule(self, session: Session) -> None:
        """File the session under the slot of its deadline if that is earlier than where it is."""
        slot = int(session.deadline) + 1
        if session.slot and session.slot <= slot:
            return
        session.slot = slot
        bucket = self._slots.get(slot)
        if bucket is None:
            self._slots[slot] = [session]
            heapq.heappush(self._due, slot)
        else:
            bucket.append(session)

    def pop_expired(self, now: float) -> list[Session]:
        """Remove and return the sessions whose deadline is at or before `now`."""
        expired: list[Session] = []
        due = self._due
        while due and due[0] <= now:
            slot = heapq.heappop(due)
            for session in self._slots.pop(slot, ()):
                if session.slot != slot:
                    continue  # filed again elsewhere, or removed
                if session.deadline <= now:
                    self.remove(session)
                    expired.append(session)
                else:
                    session.slot = 0
                    self.reschedule(session)
        return expired
