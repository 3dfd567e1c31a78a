"""Packets whose verdict waits for the cluster: bounded, in arrival order, found by flow key.

How it works. A `Held` record keeps the queue's packet object (its verdict not yet given), the
packet's bytes and interfaces (to judge it again), its flow key, when it was held and its deadline.
`HoldQueue` keeps them in one FIFO (all holds last the same time, so the FIFO is also deadline
order) and indexes them by flow key (a peer's announcement releases the packets of its session) and
by ticket (`--sync-defer`: Redis accepted the announcement of the session the packet opened).
Taking records out of the middle marks them done; the FIFO skips done records lazily. Bounded by
count and bytes: `add` refuses beyond either, and the caller gives that packet its verdict at once.

`Alarm` is a thread that rings (the service's wake-up socket) at the earliest deadline set, so
that holds end on time whatever the daemon's own tick.

`Waits` keeps the waits of released packets for `fw stats`: the last SAMPLES of them (median) and
the worst ever.
"""

from __future__ import annotations

import threading
import time
from collections import deque

SAMPLES = 4096


class Held:
    __slots__ = ("packet", "data", "iif", "oif", "key", "since", "deadline", "ticket", "verdict", "reason", "done")

    def __init__(self, packet, data: bytes, iif, oif, key, since: float, deadline: float,
                 ticket: int | None = None, verdict: str | None = None, reason: str | None = None):
        self.packet = packet
        self.data = data
        self.iif = iif
        self.oif = oif
        self.key = key  # flow key of the session it waits for (None: a deferred first packet)
        self.since = since
        self.deadline = deadline
        self.ticket = ticket  # --sync-defer: the announcement it waits for
        self.verdict = verdict  # --sync-defer: the verdict already given by the engine
        self.reason = reason  # --sync-defer: and its reason (counted when the verdict goes out)
        self.done = False


class HoldQueue:
    def __init__(self, max_packets: int = 1024, max_bytes: int = 4 << 20):
        self.max_packets = max_packets
        self.max_bytes = max_bytes
        self.count = 0
        self.bytes = 0
        self._fifo: deque[Held] = deque()
        self._by_key: dict[tuple, list[Held]] = {}
        self._by_ticket: dict[int, Held] = {}

    def __len__(self) -> int:
        return self.count

    def add(self, held: Held) -> bool:
        """Keep `held`; False (not kept) when the queue is at its count or byte limit."""
        if self.count >= self.max_packets or self.bytes + len(held.data) > self.max_bytes:
            return False
        self._fifo.append(held)
        self.count += 1
        self.bytes += len(held.data)
        if held.ticket is not None:
            self._by_ticket[held.ticket] = held
        else:
            self._by_key.setdefault(held.key, []).append(held)
        return True

    def next_deadline(self) -> float | None:
        fifo = self._fifo
        while fifo and fifo[0].done:
            fifo.popleft()
        return fifo[0].deadline if fifo else None

    def due(self, now: float) -> list[Held]:
        """Take out every record whose deadline has come, oldest first."""
        taken = []
        fifo = self._fifo
        while fifo and (fifo[0].done or fifo[0].deadline <= now):
            held = fifo.popleft()
            if not held.done:
                self._forget(held)
                taken.append(held)
        return taken

    def for_key(self, key) -> list[Held]:
        """Take out the packets waiting for the session `key`, oldest first."""
        waiting = self._by_key.pop(key, None)
        if not waiting:
            return []
        for held in waiting:
            self._done(held)
        return waiting

    def for_hosts(self, low: bytes, high: bytes) -> list[Held]:
        """Take out the packets waiting for any session between these two addresses (a peer's
        FTP expectation arrived: a data connection's first packet may be waiting for it)."""
        taken = []
        for key in [key for key in self._by_key if key[1] == low and key[2] == high]:
            taken.extend(self.for_key(key))
        return taken

    def for_ticket(self, ticket: int) -> Held | None:
        held = self._by_ticket.pop(ticket, None)
        if held is not None:
            self._done(held)
        return held

    def put_back(self, held: Held) -> None:
        """Hold again a packet that `for_key` took out (judged again, still waiting for its session):
        it is still in the FIFO, so it keeps its place and its deadline."""
        held.done = False
        self.count += 1
        self.bytes += len(held.data)
        self._by_key.setdefault(held.key, []).append(held)

    def take_all(self) -> list[Held]:
        everything = [held for held in self._fifo if not held.done]
        for held in everything:
            self._done(held)
        self._fifo.clear()
        self._by_key.clear()
        self._by_ticket.clear()
        return everything

    def _done(self, held: Held) -> None:
        held.done = True
        self.count -= 1
        self.bytes -= len(held.data)

    def _forget(self, held: Held) -> None:
        self._done(held)
        if held.ticket is not None:
            self._by_ticket.pop(held.ticket, None)
            return
        waiting = self._by_key.get(held.key)
        if waiting is not None:
            try:
                waiting.remove(held)
            except ValueError:
                pass
            if not waiting:
                del self._by_key[held.key]


class Waits:
    """How long released packets waited: median of the recent ones, worst of all, how many."""

    def __init__(self):
        self.recent: deque[float] = deque(maxlen=SAMPLES)
        self.worst = 0.0
        self.count = 0

    def add(self, seconds: float) -> None:
        self.recent.append(seconds)
        self.count += 1
        if seconds > self.worst:
            self.worst = seconds

    def as_dict(self) -> dict:
        ordered = sorted(self.recent)
        median = ordered[len(ordered) // 2] if ordered else 0.0
        return {"count": self.count, "median_ms": round(median * 1000, 3), "worst_ms": round(self.worst * 1000, 3)}


class Alarm:
    """A thread that calls `ring()` at the earliest time it was set to (monotonic)."""

    def __init__(self, ring):
        self.ring = ring
        self.when: float | None = None
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="fw-sync-alarm", daemon=True)
        self._thread.start()

    def set(self, when: float) -> None:
        if self.when is not None and self.when <= when:
            return
        with self._cond:
            self.when = when
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(2)

    def _run(self) -> None:
        with self._cond:
            while not self._stopping:
                if self.when is None:
                    self._cond.wait()
                    continue
                delay = self.when - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                self.when = None
                self.ring()
