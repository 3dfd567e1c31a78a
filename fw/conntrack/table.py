# cython: annotation_typing=False
"""The session table: one record per tracked flow, found in one dict lookup from either direction.

How it works: a session is stored once, under a canonical key `(proto, low_addr, high_addr,
low_port, high_port)` where the lower (address, port) endpoint comes first, so the packets of both
directions build the same key; the direction is whether the packet's source is the session's
original source (flag REVERSED: it is the key's high end). ICMP echo uses the identifier as both ports.

Expiry is a timer wheel of one-second slots kept in a heap of due slots. A packet only moves a
session's `deadline` (a float store); when a slot comes due, each session in it either expires or,
if its deadline moved on, is filed again under its new slot. A session whose deadline moves
*earlier* than its slot (a state with a shorter timeout) is filed again at once. So neither a
packet nor `expire(now)` costs more as the table grows.

Memory (a table may hold a million sessions): a session keeps only what changes per flow. Its
tuple is the key (`src`, `proto`, ... are read from it); what the opening rule decided (rule,
policy revision, timeouts, rst_on_timeout) is one `Profile` shared by the sessions opened alike;
the rare parts (ALG, FTP parent and expectations, HA owner) are one `Extra`, None for most. A TCP
session is a `TcpSession`: the TCP track's fields (FIELDS, defined here) are its own
(`session.tcp` is the session). Equal values share one object: a bucket's first item is its slot
number, which its sessions point to, and addresses, ports and windows are interned when a session
is created (`interned`). Compiled (build_compiled.py), table.pxd makes Session and TcpSession C
structs: times are doubles, counters and the track's fields C integers (no objects to share).

A translated session (NAT) is stored under a second key too, its reply tuple's (`add_alias`), so
that its replies, which carry other addresses, find it in one lookup as well. The second key is in
`sessions` beside the first; `len`, iteration and `values()` count and yield each session once.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from itertools import islice
from operator import attrgetter
from typing import NamedTuple

try:
    import cython
except ImportError:  # no Cython: this module runs pure (as with FW_PURE=1)
    from fw import cython_shadow as cython

UNREPLIED = "UNREPLIED"
REPLIED = "REPLIED"

# Session.flags bits
ASSURED = 1  # traffic seen both ways (TCP: established); evicted last
SEEN_REPLY = 2
RELATED = 4  # opened through an expectation (an ALG) or a related ICMP error
LOOSE = 8  # picked up mid-stream (tcp_loose)
HALF_OPEN = 16  # counted in its source's half-open sessions (flood limits)
REVERSED = 32  # the original source is the key's high end (fixed at creation; not a state)
OFFLOADED = 64  # the kernel passes this session's packets (set by fw.drivers.offload when the mark is on)
LIBERAL = 128  # TCP: liberal window checks (the track's `liberal`, kept here)
# 256 is fw.conntrack.rule_limits' COUNTED (the session counts in its rule's limit)
FLAG_NAMES = {ASSURED: "assured", SEEN_REPLY: "seen-reply", RELATED: "related", LOOSE: "loose",
              HALF_OPEN: "half-open"}
INTERN_LIMIT = 1 << 16  # values kept by SessionTable.intern before it starts over
PROFILE_LIMIT = 4096  # profiles kept by SessionTable.profile before it starts over


# A TCP track's fields besides its state (fw.conntrack.tcp says what they mean): both ends' window
# data (o_ what the original sender showed, r_ the reply sender: the kernel's ip_ct_tcp_state, td_
# dropped) and what the last packets showed (ip_ct_tcp's last_*: last_wscale is kept in last_flags'
# high bits, last_dir and last_index in one `last_packet`, index << 1 | direction). `_put` assigns
# them in this order. They live here, with the TcpSession that holds them: the tracker
# (fw.conntrack.tcp) works on TcpSession and its TcpTrack.
FIELDS = (
    "o_end", "o_maxend", "o_maxwin", "o_maxack", "r_end", "r_maxend", "r_maxwin", "r_maxack",
    "last_seq", "last_ack", "last_end",
    "o_scale", "r_scale", "last_flags",
    "last_win",
    "o_flags", "r_flags", "retrans", "last_packet", "liberal",
)  # fmt: skip
_get = attrgetter(*FIELDS)  # a track's FIELDS as a tuple
_get_fields = attrgetter(*FIELDS[:-1])  # all but `liberal`
_PEER_NAMES = ("end", "maxend", "maxwin", "maxack", "scale", "flags")
_SEEN = tuple(attrgetter(*(side + name for name in _PEER_NAMES)) for side in ("o_", "r_"))


class TcpPeer(NamedTuple):
    """What one end has shown us (the kernel's ip_ct_tcp_state): a read-only view, `track.seen`."""

    td_end: int
    td_maxend: int
    td_maxwin: int
    td_maxack: int
    td_scale: int
    flags: int


def _put_fields(track, values) -> None:
    """Set a track's FIELDS but `liberal` (a flag of the session) from a sequence in FIELDS' order
    (`_get_fields` reads them)."""
    (track.o_end, track.o_maxend, track.o_maxwin, track.o_maxack, track.r_end, track.r_maxend, track.r_maxwin,
     track.r_maxack, track.last_seq, track.last_ack, track.last_end, track.o_scale, track.r_scale,
     track.last_flags, track.last_win, track.o_flags, track.r_flags,
     track.retrans, track.last_packet) = values  # fmt: skip


def _put(track, values) -> None:
    """Set a track's FIELDS from a sequence in FIELDS' order (`_get` reads them)."""
    _put_fields(track, values[:-1])
    track.liberal = values[-1]


def copy_fields(target, source) -> None:
    """Give `target` the FIELDS of `source` (what `target.data = source.data` does, in one call)."""
    if not cython.compiled:
        _put_fields(target, _get_fields(source))
        target.flags = target.flags & ~LIBERAL | source.flags & LIBERAL
        return
    # Compiled (table.pxd types both as TcpSession): C stores, no tuple of int objects in between.
    target.o_end, target.o_maxend, target.o_maxwin, target.o_maxack = (
        source.o_end, source.o_maxend, source.o_maxwin, source.o_maxack)
    target.r_end, target.r_maxend, target.r_maxwin, target.r_maxack = (
        source.r_end, source.r_maxend, source.r_maxwin, source.r_maxack)
    target.last_seq, target.last_ack, target.last_end, target.last_win = (
        source.last_seq, source.last_ack, source.last_end, source.last_win)
    target.o_scale, target.r_scale, target.last_flags = source.o_scale, source.r_scale, source.last_flags
    target.o_flags, target.r_flags, target.retrans, target.last_packet = (
        source.o_flags, source.r_flags, source.retrans, source.last_packet)
    liberal = LIBERAL
    target.flags = (target.flags & ~liberal) | (source.flags & liberal)


def untrack(session: Session) -> None:
    """Leave a new session without `extra`, and its key tuple, to reference counting alone: the
    cycle collector then neither counts them towards its next collection nor walks them in it (a
    full collection walks every tracked object: the whole table). Safe because such a session
    cannot be part of a cycle (its key holds bytes and ints, its state and Profile no session);
    given an Extra (`_extra_field`: an ALG, a parent, an owner), it is tracked again. Compiled
    only (the pure build keeps the collector's default)."""
    if cython.compiled:
        PyObject_GC_UnTrack(session.key)  # noqa: F821 - table.pxd's (Python.h)
        PyObject_GC_UnTrack(session)  # noqa: F821


def flow_key(proto: int, src: bytes, dst: bytes, sport: int, dport: int) -> tuple:
    """The canonical key of the flow this packet belongs to (the same for both directions)."""
    if src < dst or (src == dst and sport <= dport):
        return (proto, src, dst, sport, dport)
    return (proto, dst, src, dport, sport)


def orientation(key: tuple, src: bytes, sport: int) -> int:
    """REVERSED if a packet from (src, sport) in the flow `key` comes from the key's high end, else 0."""
    return 0 if key[1] == src and key[3] == sport else REVERSED


class Profile:
    """What the rule that opened a session decided for it; shared, never changed (make another)."""

    __slots__ = ("rule", "policy_rev", "timeouts", "rst_on_timeout")

    def __init__(self, rule, policy_rev, timeouts, rst_on_timeout: bool):
        self.rule = rule
        self.policy_rev = policy_rev
        self.timeouts = timeouts
        self.rst_on_timeout = rst_on_timeout

    def but(self, **changes) -> Profile:
        """A copy with some fields changed."""
        fields = {name: getattr(self, name) for name in self.__slots__}
        fields.update(changes)
        return Profile(**fields)


NO_PROFILE = Profile(None, None, None, False)


class Extra:
    """A session's rare parts: ALG state, FTP parent and expectation keys, the HA owner, and its
    NAT binding (fw/engine_nat.py's Binding: the translated tuple, its second key)."""

    __slots__ = ("alg", "parent", "expectations", "owner", "nat")

    def __init__(self):
        self.alg = self.parent = self.expectations = self.owner = self.nat = None


def _profile_field(name: str) -> property:
    def get(session):
        return getattr(session.profile, name)

    def set_(session, value):
        session.profile = session.profile.but(**{name: value})

    return property(get, set_, doc=f"The profile's {name}; setting it gives the session a profile of its own.")


def _extra_field(name: str) -> property:
    def get(session):
        extra = session.extra
        return None if extra is None else getattr(extra, name)

    def set_(session, value):
        extra = session.extra
        if extra is None:
            if value is None:
                return
            extra = session.extra = Extra()
            if cython.compiled and not PyObject_GC_IsTracked(session):  # noqa: F821 - table.pxd's
                PyObject_GC_Track(session)  # noqa: F821 - its Extra may lead back to it: tracked again (untrack)
        setattr(extra, name, value)

    return property(get, set_, doc=f"The session's {name} (kept in `extra`), or None.")


class Session:
    """One tracked flow. The original direction is that of the packet that opened it."""

    __slots__ = (
        "key", "state", "deadline", "slot",
        "orig_packets", "orig_bytes", "reply_packets", "reply_bytes",
        "created", "last_seen", "flags", "profile", "extra",
    )  # fmt: skip
    tcp = None  # a TcpSession is its own track

    def __init__(self, key: tuple, state, now: float, flags: int = 0, profile: Profile = NO_PROFILE):
        self.key = key
        self.state = state
        self.deadline = now
        self.slot = 0
        self.orig_packets = 0
        self.orig_bytes = 0
        self.reply_packets = 0
        self.reply_bytes = 0
        self.created = now
        self.last_seen = now
        self.flags = flags
        self.profile = profile
        self.extra = None

    rule = _profile_field("rule")
    policy_rev = _profile_field("policy_rev")
    timeouts = _profile_field("timeouts")
    rst_on_timeout = _profile_field("rst_on_timeout")
    alg = _extra_field("alg")
    parent = _extra_field("parent")
    expectations = _extra_field("expectations")
    owner = _extra_field("owner")
    nat = _extra_field("nat")

    @property
    def proto(self) -> int:
        return self.key[0]

    @property
    def family(self) -> int:
        return 4 if len(self.key[1]) == 4 else 6

    @property
    def src(self) -> bytes:
        return self.key[2 if self.flags & REVERSED else 1]

    @property
    def dst(self) -> bytes:
        return self.key[1 if self.flags & REVERSED else 2]

    @property
    def sport(self) -> int:
        return self.key[4 if self.flags & REVERSED else 3]

    @property
    def dport(self) -> int:
        return self.key[3 if self.flags & REVERSED else 4]

    @property
    def state_name(self) -> str:
        state = self.state
        return state if isinstance(state, str) else state.name

    @classmethod
    def of_flow(cls, proto: int, src: bytes, dst: bytes, sport: int, dport: int, state, now: float) -> Session:
        """A session opened by a packet from (src, sport) to (dst, dport)."""
        key = flow_key(proto, src, dst, sport, dport)
        return cls(key, state, now, orientation(key, src, sport))


class TcpSession(Session):
    """A TCP session: the track's FIELDS are its own slots (`liberal` is the flag LIBERAL), its
    `state` is the track's state. The tracker (fw.conntrack.tcp) works on it; its TcpTrack (a
    track not in the table yet) is a TcpSession too. Compiled (table.pxd), the fields are C
    integers."""

    __slots__ = FIELDS[:-1]  # all but "liberal"

    def __init__(self, key: tuple, track, now: float, flags: int = 0, profile: Profile = NO_PROFILE):
        # Session.__init__ written out: every new TCP session would pay for the call.
        self.key = key
        self.state = track.state
        self.deadline = now
        self.slot = 0
        self.orig_packets = self.orig_bytes = self.reply_packets = self.reply_bytes = 0
        self.created = self.last_seen = now
        self.flags = flags
        self.profile = profile
        self.extra = None
        copy_fields(self, track)  # self.data = track.data, without the property's two calls

    @property
    def liberal(self) -> bool:
        return bool(self.flags & LIBERAL)

    @liberal.setter
    def liberal(self, value: bool) -> None:
        self.flags = self.flags | LIBERAL if value else self.flags & ~LIBERAL

    @property
    def tcp(self) -> TcpSession:
        return self

    @tcp.setter
    def tcp(self, track) -> None:
        """Take another track's window data and state (an HA peer's, a merged one)."""
        _put(self, _get(track))
        self.state = track.state

    @property
    def data(self) -> tuple:
        """The plain values of FIELDS, in order; assigning another track's `data` copies its window."""
        return _get(self)

    @data.setter
    def data(self, values) -> None:
        _put(self, values)

    @property
    def last_dir(self) -> int:
        """The direction of the last packet (ORIGINAL, REPLY)."""
        return self.last_packet & 1

    @property
    def last_index(self) -> int:
        """The flag class of the last packet."""
        return self.last_packet >> 1

    @property
    def seen(self) -> tuple:
        """(original sender, reply sender), read-only."""
        return TcpPeer(*_SEEN[0](self)), TcpPeer(*_SEEN[1](self))

    def __repr__(self) -> str:
        return f"<TcpSession {self.key} {self.state.name}>"


class SessionTable:
    """Sessions by canonical key, with a timer wheel for expiry."""

    def __init__(self) -> None:
        self.sessions: dict[tuple, Session] = {}
        self._slots: dict[int, list] = {}  # slot -> [slot, session, ...]
        self._due: list[int] = []  # heap of slot numbers that have a list in _slots
        self._interned: dict = {}
        self._profiles: dict[tuple, Profile] = {}
        self.aliases = 0  # second keys in `sessions` (translated sessions' reply tuples)

    def __len__(self) -> int:
        return len(self.sessions) - self.aliases

    def __iter__(self) -> Iterator[Session]:
        return iter(self.values())

    def values(self) -> list[Session]:
        """Every session once (a translated session's second key left out)."""
        if not self.aliases:
            return list(self.sessions.values())
        return [session for key, session in self.sessions.items() if key is session.key]

    def add_alias(self, session: Session, key: tuple) -> bool:
        """Store `session` under `key` too (NAT: its reply tuple); False if another holds it."""
        if key in self.sessions:
            return False
        self.sessions[key] = session
        self.aliases += 1
        return True

    def get(self, key: tuple) -> Session | None:
        return self.sessions.get(key)

    def add(self, session: Session) -> None:
        self.sessions[session.key] = session
        session.slot = 0
        self.reschedule(session)

    def remove(self, session: Session) -> None:
        sessions = self.sessions
        if sessions.get(session.key) is session:
            del sessions[session.key]
            extra = session.extra
            if extra is not None and extra.nat is not None:
                alias = extra.nat.alias
                if alias is not None and sessions.get(alias) is session:
                    del sessions[alias]
                    self.aliases -= 1
        session.slot = -1  # stale entries in the wheel are skipped

    def interned(self):
        """The `setdefault` of the values kept so that sessions share them (addresses, ports,
        windows): `setdefault(v, v)` is the object kept for values equal to v. For a new session
        only, never on a packet's path; the store starts over when it reaches INTERN_LIMIT."""
        if len(self._interned) >= INTERN_LIMIT:
            self._interned.clear()
        return self._interned.setdefault

    def profile(self, rule, policy_rev, timeouts, rst_on_timeout: bool) -> Profile:
        """The shared Profile for these values (`timeouts` by identity: the policy shares its tables)."""
        key = (rule, policy_rev, id(timeouts), rst_on_timeout)
        profile = self._profiles.get(key)
        if profile is None or profile.timeouts is not timeouts:
            if len(self._profiles) >= PROFILE_LIMIT:
                self._profiles.clear()
            profile = self._profiles[key] = Profile(rule, policy_rev, timeouts, rst_on_timeout)
        return profile

    def touch(self, session: Session, deadline: float) -> None:
        """Move a session's deadline (a packet came, its state changed): a float store, and a
        refiling only when the deadline moves before the slot it is filed under."""
        session.deadline = deadline
        if deadline < session.slot - 1:
            self.reschedule(session)

    def reschedule(self, session: Session) -> None:
        """File the session under the slot of its deadline if that is earlier than where it is."""
        slot = int(session.deadline) + 1
        old = session.slot
        if old:
            if old <= slot:
                return
            bucket = self._slots.get(old)
            if bucket is not None and bucket[-1] is session:
                bucket.pop()  # filed there last (a handshake's SYN): leave no stale entry
        bucket = self._slots.get(slot)
        if bucket is None:
            bucket = self._slots[slot] = [slot]
            heapq.heappush(self._due, slot)
        session.slot = bucket[0]  # one int object for the bucket's sessions
        bucket.append(session)

    def eviction_victims(self, count: int) -> list[Session]:
        """The `count` sessions to evict first from a full table, fairly: the unassured sessions
        of the sources holding the most of them first (oldest deadline first), established
        (ASSURED) ones last."""
        sessions = self.values()
        per_source: dict[bytes, int] = {}
        for session in sessions:
            flags = session.flags
            if not flags & ASSURED:
                src = session.key[2 if flags & REVERSED else 1]  # session.src, without a call
                per_source[src] = per_source.get(src, 0) + 1

        def eviction_order(session: Session):
            flags = session.flags
            if flags & ASSURED:
                return (True, 0, session.deadline)
            return (False, -per_source.get(session.key[2 if flags & REVERSED else 1], 0), session.deadline)

        return heapq.nsmallest(count, sessions, key=eviction_order)

    def pop_expired(self, now: float) -> list[Session]:
        """Remove and return the sessions whose deadline is at or before `now`."""
        expired: list[Session] = []
        due = self._due
        while due and due[0] <= now:
            slot = heapq.heappop(due)
            for session in islice(self._slots.pop(slot, ()), 1, None):
                if session.slot != slot:
                    continue  # filed again elsewhere, or removed
                if session.deadline <= now:
                    self.remove(session)
                    expired.append(session)
                else:
                    session.slot = 0
                    self.reschedule(session)
        return expired
