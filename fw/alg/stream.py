"""One direction of a TCP control channel, cut into lines: in-order bytes only, each byte once.

How it works. `next_seq` is the sequence number of the next byte we expect (set from the first
segment seen). A segment is compared with it in 32-bit sequence space:

- it starts at or before `next_seq`: the bytes before `next_seq` were seen already (a
  retransmission, or a partial overlap) and are skipped; the new bytes are cut into lines.
- it starts after `next_seq` (payload after a hole): it is NOT parsed. What the receiver finally
  assembles at those positions is not known until the hole is filled (overlapping retransmissions
  may differ, and endpoints resolve overlaps differently: the classic insertion/evasion problem),
  so we never act on it, nor on any later copy of those positions. Its range is remembered as
  `skipped` (later out-of-order segments widen it). Waiting for the sender to resend it would leave
  us deaf for good: a receiver that holds it says so with SACK, and the sender then resends only
  the hole. So when in-order data reaches the skipped range we parse up to it, jump to its end,
  yield LOST (the caller resets what depends on line continuity) and discard up to the next line
  feed, unless the skipped data ended with one (as nf_conntrack_ftp resyncs on a line end).
  An upstream loss or reordering costs the lines of the out-of-order segments, never the stream.

Lines end with LF; a CR before it is dropped (bare LF is tolerated; a bare CR is an ordinary byte,
as servers treat it, so "550 x\\r227 ..." is not a 227 line). A line longer than MAX_LINE is
yielded once, cut, with truncated=True (the caller may use its first words, never its arguments),
and the rest of it is discarded up to the next LF: resuming mid-line would let text that a peer
echoes pass for a line start.
"""

from __future__ import annotations

SEQ_MASK = 0xFFFFFFFF
MAX_LINE = 1024  # bytes of a line without its LF (CR included)
LOST = None  # yielded where bytes of the stream were jumped over


def seq_diff(a: int, b: int) -> int:
    """a - b in 32-bit sequence space (RFC 9293 3.4), as a signed int."""
    d = (a - b) & SEQ_MASK
    return d - 0x100000000 if d & 0x80000000 else d


class LineStream:
    """Per-direction state: next expected seq, the partial line, a skipped range, counters."""

    __slots__ = ("next_seq", "buf", "discarding", "skipped", "retransmitted", "out_of_order",
                 "overlong")  # fmt: skip

    def __init__(self) -> None:
        self.next_seq: int | None = None
        self.buf = bytearray()  # the start of a line whose LF has not come yet
        self.discarding = False  # dropping bytes up to the next LF
        self.skipped: tuple[int, int, bool] | None = None  # (start, end, ends_mid_line) past a hole
        self.retransmitted = 0  # segments with nothing new
        self.out_of_order = 0  # segments after a hole, not parsed
        self.overlong = 0  # lines cut at MAX_LINE

    def feed(self, seq: int, payload: bytes, out: list) -> None:
        """Append to `out` the lines completed by this segment: (line, truncated) tuples or LOST."""
        size = len(payload)
        if not size:
            return
        if self.next_seq is None:
            self.next_seq = seq
        ahead = seq_diff(seq, self.next_seq)
        if ahead > 0:
            self._skip(seq, (seq + size) & SEQ_MASK, payload[-1] != 0x0A)
            return
        if -ahead >= size:
            self.retransmitted += 1
            return
        data = payload[-ahead:] if ahead else payload
        if self.skipped is not None:
            start, end, mid_line = self.skipped
            room = seq_diff(start, self.next_seq)
            if len(data) >= room:  # the hole is filled: parse up to the skipped range, jump over it
                self._split(data[:room], out)
                out.append(LOST)
                self.buf.clear()
                self.discarding = mid_line
                self.skipped = None
                past = seq_diff((self.next_seq + len(data)) & SEQ_MASK, end)
                self.next_seq = end
                if past > 0:  # this segment also carries bytes beyond the skipped range
                    self._split(data[len(data) - past :], out)
                    self.next_seq = (end + past) & SEQ_MASK
                return
        self._split(data, out)
        self.next_seq = (self.next_seq + len(data)) & SEQ_MASK

    def _skip(self, start: int, end: int, mid_line: bool) -> None:
        self.out_of_order += 1
        if self.skipped is not None:  # merge with what was skipped before (and any hole between)
            old_start, old_end, old_mid = self.skipped
            if seq_diff(old_start, start) < 0:
                start = old_start
            if seq_diff(old_end, end) > 0:
                end, mid_line = old_end, old_mid
        self.skipped = (start, end, mid_line)

    def _split(self, data: bytes, out: list) -> None:
        start, size = 0, len(data)
        while start < size:
            newline = data.find(b"\n", start)
            if newline < 0:
                if not self.discarding:
                    self.buf += data[start:]
                    if len(self.buf) > MAX_LINE:
                        self.overlong += 1
                        out.append((bytes(self.buf[:MAX_LINE]), True))
                        self.buf.clear()
                        self.discarding = True
                return
            if self.discarding:
                self.discarding = False
            else:
                if self.buf:
                    self.buf += data[start:newline]
                    line = bytes(self.buf)
                    self.buf.clear()
                else:
                    line = data[start:newline]
                if len(line) > MAX_LINE:
                    self.overlong += 1
                    out.append((line[:MAX_LINE], True))
                else:
                    out.append((line[:-1] if line.endswith(b"\r") else line, False))
            start = newline + 1

    def to_dict(self) -> dict:
        return {
            "next_seq": self.next_seq, "buf": self.buf.hex(), "discarding": self.discarding,
            "skipped": list(self.skipped) if self.skipped is not None else None,
            "retransmitted": self.retransmitted, "out_of_order": self.out_of_order,
            "overlong": self.overlong,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> LineStream:
        stream = cls()
        stream.next_seq = None if d["next_seq"] is None else int(d["next_seq"]) & SEQ_MASK
        stream.buf = bytearray.fromhex(d["buf"])[: MAX_LINE + 1]
        stream.discarding = bool(d["discarding"])
        skipped = d["skipped"]
        if skipped is not None:
            stream.skipped = (int(skipped[0]) & SEQ_MASK, int(skipped[1]) & SEQ_MASK, bool(skipped[2]))
        stream.retransmitted = int(d["retransmitted"])
        stream.out_of_order = int(d["out_of_order"])
        stream.overlong = int(d["overlong"])
        return stream
