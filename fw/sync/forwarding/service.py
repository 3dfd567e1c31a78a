"""Owner forwarding in the daemon (`fw run --sync ... --forward-to-owner`): both sides of the link.

How it works. `attach_forwarding(daemon, sync, config)` hooks a `ForwardService` into a started
single-queue daemon that already has sync (fw.sync.service), through hook points only: the packet
handler's `defer` (ours first, then sync's hold), a socket in `daemon.loop`, `daemon.services`
(tick, close), `daemon.stats_sections["forward"]` and the metrics' `add_source`.

Sending side, per packet (`on_decision`, before the hold):
- the engine answered DROP `owner:NODE` with a ForwardToOwner effect (the packet's session is
  owned by a live peer with an address: `Engine.decide_at_owners`, which `tick` keeps equal to
  the Owners view): the packet goes to NODE; its NFQUEUE verdict here is drop, counted in the
  `forward` section (`handed`), not among the drops;
- the engine dropped it for want of a session (`invalid:no-session`, `default`, a refusing rule,
  a fragment with no first fragment), not a pure SYN (a new connection is nobody else's), and one
  peer is alive with an address: it goes to that peer (a SYN-ACK that beat the sync);
- a packet sync held (several peers alive, none known to own it) whose session's news names
  another owner goes there when it is judged again (`forward_held`, sync's hook);
- if nothing could be sent (socket buffer full, too large), or the route says decide here, the
  packet is judged here after all (`Engine.process_forwarded`: whoever owns its session) and that
  decision goes on to sync's hold and to the verdict, as without forwarding.
Nothing here waits: the datagram is sent on a non-blocking socket, the routes come from tables the
directory thread and the sync service keep up to date.

Owner side (`on_readable`): each admitted datagram's packet goes through
`Engine.process_forwarded` with the sender's interface names (a node "as if the packet had arrived
on its own interface"). Accepted, it is sent on out of the daemon's raw socket (routed by this
node's table, the daemon's mark on it), one hop later (fw.packet.ttl.hop: a packet whose TTL would
expire is not sent, counted `expired`); a RewritePacket (NAT) gives the bytes sent. Dropped, it is
counted with its reason. Either way its effects are carried out (session effects: sync announces;
events get `"ha": {"forwarded_by": PEER, "decided_by": US}`), and the verdict counted in
`decided` (by verdict and reason) and `by_peer`. A forwarded packet is never held nor forwarded
again. Refused datagrams are counted by the gate and reported as EVE `anomaly` events, at most
one per reason and peer a second.
"""

from __future__ import annotations

import errno
import logging
import select
import time
from collections import Counter

from fw.decision import ACCEPT, NO_EFFECTS, ForwardToOwner, LogEvent, RewritePacket
from fw.packet.ttl import hop
from fw.sync.forwarding.node import ForwardConfig, ForwardingNode
from fw.sync.forwarding.owner import FORWARD
from fw.sync.forwarding.report import anomaly
from fw.sync.forwarding.wire import UNKNOWN_HOOK
from fw.sync.service import HOLD_REASONS, PEER_TIMEOUT

log = logging.getLogger("fw.sync.forwarding")

UNPLACED = HOLD_REASONS | {"fragment"}
SYN, ACK = 0x02, 0x10
ANOMALY_EVERY = 1.0  # seconds between two anomaly events of one reason and peer


def unplaced(decision) -> bool:
    """A drop that a peer's session may explain (and not the first packet of a new TCP connection)."""
    reason, pkt = decision.reason, decision.packet
    if decision.session is not None or pkt is None or not (reason in UNPLACED or reason.startswith("rule:")):
        return False
    return not (pkt.proto == 6 and pkt.flags & (SYN | ACK) == SYN)


class ForwardService:
    def __init__(self, daemon, sync, node: ForwardingNode, clock=time.monotonic):
        self.engine = daemon.engine
        self.handler = daemon.handler
        self.effects = daemon.effects
        self.sync = sync
        self.node = node
        self.clock = clock
        self.hold = daemon.handler.defer  # sync's: what a packet decided here goes on to
        self.counters: Counter = Counter()
        self.decided: dict[str, Counter] = {ACCEPT: Counter(), "drop": Counter()}
        self.by_peer: Counter = Counter()
        self._reported: dict[tuple, float] = {}
        node.receiver.on_refused = self._refused

    def describe(self) -> str:
        host, port = self.node.receiver.address
        return f"forward-to-owner: listening on {host}:{port} (UDP) as {self.node.node}"

    # -- the sending side -----------------------------------------------------------------------

    def on_decision(self, packet, data: bytes, decision) -> bool:
        """PacketHandler.defer: True if the packet went to its owner (dropped here). Never raises."""
        try:
            effects = decision.effects
            if effects and type(effects[0]) is ForwardToOwner:
                if self._send(self.node.route_session(effects[0].node, False), packet, data):
                    decision.effects = NO_EFFECTS
                    return True
                self._judge_here(packet, data, decision)
            elif decision.verdict != ACCEPT and unplaced(decision):
                if self._send(self.node.route_unplaced(False), packet, data):
                    return True
        except Exception as exc:  # noqa: BLE001  (the packet gets its verdict from the handler)
            self.counters["errors"] += 1
            log.error("owner forwarding failed on a packet: %r", exc)
        return self.hold(packet, data, decision) if self.hold is not None else False

    def forward_held(self, held, decision) -> bool:
        """SyncService.forward_held: a packet sync held (several peers, none known to own it) whose
        owner's news came: it goes to the owner; if it cannot, it is judged here (the decision replaced)."""
        if self._send(self.node.route_session(decision.effects[0].node, False), held.packet, held.data,
                      held.iif, held.oif):  # fmt: skip
            return True
        self._judge_here(held.packet, held.data, decision, held.iif, held.oif)
        return False

    def _send(self, route, packet, data: bytes, iif=None, oif=None) -> bool:
        if route.kind != FORWARD:
            return False
        handler = self.handler
        mark = 0
        try:
            mark = packet.get_mark()
        except (AttributeError, OSError):
            pass
        if iif is None and oif is None:
            iif, oif = handler.ifname(packet.indev), handler.ifname(packet.outdev)
        if not self.node.forward(route, data, getattr(packet, "hook", UNKNOWN_HOOK), iif, oif, mark):
            self.counters["fallback"] += 1
            return False
        packet.drop()
        self.counters["handed:" + route.reason] += 1
        return True

    def _judge_here(self, packet, data: bytes, decision, iif=None, oif=None) -> None:
        """The owner could not be reached: this decision is replaced by our own judgement."""
        if iif is None and oif is None:
            iif, oif = self.handler.ifname(packet.indev), self.handler.ifname(packet.outdev)
        mine = self.engine.process_forwarded(data, self.clock(), iif, oif)
        decision.verdict, decision.reason, decision.packet = mine.verdict, mine.reason, mine.packet
        decision.session, decision.effects = mine.session, mine.effects

    # -- the owner's side -----------------------------------------------------------------------

    def on_readable(self, _events=None) -> None:
        for datagram in self.node.receive():
            self._own(datagram)

    def _own(self, datagram) -> None:
        handler, data = self.handler, datagram.packet
        try:
            decision = self.engine.process_forwarded(data, self.clock(), datagram.iif, datagram.oif)
        except Exception as exc:  # noqa: BLE001
            handler.errors["engine"] += 1
            self.decided["drop"]["error"] += 1
            handler.on_error("engine", exc, data)
            return
        self.decided[decision.verdict][decision.reason] += 1
        self.by_peer[datagram.node] += 1
        effects = decision.effects
        if decision.verdict == ACCEPT:
            for effect in effects:
                if type(effect) is RewritePacket:
                    data = effect.data
            self._send_on(data)
        if effects:
            ha = {"forwarded_by": datagram.node, "decided_by": self.node.node}
            for effect in effects:
                if type(effect) is LogEvent:
                    effect.event["ha"] = ha
            try:
                handler.on_effects(effects)
            except Exception as exc:  # noqa: BLE001
                handler.errors["effects"] += 1
                handler.on_error("effects", exc, data)

    def _send_on(self, data: bytes) -> None:
        onward = hop(data)
        if onward is None:
            self.counters["expired"] += 1
            return
        sender = self.effects.sender
        try:
            sender.send(onward[0] >> 4, onward)
        except OSError as error:
            self.counters["send_on_failed:" + (errno.errorcode.get(error.errno or 0) or "unknown")] += 1
            return
        self.counters["sent_on"] += 1

    def _refused(self, refusal, source) -> None:
        now = self.clock()
        key = (refusal.reason, refusal.node)
        if now - self._reported.get(key, -1e9) < ANOMALY_EVERY:
            return
        if len(self._reported) > 1024:
            self._reported.clear()
        self._reported[key] = now
        eve = self.effects.log
        if eve is not None:
            eve.write({"event_type": "anomaly", "anomaly": anomaly(refusal, source)})

    # -- the daemon's service interface ---------------------------------------------------------

    def tick(self, now: float) -> None:
        """Peers heard by sync and the directory's addresses into the routes and the engine."""
        alive = getattr(self.sync, "alive", None)  # a sync that keeps the set of live peers itself
        if alive is None:
            alive = [name for name, peer in self.sync.peers.items() if now - peer["heard"] < PEER_TIMEOUT]
        self.peers_changed(alive)

    def peers_changed(self, alive) -> None:
        """The live peers (from the tick, or told by sync as soon as they change)."""
        node = self.node
        node.peers_heard(alive)
        owners = node.owners
        reachable = frozenset(peer for peer in owners.alive if peer in owners.addresses)
        if len(reachable) < len(owners.alive):
            node.directory.wake()  # a peer heard but not where it listens: it has just started
        if reachable != self.engine.forward_to:
            if reachable:
                log.info("forward-to-owner: the sessions of %s are decided by them", ", ".join(sorted(reachable)))
            self.engine.decide_at_owners(reachable)

    def close(self) -> None:
        self.engine.decide_at_owners(())
        self.node.close()

    def stats(self) -> dict:
        section = self.node.stats()
        section["handed"] = {name[7:]: n for name, n in self.counters.items() if name.startswith("handed:")}
        section["fallback"] = self.counters["fallback"]
        section["decided"] = {verdict: dict(reasons) for verdict, reasons in self.decided.items()}
        section["by_peer"] = dict(self.by_peer)
        section["sent_on"] = self.counters["sent_on"]
        section["expired"] = self.counters["expired"]
        section["send_on_failed"] = {name[15:]: n for name, n in self.counters.items()
                                     if name.startswith("send_on_failed:")}  # fmt: skip
        section["errors"] = self.counters["errors"]
        section["decide_at"] = sorted(self.engine.forward_to)
        return section

    def metrics(self) -> list:
        """Prometheus families of the `forward` section (built on the loop's thread, fw.metrics)."""
        from fw.sync.forwarding.report import metric_families  # noqa: PLC0415

        return metric_families(self.stats())


def attach_forwarding(daemon, sync, config: ForwardConfig) -> ForwardService:
    """Hook owner forwarding into a started daemon with sync attached (see the module's docstring).
    OSError if the listen address cannot be bound."""
    sync_config = sync.config
    node = ForwardingNode(config, sync_config.key, sync_config.cluster, sync_config.node, sync_config.url,
                          daemon.config.mark)
    service = ForwardService(daemon, sync, node)
    daemon.loop.watch(node.fileno(), select.POLLIN, service.on_readable)
    daemon.handler.defer = service.on_decision
    sync.forward_held = service.forward_held
    daemon.services.append(service)
    daemon.stats_sections["forward"] = service.stats
    on_peers = getattr(sync, "on_peers", None)
    if on_peers is not None:  # told at once when a peer goes silent, not at the next tick
        on_peers(service.peers_changed)
    for other in daemon.services:
        add_source = getattr(other, "add_source", None)
        if add_source is not None:
            add_source(service.metrics)
    node.start()
    service.tick(time.monotonic())
    return service
