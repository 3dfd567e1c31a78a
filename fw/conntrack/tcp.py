# cython: annotation_typing=False
"""TCP connection tracking, ported from Linux's nf_conntrack_proto_tcp.c. Pure: no I/O, no clock.

How it works. A packet's flags pick one of six classes (`flag_class`, the kernel's
get_conntrack_index) after the valid-flags check (`VALID_FLAGS`, the kernel's tcp_valid_flags).
`TCP_TRANSITIONS[direction][class][state]` gives the new state, or sIG (let through unchanged: the
ends may be in sync while we are not) or sIV (invalid). A short switch after the lookup handles what
the table cannot say: reopening from TIME_WAIT/CLOSE, getting back in sync from an ignored SYN,
simultaneous open, RFC 5961 challenge ACKs, RSTs. Then van Rooij's four window checks (in
`tcp_update`, the kernel's tcp_in_window) must pass before anything changes. Per direction the track
keeps what that end has shown: td_end (highest seq+len sent), td_maxend (right edge of the other
end's window), td_maxwin (largest window), td_maxack, td_scale, flags. Sequence numbers compare
mod 2**32.

Memory: a track is flat `__slots__` (`FIELDS`, fw.conntrack.table: o_ for what the original sender
showed, r_ for the reply sender): a TcpSession in the session table carries them itself, and a
TcpTrack (a track not in the table yet) is a TcpSession without a key, so the functions here work
on one class; a number equal to one already kept is stored as the same int object (every other
int costs 28 bytes per session). Compiled (build_compiled.py, tcp.pxd), the fields are C integers
and `tcp_update` does its arithmetic in C (64-bit, masked as here: the same results). The
established path reads the fields it needs into locals and writes back what a valid packet
changed; the rarer paths (the switch, a direction's first sight) work on a list copy (`_get`) and
store it (`_put`) only when the packet is valid, so an invalid packet changes nothing.

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
from operator import itemgetter
from types import FunctionType
from typing import Any

try:
    import cython
except ImportError:  # no Cython: this module runs pure (as with FW_PURE=1)
    from fw import cython_shadow as cython

from fw.conntrack.table import FIELDS, LIBERAL, TcpPeer, TcpSession, _get, _put, _put_fields, copy_fields  # noqa: F401  (this module's API too)


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

# Peer flags and last_flags bits (the kernel's IP_CT_TCP_FLAG_*, same values).
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
TCP_TRANSITIONS: Any = (  # Any: states stay TcpState objects when compiled (mypyc)
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


_SYN_FIN = (0, 1, 1, 2)  # sequence space taken by the flags, by flags & (SYN | FIN)


def before(seq1: int, seq2: int) -> bool:
    """seq1 comes before seq2, mod 2**32 (the kernel's before())."""
    return (seq1 - seq2) & SEQ_MASK >= SEQ_HALF


def after(seq1: int, seq2: int) -> bool:
    return (seq2 - seq1) & SEQ_MASK >= SEQ_HALF


# A track's fields besides its state: FIELDS (fw.conntrack.table, beside the TcpSession that holds them).
_AT = {name: index for index, name in enumerate(FIELDS)}
# Per-end fields: their index in FIELDS, by direction (ORIGINAL, REPLY).
_END, _MAXEND, _MAXWIN, _MAXACK, _SCALE, _PFLAGS = (
    (_AT["o_" + name], _AT["r_" + name]) for name in ("end", "maxend", "maxwin", "maxack", "scale", "flags")
)
_PEER = (_END, _MAXEND, _MAXWIN, _MAXACK, _SCALE, _PFLAGS)
_LAST_SEQ, _LAST_ACK, _LAST_END, _LAST_WIN, _LAST_FLAGS, _LAST_PACKET = (
    _AT[name] for name in ("last_seq", "last_ack", "last_end", "last_win", "last_flags", "last_packet")
)
WSCALE_SHIFT = 8  # last_flags also holds the window scale the last ignored SYN offered, from this bit on
_LIBERAL = _AT["liberal"]
_NEW_VALUES = tuple(
    TCP_NONE_SET << 1 if name == "last_packet" else False if name == "liberal" else 0 for name in FIELDS
)
_NEW_FIELDS = _NEW_VALUES[:-1]  # all but liberal
# From such a tuple, by direction: the end's (end, maxend, maxwin, maxack, scale, flags).
_PEER_OF = tuple(itemgetter(*(at[direction] for at in _PEER)) for direction in (ORIGINAL, REPLY))


class TcpTrack(TcpSession):
    """The TCP part of a session (the kernel's ip_ct_tcp): the state and FIELDS, flat, for a flow
    not in the table yet (tcp_new's answer, a snapshot's or an HA peer's track). A TcpSession
    (fw.conntrack.table) with no key: the functions here take either; a new session copies it.

    `liberal`: picked up mid-stream, window failures (not RSTs) are let through.
    """

    __slots__ = ()

    def __init__(self, liberal: bool = False) -> None:
        self.state = sNO
        self.flags = 0  # the session's other fields are not set: a track has none
        if cython.compiled:  # a new C struct: the fields are 0 already
            self.last_packet = TCP_NONE_SET << 1
        else:
            _put_new_track(self, _NEW_FIELDS)
        if liberal:
            self.flags = LIBERAL

    def __repr__(self) -> str:
        return f"<TcpTrack {self.state.name} {to_dict(self)}>"


# _put_fields' code again, as a function of its own for TcpTrack.__init__: the interpreter specializes each
# attribute store of a code object to one class, and every new session would otherwise store into
# a new TcpTrack and then into its TcpSession through the same stores (each store then taking the
# generic way: ~5,000 instructions more per new session, measured with callgrind).
_put_new_track = (FunctionType(_put_fields.__code__.replace(co_name="_put_new_track", co_qualname="_put_new_track"),
                               globals()) if _put_fields.__class__ is FunctionType else _put_fields)  # compiled: unused


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
        # What tcp_update does with a SYN on a new track, written out (every new TCP session pays
        # for it; tests/test_tcp_table.py checks it against tcp_update): the SYN always passes the
        # window checks, and the receiver's right edge becomes the SYN's window (never scaled).
        track = TcpTrack()
        track.o_end = track.o_maxend = _seq_end(pkt)
        track.o_maxwin = track.r_maxend = pkt.window or 1
        track.o_flags, track.o_scale = _offered(pkt)
        track.last_packet = TCP_SYN_SET << 1 | ORIGINAL
        track.state = sSS
        return track
    if new_state is sES and liberal:
        track = TcpTrack(liberal=True)
        end, window = _seq_end(pkt), pkt.window or 1
        track.o_end, track.o_maxwin, track.o_maxend = end, window, (end + window) & SEQ_MASK
        track.o_flags = track.r_flags = SACK_PERM  # assumed, as the kernel does
    else:
        return NO_SESSION
    problem = tcp_update(track, pkt, True)
    return track if problem is None else problem


def tcp_update(track: Any, pkt, original: bool) -> str | None:
    """Track one packet of the session. None: valid (track and state updated, or an sIG packet let
    through unchanged); else INVALID_FLAGS, INVALID_STATE, OUT_OF_WINDOW (track unchanged) or REOPEN.

    The table lookup, then (for the few cells that need it) `_switch`, then van Rooij's checks (the
    kernel's tcp_in_window); on success the window data is updated. The checks, each mod 2**32:
    I.   seq <= sender.td_maxend                          (not past the receiver's window)
    II.  end >= sender.td_end - receiver.td_maxwin          (not already acknowledged long ago)
    III. sack <= receiver.td_end                           (acknowledges nothing unseen)
    IV.  sack >= receiver.td_end - MAXACKWINDOW(sender)     (not an ACK from long ago)
    sack is the highest SACK right edge, or the ack; end = seq + len (+1 for SYN, +1 for FIN).
    a <= b is written (b - a) & SEQ_MASK < SEQ_HALF and a < b (a - b) & SEQ_MASK >= SEQ_HALF. This is
    the established path: it is written out in one function on purpose (a call costs as much as a check).
    """
    flags = pkt.flags  # the header's flag byte (parse gives 0-255)
    index = _CLASS_OF[flags]
    if index < 0:
        return INVALID_FLAGS
    direction = 0 if original else 1
    old_state = track.state
    new_state = TCP_TRANSITIONS[direction][index][old_state]
    if new_state in _SWITCH:
        outcome = _switch(track, pkt, direction, index, old_state, new_state)
        if outcome.__class__ is not tuple:
            return outcome  # settled there: None or a reason
        new_state, values = outcome
    else:
        values = None

    mask, half = SEQ_MASK, SEQ_HALF
    seq = pkt.seq
    ack = sack = pkt.ack
    win = pkt.window
    end = (seq + pkt.payload_len + _SYN_FIN[flags & 3]) & mask
    if pkt.sack and (track.o_flags if direction else track.r_flags) & SACK_PERM:
        for _left, right in pkt.sack:
            if (sack - right) & mask >= half:
                sack = right
    # s_ the sender of this packet, r_ the receiver.
    if values is None:
        if direction:
            s_end, s_maxend, s_maxwin, s_maxack, s_scale, s_flags = (
                track.r_end, track.r_maxend, track.r_maxwin, track.r_maxack, track.r_scale, track.r_flags)
            r_end, r_maxend, r_maxwin, r_flags = track.o_end, track.o_maxend, track.o_maxwin, track.o_flags
        else:
            s_end, s_maxend, s_maxwin, s_maxack, s_scale, s_flags = (
                track.o_end, track.o_maxend, track.o_maxwin, track.o_maxack, track.o_scale, track.o_flags)
            r_end, r_maxend, r_maxwin, r_flags = track.r_end, track.r_maxend, track.r_maxwin, track.r_flags
        if not s_maxwin or (flags & TH_SYN and (old_state is sSS or old_state is sSR)
                            and (s_end - end) & mask >= half):
            values = list(_get(track))  # a first sight (_first_sight says what it does)
    if values is not None:  # work on a copy until the checks pass
        if (flags & TH_SYN or not values[_MAXWIN[direction]]) and _first_sight(
                values, pkt, direction, end, sack, old_state):
            _commit(track, values, direction, index, new_state)
            return None
        s_end, s_maxend, s_maxwin, s_maxack, s_scale, s_flags = _PEER_OF[direction](values)
        r_end, r_maxend, r_maxwin, _r_maxack, _r_scale, r_flags = _PEER_OF[direction ^ 1](values)
    if not flags & TH_ACK:
        ack = sack = r_end  # no ACK: pretend it acknowledges what was sent

    maxackwin = s_maxwin if s_maxwin > MAXACKWINCONST else MAXACKWINCONST
    if not (
        (s_maxend - seq) & mask < half  # I
        and (r_maxwin == 0 or (end - s_end + r_maxwin) & mask < half)  # II
        and (r_end - sack) & mask < half  # III
        and (sack - r_end + maxackwin) & mask < half  # IV
    ):
        if not track.liberal:
            return OUT_OF_WINDOW  # nothing stored: unlike the kernel, not even a first sight
        _commit(track, _get(track) if values is None else values, direction, index, new_state)  # window kept
        return None

    # Equal numbers are stored as the same int object (28 bytes less per session for each).
    if ack == r_end:
        ack = r_end
        r_flags &= ~DATA_UNACKNOWLEDGED
    if not flags & TH_SYN:
        win <<= s_scale  # RFC 7323 2.2: the window of a SYN is never scaled
    swin = win if sack == ack else win + ((sack - ack) & mask)
    if s_maxwin < swin:
        s_maxwin = swin
    if (s_end - end) & mask >= half:
        s_end = end
        s_flags |= DATA_UNACKNOWLEDGED
    elif end == s_end:
        end = s_end
        if seq == end:  # a pure ACK
            seq = end
    if flags & TH_ACK:
        if not s_flags & MAXACK_SET:
            s_maxack = ack
            s_flags |= MAXACK_SET
        elif (s_maxack - ack) & mask >= half:
            s_maxack = ack
    if r_maxwin and (s_maxend - end) & mask >= half:
        r_maxwin = (r_maxwin + end - s_maxend) & mask
    right_edge = (sack + win) & mask
    if (right_edge - r_maxend) & mask < half:
        r_maxend = right_edge if win else (right_edge + 1) & mask
    if new_state is sFW and old_state is not sFW:
        s_flags |= CLOSE_INIT  # this end sent the first FIN

    if values is not None:
        _put(track, values)
    if index == TCP_ACK_SET:  # count retransmissions: the same segment again
        raw_win = pkt.window
        if (track.last_packet & 1 == direction and track.last_seq == seq and track.last_ack == ack
                and track.last_end == end and track.last_win == raw_win):
            track.retrans += 1
        else:
            if raw_win == s_maxwin:
                raw_win = s_maxwin
            track.last_seq, track.last_ack, track.last_end, track.last_win = seq, ack, end, raw_win
            track.retrans = 0
    track.last_packet = index << 1 | direction
    if direction:
        track.r_end, track.r_maxwin, track.r_maxack, track.r_flags = s_end, s_maxwin, s_maxack, s_flags
        track.o_maxend, track.o_maxwin, track.o_flags = r_maxend, r_maxwin, r_flags
    else:
        track.o_end, track.o_maxwin, track.o_maxack, track.o_flags = s_end, s_maxwin, s_maxack, s_flags
        track.r_maxend, track.r_maxwin, track.r_flags = r_maxend, r_maxwin, r_flags
    if new_state is not old_state:
        track.state = new_state
    return None


def _switch(track: Any, pkt, direction: int, index: int, old_state: TcpState, new_state):
    """What the table cannot say (the switch after the kernel's lookup): None (valid, settled) or a
    reason, or (new state, None or the track's values changed, a list in FIELDS' order) for the
    window checks to go on with."""
    if new_state is sIV:
        return INVALID_STATE
    if new_state is sSS:
        if old_state >= sTW:
            # RFC 9293 3.10.7.4: a SYN may reopen a connection in TIME-WAIT; the kernel also
            # reopens when the same end reset it (an aborted connection).
            if ((track.o_flags | track.r_flags) & CLOSE_INIT
                    or track.last_packet == TCP_RST_SET << 1 | direction
                    or (old_state is sCL and track.r_maxwin == 0)):
                return REOPEN
            new_state = sIG  # fall through to ignore (the kernel does)
    elif new_state is sS2:
        values = list(_get(track))
        values[_LAST_FLAGS] |= SIMULTANEOUS_OPEN
        return new_state, values
    elif new_state is sSR:
        if direction == REPLY and index == TCP_ACK_SET and track.last_flags & SIMULTANEOUS_OPEN:
            new_state = sES  # the table cannot tell a simultaneous open's last ACK
    elif new_state is sTW:
        if (old_state is sLA and index == TCP_ACK_SET and track.last_packet == TCP_SYN_SET << 1 | direction ^ 1
                and track.last_flags & EXP_CHALLENGE_ACK):
            # RFC 5961 section 4: the ACK answers the SYN we let through, not the last FIN.
            track.last_flags &= ~EXP_CHALLENGE_ACK
            return None
    elif new_state is sCL and index == TCP_RST_SET:
        values = list(_get(track))
        new_state = _check_rst(values, pkt, direction, old_state)
        if new_state is OUT_OF_WINDOW:
            return OUT_OF_WINDOW
        _commit(track, values, direction, index, new_state)
        return None
    if new_state is sIG:
        values = list(_get(track))
        if not _in_sync_again(values, pkt, direction, index):
            _ignore(values, pkt, direction, index, old_state)
            _store(track, values, old_state)
            return None
        return sSR, values  # restarted from SYN_SENT by the SYN/ACK
    return new_state, None  # on to the window checks


def _commit(track: Any, values, direction: int, index: int, new_state: Any) -> None:
    """Store `values` with this packet as the last one, and the new state."""
    values = list(values)
    values[_LAST_PACKET] = index << 1 | direction
    if new_state is sFW and track.state is not sFW:
        values[_PFLAGS[direction]] |= CLOSE_INIT  # this end sent the first FIN
    _store(track, values, new_state)


def _store(track: Any, values: list, state: TcpState) -> None:
    _put(track, values)
    track.state = state


def _ignore(values: list, pkt, direction: int, index: int, old_state: TcpState) -> None:
    """An sIG packet passes unchanged; remember it in case the other end answers it (the kernel's
    a) SYN in ORIGINAL, b) SYN/ACK in REPLY, c) ACK in REPLY after the SYN)."""
    values[_LAST_PACKET] = index << 1 | direction
    values[_LAST_SEQ] = pkt.seq
    values[_LAST_END] = _seq_end(pkt)
    values[_LAST_WIN] = pkt.window
    if index == TCP_SYN_SET:
        flags, scale = _offered(pkt)
        if old_state is sLA:
            flags |= EXP_CHALLENGE_ACK  # RFC 5961 section 4: the SYN may draw a challenge ACK
        values[_LAST_FLAGS] = flags | scale << WSCALE_SHIFT
    elif old_state is sSS and index == TCP_ACK_SET and direction == REPLY:
        values[_LAST_ACK] = pkt.ack  # a challenge ACK to the SYN: the client may reset with seq = ack


def _in_sync_again(values: list, pkt, direction: int, index: int) -> bool:
    """A SYN/ACK acknowledging a SYN we ignored: both ends are in sync, we are not. Take the SYN's
    annotated values and restart from SYN_SENT (the kernel's case b)."""
    last_dir = direction ^ 1
    if not (index == TCP_SYNACK_SET and values[_LAST_PACKET] == TCP_SYN_SET << 1 | last_dir
            and pkt.ack == values[_LAST_END]):
        return False
    values[_END[last_dir]] = values[_MAXEND[last_dir]] = values[_LAST_END]
    values[_MAXWIN[last_dir]] = values[_LAST_WIN] or 1
    values[_SCALE[last_dir]] = values[_LAST_FLAGS] >> WSCALE_SHIFT
    values[_LAST_FLAGS] &= ~EXP_CHALLENGE_ACK
    values[_PFLAGS[last_dir]] = values[_LAST_FLAGS] & (WINDOW_SCALE | SACK_PERM)
    values[_MAXACK[last_dir]] = 0
    for at in _PEER:  # the answering end starts over
        values[at[direction]] = 0
    return True


def _check_rst(values: list, pkt, direction: int, old_state: TcpState):
    """RFC 5961 section 3.2: CLOSE for an exact RST, the old state for one in the window (the
    receiver sends a challenge ACK), OUT_OF_WINDOW otherwise."""
    seq = pkt.seq
    has_ack = pkt.flags & TH_ACK
    last_index, last_dir = values[_LAST_PACKET] >> 1, values[_LAST_PACKET] & 1
    if has_ack and last_index == TCP_SYN_SET and last_dir != direction and pkt.ack == values[_LAST_END]:
        return sCL  # the answer to a SYN we let through (sIG): the receiver has no such connection
    if (old_state is sSS and direction == ORIGINAL and last_index == TCP_ACK_SET
            and last_dir == REPLY and seq == values[_LAST_ACK]):
        return sCL  # RFC 9293 3.10.7.3: the client resets the half-open peer's (challenge) ACK
    sender, receiver = direction, direction ^ 1
    if values[_MAXWIN[sender]] == 0:
        # Nothing seen from the sender: the answer to a SYN. RFC 9293 3.10.7.3 (SYN-SENT): the RST
        # is acceptable if it acknowledges the SYN.
        return sCL if has_ack and pkt.ack == values[_END[receiver]] else OUT_OF_WINDOW
    # The receiver's RCV.NXT is what it last acknowledged, or at most all the sender sent.
    s_end, r_maxack = values[_END[sender]], values[_MAXACK[receiver]]
    maxack_set = values[_PFLAGS[receiver]] & MAXACK_SET
    if seq == s_end or (maxack_set and seq == r_maxack):
        return sCL
    low = r_maxack if maxack_set else (s_end - values[_MAXWIN[receiver]]) & SEQ_MASK
    if before(seq, low) or after(seq, values[_MAXEND[sender]]):
        return OUT_OF_WINDOW
    return old_state


def _first_sight(values: list, pkt, direction: int, end: int, sack: int, state: TcpState) -> bool:
    """Set up a direction seen for the first time, or restarted by a new SYN; True when the
    packet (a SYN without ACK) needs no further check."""
    sender, receiver = direction, direction ^ 1
    flags = pkt.flags
    if values[_MAXWIN[sender]] == 0:
        if flags & TH_SYN:  # the SYN/ACK, or the reply SYN of a simultaneous open
            _init_sender(values, sender, receiver, pkt, end)
            return not flags & TH_ACK
        # Mid-stream: the history is lost, use what the packet shows.
        maxwin = (pkt.window << values[_SCALE[sender]]) or 1
        values[_END[sender]], values[_MAXWIN[sender]] = end, maxwin
        values[_MAXEND[sender]] = (end + maxwin) & SEQ_MASK
        if values[_MAXWIN[receiver]] == 0:
            values[_END[receiver]] = values[_MAXEND[receiver]] = sack  # so that III and IV pass until then
        elif sack == (values[_END[receiver]] + 1) & SEQ_MASK:
            values[_END[receiver]] = sack  # likely the answer to a keepalive
    elif after(end, values[_END[sender]]) and (state is sSS or state is sSR):
        # RFC 9293 3.4.1 ("if a TCP is reinitialized... use sequence numbers larger than those
        # recently used"): a new SYN (or SYN/ACK) with a higher ISN restarts this direction.
        _init_sender(values, sender, receiver, pkt, end)
        return direction == REPLY and not flags & TH_ACK
    return False


def _init_sender(values: list, sender: int, receiver: int, pkt, end: int) -> None:
    """The first SYN/ACK (or reply SYN) of a direction: its sequence space and options."""
    values[_END[sender]] = values[_MAXEND[sender]] = end
    window = pkt.window or 1
    other = values[_MAXWIN[receiver]]
    values[_MAXWIN[sender]] = other if window == other else window  # one int object for both
    values[_PFLAGS[sender]], values[_SCALE[sender]] = _offered(pkt)  # the kernel's tcp_options
    if not values[_PFLAGS[sender]] & values[_PFLAGS[receiver]] & WINDOW_SCALE:
        values[_SCALE[sender]] = values[_SCALE[receiver]] = 0  # RFC 7323 1.3: both ends must offer it


def _offered(pkt) -> tuple[int, int]:
    """(flags, scale) a SYN offers: window scale (at most 14, RFC 7323 2.3) and SACK-permitted."""
    flags = scale = 0
    if pkt.wscale is not None:
        flags, scale = WINDOW_SCALE, min(pkt.wscale, 14)
    if pkt.sack_perm:
        flags |= SACK_PERM
    return flags, scale


def _seq_end(pkt) -> int:
    flags = pkt.flags
    return (pkt.seq + pkt.payload_len + ((flags >> 1) & 1) + (flags & 1)) & SEQ_MASK


def timeout_key(track: Any, timeouts: Mapping[str, float] | None = None) -> str:
    """The timeout that applies after the last accepted packet (the end of the kernel's tcp_packet).

    The state's key, but `tcp_unacknowledged` when retransmissions reached MAX_RETRANS, data is
    unacknowledged, the last window was zero or a picked-up flow has had no reply, if that is
    shorter (by `timeouts`, default DEFAULT_TIMEOUTS); `tcp_close` after a RST.
    """
    state = track.state
    key = TIMEOUT_KEYS[state]
    retransmitting = track.retrans >= MAX_RETRANS
    if not retransmitting:
        if track.last_packet >> 1 == TCP_RST_SET:
            return "tcp_close"
        if not ((track.o_flags | track.r_flags) & DATA_UNACKNOWLEDGED or track.last_win == 0
                or (state is sES and track.r_maxwin == 0 and track.liberal)):
            return key
    table = DEFAULT_TIMEOUTS if timeouts is None else timeouts
    if table[key] > table[UNACKNOWLEDGED]:
        return UNACKNOWLEDGED
    return "tcp_close" if track.last_packet >> 1 == TCP_RST_SET else key


def next_expected_seq(track: Any, original: bool) -> int:
    """The RCV.NXT of the end that receives packets going in the `original` (True) or reply
    direction: the end of all the data the other end sent. A RST with this seq, sent in that
    direction, is exact (RFC 5961 section 3.2)."""
    return track.o_end if original else track.r_end


TRACK_FORMAT = 1  # to_dict's "version"; a dict without one (written before it existed) is format 1
_PEER_FIELDS = TcpPeer._fields
_TRACK_FIELDS = ("last_seq", "last_ack", "last_end", "last_win",
                 "last_flags", "retrans", "liberal")  # fmt: skip
# The largest value from_dict accepts per field (all are >= 0): the rest are sequence numbers or
# windows (32 bits). Data from a snapshot or an HA peer may be damaged or hostile.
_MAXIMA = {"last_dir": REPLY, "last_index": TCP_NONE_SET, "last_win": 0xFFFF, "last_wscale": 14, "td_scale": 14,
           "flags": 0xFF, "last_flags": 0xFF, "liberal": 1}  # fmt: skip


def to_dict(track: Any) -> dict:
    """Plain data for snapshots and HA sync; `from_dict` reverses it."""
    values = _get(track)
    data = {"version": TRACK_FORMAT, "state": track.state.name}
    data.update((name, values[_AT[name]]) for name in _TRACK_FIELDS)
    data["liberal"] = bool(data["liberal"])
    data["last_wscale"], data["last_flags"] = data["last_flags"] >> WSCALE_SHIFT, data["last_flags"] & 0xFF
    data["last_dir"], data["last_index"] = track.last_dir, track.last_index
    for side, direction in (("original", ORIGINAL), ("reply", REPLY)):
        data[side] = {name: values[at[direction]] for name, at in zip(_PEER_FIELDS, _PEER, strict=True)}
    return data


def from_dict(data: Mapping) -> TcpTrack:
    """A track from `to_dict`'s output; ValueError (or KeyError, TypeError) for data that is not one."""
    version = data.get("version", 1)
    if version != TRACK_FORMAT:
        raise ValueError(f"TCP track format {version!r} is not {TRACK_FORMAT}")
    values = list(_NEW_VALUES)
    named: list[tuple[str, Any, Any]] = [(name, _AT[name], data[name]) for name in _TRACK_FIELDS]
    named += [("last_wscale", None, data["last_wscale"]), ("last_dir", None, data["last_dir"]),
              ("last_index", None, data["last_index"])]
    for side, direction in (("original", ORIGINAL), ("reply", REPLY)):
        named += [(name, at[direction], data[side][name]) for name, at in zip(_PEER_FIELDS, _PEER, strict=True)]
    for name, index, raw in named:
        value = int(raw)
        if not 0 <= value <= _MAXIMA.get(name, SEQ_MASK):
            raise ValueError(f"TCP track {name} {value} out of range")
        if name == "last_wscale":
            values[_LAST_FLAGS] |= value << WSCALE_SHIFT
        elif name == "last_dir":
            values[_LAST_PACKET] = values[_LAST_PACKET] & ~1 | value
        elif name == "last_index":
            values[_LAST_PACKET] = values[_LAST_PACKET] & 1 | value << 1
        else:
            values[index] = value
    values[_LIBERAL] = bool(values[_LIBERAL])
    track = TcpTrack()
    _store(track, values, TcpState[data["state"]])
    return track
