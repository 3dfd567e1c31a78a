"""TCP sequence adjustment after an ALG changed a segment's length (Linux nf_conntrack_seqadj.c).

How it works. A rewrite that makes a segment `delta` bytes longer (or shorter) shifts every later
byte of that direction: the receiver sees sequence numbers `delta` higher than the sender sent, and
its acknowledgments (and SACK blocks) must be shifted back before the sender sees them. Per
direction a `Correction` holds (correction_pos, offset_before, offset_after): the sequence number
(as the sender sent it) of the last rewritten segment, the shift of the bytes before it, and the
shift from it on. `record` is nf_ct_seqadj_set; `shift` is nf_ct_seq_adjust with
nf_ct_sack_adjust:
- a segment whose seq is after correction_pos gets offset_after, else offset_before (so the
  rewritten segment itself, and a retransmission of it, get offset_before: the rewrite of a
  retransmission adds its own length change again, and `record` with the same seq is ignored);
- its ack is shifted back by the other direction's offset_after if `ack - offset_before` is after
  that direction's correction_pos, else by its offset_before; SACK blocks (RFC 2018) likewise;
  other options (SACK-permitted, timestamps, MSS) are left alone.
Comparisons are modulo 2**32 (RFC 9293's "after"), so the sequence space may wrap.

`shift` writes into a bytearray in place and returns the checksum difference (old sum - new sum)
so that a caller rewriting the same packet can fold it into one checksum update;
`adjust` does the whole job on bytes (complete checksum: incremental; partial: recomputed).
"""

from __future__ import annotations

from struct import Struct

from fw.nat.rewrite import recompute_l4_checksum
from fw.packet.checksum import update_sum

MASK = 0xFFFFFFFF
HALF = 0x80000000
_U32 = Struct("!I")
_U16 = Struct("!H")
_TWO_U32 = Struct("!II")
SACK = 5


def after(seq1: int, seq2: int) -> bool:
    """RFC 9293 / Linux after(): seq1 comes later than seq2 in the 32-bit sequence space."""
    return 0 < (seq1 - seq2) & MASK < HALF


class Correction:
    """One direction's adjustment: (correction_pos, offset_before, offset_after)."""

    __slots__ = ("position", "before", "after")

    def __init__(self, position: int = 0, before: int = 0, after: int = 0) -> None:
        self.position = position
        self.before = before
        self.after = after

    def seq_offset(self, seq: int) -> int:
        return self.after if after(seq, self.position) else self.before

    def ack_offset(self, ack: int) -> int:
        """The shift to take back from an ack (or SACK edge) of this direction's data."""
        return self.after if after((ack - self.before) & MASK, self.position) else self.before

    def as_tuple(self) -> tuple[int, int, int]:
        return self.position, self.before, self.after

    def __eq__(self, other) -> bool:
        return isinstance(other, Correction) and self.as_tuple() == other.as_tuple()

    def __repr__(self) -> str:
        return f"Correction(position={self.position}, before={self.before}, after={self.after})"


class SeqAdj:
    """Both directions' corrections of one session; direction 0 is the original (client's)."""

    __slots__ = ("corrections",)

    def __init__(self, corrections: tuple[Correction, Correction] | None = None) -> None:
        self.corrections = corrections or (Correction(), Correction())

    def record(self, direction: int, seq: int, delta: int) -> None:
        """A segment of `direction` starting at `seq` (as sent) was rewritten `delta` bytes longer."""
        way = self.corrections[direction]
        if way.before == way.after or after(seq, way.position):
            way.position = seq & MASK
            way.before = way.after
            way.after += delta

    @property
    def active(self) -> bool:
        """Whether any segment has been shifted yet (else `shift` has nothing to do)."""
        return any(way.before or way.after for way in self.corrections)

    def shift(self, buf: bytearray, l4: int, direction: int, sack: bool = True) -> int:
        """Shift seq, ack and SACK blocks of the TCP header at `l4`; return old_sum - new_sum.

        `sack=False` (the parser found no SACK option: `not packet.sack`) skips the option walk.
        """
        this_way, other_way = self.corrections[direction], self.corrections[1 - direction]
        seq, ack = _TWO_U32.unpack_from(buf, l4 + 4)
        new_seq = (seq + this_way.seq_offset(seq)) & MASK
        delta = seq - new_seq
        if not buf[l4 + 13] & 0x10:                   # no ACK: the ack field means nothing
            _U32.pack_into(buf, l4 + 4, new_seq)
            return delta
        new_ack = (ack - other_way.ack_offset(ack)) & MASK
        _TWO_U32.pack_into(buf, l4 + 4, new_seq, new_ack)
        delta += ack - new_ack
        return delta + _shift_sack(buf, l4, other_way) if sack else delta

    def adjust(self, data: bytes, packet, direction: int, partial: bool = False) -> bytes:
        """`data` (parsed as `packet`, TCP) with seq/ack/SACK shifted and its checksum fixed."""
        buf = bytearray(data)
        l4 = packet.l4_offset
        delta = self.shift(buf, l4, direction, bool(packet.sack))
        if partial:
            recompute_l4_checksum(buf, l4, packet.ip_len, 6, packet.family)
        elif delta:
            _U16.pack_into(buf, l4 + 16, update_sum(_U16.unpack_from(buf, l4 + 16)[0], delta))
        return bytes(buf)

    def to_tuple(self) -> tuple:
        """Plain numbers for snapshots and HA sync."""
        return tuple(way.as_tuple() for way in self.corrections)

    @classmethod
    def from_tuple(cls, values) -> SeqAdj:
        return cls((Correction(*values[0]), Correction(*values[1])))


def _shift_sack(buf: bytearray, l4: int, other_way: Correction) -> int:
    """Walk the options (as nf_ct_sack_adjust) and shift every SACK block edge; old - new sum."""
    i, end = l4 + 20, l4 + ((buf[l4 + 12] >> 4) << 2)
    delta = 0
    while i < end:
        kind = buf[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= end or buf[i + 1] < 2 or i + buf[i + 1] > end:
            break                                     # a broken option list: leave the rest
        length = buf[i + 1]
        if kind == SACK and length >= 10 and (length - 2) % 8 == 0:
            for at in range(i + 2, i + length, 4):
                edge = _U32.unpack_from(buf, at)[0]
                new = (edge - other_way.ack_offset(edge)) & MASK
                _U32.pack_into(buf, at, new)
                # a field at an odd offset (one NOP before the option) weighs 256 in the sum
                delta += (edge - new) << 8 if at & 1 else edge - new
        i += length
    return delta
