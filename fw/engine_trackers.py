# cython: annotation_typing=False
"""The engine's trackers besides TCP's: UDP and protocols without one (nf_conntrack's generic),
ICMP echo and ICMP errors, and non-first fragments.

How it works. Each is a function of the engine and a parsed packet that returns a Decision; the
engine's `process` dispatches to them by protocol (TCP's hot path stays in fw/engine.py). A packet
of a known flow is counted and its session touched (`SessionTable.touch`); one without a session
goes to `engine.open_session` (expectations, then the policy). A flow is UNREPLIED until its first
reply, then REPLIED (a SessionChanged). ICMP: echo request/reply pairs are a session keyed by the
identifier; an error is `related:icmp` when the header it quotes belongs to a session; other
informational types are judged by the rules alone, untracked (as nf_conntrack). A non-first
fragment follows the session its first fragment opened or joined, for FRAGMENT_MEMORY seconds.
Compiled (build_compiled.py, with engine_trackers.pxd), `datagram`, every UDP packet's path, reads
its packet's and session's C fields directly and builds its established Decision without an
`__init__` call, as the engine's TCP fast path does.
"""

from __future__ import annotations

from fw.conntrack.table import ASSURED, REPLIED, REVERSED, SEEN_REPLY, UNREPLIED, Session, flow_key
from fw.decision import ACCEPT, DROP, NO_EFFECTS, Decision, RewritePacket, SessionChanged
from fw.engine_nat import error_rewrite
from fw.nat.rewrite import RewriteError, rewrite

UDP, ICMP, ICMPV6 = 17, 1, 58
ICMP_ECHO = {ICMP: (8, 0), ICMPV6: (128, 129)}  # request, reply
ICMP_ERRORS = {ICMP: frozenset((3, 4, 5, 11, 12)), ICMPV6: frozenset((1, 2, 3, 4))}
GENERIC_TIMEOUT = 600  # nf_conntrack_generic's default, for protocols without a tracker
FRAGMENT_MEMORY = 30.0  # seconds a first fragment's id stays tied to its session
FRAGMENTS_KEPT = 4096  # fragment ids remembered before the stale ones are swept
ESTABLISHED = "established"


def count(pkt, session: Session, original: bool, now: float) -> None:
    """A packet of a known session: its direction's counters and last_seen."""
    if original:
        session.orig_packets += 1
        session.orig_bytes += pkt.ip_len
    else:
        session.reply_packets += 1
        session.reply_bytes += pkt.ip_len
    session.last_seen = now


def datagram(engine, pkt, sport: int, dport: int, now: float, iif, oif) -> Decision:
    """UDP and protocols without a tracker of their own. The common case (a packet of a known flow)
    is written out: it is every UDP packet but the first of a flow."""
    proto, src, dst = pkt.proto, pkt.src, pkt.dst
    if src < dst or (src == dst and sport <= dport):
        key = (proto, src, dst, sport, dport)
        side = 0
    else:
        key = (proto, dst, src, dport, sport)
        side = REVERSED
    sessions = engine.table.sessions  # compiled: a typed dict, whose get is a C call (the pxd)
    session = sessions.get(key)
    if session is None:
        return engine.open_session(pkt, key, UNREPLIED, now, iif, oif, sport, dport)
    extra = session.extra
    if extra is not None and extra.owner in engine.forward_to:
        return engine.elsewhere(pkt, session)
    if extra is not None and extra.nat is not None:
        original = extra.nat.direction(src, dst, sport, dport)
        if original is None:
            return Decision(DROP, "invalid:state", pkt, session)
    else:
        original = session.flags & REVERSED == side
    effects = NO_EFFECTS
    if original:
        session.orig_packets += 1
        session.orig_bytes += pkt.ip_len
    else:
        session.reply_packets += 1
        session.reply_bytes += pkt.ip_len
        if session.state is UNREPLIED:
            session.state = REPLIED
            session.flags |= SEEN_REPLY | ASSURED
            effects = (SessionChanged(session, UNREPLIED),)
    if proto == UDP:
        profile = session.profile
        timeouts = profile.timeouts  # (a mappingproxy; compiled, the profile a C field)
        timeout = timeouts["udp_stream" if session.state is REPLIED else "udp"]
    else:
        timeout = GENERIC_TIMEOUT
    scale = engine.timeout_scale
    deadline = now + timeout * scale
    session.deadline = deadline  # engine.table.touch, written out (as the engine's TCP path)
    if deadline < session.slot - 1:
        engine.table.reschedule(session)
    session.last_seen = now
    if extra is not None:
        if extra.nat is not None:
            return engine.translate(Decision(ACCEPT, ESTABLISHED, pkt, session, effects), extra.nat, original, now)
        if extra.alg is not None:
            effects = effects + engine.feed_alg(session, pkt, original, now)
    decision = Decision.__new__(Decision)  # Decision(ACCEPT, ...) without its __init__ call
    decision.verdict, decision.reason, decision.packet, decision.session = ACCEPT, ESTABLISHED, pkt, session
    decision.effects = effects
    return decision


def icmp(engine, pkt, now: float, iif, oif) -> Decision:
    proto = pkt.proto
    icmp_type = pkt.icmp_type
    if icmp_type in ICMP_ERRORS[proto]:
        return icmp_error(engine, pkt)
    request, reply = ICMP_ECHO[proto]
    if icmp_type != request and icmp_type != reply:
        # Informational ICMP other than echo is not tracked (as nf_conntrack): the rules decide.
        return engine.by_policy(pkt, now, iif, oif)
    ident = pkt.icmp_id
    key = flow_key(proto, pkt.src, pkt.dst, ident, ident)
    session = engine.table.sessions.get(key)
    if session is None:
        if icmp_type == reply:
            return Decision(DROP, "invalid:no-session", pkt)
        return engine.open_session(pkt, key, UNREPLIED, now, iif, oif, ident, ident)
    if session.owner in engine.forward_to:
        return engine.elsewhere(pkt, session)
    binding = session.nat
    original = pkt.src == session.src if binding is None else binding.direction(pkt.src, pkt.dst, ident, ident)
    if original is None or original != (icmp_type == request):
        return Decision(DROP, "invalid:state", pkt, session)
    effects = NO_EFFECTS
    if not original and session.state is UNREPLIED:
        session.state = REPLIED
        session.flags |= SEEN_REPLY | ASSURED
        effects = (SessionChanged(session, UNREPLIED),)
    engine.table.touch(session, now + session.profile.timeouts["icmp"] * engine.timeout_scale)
    count(pkt, session, original, now)
    decision = Decision(ACCEPT, ESTABLISHED, pkt, session, effects)
    return decision if binding is None else engine.translate(decision, binding, original, now)


def icmp_error(engine, pkt) -> Decision:
    inner = pkt.inner
    if inner is None:
        return Decision(DROP, "invalid:no-session", pkt)
    proto = inner.proto
    if proto == ICMP or proto == ICMPV6:
        sport = dport = inner.icmp_id
    else:
        sport, dport = inner.sport, inner.dport
    session = engine.table.sessions.get(flow_key(proto, inner.src, inner.dst, sport, dport))
    if session is None:
        return Decision(DROP, "invalid:no-session", pkt)
    if session.owner in engine.forward_to:
        return engine.elsewhere(pkt, session)
    binding = session.nat
    if binding is not None:
        return translated_error(engine, pkt, session, binding, (inner.src, inner.dst, sport, dport))
    # The error travels against the packet it quotes.
    if not (inner.src == session.src and sport == session.sport):
        session.orig_packets += 1
        session.orig_bytes += pkt.ip_len
    else:
        session.reply_packets += 1
        session.reply_bytes += pkt.ip_len
    return Decision(ACCEPT, "related:icmp", pkt, session)


def translated_error(engine, pkt, session: Session, binding, quoted: tuple) -> Decision:
    """An ICMP error quoting a packet of a translated session: the outer and the quoted header
    translated (an error about a packet that never crossed the NAT passes as it is)."""
    manips = error_rewrite(binding, pkt, quoted)
    if quoted == binding.left(True) or quoted == binding.reply:  # travels toward the client
        session.reply_packets += 1
        session.reply_bytes += pkt.ip_len
    else:
        session.orig_packets += 1
        session.orig_bytes += pkt.ip_len
    decision = Decision(ACCEPT, "related:icmp", pkt, session)
    if manips is None:
        return decision
    try:
        data = rewrite(engine.data, pkt, manips[0], inner=manips[1])
    except RewriteError:
        engine.counters["nat_rewrite_errors"] += 1
        return Decision(DROP, "nat:rewrite", pkt, session)
    decision.effects = (RewritePacket(data),)
    return decision


class Fragments:
    """Non-first fragments: tied to the session of their first fragment, by (proto, src, dst, id)."""

    __slots__ = ("ids",)

    def __init__(self):
        self.ids: dict[tuple, tuple[Session, float]] = {}

    def judge(self, pkt, now: float) -> Decision:
        entry = self.ids.get((pkt.proto, pkt.src, pkt.dst, pkt.frag_id))
        if entry is None or entry[1] < now or entry[0].slot == -1:
            return Decision(DROP, "fragment", pkt)
        session = entry[0]
        if session.nat is not None:  # a translated session's fragments: see Engine.open_session
            return Decision(DROP, "fragment", pkt)
        count(pkt, session, pkt.src == session.src, now)
        return Decision(ACCEPT, ESTABLISHED, pkt, session)

    def remember(self, pkt, session: Session, now: float) -> None:
        """A first fragment was accepted for `session`: its other fragments follow it."""
        if len(self.ids) > FRAGMENTS_KEPT:
            self.ids = {k: v for k, v in self.ids.items() if v[1] >= now}
        self.ids[(pkt.proto, pkt.src, pkt.dst, pkt.frag_id)] = (session, now + FRAGMENT_MEMORY)
