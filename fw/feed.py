"""The daemon's live event feed: what `fw events` and `fw top` show, as `conntrack -E` does.

How it works. `EventFeed` keeps the last few thousand operator events in a ring (a deque) with a
sequence number each: `new` (a session opened), `update` (its state changed), `destroy` (it went:
timeout, killed, ...), `drop` (a packet refused, with its reason) and `lb` (a real server's health
or drain changed: the body of the EVE `lb` event). A follower is a cursor into
the ring (the last sequence number it was sent), not a queue of its own: `fw events --follow` is
an iterator that yields what is newer than its cursor and then `None` ("nothing now"), on which the
control socket parks the connection until `publish` wakes it (fw.drivers.control). A follower that
falls further behind than the ring holds is told how many events it lost.

Where the events come from, all on the daemon's loop, never another thread:
- the engine's session effects (`SessionOpened`, `SessionChanged`, `SessionClosed`, fw/decision.py):
  opens, state changes and every way out of the table (expiry, kill, eviction, re-check, ...);
- the load balancer's EVE `lb` events (fw/drivers/lb.py), which come as LogEvent effects;
- drops, through the packet handler's `observe` tap: every dropped decision, but at most
  DROPS_PER_SECOND one by one per second; the rest are summed per reason into one `drop` event
  with `count` and `summary: true` at the next tick, so a flood costs the feed a counter
  increment per packet.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterator

from fw.events import address_text, flow_id
from fw.packet.constants import PROTO_NAMES

EVENT_TYPES = ("new", "update", "destroy", "drop", "lb")
RING_SIZE = 4096
DROPS_PER_SECOND = 50
SESSION_EFFECTS = ("SessionOpened", "SessionChanged", "SessionClosed")


def _endpoints(proto: int, src: bytes, dst: bytes, sport: int, dport: int) -> dict:
    fields = {"proto": PROTO_NAMES.get(proto, str(proto)), "src": address_text(src), "dst": address_text(dst)}
    if proto in (6, 17):
        fields.update(sport=sport, dport=dport)
    elif proto in (1, 58):
        fields["id"] = sport
    return fields


def session_fields(session) -> dict:
    """The endpoints, state, rule and flow id of a session, as an event carries them."""
    fields = _endpoints(session.proto, session.src, session.dst, session.sport, session.dport)
    fields.update(state=session.state_name, rule=session.rule, flow_id=flow_id(session))
    return fields


class EventFeed:
    """The ring of recent events and the cursors that follow it. `wake` is called after a publish."""

    def __init__(self, size: int = RING_SIZE, wall: Callable[[], float] = time.time):
        self.ring: deque = deque(maxlen=size)
        self.seq = 0
        self.wall = wall
        self.wake: Callable[[], None] | None = None
        self.drops_left = DROPS_PER_SECOND
        self.suppressed: Counter = Counter()
        self.counters: Counter = Counter()

    # -- publishing -------------------------------------------------------------------------------

    def publish(self, kind: str, fields: dict) -> None:
        self.seq += 1
        self.ring.append({"seq": self.seq, "time": round(self.wall(), 6), "type": kind, **fields})
        self.counters[kind] += 1
        if self.wake is not None:
            self.wake()

    def opened(self, session, reason: str) -> None:
        self.publish("new", {**session_fields(session), "reason": reason})

    def changed(self, session, old_state: str) -> None:
        self.publish("update", {**session_fields(session), "old_state": old_state})

    def closed(self, session, why: str) -> None:
        self.publish("destroy", {**session_fields(session), "reason": why,
                                 "packets": session.orig_packets + session.reply_packets,
                                 "bytes": session.orig_bytes + session.reply_bytes})

    def dropped(self, decision) -> None:
        if self.drops_left <= 0:
            self.suppressed[decision.reason] += 1
            return
        self.drops_left -= 1
        pkt, fields = decision.packet, {"reason": decision.reason, "count": 1}
        if pkt is not None:
            fields.update(_endpoints(pkt.proto, pkt.src, pkt.dst, pkt.sport, pkt.dport))
        self.publish("drop", fields)

    # -- what feeds it ----------------------------------------------------------------------------

    def observe(self, decision) -> None:
        """The packet handler's tap: drops (sessions come from the engine's effects)."""
        if decision.verdict == "drop":
            self.dropped(decision)

    def effects(self, effects) -> None:
        """The engine's session effects: new, update and destroy events; EVE `lb` events: lb."""
        for effect in effects:
            kind = type(effect).__name__
            if kind not in SESSION_EFFECTS:
                if kind == "LogEvent" and effect.event.get("event_type") == "lb":
                    self.publish("lb", dict(effect.event["lb"]))
                continue
            if kind == "SessionOpened":
                rule = effect.session.rule
                self.opened(effect.session, getattr(effect, "reason", None) or (f"rule:{rule}" if rule else "related"))
            elif kind == "SessionChanged":
                old = effect.old_state
                self.changed(effect.session, old.name if hasattr(old, "name") else str(old))
            else:
                self.closed(effect.session, effect.why)

    def tick(self, now: float) -> None:
        """Once a second: the drops suppressed in the last second, one summary event per reason."""
        suppressed, self.suppressed = self.suppressed, Counter()
        self.drops_left = DROPS_PER_SECOND
        for reason, count in sorted(suppressed.items()):
            self.publish("drop", {"reason": reason, "count": count, "summary": True})

    def close(self) -> None:
        self.wake = None

    # -- reading ----------------------------------------------------------------------------------

    def since(self, seq: int) -> list[dict]:
        """The events after sequence number `seq` still in the ring (oldest first)."""
        if not self.ring or self.ring[-1]["seq"] <= seq:
            return []
        first = self.ring[0]["seq"]
        start = max(0, seq + 1 - first)
        return [self.ring[i] for i in range(start, len(self.ring))]

    def stream(self, follow: bool, types: set | None = None, since: float | None = None,
               head: dict | None = None) -> Iterator:
        """The answer of `{"command": "events"}`: JSON lines; with `follow`, `None` when there is nothing
        new (the control socket waits for the next publish)."""
        import json  # noqa: PLC0415

        yield json.dumps(head or {"ok": True, "version": 1, "follow": follow}) + "\n"
        cursor = self.ring[0]["seq"] - 1 if self.ring else self.seq
        while True:
            batch = self.since(cursor)
            if batch and batch[0]["seq"] > cursor + 1:
                yield json.dumps({"type": "lost", "count": batch[0]["seq"] - cursor - 1}) + "\n"
            lines = [json.dumps(event) for event in batch
                     if (types is None or event["type"] in types) and (since is None or event["time"] >= since)]
            if batch:
                cursor = batch[-1]["seq"]
            if lines:
                yield "\n".join(lines) + "\n"
            elif not follow:
                return
            else:
                yield None


def parse_request(request: dict) -> tuple[bool, set | None, float | None]:
    """(follow, types, since) of an `events` request; ValueError with a message for the operator."""
    types = request.get("types")
    if types is not None:
        types = set(types)
        unknown = sorted(types - set(EVENT_TYPES))
        if unknown:
            raise ValueError(f"unknown event type {unknown[0]!r} (expected {', '.join(EVENT_TYPES)})")
    since = request.get("since")
    if since is not None and not isinstance(since, int | float):
        raise ValueError("since: seconds since the epoch expected")
    return bool(request.get("follow")), types, since


def attach_feed(daemon) -> EventFeed:
    """Feed a started fw.daemon.Daemon's events into a new EventFeed, and serve it on its control socket.

    Hooks used: the packet handler's `observe` (chained after the one already there: per-rule
    counters), the effects' effect sinks, the daemon's services (tick, close), its
    `feed` (the `events` request and `fw sessions kill`) and `stats_sections` (`overload`)."""
    feed = EventFeed()
    before = daemon.handler.observe
    if before is None:
        daemon.handler.observe = feed.observe
    else:
        def observe(decision, before=before, after=feed.observe):
            before(decision)
            after(decision)

        daemon.handler.observe = observe
    daemon.effects.effect_sinks.append(feed.effects)
    feed.wake = daemon.control.wake
    daemon.services.append(feed)
    daemon.stats_sections["overload"] = lambda: overload_section(daemon.engine)
    daemon.stats_sections["feed"] = lambda: dict(feed.counters)
    daemon.feed = feed
    return feed


def overload_section(engine, now: float | None = None, top: int = 5) -> dict:
    """`fw stats`' `overload`: sources blocked by the flood limits (pf's overload table), the first few."""
    now = time.monotonic() if now is None else now
    limits = getattr(engine, "limits", None)
    blocked = limits.blocked(now) if limits is not None else {}
    first = sorted(blocked.items(), key=lambda item: -item[1])[:top]
    return {"blocked": len(blocked),
            "sources": [{"src": address_text(src), "seconds": round(until - now, 1)} for src, until in first]}
