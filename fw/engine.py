# cython: annotation_typing=False
"""The SPI engine: packet bytes, the time and the session table in; a Decision out.

How it works, per packet: parse (a broken packet is dropped as `malformed`); a non-first fragment
is tied to the session of its first fragment or dropped as `fragment`; the canonical flow key finds
the session in one lookup. A packet of a known session is checked by its protocol's tracker (TCP:
fw.conntrack.tcp's table and window checks) and accepted as `established`, or dropped as invalid
without touching the session. A packet with no session may open one: an ALG's expectation admits it
(`related:ftp`, `related:tftp`: the ALG's reason); otherwise the policy's first matching rule (or
the default) decides. ICMP errors are `related:icmp` only when the header they quote belongs to a
session. The payload of a session with an ALG (TCP or UDP) is fed to it (fw/alg).

The engine performs no I/O and reads no clock: resets, ICMP unreachables, log events and what
happened to sessions are returned as effects for the driver to carry out (fw/decision.py).
`expire(now)` is called by the driver.

Policy power, kept off the established path: with zones and `spoof_check`, a packet whose source
may not arrive on its interface is dropped as `spoof` before any lookup (fw.policy.zones); a rule's
`limit` and `log_limit` are met only when it would open a session or log (fw.conntrack.rule_limits);
`recheck(now)` closes what a new policy refuses (fw.policy.recheck).

HA owner forwarding (`fw run --forward-to-owner`): the driver names the peers that decide their own
sessions (`decide_at_owners`); a packet of a session one of them owns is answered DROP `owner:NODE`
with a `ForwardToOwner(NODE)` effect, before the session is touched (its owner judges it). A packet
that came forwarded goes through `process_forwarded`: judged here, whoever owns its session.

Compiled (build_compiled.py), the hot methods' locals are typed (`@cython.locals`, the classes from
fw/engine.pxd; nothing when pure): the established TCP path reads the Packet and the TcpSession
as C structs and calls the tracker in C; a new session (`open_session`) reads the Engine's
attributes once, makes its Decision and SessionOpened (extension types, fw/decision.pxd) without
`__init__`, and leaves a session without `extra` to reference counting (table.untrack).

Where the parts are: TCP's hot path, opening sessions (expectations, policy, floods, eviction),
expiry and removal here; UDP, ICMP and fragments in fw/engine_trackers.py; NAT in
fw/engine_nat.py and fw/engine_nat_ftp.py (the live passes in fw/engine_nat_passes.py); virtual
servers (the load balancer) in fw/engine_lb.py; snapshots in fw/engine_state.py; expectations in
fw/conntrack/expect.py; the table, its timer wheel (`touch`) and eviction order in
fw/conntrack/table.py; TCP's state machine in fw/conntrack/tcp.py.
"""

from __future__ import annotations

from collections import Counter

try:
    import cython
except ImportError:  # no Cython: this module runs pure (as with FW_PURE=1)
    from fw import cython_shadow as cython

from fw import engine_nat, engine_nat_ftp, engine_nat_passes, engine_state, engine_trackers
from fw.alg import ALGS, Peers, Refusal
from fw.conntrack import tcp as tcpmod
from fw.conntrack.expect import Expectations
from fw.conntrack.limits import FLOOD, SourceLimits
from fw.conntrack.rule_limits import CLOSED as LIMIT_CLOSED
from fw.conntrack.rule_limits import COUNTED, LogLimits, RuleLimits
from fw.conntrack.table import (
    ASSURED,
    HALF_OPEN,
    LIBERAL,
    LOOSE,
    OFFLOADED,
    RELATED,
    REVERSED,
    SEEN_REPLY,
    Extra,
    Session,
    SessionTable,
    TcpSession,
    untrack,
)
from fw.conntrack.tcp import DEFAULT_TIMEOUTS, tcp_update
from fw.conntrack.tcp import timeout_key as tcp_timeout_key
from fw.decision import (
    ACCEPT,
    DROP,
    NO_EFFECTS,
    Decision,
    ForwardToOwner,
    LogEvent,
    OffloadSession,
    SendPacket,
    SessionChanged,
    SessionClosed,
    SessionOpened,
)
from fw.engine_lb import AllDown
from fw.engine_nat import EXHAUSTED, KERNEL_HELD, Binding, Nat
from fw.engine_trackers import datagram  # compiled: cimported (engine.pxd), a C call
from fw.events import session_event, verdict_event
from fw.nat.rewrite import RewriteError, Translation
from fw.packet import MalformedPacket
from fw.packet import build as pktbuild
from fw.packet.parse import Packet, parse  # compiled: parse cimported (engine.pxd), a C call
from fw.policy.recheck import refused_by

TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
NOBODY: frozenset = frozenset()
SYN, RST, ACK = 2, 4, 16
EMBRYONIC = frozenset((tcpmod.TcpState.SYN_SENT, tcpmod.TcpState.SYN_RECV, tcpmod.TcpState.SYN_SENT2))
FINISHED = frozenset((tcpmod.TcpState.TIME_WAIT, tcpmod.TcpState.CLOSE))  # a SYN may take its tuple
SYN_ACK_RST_FIN, TCP_SYN_BIT = 0x17, 0x02  # the TCP flags that tell a bare SYN, and its bit
EVICTION_BATCH = 0.01  # share of the table freed at once when it is full (at least one session)
GENERIC_TIMEOUT = engine_trackers.GENERIC_TIMEOUT
ESTABLISHED = engine_trackers.ESTABLISHED
icmp = engine_trackers.icmp


def _count(counter: Counter, key) -> None:
    """counter[key] += 1. Compiled, with the dict's own C calls (a Counter's item assignment goes
    through its Python-level slots, as Counter defines __delitem__: ~1,000 instructions)."""
    items = cython.cast(dict, counter) if cython.compiled else counter
    items[key] = items.get(key, 0) + 1


class EngineConfig:
    """What the driver tells the engine (not policy): whether events are wanted, whether the
    kernel can pass established sessions (then the engine emits OffloadSession for those that may
    go), and `nat_slice` (node, nodes): the share of every NAT port range this engine hands out
    (active/active HA: fw.sync.slices gives it from the node id; (0, 1): the whole range)."""

    __slots__ = ("events", "offload", "nat_slice")

    def __init__(self, events: bool = True, offload: bool = False, nat_slice: tuple[int, int] = (0, 1)):
        self.events = events
        self.offload = offload
        self.nat_slice = nat_slice


class Engine:
    """Stateful packet inspection over a policy. One Engine per queue worker."""

    def __init__(self, policy, config: EngineConfig | None = None):
        self.config = config or EngineConfig()
        self.table = SessionTable()
        self.expectations = Expectations()
        self.fragments = engine_trackers.Fragments()
        self.counters: Counter = Counter()  # inserts, expiries, ... (not packets: the driver counts verdicts)
        self.policy = None
        self._data = b""
        self.limits = SourceLimits({})
        self.rule_limits = RuleLimits()
        self.timeout_scale = 1.0
        self.nat = engine_nat.Nat(*self.config.nat_slice)
        self.forward_to = NOBODY  # owners whose sessions' packets are theirs to decide (decide_at_owners)
        self.partial = False  # the packet's L4 checksum is partial (the live NAT passes say so)
        self.swap_policy(policy)

    # -- policy -------------------------------------------------------------------------------

    def swap_policy(self, policy) -> None:
        """Use `policy` for new sessions from the next packet on; every session stays."""
        self.policy = policy
        options = policy.options
        self.tcp_loose = bool(options.get("tcp_loose", False))
        self.max_sessions = int(options.get("max_sessions", 262144))
        # pf's adaptive timeouts: from adaptive_start sessions on, timeouts shrink linearly and
        # reach zero at adaptive_end (defaults 60% and 120% of max_sessions, as pf).
        self.adaptive_start = int(options.get("adaptive_start") or self.max_sessions * 6 // 10)
        self.adaptive_end = int(options.get("adaptive_end") or self.max_sessions * 12 // 10)
        self.limits.configure(options)
        self.nat.configure(getattr(policy, "nat", ()), getattr(policy, "virtual_servers", ()))
        limited = self.rule_limits.rules or any(rule.limit is not None for rule in policy.rules)
        self.rule_limits = RuleLimits(policy, self.table.values() if limited else ())
        self.log_limits = LogLimits(policy, self.counters)
        self.spoof = policy.zones if policy.zones.checks else None  # checked before any lookup
        self._rescale()
        self.counters["policy_swaps"] += 1

    def decide_at_owners(self, nodes) -> None:
        """From the next packet on, a packet of a session owned by one of `nodes` is not judged here:
        DROP `owner:NODE` with ForwardToOwner(NODE), the session untouched (HA owner forwarding)."""
        self.forward_to = frozenset(nodes) or NOBODY

    def elsewhere(self, pkt, session: Session) -> Decision:
        owner = session.owner
        return Decision(DROP, "owner:" + owner, pkt, session, (ForwardToOwner(owner),))

    @property
    def sessions(self) -> SessionTable:
        return self.table

    @property
    def data(self) -> bytes:
        """The bytes of the packet being processed (an ICMP unreachable quotes them, NAT rewrites them)."""
        return self._data

    # -- the packet path ----------------------------------------------------------------------

    @cython.locals(pkt=Packet, proto=cython.long, decision=Decision)
    def process(self, data: bytes, now: float, iif: str | None = None, oif: str | None = None,
                hook: str | None = None, partial: bool = False) -> Decision:
        """One packet. `hook` None: the one pass of replay and of a daemon without NAT; the live
        NAT passes (`hook` before or after routing, `partial` checksums) are fw/engine_nat_passes.py's."""
        if hook is not None:
            return engine_nat_passes.process(self, data, now, iif, oif, hook, partial)
        self._data = data  # the raw bytes, for an ICMP unreachable that quotes them
        try:
            pkt = parse(data)
        except MalformedPacket:
            return self._verdict(DROP, "malformed")
        if self.spoof is not None and self.spoof.spoofed(pkt, iif):
            return self._verdict(DROP, "spoof", pkt)
        if pkt.is_fragment and pkt.frag_offset:
            return self.fragments.judge(pkt, now)
        proto = pkt.proto
        if proto == TCP:
            decision = self._tcp(pkt, now, iif, oif)
        elif proto == UDP:
            decision = datagram(self, pkt, pkt.sport, pkt.dport, now, iif, oif)
        elif proto == ICMP or proto == ICMPV6:
            decision = icmp(self, pkt, now, iif, oif)
        else:
            decision = datagram(self, pkt, 0, 0, now, iif, oif)
        if pkt.more_fragments and decision.session is not None and decision.verdict == ACCEPT:
            self.fragments.remember(pkt, decision.session, now)
        return decision

    def process_forwarded(self, data: bytes, now: float, iif: str | None = None, oif: str | None = None) -> Decision:
        """A packet another node forwarded to us: judged here whoever owns its session (never sent on
        to another owner: no loops)."""
        forward_to, self.forward_to = self.forward_to, NOBODY
        try:
            return self.process(data, now, iif, oif)
        finally:
            self.forward_to = forward_to

    @staticmethod
    def _verdict(verdict, reason, pkt=None, session=None, effects=NO_EFFECTS) -> Decision:
        return Decision(verdict, reason, pkt, session, effects)

    @cython.locals(pkt=Packet, session=TcpSession, side=cython.long, sport=cython.long, dport=cython.long,
                   deadline=cython.double, decision=Decision, extra=Extra, binding=Binding,
                   translation=Translation, reused=cython.bint)
    def _tcp(self, pkt, now, iif, oif) -> Decision:
        # The hot path: an established TCP packet. flow_key and the counting are written out
        # here on purpose (a Python call costs as much as a window check).
        # A TcpSession is its own track: tcp_update reads and writes its fields and state.
        src, dst, sport, dport = pkt.src, pkt.dst, pkt.sport, pkt.dport
        if src < dst or (src == dst and sport <= dport):
            key = (TCP, src, dst, sport, dport)
            side = 0
        else:
            key = (TCP, dst, src, dport, sport)
            side = REVERSED
        session = self.table.sessions.get(key)
        if session is not None:
            extra = session.extra
            if extra is not None and extra.owner is not None and extra.owner in self.forward_to:
                return self.elsewhere(pkt, session)
            if extra is not None and extra.nat is not None:  # translated: the key it came by says the way
                binding = extra.nat
                if binding.alias is None:
                    original = binding.direction(src, dst, sport, dport)
                elif key == session.key:
                    original = session.flags & REVERSED == side or None  # (d -> c): not as it arrives
                else:
                    original = False if side == binding.alias_side else None
                if original is None:
                    return Decision(DROP, "invalid:state", pkt, session)
                if binding.ftp is not None:
                    engine_nat_ftp.track_view(binding, pkt, original)
                # A new connection (a bare SYN) on a finished balanced session's tuple is scheduled
                # afresh, as IPVS's conn_reuse_mode does; the tracker would let a SYN the kernel's
                # rules do not reopen (after the server's RST) go to the old real server, which may
                # be down or drained by now.
                reused = False
                if binding.lb is not None and original and pkt.flags & SYN_ACK_RST_FIN == TCP_SYN_BIT:
                    reused = session.state in FINISHED
            else:
                original = session.flags & REVERSED == side
                reused = False
            old_state = session.state
            problem = tcpmod.REOPEN if reused else tcp_update(session, pkt, original)
            if problem is None:
                effects = NO_EFFECTS if session.state is old_state else self._tcp_state(session, old_state, original)
                timeouts = session.profile.timeouts
                deadline = now + timeouts[tcp_timeout_key(session, timeouts)] * self.timeout_scale
                session.deadline = deadline  # table.touch, written out
                if deadline < session.slot - 1:
                    self.table.reschedule(session)
                if original:
                    session.orig_packets += 1
                    session.orig_bytes += pkt.ip_len
                else:
                    session.reply_packets += 1
                    session.reply_bytes += pkt.ip_len
                session.last_seen = now
                decision = Decision.__new__(Decision)  # Decision(ACCEPT, ...) without its __init__ call
                decision.verdict = ACCEPT
                decision.reason = ESTABLISHED
                decision.packet = pkt
                decision.session = session
                if extra is None:
                    decision.effects = effects
                    return decision
                binding = extra.nat
                if binding is None:
                    decision.effects = effects
                    if extra.alg is not None and pkt.payload_len:
                        decision.effects = effects + self.feed_alg(session, pkt, original, now)
                    return decision
                if binding.ftp is None and extra.alg is None:  # translate()'s common case, written out
                    translation = binding.forward if original else binding.backward
                    # the live daemon's two passes: nothing before routing; or the packet's kernel
                    # entry holds the binding (fw.drivers.nat_kernel): the kernel rewrites it
                    if translation is None or (binding.kernel == KERNEL_HELD and self.nat.kernel_packet):
                        decision.effects = effects
                        return decision
                    try:  # (pkt.data: the bytes parsed, the engine's `data`)
                        decision.effects = translation.leave(pkt.data, pkt, effects, self.partial)
                        return decision
                    except RewriteError:
                        pass  # translate() counts it and drops the packet
                decision.effects = effects
                return self.translate(decision, binding, original, now)
            if problem is not tcpmod.REOPEN:
                return Decision(DROP, problem, pkt, session)
            closed = self._close(session, now, "reopen")
        else:
            closed = None
        opened = tcpmod.tcp_new(pkt, liberal=self.tcp_loose)
        if isinstance(opened, str):
            decision = Decision(DROP, opened, pkt)
        else:
            decision = self.open_session(pkt, key, opened.state, now, iif, oif, sport, pkt.dport, opened)
        if closed is not None:
            decision.effects = (closed,) + decision.effects
        return decision

    def _tcp_state(self, session: Session, old_state, original: bool) -> tuple:
        """A TCP session's state moved: flags, the half-open count, and the effects to tell."""
        state = session.state
        if state == tcpmod.TcpState.ESTABLISHED:
            session.flags |= ASSURED | SEEN_REPLY
        elif not original:
            session.flags |= SEEN_REPLY
        if session.flags & HALF_OPEN and state not in EMBRYONIC:
            session.flags &= ~HALF_OPEN
            self.limits.half_open_ended(session.src)
        if session.flags & COUNTED and state in LIMIT_CLOSED:
            self.rule_limits.release(session)
        changed = SessionChanged(session, old_state)
        if state is tcpmod.TcpState.ESTABLISHED and self.config.offload and may_offload(session):
            if not session.liberal:  # its window record ages while the kernel passes its packets
                session.liberal = True
            return (changed, OffloadSession(session))
        return (changed,)

    # -- opening sessions ---------------------------------------------------------------------

    @cython.locals(pkt=Packet, session=Session, tcp_session=TcpSession, decision=Decision, size=cython.Py_ssize_t,
                   timeout=cython.double, bound=Binding, translation=Translation, nat=Nat, extra=Extra,
                   sessions=dict)
    def open_session(self, pkt, key, state, now, iif, oif, sport, dport, track=None) -> Decision:
        """A packet with no session: an expectation admits it, else the policy decides; a session
        (of `state`, TCP: `track`) is made for what is accepted, room made in a full table."""
        # Every new session comes here: the Engine's attributes are read once each, the counters
        # are counted with the dict's own calls (_count), the Decision made without __init__.
        expectation = self.expectations.take(pkt, now) if self.expectations else None
        policy = self.policy
        log = False
        if expectation is not None:
            rule, reason, verdict = None, expectation.spec.reason, ACCEPT
        else:
            rule = policy.match(pkt, iif, oif)
            if rule is None:
                action, reason, log = policy.default_action, "default", policy.default_log
            else:
                action, reason, log = rule.action, "rule:" + rule.name, rule.log
            if action != "accept":
                return self._refuse(pkt, action, reason, log, now)
            limits = self.limits
            if limits.active:
                refused = limits.admit(pkt.src, now)
                if refused is not None:
                    return self._flood(pkt, refused, now)
            if rule is not None and rule.limit is not None and not self.rule_limits.admit(rule, pkt.src, now):
                return self._refuse(pkt, rule.limit.over, "limit:" + rule.name, log, now)
            verdict = ACCEPT
        table = self.table
        counters = self.counters
        evicted = NO_EFFECTS
        size = len(table)
        if size >= self.max_sessions:
            evicted = self._make_room(now)
            if not evicted:
                return self._verdict(DROP, "table-full", pkt)
            size = len(table)
        binding = None
        sessions = None  # the table's dict, read once when a binding may be made
        nat = self.nat
        if expectation is not None:
            parent_nat = expectation.parent.nat
            if parent_nat is not None:
                sessions = table.sessions
                binding = engine_nat.follow_session(sessions, parent_nat, pkt, sport, dport)
        else:
            if nat.active:
                nat.clash = None
                sessions = table.sessions
                binding = nat.bind(pkt, sport, dport, iif, oif, sessions, now)
                if binding is EXHAUSTED and track is not None and nat.clash is not None:
                    # The client reused its port toward another address of the same real server
                    # while our earlier session of that tuple (on the wire, or between the live
                    # passes: Nat.middle) is finished (TIME_WAIT, CLOSE): it gives way to the SYN,
                    # as conntrack reopens a TIME_WAIT entry; bound again.
                    holder = nat.middle.get(nat.clash) or sessions.get(nat.clash)
                    if holder is not None and holder.proto == TCP and holder.state in FINISHED:
                        evicted = evicted + (self._close(holder, now, "reopen"),)
                        binding = nat.bind(pkt, sport, dport, iif, oif, sessions, now)
                if binding is EXHAUSTED:
                    _count(counters, "nat_exhausted")
                    if self.config.events and self.log_limits.allow(reason, now):  # the rule's log_limit
                        evicted = evicted + (LogEvent(verdict_event(pkt, DROP, EXHAUSTED, now)),)
                    return self._verdict(DROP, EXHAUSTED, pkt, None, evicted)
                if type(binding) is AllDown:  # a virtual server with no real server up
                    _count(counters, "lb_all_down")
                    refused = self._refuse(pkt, binding.action, binding.reason, log, now)
                    refused.effects = evicted + refused.effects
                    return refused
        if binding is not None and pkt.is_fragment:
            engine_nat.release(binding)
            _count(counters, "nat_fragments")
            return self._verdict(DROP, "fragment", pkt, None, evicted)
        session = self._new_session(pkt, key, state, now, sport, track)
        if expectation is not None:
            parent = expectation.parent
            session.parent = parent
            session.flags |= RELATED
            session.profile = table.profile(parent.rule, policy.revision, parent.timeouts,
                                            parent.rst_on_timeout)  # fmt: skip
        else:
            timeouts, rst_on_timeout = policy.timeouts_for(rule, pkt, DEFAULT_TIMEOUTS)
            session.profile = table.profile(rule.name if rule is not None else None, policy.revision,
                                            timeouts, rst_on_timeout)  # fmt: skip
            if rule is not None:
                if rule.alg:
                    session.alg = ALGS[rule.alg].create(Peers(pkt.family, pkt.src, pkt.dst, sport, dport))
                if rule.limit is not None:
                    self.rule_limits.opened(rule, session)
        if track is not None:
            tcp_session = session
            if state in EMBRYONIC and self.limits.active:
                session.flags |= HALF_OPEN
                self.limits.half_open_started(pkt.src, now)
            elif session.flags & LIBERAL:  # the track's `liberal`, copied with its fields
                session.flags |= LOOSE
                _count(counters, "loose_pickups")
            timeouts = session.profile.timeouts
            timeout = timeouts[tcp_timeout_key(tcp_session, timeouts)]  # Engine._timeout for TCP, written out
        else:
            timeout = self._timeout(session)
        session.deadline = now + timeout * self.timeout_scale
        session.orig_packets = 1
        session.orig_bytes = pkt.ip_len
        table.add(session)
        _count(counters, "inserts")
        if binding is not None:
            nat.opened(session, binding, table, sessions)  # its keys, its ALG's view (fw/engine_nat.py)
            _count(counters, "nat_sessions")
        if size + 1 > self.adaptive_start:  # len(table): one session more
            self._rescale()
        if session.extra is None:
            untrack(session)  # no cycle can pass through it: the cycle collector leaves it alone
        opened = SessionOpened.__new__(SessionOpened)  # SessionOpened(session) without its __init__ call
        opened.session = session
        effects = evicted + (opened,)
        if self.config.events and (expectation is not None or (log and self.log_limits.allow(reason, now))):
            effects += (LogEvent(session_event("new", session, now, reason)),)
        decision = Decision.__new__(Decision)  # Decision(verdict, ...) without its __init__ call
        decision.verdict = verdict
        decision.reason = reason
        decision.packet = pkt
        decision.session = session
        decision.effects = effects
        extra = session.extra
        if binding is not None:
            bound = binding
            if bound.ftp is None and extra.alg is None:  # translate()'s common case, written out
                translation = bound.forward
                if translation is None:  # the live daemon's two passes: nothing before routing
                    return decision
                try:
                    decision.effects = translation.leave(pkt.data, pkt, effects, self.partial)
                    return decision
                except RewriteError:
                    pass  # translate() counts it and drops the packet
            return self.translate(decision, binding, True, now)
        if extra is not None and extra.alg is not None and (pkt.payload_len or pkt.proto != TCP):
            decision.effects = effects + self.feed_alg(session, pkt, True, now)
        return decision

    @cython.locals(pkt=Packet, flags=cython.long)
    def _new_session(self, pkt, key: tuple, state, now: float, sport: int, track) -> Session:
        """A session for the flow `key` opened by `pkt`, its values shared where they can be."""
        proto, low, high, low_port, high_port = key
        flags = 0 if low == pkt.src and low_port == sport else REVERSED  # orientation(key, pkt.src, sport)
        setdefault = self.table.interned()
        key = (proto, setdefault(low, low), setdefault(high, high), setdefault(low_port, low_port),
               setdefault(high_port, high_port))  # fmt: skip
        if track is None:
            return Session(key, state, now, flags)
        if not cython.compiled:  # compiled, the window is a C integer: nothing to share
            track.o_maxwin = setdefault(track.o_maxwin, track.o_maxwin)  # a few window sizes are common
        return TcpSession(key, track, now, flags)

    def _flood(self, pkt, why: str, now: float) -> Decision:
        self.counters["flood:" + why] += 1
        effects = NO_EFFECTS
        if why != "blocked" and self.config.events:  # one event when a source is put on the list
            event = verdict_event(pkt, DROP, FLOOD, now)
            event["fw"]["flood"] = {"limit": why, "blocked_for": self.limits.overload_seconds}
            effects = (LogEvent(event),)
        return self._verdict(DROP, FLOOD, pkt, None, effects)

    def by_policy(self, pkt, now, iif, oif) -> Decision:
        """A packet that is judged alone, without a session (untracked ICMP)."""
        rule = self.policy.match(pkt, iif, oif)
        if rule is None:
            action, reason, log = self.policy.default_action, "default", self.policy.default_log
        else:
            action, reason, log = rule.action, "rule:" + rule.name, rule.log
        if action != "accept":
            return self._refuse(pkt, action, reason, log, now)
        return self._verdict(ACCEPT, reason, pkt)

    def _refuse(self, pkt, action, reason, log, now) -> Decision:
        effects = ()
        if action == "reject":
            if pkt.proto == TCP:
                answer = pktbuild.tcp_reset_for(pkt)
            else:
                answer = pktbuild.icmp_unreachable_for(self._data, pkt)
            if answer is not None:
                effects = (SendPacket(pkt.family, answer),)
        if log and self.config.events and self.log_limits.allow(reason, now):
            effects = effects + (LogEvent(verdict_event(pkt, DROP, reason, now)),)
        return self._verdict(DROP, reason, pkt, None, effects or NO_EFFECTS)

    # -- NAT ----------------------------------------------------------------------------------

    def translate(self, decision: Decision, binding, original: bool, now: float) -> Decision:
        """An accepted packet of a translated session, rewritten (fw/engine_nat.py: translate)."""
        return engine_nat.translate(self, decision, binding, original, now)

    # -- timeouts -----------------------------------------------------------------------------

    def _timeouts_for(self, rule, pkt):
        """(timeout table, rst_on_timeout) for a new session, resolved in SPEC's order."""
        return self.policy.timeouts_for(rule, pkt, tcpmod.DEFAULT_TIMEOUTS)

    @staticmethod
    def _timeout(session: Session) -> float:
        """A new session's timeout (its state's, from its profile's table)."""
        proto, timeouts = session.key[0], session.profile.timeouts
        if proto == TCP:
            return timeouts[tcpmod.timeout_key(session.tcp, timeouts)]
        if proto == UDP:
            return timeouts["udp"]
        if proto == ICMP or proto == ICMPV6:
            return timeouts["icmp"]
        return GENERIC_TIMEOUT

    # -- ALGs and expectations ----------------------------------------------------------------

    def feed_alg(self, session: Session, pkt, original: bool, now: float, payload: bytes | None = None,
                 seq: int | None = None) -> tuple:
        """The packet's payload to the session's ALG (TCP: with its sequence number; UDP: the
        datagram); its expectations kept, its refusals counted and logged. NAT passes the payload
        as it leaves and its sequence number as the receiver sees it."""
        alg = session.alg
        effects = []
        expected = False
        if payload is None:
            payload = pkt.payload
            if pkt.proto == TCP:
                seq = pkt.seq + 1 if pkt.flags & SYN else pkt.seq  # data in a SYN starts after it
        for result in alg.feed(original, seq, payload):
            if isinstance(result, Refusal):
                self.counters["alg_refused"] += 1
                self.counters["alg_refused:" + result.reason] += 1
                if self.config.events:
                    effects.append(LogEvent(alg_refusal_event(session, result, now)))
            else:
                self.expectations.expect(session, result, alg.SPEC, now)
                self.counters["expectations"] += 1
                expected = True
        if expected:  # its expectations changed (the state did not)
            effects.append(SessionChanged(session, session.state))
        return tuple(effects)

    # -- expiry and removal -------------------------------------------------------------------

    def expire(self, now: float) -> tuple:
        """Remove what has timed out; returns the effects (events, resets) for the driver."""
        effects = []
        events = self.config.events
        for session in self.table.pop_expired(now):
            self.counters["expiries"] += 1
            self._forget(session)
            why = "timeout"
            if session.rst_on_timeout and session.proto == TCP and session.state == tcpmod.TcpState.ESTABLISHED:
                effects.extend(self._resets_for(session))
                self.counters["timeout_resets"] += 1
                why = "timeout-reset"
            effects.append(SessionClosed(session, why))
            if events:
                effects.append(LogEvent(session_event("end", session, now, why)))
        if self.expectations:
            self.expectations.expire(now)
        self.limits.prune(now)
        if self.nat.lb.active:
            self.nat.lb.expire(now)  # persistence
        self._rescale()
        return tuple(effects)

    def _resets_for(self, session: Session) -> tuple[SendPacket, SendPacket]:
        """A RST to each end with exactly the sequence number that end expects next (RFC 5961
        section 3.2: only an exact RST resets an established connection)."""
        track = session.tcp
        to_server = (session.src, session.dst, session.sport, session.dport)
        to_client = (session.dst, session.src, session.dport, session.sport)
        shifts = (0, 0)
        binding = session.nat
        if binding is not None:  # each end gets the addresses and numbers it sees (NAT, seqadj)
            to_server, to_client = binding.left(True), binding.left(False)
            if binding.ftp is not None:
                shifts = tuple(way.after for way in binding.ftp.seqadj.corrections)
        to_server = pktbuild.tcp(*to_server, (tcpmod.next_expected_seq(track, True) + shifts[0]) & 0xFFFFFFFF,
                                 0, RST, window=0)  # fmt: skip
        to_client = pktbuild.tcp(*to_client, (tcpmod.next_expected_seq(track, False) + shifts[1]) & 0xFFFFFFFF,
                                 0, RST, window=0)  # fmt: skip
        return SendPacket(session.family, to_server), SendPacket(session.family, to_client)

    def _rescale(self) -> None:
        """Adaptive timeouts: the factor applied to every timeout for the table's fill."""
        count, start, end = len(self.table), self.adaptive_start, self.adaptive_end
        if count <= start or end <= start:
            self.timeout_scale = 1.0
        else:
            self.timeout_scale = max(0.0, (end - count) / (end - start))

    def _make_room(self, now: float) -> tuple:
        """Evict to make room in a full table, fairly: the half-open sessions of the sources
        holding the most of them first, then other unassured sessions, established ones last.
        Frees a batch at once so that a flood does not pay a scan per packet. Returns the
        SessionClosed effects (empty: nothing could go)."""
        victims = self.table.eviction_victims(max(1, int(len(self.table) * EVICTION_BATCH)))
        for session in victims:
            self.table.remove(session)
            self._forget(session)
            self.counters["evictions"] += 1
        return tuple(SessionClosed(session, "evicted") for session in victims)

    def _close(self, session: Session, now: float, why: str) -> SessionClosed:
        self.table.remove(session)
        self._forget(session)
        return SessionClosed(session, why)

    def _forget(self, session: Session) -> None:
        """Drop what dies with a session: its expectations, its place in the half-open count, its
        NAT port."""
        extra = session.extra
        if extra is not None and extra.nat is not None:
            engine_nat.release(extra.nat, session.orig_bytes + session.reply_bytes)
        if session.expectations:
            self.expectations.forget(session)
        if session.flags & HALF_OPEN:
            session.flags &= ~HALF_OPEN
            self.limits.half_open_ended(session.src)
        if session.flags & COUNTED:
            self.rule_limits.release(session)

    # -- snapshots (restarts) and adoption (HA sync) -------------------------------------------

    def snapshot(self, clock_offset: float) -> dict:
        """The session table and expectations as versioned plain data, times on the wall clock."""
        return engine_state.snapshot(self, clock_offset)

    def restore(self, data: dict, now: float, clock_offset: float) -> int:
        """Load a snapshot (fw/engine_state.py); how many sessions joined the table."""
        return engine_state.restore(self, data, now, clock_offset)

    def adopt(self, session: Session, now: float) -> tuple:
        """Put a session made elsewhere (snapshot, HA peer) into the table, replacing one with its
        key. Returns the effects (SessionClosed of the one replaced; OffloadSession when that one
        was offloaded and this one may be: a peer's news of a session must not end its offload)."""
        old = self.table.sessions.get(session.key)
        effects = NO_EFFECTS if old is None else (self._close(old, now, "replaced"),)
        session.flags &= ~(HALF_OPEN | OFFLOADED)
        if old is not None and old.flags & OFFLOADED and session.state is tcpmod.TcpState.ESTABLISHED \
                and self.config.offload and may_offload(session):
            session.liberal = True  # the one it replaces was offloaded here: so is this one (HA sync)
            effects += (OffloadSession(session),)
        if session.tcp is not None and session.state in EMBRYONIC and self.limits.active:
            session.flags |= HALF_OPEN
            self.limits.half_open_started(session.src, now)
        self.rule_limits.adopted(session)
        self.table.add(session)
        binding = session.nat
        if binding is not None:
            self.nat.claim(binding)
            if binding.alias is not None:
                self.table.add_alias(session, binding.alias)
            self.nat.remember(session, binding)
        return effects

    def recheck(self, now: float) -> tuple:
        """Close the sessions the policy in force refuses (options.reload_recheck, after a swap);
        an established TCP session whose rst_on_timeout is set gets a RST at both ends, as on expiry."""
        effects = []
        for session in refused_by(self.policy, self.table.values()):
            if session.slot == -1:
                continue
            effects.append(self._close(session, now, "recheck"))
            self.counters["recheck_closed"] += 1
            if session.rst_on_timeout and session.proto == TCP and session.state == tcpmod.TcpState.ESTABLISHED:
                effects.extend(self._resets_for(session))
                self.counters["recheck_resets"] += 1
            if self.config.events:
                effects.append(LogEvent(session_event("end", session, now, "recheck")))
        return tuple(effects)

    def kill(self, session: Session, now: float, why: str = "killed") -> tuple:
        """Remove one session at a driver's request (`why`: an operator's `killed`, a peer's
        `peer-removed`, ...; counted under that word). Returns the effects. An operator's kill of
        an established TCP session whose rule asks for `rst_on_timeout` resets both ends, as expiry
        does (each end in its own addresses and sequence numbers, NAT and seqadj included)."""
        resets = ()
        if (why == "killed" and session.rst_on_timeout and session.proto == TCP
                and session.state == tcpmod.TcpState.ESTABLISHED):
            resets = self._resets_for(session)
            self.counters["kill_resets"] += 1
        closed = self._close(session, now, why)
        self.counters[why] += 1
        return (*resets, closed)


def may_offload(session: Session) -> bool:
    """Whether the kernel may pass a session's packets: not with an ALG (it needs the payload),
    nor with rst_on_timeout (the RST needs exact sequence numbers the kernel does not give back),
    nor a translated one (the kernel would pass its packets untranslated)."""
    extra = session.extra
    return (extra is None or (extra.alg is None and extra.nat is None)) and not session.rst_on_timeout \
        and session.tcp is not None


def alg_refusal_event(session: Session, refusal: Refusal, now: float) -> dict:
    """The EVE event of an ALG's refusal, under its ALG's event type (`ftp`, `tftp`)."""
    kind = session.alg.SPEC.event_type
    event = session_event("alg", session, now, "refused")
    event["event_type"] = kind
    event[kind] = {"refused": refusal.reason, "command": refusal.command, "detail": refusal.detail}
    return event
