"""The event writer: events into the store in batches, from a thread, never blocking the packet path.

How it works: `submit(event)` is called on the daemon's packet thread and only appends to a
bounded queue (`put_nowait`); when the queue is full the event is counted in `lost` and dropped.
Drop events are not queued one by one: they are aggregated by (reason, source, destination,
protocol, destination port) per window of `drop_window` seconds, so a flood becomes one row per
key and window carrying a count. Past `max_drop_keys` keys in a window (a flood from random
sources), further drops are aggregated by reason and protocol alone. Per-rule counters come in as
deltas (`submit_counters`, or every `counters_every` seconds from the daemon's `RuleCounters` on
`tick`) and are added to the stored totals in the same transactions.

The writer thread takes up to `batch` items at a time, converts engine times to wall-clock times
(`clock_offset()`, wall minus engine clock, sampled per batch), and writes them in one
transaction. A database failure never reaches the caller: the batch is counted in `lost`, the
error is kept in `last_error`, and the thread waits (backing off up to `RETRY_MAX` seconds) before
it tries again, while new events keep queueing (and are counted as lost when the queue is full).
Once an hour events older than `keep_days` are deleted. `close()` writes what is queued and
stops the thread.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable

from fw.store.database import Store
from fw.store.records import add_rule_counts, eve_record, event_row, prune_events, wall_timestamp

log = logging.getLogger("fw.store")

RETRY_MIN, RETRY_MAX = 0.5, 30.0
PRUNE_EVERY = 3600.0
OVERFLOW = "*"  # the address in a drop aggregate of many sources


def monotonic_offset() -> float:
    """Wall-clock time minus the monotonic clock (the daemon's engine clock)."""
    return time.time() - time.monotonic()


class DropAggregate:
    """Drops of one key in one window: a count, the first and last engine times, the first event."""

    __slots__ = ("count", "first", "last", "sample")

    def __init__(self, event: dict, when):
        self.count = 1
        self.first = self.last = when
        self.sample = event


class DropWindow:
    """Drop events aggregated per key. Thread-safe: `add` on the packet thread, `take` on the writer's."""

    def __init__(self, max_keys: int):
        self.max_keys = max_keys
        self.lock = threading.Lock()
        self.aggregates: dict[tuple, DropAggregate] = {}

    def add(self, event: dict) -> None:
        fw = event.get("fw") or {}
        key = (fw.get("reason"), event.get("src_ip"), event.get("dest_ip"), event.get("proto"),
               event.get("dest_port"))
        when = event.get("time")
        with self.lock:
            aggregate = self.aggregates.get(key)
            if aggregate is None and len(self.aggregates) >= self.max_keys:
                key = (key[0], OVERFLOW, OVERFLOW, key[3], None)
                aggregate = self.aggregates.get(key)
                if aggregate is None:
                    event = {k: v for k, v in event.items() if k not in ("src_ip", "dest_ip", "src_port",
                                                                         "dest_port", "drop")}
                    event.update(src_ip=OVERFLOW, dest_ip=OVERFLOW)
            if aggregate is None:
                self.aggregates[key] = DropAggregate(event, when)
            else:
                aggregate.count += 1
                aggregate.last = when

    def take(self) -> list[DropAggregate]:
        with self.lock:
            taken, self.aggregates = self.aggregates, {}
        return list(taken.values())


class EventWriter:
    """Writes events and rule counters to `store` from its own thread. `start()`, `submit()`, `close()`."""

    def __init__(self, store: Store | str | None, *, queue_size: int = 10_000, batch: int = 500,
                 flush_interval: float = 1.0, drop_window: float = 10.0, max_drop_keys: int = 1000,
                 keep_days: float | None = 30.0, clock_offset: Callable[[], float] = monotonic_offset,
                 rule_counters=None, counters_every: float = 10.0):
        self.store = store if isinstance(store, Store) else Store(store)
        self.queue: queue.Queue = queue.Queue(queue_size)
        self.batch = batch
        self.flush_interval = flush_interval
        self.drop_window = drop_window
        self.drops = DropWindow(max_drop_keys)
        self.keep_days = keep_days
        self.clock_offset = clock_offset
        self.rule_counters = rule_counters  # fw.metrics.RuleCounters: its deltas go in every few seconds
        self.counters_every = counters_every
        self._counters_due: float | None = None
        self.counters: Counter = Counter()  # the writer thread's: written, rows, lost, batches, failures
        self.submitted = 0  # the packet thread's own counters (no two threads write one counter)
        self.queue_full = 0
        self.counters_full = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._window_started = time.monotonic()
        self._next_prune = time.monotonic()

    # -- the packet thread's side -----------------------------------------------------------------

    def submit(self, event: dict) -> None:
        """Queue one event (an engine event or a record from fw.store.records); never blocks."""
        self.submitted += 1
        if event.get("event_type") == "drop":
            self.drops.add(event)
            return
        try:
            self.queue.put_nowait(event)
        except queue.Full:
            self.queue_full += 1

    def submit_counters(self, deltas: dict) -> None:
        """Queue per-rule counter deltas {rule: (packets, bytes, sessions)}; never blocks."""
        if deltas:
            try:
                self.queue.put_nowait(_Counts(deltas))
            except queue.Full:
                self.counters_full += 1

    @property
    def lost(self) -> int:
        """Events that never reached the database: queue full, database failures, unusable."""
        return self.queue_full + self.counters["lost"]

    def stats(self) -> dict:
        counters = dict(self.counters)
        return {"submitted": self.submitted, "written": counters.get("written", 0), "lost": self.lost,
                "queued": self.queue.qsize(), "batches": counters.get("batches", 0),
                "failures": counters.get("failures", 0),
                "lost_counters": self.counters_full + counters.get("lost_counters", 0),
                "pruned": counters.get("pruned", 0), "last_error": self.last_error}

    # -- the daemon's service interface -----------------------------------------------------------

    def start(self) -> EventWriter:
        self._thread = threading.Thread(target=self._run, name="fw-event-writer", daemon=True)
        self._thread.start()
        return self

    def tick(self, now: float) -> None:
        """On the daemon's loop (the thread that counts packets): queue the rule counters' deltas
        every `counters_every` seconds. Events need no tick: the thread keeps its own time."""
        if self.rule_counters is None:
            return
        if self._counters_due is None:
            self._counters_due = now + self.counters_every
        elif now >= self._counters_due:
            self._counters_due = now + self.counters_every
            self.submit_counters(self.rule_counters.deltas())

    def close(self, timeout: float = 10.0) -> None:
        """Queue the last rule counts, write what is queued (within `timeout`), stop the thread."""
        if self.rule_counters is not None:
            self.submit_counters(self.rule_counters.deltas())
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.store.dispose()

    # -- the writer thread --------------------------------------------------------------------------

    def _run(self) -> None:
        retry = RETRY_MIN
        while not self._stop.is_set():
            items = self._take(self.flush_interval)
            if time.monotonic() - self._window_started >= self.drop_window:
                self._window_started = time.monotonic()
                items += self.drops.take()
            if items and not self.write(items):
                self._stop.wait(retry)
                retry = min(retry * 2, RETRY_MAX)
            elif items:
                retry = RETRY_MIN
            self._prune_if_due()
        self._finish()

    def _finish(self) -> None:
        """On close: write what is left; after one failure count the rest as lost."""
        while True:
            items = self._take(None) or self.drops.take()
            if not items:
                return
            if not self.write(items):
                rest = self._take(None, limit=None) + self.drops.take()
                self.counters["lost"] += sum(_weight(item) for item in rest)
                return

    def _take(self, wait: float | None, limit: int | None = -1) -> list:
        """Up to `batch` queued items (`limit` None: all), waiting `wait` seconds for the first."""
        limit = self.batch if limit == -1 else limit
        items = []
        try:
            items.append(self.queue.get(timeout=wait) if wait else self.queue.get_nowait())
        except queue.Empty:
            return items
        while limit is None or len(items) < limit:
            try:
                items.append(self.queue.get_nowait())
            except queue.Empty:
                break
        return items

    def write(self, items: list) -> bool:
        """Write one batch in one transaction; False (and everything counted lost) on failure."""
        offset = self.clock_offset()
        rows, counts, events = [], {}, 0
        for item in items:
            if isinstance(item, _Counts):
                for rule, values in item.deltas.items():
                    old = counts.get(rule, (0, 0, 0))
                    counts[rule] = tuple(a + b for a, b in zip(old, values, strict=True))
                continue
            try:
                rows.append(self._row(item, offset))
                events += _weight(item)
            except Exception as exc:  # noqa: BLE001  (a bad event is lost, not the batch)
                self.counters["lost"] += _weight(item)
                self.last_error = f"unusable event: {exc!r}"
        try:
            with self.store.session() as session:
                session.add_all(rows)
                add_rule_counts(session, counts)
        except Exception as exc:  # noqa: BLE001  (StoreError or anything else: the thread never dies)
            self.counters["lost"] += events
            self.counters["lost_counters"] += bool(counts)
            self.counters["failures"] += 1
            self._failed(str(exc))
            return False
        self.counters["written"] += events
        self.counters["rows"] += len(rows)
        self.counters["batches"] += 1
        return True

    def _row(self, item, offset: float):
        """The row of an event; values JSON cannot hold become text, as in the EVE log."""
        to_wall = offset.__add__
        if isinstance(item, DropAggregate):
            event = dict(item.sample)
            wall, record = eve_record(event, to_wall)
            if item.count > 1:
                fw = record["fw"] = dict(record.get("fw") or {})
                last = to_wall(item.last) if isinstance(item.last, int | float) else wall
                fw.update(count=item.count, first=record["timestamp"], last=wall_timestamp(last))
            return event_row(json.loads(json.dumps(record, default=str)), wall, item.count)
        wall, record = eve_record(item, to_wall)
        return event_row(json.loads(json.dumps(record, default=str)), wall)

    def _failed(self, message: str) -> None:
        if message != self.last_error:
            log.error("event store: %s (events are counted as lost until it works again)", message)
        self.last_error = message
        self.store.dispose()

    def _prune_if_due(self) -> None:
        if self.keep_days is None or time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + PRUNE_EVERY
        try:
            with self.store.session() as session:
                self.counters["pruned"] += prune_events(session, time.time() - self.keep_days * 86400)
        except Exception as exc:  # noqa: BLE001
            self._failed(str(exc))


def _weight(item) -> int:
    """How many events an item stands for."""
    if isinstance(item, DropAggregate):
        return item.count
    return 0 if isinstance(item, _Counts) else 1


class _Counts:
    __slots__ = ("deltas",)

    def __init__(self, deltas: dict):
        self.deltas = dict(deltas)
