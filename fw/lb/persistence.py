"""Persistence: a client (source address) sticks to its real server for N seconds.

How it works: an `Affinity` maps a source address to (server name, deadline) in an OrderedDict.
`remember` (a session opened) sets the deadline to now + seconds and moves the entry to the end, so
the dict stays ordered by deadline and `expire(now)` pops from the front only what is due.
`lookup(src, now)` answers the remembered server's name while its deadline has not passed (as IPVS's
persistence templates, counted from the client's last new session). Time is an input: nothing here
reads a clock. Whether the server may still take the client (up, not drained) is the balancer's
question, not this table's.
"""

from __future__ import annotations

from collections import OrderedDict


class Affinity:
    """Source address -> real server name, each for `seconds` after the client's last new session."""

    __slots__ = ("seconds", "entries")

    def __init__(self, seconds: float):
        if seconds <= 0:
            raise ValueError("persistence needs a number of seconds > 0")
        self.seconds = seconds
        self.entries: OrderedDict[bytes, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, src: bytes, now: float) -> str | None:
        entry = self.entries.get(src)
        if entry is None or entry[1] <= now:
            return None
        return entry[0]

    def remember(self, src: bytes, server: str, now: float) -> None:
        self.entries[src] = (server, now + self.seconds)
        self.entries.move_to_end(src)  # the dict stays in deadline order

    def forget_server(self, server: str) -> int:
        """Drop every entry naming `server` (removed from the configuration); how many."""
        gone = [src for src, (name, _) in self.entries.items() if name == server]
        for src in gone:
            del self.entries[src]
        return len(gone)

    def expire(self, now: float) -> int:
        """Drop the entries whose deadline has passed (the driver calls it about once a second)."""
        entries = self.entries
        count = 0
        while entries:
            src, (_, deadline) = next(iter(entries.items()))
            if deadline > now:
                break
            entries.popitem(last=False)
            count += 1
        return count
