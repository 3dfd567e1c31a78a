"""HA session sync in the daemon: the packet hook, the hold, and the loop's side of the Redis link.

How it works. `attach_sync(daemon, config)` hooks a `SyncService` into a started daemon through its
hook points only: the engine's session effects (`daemon.effects.on`: SessionOpened, SessionChanged
and SessionClosed go to the tracker, which announces them), `handler.defer` (called for every
decision), a wake-up socket in `daemon.loop`, `daemon.services` (tick, release, close) and
`daemon.stats_sections["sync"]`.

Per packet (`on_decision`): an accepted packet goes its way at once (sync learns of new and
changed sessions from the effects, not by looking at every packet). A dropped packet that may be waiting for a peer's
session is held instead (its NFQUEUE verdict deferred: netfilterqueue 1.1 lets a kept Packet be
given its verdict after the callback returned): `invalid:no-session`, `invalid:state` and
`invalid:out-of-window` (our copy of the session may be behind the peer's), and `default` or a
refusing rule (a reply that a rule would refuse, e.g. UDP, before its session arrived). Held only
while a peer has been heard from (or the first snapshot is loading), within `--sync-hold-ms`, and
within the queue's bounds (count, bytes; beyond them the packet is dropped at once, counted).
When a peer's announcement of the packet's flow arrives, its held packets are judged again by
the engine, oldest first; at the deadline all the rest are judged a last time. A translated
session's reply arrives with its translated tuple (the session's NAT alias key, fw/engine_nat.py):
its announcement releases the packets held under either key. With NAT (the engine judging in two
passes, fw/engine_nat_passes.py) a held packet is judged again through the handler's own `judge`
(its hook, checksum state and kernel entry) and leaves with the new mark and payload of that
judgement (`apply_effects`), as it would have at once; a deferred first packet (`--sync-defer`) gets
its mark and payload when it is deferred, and they go with its verdict. Holding a packet
also asks the peers for its session (fw.sync.tracker: `request`), in case no news is coming. A held
packet's verdict is counted once, when it is given for good (the packet handler's `verdicts`, with
the reason of the judgement that decided it). With `--sync-defer` the
first packet of a new session waits (up to the hold time) until Redis accepted the announcement.

Peers: heard within PEER_TIMEOUT, a peer is alive; `on_peers(listener)` tells the live set when it
changes (the forwarding's Owners view takes it). A peer heard once and silent since is gone: the
first accepted packet of one of its sessions here claims the session (fw.sync.tracker `claim`:
we own it from then on, and a claim wins over older ones, so the gone node, back, does not take
it back). One attribute test per accepted packet while every peer is alive.

Everything from Redis arrives as events (fw.sync.link) in a deque and a byte on the wake-up
socket; an alarm thread writes a byte at the next deadline (the oldest held packet, the next
sweep slice), so holds end on time although the daemon's own tick is once a second. Redis away:
nothing is held (no peer heard), announcements are not taken (counted), the node works alone; when
it comes back, the reader reloads the snapshot and the tracker announces everything again.
"""

from __future__ import annotations

import logging
import select
import socket
import time
from collections import Counter, deque
from collections.abc import Callable

from fw.conntrack.table import flow_key
from fw.decision import (
    ACCEPT,
    NO_EFFECTS,
    SESSION_EFFECTS,
    ForwardToOwner,
    SessionChanged,
    SessionClosed,
    SessionOpened,
)
from fw.sync.codec import Codec
from fw.sync.config import SyncConfig
from fw.sync.hold import Alarm, Held, HoldQueue, Waits
from fw.sync.link import RedisLink, redacted
from fw.sync.tracker import SWEEP_SLICE, Outgoing, SessionSync

log = logging.getLogger("fw.sync")

HOLD_REASONS = frozenset(("invalid:no-session", "invalid:state", "invalid:out-of-window", "default"))
HELLO_EVERY = 1.0  # seconds between heartbeats
PEER_TIMEOUT = 3.5  # seconds without a word after which a peer is not waited for
LOADING_GRACE = 5.0  # seconds after start during which packets wait for the first snapshot
MESSAGES_PER_WAKE = 200  # applied per turn of the loop (~50 us each): packets go on in between
REQUESTS_PER_SECOND = 200  # asks for the sessions of held packets
ICMP_PROTOS = (1, 58)


def held_key(pkt) -> tuple:
    """The flow key of the session a dropped packet may be waiting for (ICMP errors: the quoted one)."""
    proto = pkt.proto
    if proto in ICMP_PROTOS:
        inner = pkt.inner
        if inner is not None:
            if inner.proto in ICMP_PROTOS:
                return flow_key(inner.proto, inner.src, inner.dst, inner.icmp_id, inner.icmp_id)
            return flow_key(inner.proto, inner.src, inner.dst, inner.sport, inner.dport)
        return flow_key(proto, pkt.src, pkt.dst, pkt.icmp_id, pkt.icmp_id)
    return flow_key(proto, pkt.src, pkt.dst, pkt.sport, pkt.dport)


class SyncService:
    def __init__(self, engine, handler, config: SyncConfig, mark: int = 0, clock=time.monotonic):
        self.engine = engine
        self.handler = handler
        self.config = config
        self.clock = clock
        self.hold_time = config.hold_ms / 1000
        self.counters: Counter = Counter()
        self.held = HoldQueue(config.max_held, config.max_held_bytes)
        self.hold_waits, self.defer_waits = Waits(), Waits()
        self.peers: dict[str, dict] = {}
        self.started = clock()
        self.loaded = False
        self.closing = False
        self._offset = time.time() - clock()
        self._events: deque = deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        codec = Codec(config.key, config.cluster, config.node, first_seq=int(time.time() * 1e6), worker=config.worker)
        self.link = RedisLink(config.url, config.cluster, codec, self._deliver, mark, acks=config.defer)
        self.tracker = SessionSync(engine, config.node, self.link.submit, lambda: self._offset,
                                   dispatch=handler.on_effects)
        self.known = self.tracker.known
        self.alarm = Alarm(self._ring)
        self._next_hello = self._next_sweep = 0.0
        self._asked: dict = {}  # flow key -> when we last asked the peers for its session
        # forward_held(held, decision) -> bool: a held packet judged again turned out to belong to
        # another node's session (the engine's ForwardToOwner: --forward-to-owner). True if it took
        # the packet (sent it to the owner, gave its verdict); False, having replaced the decision
        # with this node's own judgement, if the owner could not be reached.
        self.forward_held: Callable | None = None
        self.alive: frozenset[str] = frozenset()  # peers heard within PEER_TIMEOUT
        self._gone: frozenset[str] = frozenset()  # peers heard once, silent since: their sessions are claimed
        self._peer_listeners: list[Callable[[frozenset], None]] = []
        self._asked_since, self._asked_count = 0.0, 0

    def subscribe(self, effects) -> None:
        """Take the engine's session effects from the daemon's effects (fw.drivers.effects.Effects)."""
        tracker = self.tracker
        effects.on(SessionOpened, tracker.on_opened)
        effects.on(SessionChanged, tracker.on_changed)
        effects.on(SessionClosed, tracker.on_closed)

    def on_peers(self, listener: Callable[[frozenset], None]) -> None:
        """Call `listener(alive)` whenever the set of live peers changes (and once now): e.g.
        fw.sync.forwarding's `ForwardingNode.peers_heard`, so that nothing is forwarded to a
        node that died, and packets of its sessions are decided (and claimed) here."""
        self._peer_listeners.append(listener)
        listener(self.alive)

    def _check_peers(self, now: float) -> None:
        me = self.config.node
        alive = frozenset(name for name, peer in self.peers.items()
                          if now - peer["heard"] < PEER_TIMEOUT and name != me)
        if alive == self.alive:
            return
        self.alive = alive
        self._gone = frozenset(self.peers) - alive - {me}
        for name in sorted(self._gone):
            log.info("sync: peer %s not heard for %.1f s: its sessions are ours on their next packet", name,
                     PEER_TIMEOUT)
        for listener in self._peer_listeners:
            try:
                listener(alive)
            except Exception as exc:  # noqa: BLE001
                self.counters["errors"] += 1
                log.error("sync: a peer listener failed: %r", exc)

    def start(self) -> None:
        self.tracker.seed(self.clock())
        self.link.start()
        self.alarm.set(self.clock() + SWEEP_SLICE)

    def fileno(self) -> int:
        return self._wake_r.fileno()

    def describe(self) -> str:
        return self.config.describe()

    # -- the packet hook ------------------------------------------------------------------------

    def on_decision(self, packet, data: bytes, decision) -> bool:
        """PacketHandler.defer: True if we keep the packet (its verdict comes later). Never raises."""
        try:
            if decision.verdict == ACCEPT:
                if self._gone and (session := decision.session) is not None and session.owner in self._gone:
                    self.tracker.claim(session, self.clock())  # its owner died: the session is ours now
                if self.config.defer and decision.effects:
                    return self._defer_opened(packet, data, decision)
                return False
            return self._hold(packet, data, decision)
        except Exception as exc:  # noqa: BLE001  (the packet gets its verdict from the handler)
            self.counters["errors"] += 1
            log.error("sync failed on a packet: %r", exc)
            return False

    def _waiting_for_peers(self, now: float) -> bool:
        if self.hold_time <= 0 or self.closing:
            return False
        if not self.loaded and now - self.started < LOADING_GRACE:
            return True
        return any(now - peer["heard"] < PEER_TIMEOUT for peer in self.peers.values())

    def _hold(self, packet, data: bytes, decision) -> bool:
        reason = decision.reason
        if decision.packet is None or not (reason in HOLD_REASONS or reason.startswith("rule:")):
            return False
        now = self.clock()
        if not self._waiting_for_peers(now):
            return False
        handler = self.handler
        held = Held(packet, data, handler.ifname(packet.indev), handler.ifname(packet.outdev),
                    held_key(decision.packet), now, now + self.hold_time)  # fmt: skip
        if not self.held.add(held):
            self.counters["hold_full"] += 1
            return False
        # Judged again later, with the events and packets of that judgement; what happened to
        # sessions (a reopening SYN closed one) has happened and is still told.
        decision.effects = tuple(e for e in decision.effects if type(e) in SESSION_EFFECTS) or NO_EFFECTS
        self.counters["held"] += 1
        self.alarm.set(held.deadline)
        self._request(held.key, now)
        return True

    def _request(self, key, now: float) -> None:
        """Ask the peers for the session of a held packet: once per hold time per flow, and at most
        REQUESTS_PER_SECOND (junk from outside must not turn into a flood of requests)."""
        asked = self._asked
        if asked.get(key, -1e9) > now - self.hold_time:
            return
        if now - self._asked_since >= 1.0:
            self._asked_since, self._asked_count = now, 0
            if len(asked) > 4 * REQUESTS_PER_SECOND:
                self._asked = asked = {k: t for k, t in asked.items() if t > now - 1.0}
        if self._asked_count >= REQUESTS_PER_SECOND:
            self.counters["requests_limited"] += 1
            return
        self._asked_count += 1
        asked[key] = now
        self.tracker.request(key)

    def _defer_opened(self, packet, data: bytes, decision) -> bool:
        """--sync-defer: announce the session this packet opened now, and keep the packet until
        Redis took the announcement (the SessionOpened effect then finds it announced)."""
        for effect in decision.effects:
            if type(effect) is SessionOpened:
                ticket = self.tracker.on_opened(effect)
                if ticket:
                    return self._defer(packet, data, decision, ticket)
        return False

    def _defer(self, packet, data: bytes, decision, ticket: int) -> bool:
        now = self.clock()
        if not self._waiting_for_peers(now):
            return False
        held = Held(packet, data, None, None, None, now, now + self.hold_time, ticket, decision.verdict,
                    decision.reason)
        if not self.held.add(held):
            self.counters["hold_full"] += 1
            return False
        if decision.verdict == ACCEPT and decision.effects:  # NAT: its mark and payload go with the verdict
            self.handler.apply_effects(packet, decision.effects)
        self.counters["deferred"] += 1
        self.alarm.set(held.deadline)
        return True

    # -- the loop side --------------------------------------------------------------------------

    def _deliver(self, event: tuple) -> None:
        """From the link's threads: queue the event and wake the loop."""
        self._events.append(event)
        self._ring()

    def _ring(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already waiting (or we are closing)

    def on_wake(self, _events=None) -> None:
        """The loop's callback for the wake-up socket: events, releases, sweeps, heartbeats."""
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        now = self.clock()
        self._offset = time.time() - now
        budget = MESSAGES_PER_WAKE
        while self._events and budget > 0:
            event = self._events.popleft()
            if event[0] == "snapshot" and len(event[1]) > budget:  # the rest at the next turn
                self._events.appendleft(("snapshot", event[1][budget:]))
                event = ("snapshot", event[1][:budget])
            budget -= len(event[1]) if event[0] == "snapshot" else 1
            self._event(event, now)
        if self._events:
            self._ring()  # more next turn: packets get their share of the loop in between
        self._check_peers(now)
        for held in self.held.due(now):
            if held.ticket is not None:
                self._release_deferred(held, now, acked=False)
            else:
                self._release(held, now, final=True)
        if now >= self._next_sweep and (self.loaded or now - self.started > LOADING_GRACE):
            self._next_sweep = now + SWEEP_SLICE
            self.tracker.sweep(now, self.link.writer_up)
        if now >= self._next_hello and self.link.writer_up:
            self._next_hello = now + HELLO_EVERY
            self.link.submit(Outgoing("hello", None, {"sessions": len(self.engine.table)}))
        deadline = self.held.next_deadline()
        self.alarm.set(min(deadline, now + SWEEP_SLICE) if deadline is not None else now + SWEEP_SLICE)

    def _event(self, event: tuple, now: float) -> None:
        kind = event[0]
        if kind == "message":
            self._apply(event[1], now, snapshot=False)
        elif kind == "snapshot":
            for message in event[1]:
                self._apply(message, now, snapshot=True)
        elif kind == "acked":
            for ticket in event[1]:
                held = self.held.for_ticket(ticket)
                if held is not None:
                    self._release_deferred(held, now, acked=True)
        elif kind == "loaded":
            self.loaded = True
            self.counters["snapshot_sessions"] += event[1]
            log.info("sync: %d sessions in the cluster's snapshot", event[1])
        elif kind == "up":
            if event[1] == "writer" and self.counters["writer_downs"]:
                self.tracker.resync()  # what we announced while Redis was away is lost: all again
            log.info("sync: the %s is connected to %s", event[1], redacted(self.config.url))
        elif kind == "down":
            self.counters[event[1] + "_downs"] += 1
            log.warning("sync: the %s lost Redis (%s); reconnecting", event[1], event[2])

    def _apply(self, message, now: float, snapshot: bool) -> None:
        peer = self.peers.setdefault(message.node, {"heard": now, "sessions": 0})
        if not snapshot:
            peer["heard"] = now
        if message.type == "hello":
            sessions = message.body.get("sessions")
            counts = peer.setdefault("by_worker", {})  # a node with --queues: each worker says hello
            counts[message.worker] = sessions if isinstance(sessions, int) else 0
            peer["sessions"] = sum(counts.values())
            return
        try:
            key = self.tracker.apply(message.node, message.type, message.body, now)
        except Exception as exc:  # noqa: BLE001  (an authenticated but unusable body)
            self.counters["invalid"] += 1
            log.debug("sync: unusable %s message from %s: %r", message.type, message.node, exc)
            return
        if key is not None:
            waiting = self.held.for_key(key)
            session = self.engine.table.sessions.get(key) if message.type == "session" else None
            binding = session.nat if session is not None else None
            if binding is not None and binding.alias is not None:
                waiting += self.held.for_key(binding.alias)  # replies to the translated address
            if message.type == "session" and message.body.get("expectations") and len(self.held):
                waiting += self.held.for_hosts(key[1], key[2])  # data connections they admit
            for held in waiting:
                self._release(held, now, final=False)

    def _release_deferred(self, held: Held, now: float, acked: bool) -> None:
        """A deferred first packet gets the verdict it had: Redis took its announcement, or time is up."""
        self._verdict(held, held.verdict)
        self.handler.verdicts.count(held.verdict, held.reason)
        if acked:
            self.defer_waits.add(now - held.since)
        else:
            self.counters["defer_timeouts"] += 1

    def _release(self, held: Held, now: float, final: bool) -> None:
        """Give a held packet the engine's verdict now (unless, taken out early because its flow's
        session arrived, it still does not pass and has time left: then it waits on)."""
        handler = self.handler
        try:
            if self.engine.nat.two_passes:  # NAT: the hook and the packet's state matter (module docstring)
                decision = handler.judge(held.packet, held.data)
            else:
                decision = self.engine.process(held.data, now, held.iif, held.oif)
        except Exception as exc:  # noqa: BLE001
            handler.errors["engine"] += 1
            handler.verdicts.count(handler.fail_verdict, "error")
            self._verdict(held, handler.fail_verdict)
            handler.on_error("engine", exc, held.data)
            return
        effects = decision.effects
        if effects and type(effects[0]) is ForwardToOwner and self.forward_held is not None \
                and self.forward_held(held, decision):
            self.counters["held_forwarded"] += 1
            return
        verdict = decision.verdict
        if verdict != ACCEPT and not final and now < held.deadline:
            self.held.put_back(held)  # not decided yet: nothing counted; what happened to sessions is told
            self._effects(held, tuple(e for e in decision.effects if type(e) in SESSION_EFFECTS))
            return
        if verdict == ACCEPT and decision.effects:
            try:
                handler.apply_effects(held.packet, decision.effects)  # NAT: its new mark and payload
            except Exception as exc:  # noqa: BLE001
                handler.errors["verdict"] += 1
                handler.on_error("verdict", exc, held.data)
        self._verdict(held, verdict)
        handler.verdicts.count(verdict, decision.reason)
        if verdict == ACCEPT:
            self.counters["held_accepted"] += 1
            self.hold_waits.add(now - held.since)
        else:
            self.counters["held_dropped"] += 1
        self._effects(held, decision.effects)

    def _effects(self, held: Held, effects) -> None:
        if effects:
            handler = self.handler
            try:
                handler.on_effects(effects)
            except Exception as exc:  # noqa: BLE001
                handler.errors["effects"] += 1
                handler.on_error("effects", exc, held.data)

    def _verdict(self, held: Held, verdict: str) -> None:
        try:
            held.packet.accept() if verdict == ACCEPT else held.packet.drop()
        except Exception as exc:  # noqa: BLE001  (the queue is gone, or the kernel forgot the id)
            self.handler.errors["verdict"] += 1
            self.handler.on_error("verdict", exc, held.data)

    # -- the daemon's service interface ---------------------------------------------------------

    def tick(self, now: float) -> None:
        """Once a second from the daemon (the real work is driven by the alarm): a wake-up, in case."""
        self._ring()

    def release_held(self) -> None:
        """Before the queue closes: no more holding, every held packet judged now."""
        self.closing = True
        now = self.clock()
        for held in self.held.take_all():
            if held.ticket is not None:
                self._release_deferred(held, now, acked=False)
            else:
                self._release(held, now, final=True)

    def close(self) -> None:
        self.release_held()
        self.alarm.close()
        self.link.close()
        self._wake_r.close()
        self._wake_w.close()

    def stats(self) -> dict:
        now, counters = self.clock(), self.counters
        return {
            "node": self.config.node, "cluster": self.config.cluster, "url": redacted(self.config.url),
            "mode": {"hold_ms": self.config.hold_ms, "defer": self.config.defer}, "loaded": self.loaded,
            "redis": self.link.stats(),
            "peers": {name: {"last_heard": round(now - peer["heard"], 3), "sessions": peer["sessions"],
                             "alive": name in self.alive} for name, peer in self.peers.items()},
            "claimed": {"taken": self.tracker.counters["claimed"], "kept": self.tracker.counters["claims_kept"],
                        "lost": self.tracker.counters["claims_lost"]},
            "tracked": len(self.known),
            "announced": _prefixed(self.tracker.counters, "announced:"),
            "applied": _prefixed(self.tracker.counters, "applied:"),
            "unsent": self.tracker.counters["unsent"], "invalid": counters["invalid"],
            "requests": {"sent": self.tracker.counters["requested"], "limited": counters["requests_limited"]},
            "removals_ignored": self.tracker.counters["removals_ignored"],
            "snapshot_sessions": counters["snapshot_sessions"],
            "hold": {"held": counters["held"], "accepted": counters["held_accepted"],
                     "dropped": counters["held_dropped"], "forwarded": counters["held_forwarded"],
                     "full": counters["hold_full"], "waiting": len(self.held),
                     "wait": self.hold_waits.as_dict()},
            "defer": {"deferred": counters["deferred"], "timeouts": counters["defer_timeouts"],
                      "wait": self.defer_waits.as_dict()},
            "errors": counters["errors"],
        }  # fmt: skip


def attach_sync(daemon, config: SyncConfig) -> SyncService:
    """Hook sync into a started single-queue daemon (see the module's docstring)."""
    service = SyncService(daemon.engine, daemon.handler, config, mark=daemon.config.mark)
    service.subscribe(daemon.effects)
    daemon.loop.watch(service.fileno(), select.POLLIN, service.on_wake)
    daemon.services.append(service)
    daemon.handler.defer = service.on_decision
    sections = getattr(daemon, "stats_sections", None)
    if sections is not None:
        sections["sync"] = service.stats
    service.start()
    return service


def _prefixed(counters: Counter, prefix: str) -> dict:
    return {name[len(prefix):]: n for name, n in counters.items() if name.startswith(prefix)}
