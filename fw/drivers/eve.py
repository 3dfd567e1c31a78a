"""The event log: one JSON object per line with Suricata EVE field names (`--log PATH`, `-` for stdout).

How it works: the engine's events carry its own clock under `time` (monotonic seconds in the
daemon) and in `flow.start`/`flow.end`; the writer turns them into EVE's wall-clock `timestamp`
strings (ISO 8601, local time with offset, microseconds, as Suricata writes them) by the offset
between the wall clock and the monotonic clock, sampled at each write. Lines are buffered and
flushed by the daemon once per loop turn; `reopen()` (on SIGHUP) lets logrotate move the file.
Events the daemon itself reports (errors, overflows, reloads) go through `write()` too.
"""

from __future__ import annotations

import datetime
import json
import sys
import time
from collections.abc import Callable

EVE_VERSION = 1  # our events' format version, in every record as fw.version


def wall_timestamp(wall: float) -> str:
    """EVE's timestamp: 2024-05-01T12:00:00.123456+0200."""
    moment = datetime.datetime.fromtimestamp(wall).astimezone()
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f%z")


def to_eve(event: dict, clock_to_wall: Callable[[float], float]) -> dict:
    """A copy of an engine event with its clock times as EVE timestamps."""
    record = dict(event)
    when = record.pop("time", None)
    wall = clock_to_wall(when) if when is not None else time.time()
    record = {"timestamp": wall_timestamp(wall), **record}
    flow = record.get("flow")
    if isinstance(flow, dict):
        flow = record["flow"] = dict(flow)
        for key in ("start", "end"):
            if isinstance(flow.get(key), int | float):
                flow[key] = wall_timestamp(clock_to_wall(flow[key]))
    fw = record.get("fw")
    record["fw"] = {**fw, "version": EVE_VERSION} if isinstance(fw, dict) else {"version": EVE_VERSION}
    return record


def monotonic_to_wall(when: float) -> float:
    return time.time() - (time.monotonic() - when)


class EveLog:
    """JSON lines to a file (appended) or to stdout."""

    def __init__(self, path: str, clock_to_wall: Callable[[float], float] = monotonic_to_wall):
        self.path = path
        self.clock_to_wall = clock_to_wall
        self.written = 0
        self.failed = 0
        self._out = None
        self.reopen()

    def reopen(self) -> None:
        if self.path == "-":
            self._out = sys.stdout
            return
        old, self._out = self._out, open(self.path, "a", buffering=1 << 16, encoding="utf-8")  # noqa: SIM115
        if old is not None:
            old.close()

    def write(self, event: dict) -> None:
        try:
            self._out.write(json.dumps(to_eve(event, self.clock_to_wall), default=str) + "\n")
            self.written += 1
        except (OSError, ValueError, TypeError):
            self.failed += 1

    def flush(self) -> None:
        try:
            self._out.flush()
        except (OSError, ValueError):
            self.failed += 1

    def close(self) -> None:
        self.flush()
        if self._out is not None and self._out is not sys.stdout:
            self._out.close()
        self._out = None
