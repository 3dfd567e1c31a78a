"""What to tell the peers about our sessions, and how their news joins our table.

How it works. `known` maps each session we track (by identity) to an `Entry`: the state and the
ALG expectations the peers were last told of, the deadline they were told, when and in which epoch.
The engine's effects drive it (the service subscribes `on_opened`, `on_changed`, `on_closed` to the
daemon's effects), so a packet that changes nothing costs sync nothing:
- SessionOpened / SessionChanged: the session is announced (`new`, `state`, `expectations`);
- SessionClosed: it is announced removed (`expired` after a timeout, else `removed`: killed,
  evicted, reset), unless a new session takes its key at once (`reopen`, `replaced`: that one is
  announced). A peer removes its copy for `removed`, and for `expired` only if its own copy is due
  too: a node that sees one direction only may time a session out early (e.g. after 300 s of
  unacknowledged data), while the other still has hours.
What does not come as an effect runs in `sweep()`, a slice of the table every few tens of
milliseconds, a full pass every SWEEP_PERIOD:
- a session whose deadline moved on is refreshed when the peers' idea of it has less than half the
  time left that ours has (refreshes are batched this way: about one per half timeout per session);
- every session's snapshot entry is rewritten every REPUBLISH seconds (entries older than the
  codec's SNAPSHOT_MAX_AGE are refused), and after Redis came back, all of them (a new epoch).

A packet that waits for a session we do not have asks the peers for it (`request`; the service
limits how often): whoever has it announces it at once. So a node whose copy expired early, or
that missed an announcement while Redis was away, gets it back when traffic needs it (as pfsync's
update requests).

A new local session gets our node name as `owner`. TCP sessions are tracked with liberal windows
(RSTs are still checked exactly): on an asymmetric path each firewall sees one direction only, so
the other direction's window cannot be checked (as pf's `sloppy` state and conntrackd's advice,
nf_conntrack_tcp_be_liberal). A peer's session (`apply`) is merged with ours if we have it: the
larger counters, per direction the window data that went furthest, our ALG parser (it has seen our
direction's stream), and, for the same incarnation (same creation time), never an older state than
ours (TCP states and UDP's UNREPLIED/REPLIED are ranked by progress). Then `engine.adopt()`.

Ownership. A session's owner is the node that saw its first packet, until a node takes it over
(`claim`: its owner died, the service saw a packet of it here): the session is announced again
(`claimed`) with our name and the claim's wall-clock time, kept in its Entry and sent in every
announcement of it. Between two owners of the same incarnation the winning claim is
fw.sync.forwarding.owner.claim_wins' (the later, then the lower node id; no claim is 0), applied
to the merged session; when ours wins against a peer's news, we announce it again so the peer
comes round. So a node that comes back with old copies does not take back what moved.
"""

from __future__ import annotations

import ipaddress
import json
from collections import Counter
from collections.abc import Callable

from fw.conntrack import serial
from fw.conntrack import tcp as tcpmod
from fw.conntrack.table import HALF_OPEN, LIBERAL, RELATED, REPLIED, REVERSED, UNREPLIED
from fw.sync.forwarding.owner import Claim, claim_wins

SWEEP_PERIOD = 2.0  # seconds for a full pass over the sessions we track
SWEEP_SLICE = 0.1  # seconds between two slices of the pass (the service calls sweep() this often)
REPUBLISH = 300.0  # seconds between rewrites of a session's snapshot entry
REFRESH_MIN = 1.0  # seconds: smaller deadline moves are not worth a message
ANSWER_EVERY = 0.2  # seconds: a session is announced on request at most this often
SAME_INCARNATION = 0.005  # seconds between creation times that still mean the same session
SEQ_MASK, SEQ_HALF = 0xFFFFFFFF, 0x80000000
RANK = {tcpmod.TcpState.NONE: 0, tcpmod.TcpState.SYN_SENT: 1, tcpmod.TcpState.SYN_SENT2: 2,
        tcpmod.TcpState.SYN_RECV: 3, tcpmod.TcpState.ESTABLISHED: 4, tcpmod.TcpState.FIN_WAIT: 5,
        tcpmod.TcpState.CLOSE_WAIT: 6, tcpmod.TcpState.LAST_ACK: 7, tcpmod.TcpState.TIME_WAIT: 8,
        tcpmod.TcpState.CLOSE: 9, UNREPLIED: 0, REPLIED: 1}  # fmt: skip


class Entry:
    __slots__ = ("state", "expectations", "deadline", "sent", "epoch", "answered", "claimed")

    def __init__(self, state, expectations, deadline: float, sent: float, epoch: int):
        self.state = state  # as last announced (or adopted)
        self.expectations = expectations  # frozenset of expectation keys last announced, or None
        self.deadline = deadline  # engine time: the deadline the peers know
        self.sent = sent  # engine time of the last announcement
        self.epoch = epoch  # -1: never announced (or the announcement was not taken)
        self.answered = -1e9  # engine time of the last answer to a peer's request
        self.claimed = 0.0  # wall clock of the session's owner's claim (0: the owner that opened it)


class Outgoing:
    """One message for the writer: `kind` session|remove|hello, its hash field and body."""

    __slots__ = ("kind", "field", "body", "publish", "ticket")

    def __init__(self, kind: str, field: str | None, body: dict, publish: bool = True, ticket: int = 0):
        self.kind = kind
        self.field = field
        self.body = body
        self.publish = publish  # False: only the snapshot entry is rewritten
        self.ticket = ticket


def key_text(key: tuple) -> str:
    """The canonical flow key as text: the field name of the session in the cluster's hash."""
    proto, low, high, low_port, high_port = key
    return json.dumps([proto, str(ipaddress.ip_address(low)), str(ipaddress.ip_address(high)), low_port, high_port],
                      separators=(",", ":"))  # fmt: skip


def key_from_list(raw) -> tuple:
    """A flow key from its JSON form; ValueError (or TypeError) if it is not one."""
    proto, low, high, low_port, high_port = raw
    key = (int(proto), ipaddress.ip_address(low).packed, ipaddress.ip_address(high).packed,
           int(low_port), int(high_port))  # fmt: skip
    if len(key[1]) != len(key[2]) or not (0 <= key[0] < 256 and 0 <= key[3] < 65536 and 0 <= key[4] < 65536):
        raise ValueError(f"not a flow key: {raw!r}")
    return key


def make_liberal(session) -> None:
    """A session of a sync cluster: liberal TCP windows, and an ALG that takes the replies whose
    commands it may never see (fw.alg.ftp's `unpaired`): each node may see one direction only."""
    track = session.tcp
    if track is not None and not track.liberal:
        data = tcpmod.to_dict(track)
        data["liberal"] = True
        session.tcp = tcpmod.from_dict(data)
    alg = session.alg
    if alg is not None and getattr(alg, "unpaired", True) is False:
        alg.unpaired = True


def _seq_after(a: int, b: int) -> bool:
    return a != b and (a - b) & SEQ_MASK < SEQ_HALF


def merged_track(ours, theirs):
    """Their track, with each direction's window data taken from whichever went further."""
    mine, result = tcpmod.to_dict(ours), tcpmod.to_dict(theirs)
    for side in ("original", "reply"):
        a, b = mine[side], result[side]
        if a["td_maxwin"] and (not b["td_maxwin"] or _seq_after(a["td_end"], b["td_end"])):
            result[side] = a
    result["liberal"] = True
    return tcpmod.from_dict(result)


class SessionSync:
    """The sessions side of sync for one engine. `emit(Outgoing) -> bool` hands a message to the
    writer (False: not taken). `offset()` is wall clock minus engine time."""

    def __init__(self, engine, node: str, emit: Callable[[Outgoing], bool], offset: Callable[[], float],
                 dispatch: Callable | None = None):
        self.engine = engine
        self.node = node
        self.emit = emit
        self.offset = offset
        self.dispatch = dispatch or (lambda effects: None)  # the daemon's Effects: what adopt/kill return
        self.known: dict = {}
        self.counters: Counter = Counter()
        self.epoch = 0
        self.tickets = 0
        self._pending: list = []
        self._contested = False  # applying a peer's news: our claim to the session won against theirs

    def seed(self, now: float) -> None:
        """Track what is already in the table (restored from a snapshot file): announced by sweeps."""
        for session in self.engine.table.values():
            if session not in self.known:
                if session.owner is None:
                    session.owner = self.node
                make_liberal(session)
                self.known[session] = Entry(session.state, None, session.deadline, now, -1)

    # -- our changes ----------------------------------------------------------------------------

    def on_opened(self, effect) -> int:
        """SessionOpened: announce the new session (unless --sync-defer did already). Its ticket, or 0."""
        session = effect.session
        if session in self.known:
            return 0
        return self.changed(session, None, session.last_seen)

    def on_changed(self, effect) -> int:
        """SessionChanged: its state or its expectations moved."""
        session = effect.session
        return self.changed(session, self.known.get(session), session.last_seen)

    def on_closed(self, effect) -> None:
        """SessionClosed: tell the peers, unless another session takes its key at once."""
        session = effect.session
        if self.known.pop(session, None) is None or effect.why in ("reopen", "replaced"):
            return
        self._removed(session, "expired" if effect.why.startswith("timeout") else "removed")

    def changed(self, session, entry: Entry | None, now: float) -> int:
        """A session new to us, or whose state or expectations moved: announce it. Returns the
        ticket of the announcement (0 if the writer did not take it)."""
        if entry is None:
            if session.owner is None:
                session.owner = self.node
                why = "new"
            else:
                why = "seen"
            make_liberal(session)
            entry = self.known[session] = Entry(session.state, None, session.deadline, now, -1)
        else:
            why = "state" if entry.state is not session.state else "expectations"
        self.counters["announced:" + why] += 1
        return self.announce(session, entry, why, now)

    def announce(self, session, entry: Entry, why: str, now: float, publish: bool = True) -> int:
        offset = self.offset()
        engine_expectations = self.engine.expectations
        keys = session.expectations
        body = {"why": why, "session": serial.session_to_dict(session, offset),
                "expectations": [serial.expectation_to_dict(k, engine_expectations[k], offset)
                                 for k in keys or () if k in engine_expectations]}  # fmt: skip
        if entry.claimed:
            body["claimed"] = entry.claimed
        entry.state = session.state
        entry.expectations = frozenset(keys) if keys is not None else None
        entry.deadline = session.deadline
        entry.sent = now
        self.tickets += 1
        if self.emit(Outgoing("session", key_text(session.key), body, publish, self.tickets)):
            entry.epoch = self.epoch
            return self.tickets
        entry.epoch = -1  # announced again by a sweep once the writer takes messages
        self.counters["unsent"] += 1
        return 0

    def claim(self, session, now: float) -> int:
        """Take over a session whose owner is gone (a packet of it was judged here): we are its
        owner from now on, with a claim of this wall-clock time, which wins over older claims
        (fw.sync.forwarding.owner.claim_wins) wherever the news goes, the old owner's node included
        when it comes back. Returns the announcement's ticket (0: not taken)."""
        entry = self.known.get(session)
        if entry is None:
            return 0
        session.owner = self.node
        entry.claimed = now + self.offset()
        self.counters["claimed"] += 1
        self.counters["announced:claimed"] += 1
        return self.announce(session, entry, "claimed", now)

    def sweep(self, now: float, connected: bool) -> None:
        """One slice of the pass over the sessions we track (see the module's docstring)."""
        if not self._pending:
            self._pending = list(self.known)
        share = max(64, int(len(self.known) * SWEEP_SLICE / SWEEP_PERIOD) + 1)
        batch = self._pending[-share:]
        del self._pending[-share:]
        sessions = self.engine.table.sessions
        for session in batch:
            entry = self.known.get(session)
            if entry is None:
                continue
            if session.slot == -1 or sessions.get(session.key) is not session:
                del self.known[session]  # removed without a SessionClosed reaching us: forget it
                self.counters["lost_closes"] += 1
                continue
            if not connected:
                continue
            if entry.epoch != self.epoch:
                self.counters["announced:resync"] += 1
                self.announce(session, entry, "resync", now)
                continue
            told, ours = entry.deadline - now, session.deadline - now
            if ours - told > REFRESH_MIN and told < ours / 2:
                self.counters["announced:refresh"] += 1
                self.announce(session, entry, "refresh", now)
            elif now - entry.sent > REPUBLISH:
                self.counters["announced:republish"] += 1
                self.announce(session, entry, "republish", now, publish=False)

    def _removed(self, session, why: str) -> None:
        offset = self.offset()
        body = {"why": why, "key": json.loads(key_text(session.key)), "created": session.created + offset,
                "last_seen": session.last_seen + offset}  # fmt: skip
        self.counters["announced:" + why] += 1
        if not self.emit(Outgoing("remove", key_text(session.key), body)):
            self.counters["unsent"] += 1

    def resync(self) -> None:
        """Redis is back after an outage: every session is announced again in the next pass."""
        self.epoch += 1
        self._pending = []

    # -- their changes --------------------------------------------------------------------------

    def apply(self, node: str, kind: str, body: dict, now: float):
        """A peer's (authenticated) message. Returns the flow key it touched, or None. Raises
        serial.SerialError (or ValueError, TypeError, KeyError) for a body that is not usable."""
        if kind == "session":
            return self._apply_session(node, body, now)
        if kind == "remove":
            return self._apply_remove(body, now)
        if kind == "request":
            self._answer(key_from_list(body["key"]), now)
        return None

    def request(self, key: tuple) -> bool:
        """Ask the peers for the session `key` (a packet waits for it and no news came)."""
        self.counters["requested"] += 1
        return self.emit(Outgoing("request", None, {"key": json.loads(key_text(key))}))

    def _answer(self, key: tuple, now: float) -> None:
        """A peer asked for a session: announce it if we have it (at most every ANSWER_EVERY s)."""
        session = self.engine.table.sessions.get(key)
        if session is None:
            return
        entry = self.known.get(session)
        if entry is None:
            self.changed(session, None, now)
        elif now - entry.answered >= ANSWER_EVERY:
            entry.answered = now
            self.counters["announced:requested"] += 1
            self.announce(session, entry, "requested", now)

    def _apply_session(self, node: str, body: dict, now: float):
        offset = self.offset()
        record, expectations = body["session"], body.get("expectations") or []
        if not isinstance(record, dict) or not isinstance(expectations, list):
            raise serial.SerialError("session and expectations must be an object and a list")
        theirs = serial.session_from_dict(record, offset)
        parent = serial.parent_key(record)
        if theirs.deadline <= now:
            self.counters["applied:expired"] += 1
            return None
        table = self.engine.table
        theirs.owner = theirs.owner or node
        claim = Claim(theirs.owner, float(body.get("claimed") or 0.0))
        ours = table.sessions.get(theirs.key)
        self._contested = False
        if ours is not None and abs(ours.created - theirs.created) < SAME_INCARNATION:
            claim = self._owner(ours, claim, now)
            if RANK.get(theirs.state, 0) < RANK.get(ours.state, 0):  # older news than ours
                ours.deadline = max(ours.deadline, theirs.deadline)
                self._take_counters(ours, theirs)
                self._restore_expectations(expectations, now, offset)
                self.counters["applied:older"] += 1
                if self._contested and ours in self.known:
                    self.announce(ours, self.known[ours], "claimed", now)
                return theirs.key
        kept = []
        if ours is not None:
            kept = self._merge(ours, theirs, offset)
            self.known.pop(ours, None)
        theirs.owner = claim.owner
        make_liberal(theirs)
        self.dispatch(self.engine.adopt(theirs, now))
        if parent is not None:
            theirs.parent = table.sessions.get(parent)
        if theirs.flags & RELATED:
            self._used_expectation(theirs)
        self._restore_expectations(kept + expectations, now, offset)
        keys = theirs.expectations
        entry = self.known[theirs] = Entry(theirs.state, frozenset(keys) if keys is not None else None,
                                           theirs.deadline, now, self.epoch)  # fmt: skip
        entry.claimed = claim.claimed
        if self._contested:
            self.announce(theirs, entry, "claimed", now)
        self.counters["applied:session"] += 1
        return theirs.key

    def _owner(self, ours, theirs: Claim, now: float) -> Claim:
        """Whose session it is, ours or their news of it (the same incarnation): the winning claim
        (claim_wins: the later, then the lower node id), set on our copy. When ours wins against a
        different owner, we announce it again (`_contested`, after the merge) so that the peer comes
        round: a node that comes back with an old copy does not take back a session that moved."""
        entry = self.known.get(ours)
        mine = Claim(ours.owner or self.node, entry.claimed if entry is not None else 0.0)
        if mine.owner == theirs.owner:
            winner = Claim(mine.owner, max(mine.claimed, theirs.claimed))
        elif claim_wins(mine, theirs):
            winner = theirs
            self.counters["claims_lost"] += 1
        else:
            winner = mine
            self.counters["claims_kept"] += 1
            self._contested = True
        ours.owner = winner.owner
        if entry is not None:
            entry.claimed = winner.claimed
        return winner

    @staticmethod
    def _take_counters(ours, theirs) -> None:
        ours.orig_packets = max(ours.orig_packets, theirs.orig_packets)
        ours.orig_bytes = max(ours.orig_bytes, theirs.orig_bytes)
        ours.reply_packets = max(ours.reply_packets, theirs.reply_packets)
        ours.reply_bytes = max(ours.reply_bytes, theirs.reply_bytes)
        ours.last_seen = max(ours.last_seen, theirs.last_seen)

    def _merge(self, ours, theirs, offset: float) -> list:
        """Fold what we know into their record; returns our expectations (plain data) to keep."""
        self._take_counters(theirs, ours)
        if ours.state is theirs.state:
            theirs.deadline = max(theirs.deadline, ours.deadline)
        if ours.tcp is not None and theirs.tcp is not None:
            theirs.tcp = merged_track(ours.tcp, theirs.tcp)
        if ours.alg is not None:
            theirs.alg = ours.alg
        theirs.flags |= ours.flags & ~(HALF_OPEN | REVERSED | LIBERAL)  # their orientation and track are theirs
        expectations = self.engine.expectations
        return [serial.expectation_to_dict(k, expectations[k], offset)
                for k in ours.expectations or () if k in expectations]  # fmt: skip

    def _restore_expectations(self, records: list, now: float, offset: float) -> None:
        if records:
            snapshot = {"format": "fw-sessions", "version": serial.FORMAT_VERSION, "sessions": [],
                        "expectations": records}  # fmt: skip
            self.engine.restore(snapshot, now, offset)

    def _used_expectation(self, session) -> None:
        """A peer's related session used an expectation we hold too: it is spent here as well."""
        self.engine.expectations.discard((session.proto, session.src, session.dst, session.dport))

    def _apply_remove(self, body: dict, now: float):
        key = key_from_list(body["key"])
        session = self.engine.table.sessions.get(key)
        if session is None:
            return None
        offset = self.offset()
        if abs(session.created + offset - float(body["created"])) >= SAME_INCARNATION:
            self.counters["removals_ignored"] += 1  # another incarnation of the flow
            return None
        if body.get("why") == "expired" and session.deadline > now + REFRESH_MIN:
            self.counters["removals_ignored"] += 1  # it expired there, but it has time left here
            return None
        self.known.pop(session, None)  # so that its SessionClosed is not announced back
        self.dispatch(self.engine.kill(session, now, "peer-removed"))
        self.counters["applied:remove"] += 1
        return key
