"""TCP connection tracking, ported from Linux's nf_conntrack_proto_tcp.c. Pure: no I/O, no clock.

How it works. A packet's flags pick one of six classes (`flag_class`, the kernel's
get_conntrack_index) after the valid-flags check (`VALID_FLAGS`, the kernel's tcp_valid_flags).
`TCP_TRANSITIONS[direction][class][state]` gives the new state, or sIG (let through unchanged: the
ends may be in sync while we are not) or sIV (invalid). A short switch after the lookup handles what
the table cannot say: reopening from TIME_WAIT/CLOSE, getting back in sync from an ignored SYN,
simultaneous open, RFC 5961 challenge ACKs, RSTs. Then van Rooij's four window checks (`_in_window`,
the kernel's tcp_in_window) must pass before anything changes. Per direction a `TcpPeer` holds what
that end has shown: td_end (highest seq+len sent), td_maxend (right edge of the other end's window),
td_maxwin (largest window), td_maxack, td_scale, flags. Sequence numbers compare mod 2**32.

Deviations from the kernel (v6.x), each on purpose:
- RSTs are judged by RFC 5961 section 3.2 in every synchronized state (the kernel spares only
  ESTABLISHED): exact seq -> CLOSE, in window -> accepted, state kept, out of window -> invalid.
  A RST's ACK and window are not used; liberal mode never admits an out-of-window RST.
- All four window checks fail as `invalid:out-of-window`, as van Rooij and kernels before 6.1 do
  (6.1 lets an overly old segment or ACK pass untracked). Out-of-window packets touch nothing,
  not even the first sight of a direction (the kernel keeps what a failed SYN/ACK showed).
- The kernel deletes an entry at once when the only reply was a RST; here such a CLOSE session is
  reopened by the next SYN (REOPEN) instead. Timeouts after invalid packets are not shortened.
- One retransmission threshold: the kernel's separate max_retrans timeout uses `tcp_unacknowledged`.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum


class TcpState(IntEnum):
    NONE = 0
    SYN_SENT = 1
    SYN_RECV = 2
    ESTABLISHED = 3
    FIN_WAIT = 4
    CLOSE_WAIT = 5
    LAST_ACK = 6
    TIME_WAIT = 7
    CLOSE = 8
    SYN_SENT2 = 9


STATE_NAMES: dict[TcpState, str] = {state: state.name for state in TcpState}

sNO, sSS, sSR, sES, sFW, sCW, sLA, sTW, sCL, sS2 = TcpState
sIV = 10  # invalid (the kernel's TCP_CONNTRACK_MAX)
sIG = 11  # ignore: let through, change nothing (TCP_CONNTRACK_IGNORE)

ORIGINAL, REPLY = 0, 1

# TCP header flag bits.
TH_FIN, TH_SYN, TH_RST, TH_PUSH, TH_ACK, TH_URG, TH_ECE, TH_CWR = (1 << bit for bit in range(8))

# Flag classes: the kernel's enum tcp_bit_set.
TCP_SYN_SET, TCP_SYNACK_SET, TCP_FIN_SET, TCP_ACK_SET, TCP_RST_SET, TCP_NONE_SET = range(6)
FLAG_CLASS_NAMES = ("syn", "synack", "fin", "ack", "rst", "none")

# TcpPeer.flags and TcpTrack.last_flags bits (the kernel's IP_CT_TCP_FLAG_*, same values).
WINDOW_SCALE = 0x01  # the end offered window scaling in its SYN
SACK_PERM = 0x02  # the end offered SACK in its SYN
CLOSE_INIT = 0x04  # the end sent the first FIN
DATA_UNACKNOWLEDGED = 0x10  # the end has data the other has not acknowledged
MAXACK_SET = 0x20  # td_maxack is valid
EXP_CHALLENGE_ACK = 0x40  # last_flags: a SYN in LAST_ACK may draw an RFC 5961 challenge ACK
SIMULTANEOUS_OPEN = 0x80  # last_flags: both ends sent a SYN

# Reasons (SPEC's words) and the reopen signal.
INVALID_FLAGS = "invalid:flags"
INVALID_STATE = "invalid:state"
OUT_OF_WINDOW = "invalid:out-of-window"
NO_SESSION = "invalid:no-session"
REOPEN = "reopen"  # the engine deletes the session and opens a new one for this SYN via the policy

MAX_RETRANS = 3  # nf_conntrack_tcp_max_retrans
MAXACKWINCONST = 66000  # the lower bound of the ACK window, when td_maxwin is smaller
SEQ_MASK = 0xFFFFFFFF
SEQ_HALF = 0x80000000

# nf_conntrack's defaults, in seconds, except tcp_established: the kernel's 5 days keeps dead flows
# for too long; 7440 s (2 h 4 min) is RFC 5382's minimum established idle timeout (REQ-5).
DEFAULT_TIMEOUTS: dict[str, int] = {
    "tcp_syn_sent": 120, "tcp_syn_recv": 60, "tcp_established": 7440, "tcp_fin_wait": 120,
    "tcp_close_wait": 60, "tcp_last_ack": 30, "tcp_time_wait": 120, "tcp_close": 10,
    "tcp_unacknowledged": 300, "udp": 30, "udp_stream": 120, "icmp": 30, "ftp_expectation": 300,
}  # fmt: skip
TIMEOUT_KEYS: dict[TcpState, str] = {
    sNO: "tcp_close", sSS: "tcp_syn_sent", sSR: "tcp_syn_recv", sES: "tcp_established",
    sFW: "tcp_fin_wait", sCW: "tcp_close_wait", sLA: "tcp_last_ack", sTW: "tcp_time_wait",
    sCL: "tcp_close", sS2: "tcp_syn_sent",  # the kernel's syn_sent2 timeout is syn_sent's
}  # fmt: skip
UNACKNOWLEDGED = "tcp_unacknowledged"

# fmt: off
TCP_TRANSITIONS = (
    (  # ORIGINAL
        #  sNO  sSS  sSR  sES  sFW  sCW  sLA  sTW  sCL  sS2
        (sSS, sSS, sIG, sIG, sIG, sIG, sIG, sSS, sSS, sS2),  # syn
        # sNO->sSS a new connection; sSS->sSS retransmitted SYN; sS2->sS2 late retransmitted SYN.
        # sSR..sLA->sIG a SYN inside a connection: the receiver answers RST (we catch it), or we hold
        #   a dead connection and the ends are in sync without us (a SYN/ACK gets us back in sync).
        # sTW, sCL->sSS reopened connection (RFC 9293 3.10.7.4 TIME-WAIT "may accept a new SYN").
        (sIV, sIV, sSR, sIV, sIV, sIV, sIV, sIV, sIV, sSR),  # synack
        # sNO->sIV too late; sSS->sIV a client cannot send SYN and then SYN/ACK.
        # sS2->sSR SYN/ACK to the reply SYN in a simultaneous open; sSR->sSR its late retransmission.
        # sES..sCL->sIV SYN/ACKs from the client are invalid.
        (sIV, sIV, sFW, sFW, sLA, sLA, sLA, sTW, sCL, sIV),  # fin
        # sNO, sSS, sS2->sIV no FIN before the SYN/ACK; sSR, sES->sFW close started.
        # sFW->sLA FIN seen both ways (or a retransmitted FIN); sCW->sLA; sLA->sLA retransmitted FIN.
        # sTW->sTW, sCL->sCL stay.
        (sES, sIV, sES, sES, sCW, sCW, sTW, sTW, sCL, sIV),  # ack
        # sNO->sES assumed (loose pickup); sSS, sS2->sIV no ACK before the SYN/ACK.
        # sSR->sES established; sES->sES; sFW->sCW a FIN answered by ACK; sCW->sCW.
        # sLA->sTW the last ACK (unless it is an RFC 5961 challenge ACK); sTW->sTW; sCL->sCL.
        (sIV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL),  # rst: sNO->sIV, else ->sCL if valid
        (sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV),  # none: never valid
    ),
    (  # REPLY
        #  sNO  sSS  sSR  sES  sFW  sCW  sLA  sTW  sCL  sS2
        (sIV, sS2, sIV, sIV, sIV, sIV, sIV, sSS, sIV, sS2),  # syn
        # sNO->sIV never reached; sSS->sS2 simultaneous open; sS2->sS2 retransmitted SYN.
        # sSR..sLA, sCL->sIV SYNs from the server are invalid.
        # sTW->sSS reopened connection, the server taking the client's role.
        (sIV, sSR, sIG, sIG, sIG, sIG, sIG, sIG, sIG, sSR),  # synack
        # sSS->sSR the standard open; sS2->sSR simultaneous open.
        # sSR->sIG retransmitted SYN/ACK; sES..sCL->sIG late, or answering a SYN we ignored.
        (sIV, sIV, sFW, sFW, sLA, sLA, sLA, sTW, sCL, sIV),  # fin
        # sSS, sS2->sIV the server may not send FIN yet; sSR, sES->sFW close started.
        # sFW->sLA FIN seen both ways; sCW->sLA; sLA->sLA retransmitted FIN; sTW, sCL stay.
        (sIV, sIG, sSR, sES, sCW, sCW, sTW, sTW, sCL, sIG),  # ack
        # sSS->sIG might be a half-open connection (or a challenge ACK to the SYN); sS2->sIG.
        # sSR->sSR might answer a late resent SYN; sES->sES; sFW->sCW; sCW->sCW; sLA->sTW; sTW, sCL stay.
        (sIV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL),  # rst
        (sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV),  # none
    ),
)
# fmt: on

# tcp_valid_flags: the combinations of FIN SYN RST ACK URG a segment may carry (PSH, ECE, CWR may be
# added to any). Anything else (no flags, FIN without ACK, SYN+FIN, SYN+RST, "xmas") is invalid.
VALID_FLAGS = frozenset((
    TH_SYN, TH_SYN | TH_URG, TH_SYN | TH_ACK, TH_RST, TH_RST | TH_ACK,
    TH_FIN | TH_ACK, TH_FIN | TH_ACK | TH_URG, TH_ACK, TH_ACK | TH_URG,
))  # fmt: skip
CHECKED_FLAGS = TH_FIN | TH_SYN | TH_RST | TH_ACK | TH_URG


def flag_class(flags: int) -> int:
    """The kernel's get_conntrack_index: RST first, then SYN (with or without ACK), FIN, ACK."""
    if flags & TH_RST:
        return TCP_RST_SET
    if flags & TH_SYN:
        return TCP_SYNACK_SET if flags & TH_ACK else TCP_SYN_SET
    if flags & TH_FIN:
        return TCP_FIN_SET
    if flags & TH_ACK:
        return TCP_ACK_SET
    return TCP_NONE_SET


# Both answers in one lookup: the class of each flag byte, or -1 when the combination is invalid.
_CLASS_OF = tuple(flag_class(f) if f & CHECKED_FLAGS in VALID_FLAGS else -1 for f in range(256))
# New states that the switch after the lookup must look at; the others go straight to the window.
_SWITCH = frozenset((sSS, sSR, sTW, sCL, sS2, sIG, sIV))


def before(seq1: int, seq2: int) -> bool:
    """seq1 comes before seq2, mod 2**32 (the kernel's before())."""
    return (seq1 - seq2) & SEQ_MASK >= SEQ_HALF


def after(seq1: int, seq2: int) -> bool:
    return (seq2 - seq1) & SEQ_MASK >= SEQ_HALF


class TcpPeer:
    """What one end has shown us (the kernel's ip_ct_tcp_state)."""

    __slots__ = ("td_end", "td_maxend", "td_maxwin", "td_maxack", "td_scale", "flags")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.td_end = self.td_maxend = self.td_maxwin = self.td_maxack = self.td_scale = self.flags = 0

    def save(self) -> tuple:
        return self.td_end, self.td_maxend, self.td_maxwin, self.td_maxack, self.td_scale, self.flags

    def restore(self, saved: tuple) -> None:
        self.td_end, self.td_maxend, self.td_maxwin, self.td_maxack, self.td_scale, self.flags = saved


class TcpTrack:
    """The TCP part of a session (the kernel's ip_ct_tcp). `seen[ORIGINAL]`, `seen[REPLY]`."""

    __slots__ = ("state", "seen", "last_dir", "last_index", "last_seq", "last_ack", "last_end",
                 "last_win", "last_wscale", "last_flags", "retrans", "liberal")  # fmt: skip

    def __init__(self, liberal: bool = False) -> None:
        self.state = sNO
        self.seen = (TcpPeer(), TcpPeer())
        self.last_dir = ORIGINAL
        self.last_index = TCP_NONE_SET
        self.last_seq = self.last_ack = self.last_end = self.last_win = 0
        self.last_wscale = self.last_flags = self.retrans = 0
        self.liberal = liberal  # picked up mid-stream: window failures (not RSTs) are let through

    def __repr__(self) -> str:
        return f"<TcpTrack {self.state.name} {to_dict(self)}>"


def tcp_new(pkt, liberal: bool = False) -> TcpTrack | str:
    """A track for a packet with no session (the kernel's tcp_new, then tcp_packet), or a reason.

    A SYN opens SYN_SENT. With `liberal` (policy option tcp_loose) an ACK picks the flow up in
    ESTABLISHED with liberal window checks, as nf_conntrack_tcp_loose does.
    """
    index = _CLASS_OF[pkt.flags & 0xFF]
    if index < 0:
        return INVALID_FLAGS
    new_state = TCP_TRANSITIONS[ORIGINAL][index][sNO]
    if new_state is sSS:
        track = TcpTrack()
        sender = track.seen[ORIGINAL]
        sender.td_end = sender.td_maxend = _seq_end(pkt)
        sender.td_maxwin = pkt.window or 1
        _options(sender, pkt)
    elif new_state is sES and liberal:
        track = TcpTrack(liberal=True)
        sender = track.seen[ORIGINAL]
        sender.td_end = _seq_end(pkt)
        sender.td_maxwin = pkt.window or 1
        sender.td_maxend = (sender.td_end + sender.td_maxwin) & SEQ_MASK
        sender.flags = track.seen[REPLY].flags = SACK_PERM  # assumed, as the kernel does
    else:
        return NO_SESSION
    problem = tcp_update(track, pkt, True)
    return track if problem is None else problem


def tcp_update(track: TcpTrack, pkt, original: bool) -> str | None:
    """Track one packet of the session. None: valid (track and state updated, or an sIG packet let
    through unchanged); else INVALID_FLAGS, INVALID_STATE, OUT_OF_WINDOW (track unchanged) or REOPEN.
    """
    index = _CLASS_OF[pkt.flags & 0xFF]
    if index < 0:
        return INVALID_FLAGS
    direction = ORIGINAL if original else REPLY
    old_state = track.state
    new_state = TCP_TRANSITIONS[direction][index][old_state]

    if new_state in _SWITCH:
        if new_state is sSS:
            if old_state >= sTW:
                # RFC 9293 3.10.7.4: a SYN may reopen a connection in TIME-WAIT; the kernel also
                # reopens when the same end reset it (an aborted connection).
                peers = track.seen
                if ((peers[0].flags | peers[1].flags) & CLOSE_INIT
                        or (track.last_dir == direction and track.last_index == TCP_RST_SET)
                        or (old_state is sCL and peers[REPLY].td_maxwin == 0)):
                    return REOPEN
                new_state = sIG  # fall through to ignore (the kernel does)
        elif new_state is sS2:
            track.last_flags |= SIMULTANEOUS_OPEN
        elif new_state is sSR:
            if direction == REPLY and index == TCP_ACK_SET and track.last_flags & SIMULTANEOUS_OPEN:
                new_state = sES  # the table cannot tell a simultaneous open's last ACK
        elif new_state is sTW:
            if (old_state is sLA and index == TCP_ACK_SET and track.last_dir != direction
                    and track.last_index == TCP_SYN_SET and track.last_flags & EXP_CHALLENGE_ACK):
                # RFC 5961 section 4: the ACK answers the SYN we let through, not the last FIN.
                track.last_flags &= ~EXP_CHALLENGE_ACK
                return None
        elif new_state is sIV:
            return INVALID_STATE
        elif new_state is sCL and index == TCP_RST_SET:
            new_state = _check_rst(track, pkt, direction, old_state)
            if new_state is OUT_OF_WINDOW:
                return OUT_OF_WINDOW
            _commit(track, direction, index, old_state, new_state)
            return None
        if new_state is sIG:
            if not _in_sync_again(track, pkt, direction, index):
                _ignore(track, pkt, direction, index, old_state)
                return None
            old_state, new_state = sSS, sSR

    problem = _in_window(track, pkt, direction, index)
    if problem is not None:
        return problem
    track.last_index = index
    track.last_dir = direction
    if new_state is not old_state:
        track.state = new_state
        if new_state is sFW:
            track.seen[direction].flags |= CLOSE_INIT
    return None


def _commit(track: TcpTrack, direction: int, index: int, old_state: TcpState, new_state) -> None:
    track.last_index = index
    track.last_dir = direction
    track.state = new_state
    if new_state is sFW and old_state is not sFW:
        track.seen[direction].flags |= CLOSE_INIT


def _ignore(track: TcpTrack, pkt, direction: int, index: int, old_state: TcpState) -> None:
    """An sIG packet passes unchanged; remember it in case the other end answers it (the kernel's
    a) SYN in ORIGINAL, b) SYN/ACK in REPLY, c) ACK in REPLY after the SYN)."""
    track.last_index = index
    track.last_dir = direction
    track.last_seq = pkt.seq
    track.last_end = _seq_end(pkt)
    track.last_win = pkt.window
    if index == TCP_SYN_SET:
        flags = scale = 0
        if pkt.wscale is not None:
            flags, scale = WINDOW_SCALE, min(pkt.wscale, 14)
        if pkt.sack_perm:
            flags |= SACK_PERM
        if old_state is sLA:
            flags |= EXP_CHALLENGE_ACK  # RFC 5961 section 4: the SYN may draw a challenge ACK
        track.last_flags, track.last_wscale = flags, scale
    elif old_state is sSS and index == TCP_ACK_SET and direction == REPLY:
        track.last_ack = pkt.ack  # a challenge ACK to the SYN: the client may reset with seq = ack


def _in_sync_again(track: TcpTrack, pkt, direction: int, index: int) -> bool:
    """A SYN/ACK acknowledging a SYN we ignored: both ends are in sync, we are not. Take the SYN's
    annotated values and restart from SYN_SENT (the kernel's case b)."""
    if not (index == TCP_SYNACK_SET and track.last_index == TCP_SYN_SET
            and track.last_dir != direction and pkt.ack == track.last_end):
        return False
    peer = track.seen[track.last_dir]
    peer.td_end = peer.td_maxend = track.last_end
    peer.td_maxwin = track.last_win or 1
    peer.td_scale = track.last_wscale
    track.last_flags &= ~EXP_CHALLENGE_ACK
    peer.flags = track.last_flags & (WINDOW_SCALE | SACK_PERM)
    peer.td_maxack = 0
    track.seen[direction].reset()
    return True


def _check_rst(track: TcpTrack, pkt, direction: int, old_state: TcpState):
    """RFC 5961 section 3.2: CLOSE for an exact RST, the old state for one in the window (the
    receiver sends a challenge ACK), OUT_OF_WINDOW otherwise."""
    seq = pkt.seq
    has_ack = pkt.flags & TH_ACK
    last_index = track.last_index
    if has_ack and last_index == TCP_SYN_SET and track.last_dir != direction and pkt.ack == track.last_end:
        return sCL  # the answer to a SYN we let through (sIG): the receiver has no such connection
    if (old_state is sSS and direction == ORIGINAL and last_index == TCP_ACK_SET
            and track.last_dir == REPLY and seq == track.last_ack):
        return sCL  # RFC 9293 3.10.7.3: the client resets the half-open peer's (challenge) ACK
    sender, receiver = track.seen[direction], track.seen[direction ^ 1]
    if sender.td_maxwin == 0:
        # Nothing seen from the sender: the answer to a SYN. RFC 9293 3.10.7.3 (SYN-SENT): the RST
        # is acceptable if it acknowledges the SYN.
        return sCL if has_ack and pkt.ack == receiver.td_end else OUT_OF_WINDOW
    # The receiver's RCV.NXT is what it last acknowledged, or at most all the sender sent.
    if seq == sender.td_end or (receiver.flags & MAXACK_SET and seq == receiver.td_maxack):
        return sCL
    if receiver.flags & MAXACK_SET:
        low = receiver.td_maxack
    else:
        low = (sender.td_end - receiver.td_maxwin) & SEQ_MASK
    if before(seq, low) or after(seq, sender.td_maxend):
        return OUT_OF_WINDOW
    return old_state


def _in_window(track: TcpTrack, pkt, direction: int, index: int) -> str | None:
    """van Rooij's checks (the kernel's tcp_in_window); on success the window data is updated.

    I.   seq <= sender.td_maxend                          (not past the receiver's window)
    II.  end >= sender.td_end - receiver.td_maxwin          (not already acknowledged long ago)
    III. sack <= receiver.td_end                           (acknowledges nothing unseen)
    IV.  sack >= receiver.td_end - MAXACKWINDOW(sender)     (not an ACK from long ago)
    sack is the highest SACK right edge, or the ack; end = seq + len (+1 for SYN, +1 for FIN).
    """
    sender, receiver = track.seen[direction], track.seen[direction ^ 1]
    flags = pkt.flags
    seq = pkt.seq
    ack = sack = pkt.ack
    win = pkt.window
    end = (seq + pkt.payload_len + ((flags >> 1) & 1) + (flags & 1)) & SEQ_MASK
    if pkt.sack and receiver.flags & SACK_PERM:
        for _left, right in pkt.sack:
            if (sack - right) & SEQ_MASK >= SEQ_HALF:
                sack = right

    saved = None
    if sender.td_maxwin == 0 or flags & TH_SYN:
        saved = sender.save(), receiver.save()
        if _first_sight(track, pkt, direction, end, sack):
            return None
    if not flags & TH_ACK:
        ack = sack = receiver.td_end  # no ACK: pretend it acknowledges what was sent

    r_end = receiver.td_end
    maxackwin = sender.td_maxwin if sender.td_maxwin > MAXACKWINCONST else MAXACKWINCONST
    if not (
        (seq - sender.td_maxend - 1) & SEQ_MASK >= SEQ_HALF  # I
        and (receiver.td_maxwin == 0  # II
             or (sender.td_end - receiver.td_maxwin - 1 - end) & SEQ_MASK >= SEQ_HALF)
        and (sack - r_end - 1) & SEQ_MASK >= SEQ_HALF  # III
        and (r_end - maxackwin - 1 - sack) & SEQ_MASK >= SEQ_HALF  # IV
    ):
        if track.liberal:
            return None
        if saved is not None:  # unlike the kernel, a failed SYN/ACK leaves no trace (a spoofed
            sender.restore(saved[0])  # one would otherwise make the real one fail check II)
            receiver.restore(saved[1])
        return OUT_OF_WINDOW

    if not flags & TH_SYN:
        win <<= sender.td_scale  # RFC 7323 2.2: the window of a SYN is never scaled
    swin = win + ((sack - ack) & SEQ_MASK)
    if sender.td_maxwin < swin:
        sender.td_maxwin = swin
    if (sender.td_end - end) & SEQ_MASK >= SEQ_HALF:
        sender.td_end = end
        sender.flags |= DATA_UNACKNOWLEDGED
    if flags & TH_ACK:
        if not sender.flags & MAXACK_SET:
            sender.td_maxack = ack
            sender.flags |= MAXACK_SET
        elif (sender.td_maxack - ack) & SEQ_MASK >= SEQ_HALF:
            sender.td_maxack = ack
    if receiver.td_maxwin and (sender.td_maxend - end) & SEQ_MASK >= SEQ_HALF:
        receiver.td_maxwin = (receiver.td_maxwin + end - sender.td_maxend) & SEQ_MASK
    right_edge = (sack + win) & SEQ_MASK
    if (receiver.td_maxend - 1 - right_edge) & SEQ_MASK >= SEQ_HALF:
        receiver.td_maxend = right_edge if win else (right_edge + 1) & SEQ_MASK
    if ack == r_end:
        receiver.flags &= ~DATA_UNACKNOWLEDGED

    if index == TCP_ACK_SET:  # count retransmissions: the same segment again
        raw_win = pkt.window
        if (track.last_dir == direction and track.last_seq == seq and track.last_ack == ack
                and track.last_end == end and track.last_win == raw_win):
            track.retrans += 1
        else:
            track.last_dir = direction
            track.last_seq, track.last_ack, track.last_end, track.last_win = seq, ack, end, raw_win
            track.retrans = 0
    return None


def _first_sight(track: TcpTrack, pkt, direction: int, end: int, sack: int) -> bool:
    """Set up a direction seen for the first time, or restarted by a new SYN; True when the
    packet (a SYN without ACK) needs no further check."""
    sender, receiver = track.seen[direction], track.seen[direction ^ 1]
    flags = pkt.flags
    if sender.td_maxwin == 0:
        if flags & TH_SYN:  # the SYN/ACK, or the reply SYN of a simultaneous open
            _init_sender(sender, receiver, pkt, end)
            return not flags & TH_ACK
        # Mid-stream: the history is lost, use what the packet shows.
        sender.td_end = end
        sender.td_maxwin = (pkt.window << sender.td_scale) or 1
        sender.td_maxend = (end + sender.td_maxwin) & SEQ_MASK
        if receiver.td_maxwin == 0:
            receiver.td_end = receiver.td_maxend = sack  # so that III and IV pass until then
        elif sack == (receiver.td_end + 1) & SEQ_MASK:
            receiver.td_end = sack  # likely the answer to a keepalive
    elif after(end, sender.td_end) and (track.state is sSS or track.state is sSR):
        # RFC 9293 3.4.1 ("if a TCP is reinitialized... use sequence numbers larger than those
        # recently used"): a new SYN (or SYN/ACK) with a higher ISN restarts this direction.
        _init_sender(sender, receiver, pkt, end)
        return direction == REPLY and not flags & TH_ACK
    return False


def _init_sender(sender: TcpPeer, receiver: TcpPeer, pkt, end: int) -> None:
    """The first SYN/ACK (or reply SYN) of a direction: its sequence space and options."""
    sender.td_end = sender.td_maxend = end
    sender.td_maxwin = pkt.window or 1
    _options(sender, pkt)
    if not sender.flags & receiver.flags & WINDOW_SCALE:
        sender.td_scale = receiver.td_scale = 0  # RFC 7323 1.3: scaling needs both ends' option


def _options(peer: TcpPeer, pkt) -> None:
    """The kernel's tcp_options: window scale (at most 14, RFC 7323 2.3) and SACK-permitted."""
    flags = scale = 0
    if pkt.wscale is not None:
        flags, scale = WINDOW_SCALE, min(pkt.wscale, 14)
    if pkt.sack_perm:
        flags |= SACK_PERM
    peer.flags, peer.td_scale = flags, scale


def _seq_end(pkt) -> int:
    flags = pkt.flags
    return (pkt.seq + pkt.payload_len + ((flags >> 1) & 1) + (flags & 1)) & SEQ_MASK


def timeout_key(track: TcpTrack, timeouts: Mapping[str, float] | None = None) -> str:
    """The timeout that applies after the last accepted packet (the end of the kernel's tcp_packet).

    The state's key, but `tcp_unacknowledged` when retransmissions reached MAX_RETRANS, data is
    unacknowledged, the last window was zero or a picked-up flow has had no reply, if that is
    shorter (by `timeouts`, default DEFAULT_TIMEOUTS); `tcp_close` after a RST.
    """
    state = track.state
    key = TIMEOUT_KEYS[state]
    orig, reply = track.seen
    retransmitting = track.retrans >= MAX_RETRANS
    if not retransmitting:
        if track.last_index == TCP_RST_SET:
            return "tcp_close"
        if not ((orig.flags | reply.flags) & DATA_UNACKNOWLEDGED or track.last_win == 0
                or (track.liberal and reply.td_maxwin == 0 and state is sES)):
            return key
    table = DEFAULT_TIMEOUTS if timeouts is None else timeouts
    if table[key] > table[UNACKNOWLEDGED]:
        return UNACKNOWLEDGED
    return "tcp_close" if track.last_index == TCP_RST_SET else key


def next_expected_seq(track: TcpTrack, original: bool) -> int:
    """The RCV.NXT of the end that receives packets going in the `original` (True) or reply
    direction: the end of all the data the other end sent. A RST with this seq, sent in that
    direction, is exact (RFC 5961 section 3.2)."""
    return track.seen[ORIGINAL if original else REPLY].td_end


_PEER_FIELDS = TcpPeer.__slots__
_TRACK_FIELDS = ("last_dir", "last_index", "last_seq", "last_ack", "last_end", "last_win",
                 "last_wscale", "last_flags", "retrans", "liberal")  # fmt: skip


def to_dict(track: TcpTrack) -> dict:
    """Plain data for snapshots and HA sync; `from_dict` reverses it."""
    data = {"state": track.state.name}
    data.update((name, getattr(track, name)) for name in _TRACK_FIELDS)
    data["original"] = {name: getattr(track.seen[ORIGINAL], name) for name in _PEER_FIELDS}
    data["reply"] = {name: getattr(track.seen[REPLY], name) for name in _PEER_FIELDS}
    return data


def from_dict(data: Mapping) -> TcpTrack:
    track = TcpTrack()
    track.state = TcpState[data["state"]]
    for name in _TRACK_FIELDS:
        setattr(track, name, data[name])
    for peer, side in zip(track.seen, ("original", "reply"), strict=True):
        for name in _PEER_FIELDS:
            setattr(peer, name, int(data[side][name]))
    return track
