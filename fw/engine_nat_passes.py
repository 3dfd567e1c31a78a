# cython: annotation_typing=False
"""The live daemon's NAT: each packet of a translated session in two passes, before and after routing.

Why two passes (SPEC "Translation"): the kernel drops before routing a packet whose source is one of
its own addresses (masquerade, and the replies of a port forward to the firewall's address), and it
never routes again a packet whose destination changed after routing. So destinations are rewritten
before routing (mangle PREROUTING) and sources after it (mangle POSTROUTING), as Linux's own NAT.

How it works. `Engine.process(data, now, iif, oif, hook=, partial=)` comes here when `hook` is set:
- `BEFORE_ROUTING` (every packet the firewall forwards, and those to its own addresses that concern
  NAT, see below): the engine's one pass runs as in replay (rules on the packet as it arrived,
  tracking, ALGs, FTP rewrites and seqadj, `partial` checksums computed), but with each binding
  compiled for two passes (`Binding.split`, done by `use_two_passes` for the sessions already
  there and by `Nat.remember` for new and adopted ones): its translations are the before-routing
  halves, so the packet leaves this pass with its destination translated and its source as it
  arrived (`Binding.between`); nothing is rewritten where nothing changes before routing (a
  masqueraded client's packets). When its source is still to change, the verdict carries
  `SetMark(NAT_MARK)`: the POSTROUTING queue rule matches that bit, so only translated sessions'
  packets cross the queue twice.
  The source translation of a new session is decided here too, on the route to its translated
  destination (`Nat.routes`, the driver's route snapshot): the same choice as after routing, known earlier.
- `TO_FIREWALL`: the same, for a packet routed to the firewall's own address; one that belongs to
  no session, meets no expectation and no `dnat` entry is not the NAT's (the firewall's own
  traffic, judged by the INPUT hook if any): accepted untouched, reason `to-firewall`.
- `AFTER_ROUTING` (marked packets only): one lookup by the `between` tuple (the session's own keys,
  and for hairpin sessions `Nat.middle`), the source half applied (`after`), nothing tracked or
  counted again: reason `nat:after-routing`. A marked packet whose session went away between the
  passes is dropped (`nat:no-session`): it must not leave half translated.
- `FROM_FIREWALL`: an ICMP error the firewall itself sends while forwarding (fragmentation needed,
  time exceeded: mangle OUTPUT). It quotes the packet as it was between the passes; its sender
  knows it by other addresses (a masqueraded server sent it to the firewall's address): the quoted
  header is put back to what the sender sent (path-MTU discovery and traceroute through NAT). Any
  other error passes as it is (`from-firewall`).
- `ONE_PASS` (after routing, a packet not judged before routing): the whole job in one trip, for
  a session direction that needs only the after-routing half (its before-routing half is None: the
  original direction of snat/masquerade, the replies of a dnat) and has no ALG. The first pass
  asks for it: its mark then also carries `ONE_PASS_MARK`, which the rules save into the kernel
  conntrack entry's connmark; the entry's later packets are not queued before routing but marked
  (`NAT_MARK | UNJUDGED_MARK`) and queued after routing only (fw.drivers.iptables). Here the
  engine's one pass runs on the packet as it arrived (lookup, tracking, counters, drops, effects:
  counted once) and the source half is applied in the same call. A packet that turns out to need
  the first pass after all (its session went away and the policy now translates its destination,
  an ALG, an ICMP error) is dropped as `nat:first-pass` (counted `nat_first_pass_needed`); the
  driver clears the entry's bit, so the next one goes round the first pass.
ICMP errors: the outer source (the router, hidden behind the translated address) changes in the
second pass, the rest in the first.
The kernel's binding (`Nat.kernel_bindings`, set by fw.drivers.nat_kernel): once a bare session
(no ALG, no FTP rewriting) is established (TCP) or carried UDP_KERNEL_PACKETS datagrams (UDP,
either way: a flow, not a query and its answer), the first pass or the
one pass that sees it so adds a `KernelNat` effect (once: `Binding.kernel`). The driver gives the
kernel conntrack entry the same binding and answers `Nat.kernel_translates`. From then on a packet
whose own kernel entry is that one (`Nat.kernel_packet`, the driver's per-packet input from the
packet mark) is judged where it was (the untranslated tuples as they arrive, before the kernel's
nat hooks) and accepted as it is, without a new payload and without a mark for the second pass;
the kernel's nat hooks rewrite it after the verdict (in place: a GSO packet stays one, its checksum
partial). A packet queued before the switch (its entry is an older one, without the binding) is
rewritten here as before. ICMP errors are still translated here (the kernel's own translation of
them writes the same values again).
Compiled (build_compiled.py; engine_nat_passes.pxd): the passes' packet and binding are typed
(C field reads), `_ports` and `_quoted` are C functions; `TO_FIREWALL`'s test of whether a packet
is the NAT's finds a session's TCP/UDP packet (IPv4, no options, not a fragment) by its bytes
without parsing it (Engine.process parses it next).
"""

from __future__ import annotations

try:
    import cython
except ImportError:  # no Cython: this module runs pure (as with FW_PURE=1)
    from fw import cython_shadow as cython

from fw.conntrack.table import flow_key
from fw.conntrack.tcp import TcpState
from fw.decision import ACCEPT, DROP, Decision, KernelNat, RewritePacket, SetMark
from fw.engine_nat import KERNEL_ASKED, KERNEL_HELD, KERNEL_NO, Binding
from fw.nat.rewrite import Manip, RewriteError, rewrite
from fw.packet import MalformedPacket, parse
from fw.packet.parse import Packet

BEFORE_ROUTING = "prerouting"
TO_FIREWALL = "prerouting-local"
AFTER_ROUTING = "postrouting"
ONE_PASS = "postrouting-unjudged"
FROM_FIREWALL = "output-error"
HOOKS = (BEFORE_ROUTING, TO_FIREWALL, AFTER_ROUTING, ONE_PASS, FROM_FIREWALL)
NAT_MARK = 0x20000000  # the packet mark bit of packets that take the second pass
ONE_PASS_MARK = 0x10000000  # packet mark: save into the connmark; connmark: "after routing only"
UNJUDGED_MARK = 0x08000000  # packet mark the rules give a packet they let by before routing
AFTER_REASON = "nat:after-routing"
FIRST_PASS_REASON = "nat:first-pass"
MARKED = SetMark(NAT_MARK)
ONE_PASS_ASKED = SetMark(NAT_MARK | ONE_PASS_MARK)
TO_FIREWALL_REASON = "to-firewall"
FROM_FIREWALL_REASON = "from-firewall"
TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
ICMP_ERRORS = {ICMP: frozenset((3, 4, 5, 11, 12)), ICMPV6: frozenset((1, 2, 3, 4))}
ECHO = {ICMP: (8, 0), ICMPV6: (128, 129)}
# A UDP session is given to the kernel once it carried this many datagrams (either way): not a DNS
# query and its answer (three netlink requests for two packets), but a flow, one-way ones included.
UDP_KERNEL_PACKETS = 4


@cython.locals(pkt=Packet, binding=Binding)
def process(engine, data: bytes, now: float, iif, oif, hook: str, partial: bool) -> Decision:
    """One packet at one of the live hooks (module docstring)."""
    if hook == ONE_PASS:
        return one_pass(engine, data, now, iif, oif, partial)
    if hook == AFTER_ROUTING:
        return after_routing(engine, data, partial)
    if hook == FROM_FIREWALL:
        return own_error(engine, data)
    if hook == TO_FIREWALL and not _concerns_nat(engine, data, iif):
        return Decision(ACCEPT, TO_FIREWALL_REASON)
    if hook != BEFORE_ROUTING and hook != TO_FIREWALL:
        raise ValueError(f"unknown hook {hook!r}")
    decision, extra, binding = _judged(engine, data, now, iif, oif, partial)
    if binding is None or decision.verdict != ACCEPT:
        return decision
    pkt = decision.packet
    if pkt.inner is not None and pkt.proto in ICMP_ERRORS and pkt.icmp_type in ICMP_ERRORS[pkt.proto]:
        return _error_before_routing(decision, binding)
    if binding.kernel == KERNEL_NO and engine.nat.kernel_bindings:
        _ask_kernel(decision, extra, binding)
    elif binding.kernel == KERNEL_HELD and engine.nat.kernel_packet:
        return decision  # the kernel rewrites it after the verdict: no second pass
    after = binding.after
    if after[0] is None and after[1] is None:
        return decision
    original = binding.direction(pkt.src, pkt.dst, *_ports(pkt))
    if original is not None and after[0 if original else 1] is not None:
        alone = (binding.forward if original else binding.backward) is None and binding.ftp is None \
            and extra.alg is None  # nothing before routing: the next ones may come after routing only
        decision.effects = decision.effects + (ONE_PASS_ASKED if alone else MARKED,)
    return decision


def _judged(engine, data: bytes, now: float, iif, oif, partial: bool):
    """The one pass of replay on a packet as it arrived (`partial`: its checksum state): the
    Decision, and its session's Extra and NAT binding (None where there is none)."""
    if not engine.nat.two_passes:
        use_two_passes(engine)
    engine.partial = partial
    try:
        decision = engine.process(data, now, iif, oif)
    finally:
        engine.partial = False
    session = decision.session
    extra = session.extra if session is not None else None
    binding = extra.nat if extra is not None else None
    return decision, extra, binding


@cython.locals(pkt=Packet, binding=Binding)
def one_pass(engine, data: bytes, now: float, iif, oif, partial: bool) -> Decision:
    """A packet not judged before routing: judged here, and its source half applied (module docstring)."""
    decision, extra, binding = _judged(engine, data, now, iif, oif, partial)
    if binding is None or decision.verdict != ACCEPT:
        return decision
    pkt = decision.packet
    error = pkt.inner is not None and pkt.proto in ICMP_ERRORS and pkt.icmp_type in ICMP_ERRORS[pkt.proto]
    original = None if error else binding.direction(pkt.src, pkt.dst, *_ports(pkt))
    if original is None or (binding.forward if original else binding.backward) is not None \
            or binding.ftp is not None or extra.alg is not None:
        engine.counters["nat_first_pass_needed"] += 1
        kept = tuple(e for e in decision.effects if type(e) is not RewritePacket and type(e) is not SetMark)
        return Decision(DROP, FIRST_PASS_REASON, pkt, decision.session, kept)
    if binding.kernel == KERNEL_NO and engine.nat.kernel_bindings:
        _ask_kernel(decision, extra, binding)
    elif binding.kernel == KERNEL_HELD and engine.nat.kernel_packet:
        return decision  # the kernel rewrites it after the verdict
    after = binding.after[0 if original else 1]
    if after is None:  # nothing changes after routing either (a session the policy no longer translates this way)
        return decision
    effects = decision.effects
    try:
        at = _rewrite_at(effects) if effects else None
        if at is None:
            decision.effects = after.leave(data, pkt, effects, partial)
        else:  # the one pass computed a partial checksum whole: a complete packet now
            base = effects[at].data
            decision.effects = effects[:at] + effects[at + 1:] + (RewritePacket(after.apply(base, parse(base))),)
    except (RewriteError, MalformedPacket):
        engine.counters["nat_rewrite_errors"] += 1
        return Decision(DROP, "nat:rewrite", pkt, decision.session)
    return decision


@cython.locals(binding=Binding)
def _ask_kernel(decision: Decision, extra, binding) -> None:
    """A bare translated session (no ALG, no FTP rewriting and so no seqadj) that is established
    (TCP) or carried UDP_KERNEL_PACKETS datagrams (UDP): a KernelNat effect, once; the driver makes
    the kernel's entry hold the binding and answers `Nat.kernel_translates` (fw.drivers.nat_kernel)."""
    if binding.ftp is not None or extra.alg is not None:
        return
    session = decision.session
    proto = binding.proto
    if proto == TCP:
        if session.state is not TcpState.ESTABLISHED:
            return
    elif proto != UDP or session.orig_packets + session.reply_packets < UDP_KERNEL_PACKETS:
        return
    binding.kernel = KERNEL_ASKED
    decision.effects = decision.effects + (KernelNat(session),)


def use_two_passes(engine) -> None:
    """From now on the engine's bindings are compiled for two passes (the sessions already there,
    restored from a snapshot before the first packet, too)."""
    nat = engine.nat
    nat.two_passes = True
    for session in engine.table.values():
        if session.nat is not None:
            nat.remember(session, session.nat)


def _error_before_routing(decision: Decision, binding) -> Decision:
    """An ICMP error translated whole, but for its outer source (after routing: marked)."""
    effects = decision.effects
    at = _rewrite_at(effects)
    pkt = decision.packet
    if at is None or not _error_source_changes(binding, pkt):
        return decision
    translated = effects[at].data
    try:
        new = rewrite(translated, parse(translated), Manip(src=pkt.src), inner=None)
    except (RewriteError, MalformedPacket):
        decision.verdict, decision.reason = DROP, "nat:rewrite"
        return decision
    decision.effects = effects[:at] + effects[at + 1:] + (RewritePacket(new), MARKED)
    return decision


def _rewrite_at(effects: tuple) -> int | None:
    for index in range(len(effects) - 1, -1, -1):
        if type(effects[index]) is RewritePacket:
            return index
    return None


def _ports(pkt: Packet) -> tuple[int, int]:
    proto = pkt.proto
    if proto == TCP or proto == UDP:
        return pkt.sport, pkt.dport
    if proto == ICMP or proto == ICMPV6:
        return pkt.icmp_id, pkt.icmp_id
    return 0, 0


def _quoted(pkt: Packet) -> tuple:
    inner = pkt.inner
    if inner.proto == ICMP or inner.proto == ICMPV6:
        return inner.src, inner.dst, inner.icmp_id, inner.icmp_id
    return inner.src, inner.dst, inner.sport, inner.dport


def _error_source_changes(binding, pkt) -> bool:
    """Whether the one pass changed an ICMP error's outer source (fw.engine_nat.error_rewrite)."""
    quoted = _quoted(pkt)
    if quoted == binding.left(True):
        return binding.dnat
    if quoted == binding.left(False):
        return binding.snat
    return False


@cython.locals(pkt=Packet)
def _concerns_nat(engine, data: bytes, iif) -> bool:
    """Whether a packet for the firewall's own address is the NAT's: a reply to a translated
    address, a data connection an ALG expects, a virtual server's, or a `dnat` entry's (a port forward).
    The common case, a session's TCP or UDP packet (IPv4 without options, not a fragment), is found
    by its bytes; the rest parsed (Engine.process parses it again: the cost of a second parse)."""
    if len(data) >= 24 and data[0] == 0x45 and (data[9] == TCP or data[9] == UDP) and not (data[6] & 0x3F or data[7]):
        session = engine.table.sessions.get(flow_key(data[9], data[12:16], data[16:20], data[20] << 8 | data[21],
                                                     data[22] << 8 | data[23]))
        if session is not None:
            return session.nat is not None
    try:
        pkt = parse(data)
    except MalformedPacket:
        return False
    proto, sessions = pkt.proto, engine.table.sessions
    if pkt.inner is not None and proto in ICMP_ERRORS and pkt.icmp_type in ICMP_ERRORS[proto]:
        src, dst, sport, dport = _quoted(pkt)
        session = sessions.get(flow_key(pkt.inner.proto, src, dst, sport, dport))
        return session is not None and session.nat is not None
    sport, dport = _ports(pkt)
    session = sessions.get(flow_key(proto, pkt.src, pkt.dst, sport, dport))
    if session is not None:  # a session of the firewall's own (--hooks input) is INPUT's to track
        return session.nat is not None
    if (proto, pkt.src, pkt.dst, pkt.dport) in engine.expectations:
        return True
    if engine.nat.lb.active and engine.nat.lb.serves(pkt, dport):  # a virtual address of the firewall's
        return True
    return bool(engine.nat.entries) and engine.nat.destination(pkt, dport, iif)[0] is not None


@cython.locals(pkt=Packet, binding=Binding)
def after_routing(engine, data: bytes, partial: bool) -> Decision:
    """A marked packet after routing: its source half (module docstring)."""
    try:
        pkt = parse(data)
    except MalformedPacket:
        return Decision(DROP, "malformed")
    proto, src, dst = pkt.proto, pkt.src, pkt.dst
    if proto == TCP or proto == UDP:
        sport, dport = pkt.sport, pkt.dport
    elif pkt.inner is not None and proto in ICMP_ERRORS and pkt.icmp_type in ICMP_ERRORS[proto]:
        return _error_after_routing(engine, pkt, data)
    else:
        sport, dport = _ports(pkt)
    if src < dst or (src == dst and sport <= dport):
        key = (proto, src, dst, sport, dport)
    else:
        key = (proto, dst, src, dport, sport)
    session = engine.table.sessions.get(key) or engine.nat.middle.get(key)
    binding = session.nat if session is not None else None
    if binding is None:
        engine.counters["nat_lost_between_passes"] += 1
        return Decision(DROP, "nat:no-session", pkt)
    mid = binding.mid
    if mid is None:  # not split: no packet of it was marked
        return Decision(DROP, "invalid:state", pkt, session)
    four = (src, dst, sport, dport)
    if four == mid[0]:
        after = binding.after[0]
    elif four == mid[1]:
        after = binding.after[1]
    else:
        return Decision(DROP, "invalid:state", pkt, session)
    if after is None or (binding.kernel == KERNEL_HELD and engine.nat.kernel_packet):
        return Decision(ACCEPT, AFTER_REASON, pkt, session)
    try:
        new = after.apply(data, pkt, partial)
    except RewriteError:
        engine.counters["nat_rewrite_errors"] += 1
        return Decision(DROP, "nat:rewrite", pkt, session)
    return Decision(ACCEPT, AFTER_REASON, pkt, session, (RewritePacket(new),))


def _error_after_routing(engine, pkt, data: bytes) -> Decision:
    """An ICMP error's outer source: the address the quoted packet's receiver knows."""
    src, dst, sport, dport = _quoted(pkt)
    session = engine.table.sessions.get(flow_key(pkt.inner.proto, src, dst, sport, dport))
    binding = session.nat if session is not None else None
    if binding is None:
        engine.counters["nat_lost_between_passes"] += 1
        return Decision(DROP, "nat:no-session", pkt)
    quoted = (src, dst, sport, dport)
    if quoted == binding.orig:          # travels to the client: from the address it reached
        source = binding.orig[1]
    elif quoted == binding.reply:       # travels to the server: from the translated source
        source = binding.reply[1]
    else:
        return Decision(ACCEPT, AFTER_REASON, pkt, session)
    try:
        new = rewrite(data, pkt, Manip(src=source))
    except RewriteError:
        engine.counters["nat_rewrite_errors"] += 1
        return Decision(DROP, "nat:rewrite", pkt, session)
    return Decision(ACCEPT, AFTER_REASON, pkt, session, (RewritePacket(new),))


def own_error(engine, data: bytes) -> Decision:
    """The firewall's own ICMP error about a packet between the passes: its quoted header as the
    packet's sender sent it (module docstring)."""
    try:
        pkt = parse(data)
    except MalformedPacket:
        return Decision(ACCEPT, FROM_FIREWALL_REASON)
    proto = pkt.proto
    if pkt.inner is None or proto not in ICMP_ERRORS or pkt.icmp_type not in ICMP_ERRORS[proto]:
        return Decision(ACCEPT, FROM_FIREWALL_REASON, pkt)
    src, dst, sport, dport = quoted = _quoted(pkt)
    key = flow_key(pkt.inner.proto, src, dst, sport, dport)
    session = engine.table.sessions.get(key) or engine.nat.middle.get(key)
    binding = session.nat if session is not None else None
    if binding is None:
        return Decision(ACCEPT, FROM_FIREWALL_REASON, pkt)
    if quoted == binding.between(True):
        sent = binding.orig
    elif quoted == binding.between(False):
        sent = binding.reply
    else:
        return Decision(ACCEPT, FROM_FIREWALL_REASON, pkt, session)
    if sent == quoted:
        return Decision(ACCEPT, FROM_FIREWALL_REASON, pkt, session)
    try:
        new = rewrite(data, pkt, Manip(), inner=Manip(*sent))
    except RewriteError:
        engine.counters["nat_rewrite_errors"] += 1
        return Decision(ACCEPT, FROM_FIREWALL_REASON, pkt, session)
    engine.counters["nat_own_errors"] += 1
    return Decision(ACCEPT, "related:icmp", pkt, session, (RewritePacket(new),))
