"""FTP through NAT in the engine: announcements rewritten, sequence numbers shifted, data sessions
translated to match (as Linux's nf_nat_ftp with nf_conntrack_seqadj).

How it works, per accepted segment of a translated FTP control session (`segment`):
1. fw.nat.ftp.FtpNatSession finds a PORT/EPRT (from the client) or 227/229 (from the server) among
   the segment's complete lines and calls `choose`: an announcement of the sender's own address
   (the client's c, the server's real s) gets the same end as the other side sees it (t, the
   source translation; d, the address the client connected to) and the same port when no
   expectation holds it, else the next one upward; the pair is remembered in the binding's
   `ports` so that the data session, when it comes, leaves for the announced endpoint
   (fw.engine_nat.follow). An announcement of another address is left as it is (the ALG refuses it
   as a bounce). The length change is recorded in the session's SeqAdj.
2. The ALG is fed the payload as it leaves, with the sequence number the receiver sees: it judges
   and expects in the server side's terms (its `peers.translated`), so a dnat'ed server's 227 is
   no bounce, and its expectation is the key the data session will arrive with.
3. The packet leaves with the new payload (lengths, checksums), the binding's addresses, and seq,
   ack and SACK blocks shifted (`SeqAdj.adjust`), every later segment both ways too.
A segment that starts with an announcing line's first part is dropped (counted `nat_alg_split`):
the sender sends the line again, whole; one that has complete lines before it is cut after them
(counted too). A malformed announcement (a PORT, EPRT, 227 or 229 whose argument does not parse)
announces nothing: it leaves as it is (only the headers translated, the shift of earlier rewrites
applied), opens nothing, and is counted `nat_alg_rewrite` and logged as an ALG refusal (an `ftp`
event whose `refused` is `nat:alg-rewrite`); the ALG, fed the line, refuses it as `malformed` as it
does without NAT, and the receiver answers it (a server's 500/501): the control session goes on.
No free port for the data connection (or an IPv6 address for a PORT/227): the segment is dropped
as `nat:alg-rewrite` (counted and logged the same way), as nf_nat_ftp drops a packet it cannot
mangle. `track_view` gives the TCP tracker the segment's ack and SACK in the sender's own sequence
space, as Linux's tcp_in_window takes the seqadj offset off, so the windows stay consistent.
"""

from __future__ import annotations

from fw.alg.base import Refusal, shorten
from fw.decision import DROP, LogEvent, RewritePacket
from fw.nat.ftp import AlgRewriteError, SplitAnnouncement
from fw.nat.rewrite import RewriteError, with_payload
from fw.nat.seqadj import MASK
from fw.packet import parse

REASON = "nat:alg-rewrite"
FIRST_PORT, LAST_PORT = 1024, 65535


def track_view(binding, pkt, original: bool) -> None:
    """Put the packet's ack and SACK edges into the receiver's sent numbers (before tracking)."""
    ftp = binding.ftp
    if ftp is None or not ftp.seqadj.active or not pkt.flags & 16:
        return
    other = ftp.seqadj.corrections[1 if original else 0]
    pkt.ack = (pkt.ack - other.ack_offset(pkt.ack)) & MASK
    if pkt.sack:
        pkt.sack = tuple(((left - other.ack_offset(left)) & MASK, (right - other.ack_offset(right)) & MASK)
                         for left, right in pkt.sack)


def segment(engine, decision, binding, original: bool, now: float):
    """One accepted segment of a translated FTP control session (module docstring)."""
    pkt, session = decision.packet, decision.session
    ftp = binding.ftp
    direction = 0 if original else 1
    data, payload = engine.data, pkt.payload
    if payload:
        seq = pkt.seq + 1 if pkt.flags & 2 else pkt.seq
        try:
            result = ftp.segment(direction, seq, payload, _chooser(engine, binding, original))
        except SplitAnnouncement:
            engine.counters["nat_alg_split"] += 1
            return _drop(decision, REASON)
        except AlgRewriteError as exc:
            _refused(engine, decision, exc, now)
            return _drop(decision, REASON)
        if result is not None:
            for exc in result.malformed:  # left as they are: the receiver answers them
                _refused(engine, decision, exc, now, "; left as it is")
        if result is not None and result.line is not payload:
            if len(result.line) - result.delta < len(payload):  # a split line's first part cut off
                engine.counters["nat_alg_split"] += 1
            payload = result.line
            try:
                data = with_payload(data, pkt, payload)
            except RewriteError:
                engine.counters["nat_rewrite_errors"] += 1
                return _drop(decision, "nat:rewrite")
            engine.counters["nat_alg_rewrites"] += 1
        if session.alg is not None:
            shifted = (seq + ftp.seqadj.corrections[direction].seq_offset(seq)) & MASK
            decision.effects = decision.effects + engine.feed_alg(session, pkt, original, now, payload, shifted)
    try:
        unchanged = data is engine.data  # else with_payload computed the whole checksum
        packet = pkt if unchanged else parse(data)
        data = binding.rewrite(data, packet, original, unchanged and engine.partial)
        if ftp.seqadj.active:
            data = ftp.seqadj.adjust(data, parse(data) if packet is pkt else packet, direction)
    except (RewriteError, ValueError):
        engine.counters["nat_rewrite_errors"] += 1
        return _drop(decision, "nat:rewrite")
    decision.effects = decision.effects + (RewritePacket(data),)
    return decision


def _refused(engine, decision, exc, now: float, note: str = "") -> None:
    """Count an announcement NAT did not rewrite; log it as an ALG refusal (an `ftp` event)."""
    engine.counters["nat_alg_rewrite"] += 1
    session = decision.session
    if engine.config.events and session.alg is not None:
        from fw.engine import alg_refusal_event  # (fw.engine imports this module)

        refusal = Refusal(REASON, exc.command, shorten((exc.detail + note).encode(errors="replace")))
        decision.effects = decision.effects + (LogEvent(alg_refusal_event(session, refusal, now)),)


def _drop(decision, reason: str):
    decision.verdict, decision.reason = DROP, reason
    return decision


def _chooser(engine, binding, original: bool):
    """`choose(announcement)` for FtpNatSession: the endpoint the other side is told (docstring)."""
    c, d, _cp, _dp = binding.orig
    s, t, _sp, _tp = binding.reply
    pending = engine.expectations

    def choose(announcement):
        if original:   # PORT/EPRT: the server's side connects to the client's translated address
            own, here, there, peer = c, c, t, s
        else:          # 227/229: the client connects to the address it reached the server at
            own, here, there, peer = s, s, d, c
        address = announcement.address
        if address is not None and address != own:
            return address, announcement.port           # not the sender's own: left alone
        # Announced before (a retransmission after a restart or a failover, which do not carry
        # the memory of rewritten segments; or the same port again): the same translated port,
        # so the same line length and shift, unless another session's expectation holds it now.
        for chosen, announced in (binding.ports or {}).items():
            if announced == (here, announcement.port):
                held = pending.get((6, peer, *chosen))
                if held is None or held.parent.nat is binding:
                    return chosen
        port = _free_port(engine, peer, there, announcement.port)
        if port is None:
            return None
        if binding.ports is None:
            binding.ports = {}
        binding.ports[(there, port)] = (here, announcement.port)
        return there, port

    return choose


def _free_port(engine, peer: bytes, address: bytes, port: int) -> int | None:
    """`port` if no expectation waits for (peer -> address:port), else the next one upward, wrapping."""
    pending = engine.expectations
    candidate = port
    for _ in range(LAST_PORT - FIRST_PORT + 2):
        if (6, peer, address, candidate) not in pending:
            return candidate
        candidate = candidate + 1 if candidate < LAST_PORT else FIRST_PORT
    return None
