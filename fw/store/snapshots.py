"""Session snapshots: the daemon's session table on disk, so established connections survive a restart.

How it works: the engine turns its sessions into versioned plain data with wall-clock times
(`Engine.snapshot(clock_offset)`, fw.conntrack.serial). `SnapshotStore` keeps that in one file,
`/var/lib/fw/sessions-<netns inode>.jsonl` by default (one per network namespace): a header line
(`format`, `version`, `saved`, the counts) and one JSON line per session and per expectation. It
is written to a temporary file, fsynced and renamed over the old one, so a crash leaves either
the old snapshot or the new one, never half of one; a count that does not match the header (a
damaged disk) makes the file unusable rather than half-restored.

`SnapshotService` is what the daemon runs: `restore()` once before packets flow (a file that
cannot be used is set aside as `*.bad`, logged, and the daemon starts empty), `tick(now)` every
second, `close()` at shutdown (a full snapshot, after the queue is drained). Periodic snapshots must
not stall the packet loop, and turning a session into data costs about 10 us (2.6 s for 262144
sessions), so each tick turns at most `budget` sessions into data and a background thread encodes
and writes them once all are done. Sessions that end while such a snapshot is being taken may
still be in it; `Engine.restore` skips those that have expired by the time it runs.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from fw.store.database import netns_inode, state_dir

log = logging.getLogger("fw.store")

FORMAT = "fw-sessions"  # as Engine.snapshot names it


class SnapshotError(Exception):
    """A snapshot file that cannot be used (unreadable, not ours, damaged)."""


def default_snapshot_path(queue: int | None = None) -> Path:
    """`/var/lib/fw/sessions-<netns inode>.jsonl`; a queue worker (fw.workers) has its own,
    `sessions-<netns inode>-q<queue>.jsonl` (the kernel sends a flow to the same queue again as long
    as the queue range stays the same)."""
    suffix = "" if queue is None else f"-q{queue}"
    return state_dir() / f"sessions-{netns_inode()}{suffix}.jsonl"


def monotonic_offset() -> float:
    """Wall-clock time minus the monotonic clock (the daemon's engine clock)."""
    return time.time() - time.monotonic()


class SnapshotStore:
    """One snapshot file: `save(engine.snapshot(offset))`, `load()` -> that dict or None."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else default_snapshot_path()

    def save(self, data: dict) -> None:
        self.write(data["version"], data.get("sessions") or (), data.get("expectations") or ())

    def write(self, version, sessions: Iterable[dict], expectations: Iterable[dict]) -> None:
        """Write a snapshot atomically (OSError if it cannot be written)."""
        sessions, expectations = list(sessions), list(expectations)
        header = {"format": FORMAT, "version": version, "saved": time.time(),
                  "sessions": len(sessions), "expectations": len(expectations)}
        if self.path.parent == state_dir():
            self.path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as out:
                out.write(json.dumps(header) + "\n")
                for session in sessions:
                    out.write(json.dumps({"session": session}) + "\n")
                for expectation in expectations:
                    out.write(json.dumps({"expectation": expectation}) + "\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise

    def load(self) -> dict | None:
        """The snapshot as Engine.restore takes it; None when there is none; SnapshotError if bad."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise SnapshotError(f"{self.path}: cannot read: {exc}") from None
        try:
            header = json.loads(lines[0]) if lines else None
            records = [json.loads(line) for line in lines[1:]]
        except ValueError as exc:
            raise SnapshotError(f"{self.path}: not JSON lines ({exc})") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise SnapshotError(f"{self.path}: not an fw session snapshot")
        sessions = [r["session"] for r in records if isinstance(r, dict) and "session" in r]
        expectations = [r["expectation"] for r in records if isinstance(r, dict) and "expectation" in r]
        if (len(sessions), len(expectations)) != (header.get("sessions"), header.get("expectations")):
            raise SnapshotError(f"{self.path}: damaged ({len(sessions)} sessions and {len(expectations)} "
                                f"expectations, the header says {header.get('sessions')} and "
                                f"{header.get('expectations')})")
        return {"format": FORMAT, "version": header.get("version"), "saved": header.get("saved"),
                "sessions": sessions, "expectations": expectations}

    def set_aside(self) -> Path | None:
        """Rename an unusable snapshot to *.bad (kept for a look); its new path."""
        bad = self.path.with_name(self.path.name + ".bad")
        try:
            os.replace(self.path, bad)
        except OSError:
            return None
        return bad


class SnapshotService:
    """Restore on start, a snapshot every `interval` seconds (`budget` sessions per tick), one at close."""

    def __init__(self, engine, store: SnapshotStore, interval: float = 60.0, budget: int = 1000,
                 clock_offset: Callable[[], float] = monotonic_offset):
        self.engine = engine
        self.store = store
        self.interval = interval
        self.budget = budget
        self.clock_offset = clock_offset
        self.saved = 0  # snapshots written
        self.failures = 0
        self.last_error: str | None = None
        self._next: float | None = None
        self._pending: list | None = None  # sessions still to turn into data
        self._done: list[dict] = []
        self._offset = 0.0
        self._writer: threading.Thread | None = None

    def restore(self, now: float | None = None) -> int:
        """Load the snapshot into the engine; how many sessions came back (0 if none or unusable)."""
        from fw.conntrack.serial import SerialError  # noqa: PLC0415

        now = time.monotonic() if now is None else now
        try:
            data = self.store.load()
            if data is None:
                return 0
            restored = self.engine.restore(data, now, self.clock_offset())
        except (SnapshotError, SerialError) as exc:
            bad = self.store.set_aside()
            log.warning("session snapshot not restored: %s%s", exc, f" (moved to {bad})" if bad else "")
            return 0
        log.info("restored %d of %d sessions from %s", restored, len(data["sessions"]), self.store.path)
        return restored

    def tick(self, now: float) -> None:
        if self._next is None:
            self._next = now + self.interval
        if self._pending is None and now >= self._next and not self._writing():
            self._offset = self.clock_offset()
            self._pending, self._done = self.engine.table.values(), []
        if self._pending is not None:
            self._step()
            if not self._pending:
                self._start_write(self._done, self._expectations())
                self._pending, self._done = None, []
                self._next = now + self.interval

    def _step(self) -> None:
        from fw.conntrack.serial import session_to_dict  # noqa: PLC0415

        take = self._pending[-self.budget:]
        del self._pending[-self.budget:]
        self._done.extend(session_to_dict(session, self._offset) for session in take)

    def _expectations(self) -> list[dict]:
        from fw.conntrack.serial import expectation_to_dict  # noqa: PLC0415

        return [expectation_to_dict(key, entry, self._offset) for key, entry in self.engine.expectations.items()]

    def _writing(self) -> bool:
        return self._writer is not None and self._writer.is_alive()

    def _start_write(self, sessions: list, expectations: list) -> None:
        from fw.conntrack.serial import FORMAT_VERSION  # noqa: PLC0415

        self._writer = threading.Thread(target=self._write, args=(FORMAT_VERSION, sessions, expectations),
                                        name="fw-snapshot", daemon=True)
        self._writer.start()

    def _write(self, version, sessions, expectations) -> bool:
        try:
            self.store.write(version, sessions, expectations)
        except (OSError, TypeError, ValueError) as exc:
            self.failures += 1
            if str(exc) != self.last_error:
                log.error("session snapshot to %s failed: %s", self.store.path, exc)
            self.last_error = str(exc)
            return False
        self.saved += 1
        return True

    def save_now(self) -> int:
        """A full snapshot, now, on this thread; how many sessions it holds (-1: it failed)."""
        if self._writer is not None:
            self._writer.join()
        data = self.engine.snapshot(self.clock_offset())
        if not self._write(data["version"], data["sessions"], data["expectations"]):
            return -1
        return len(data["sessions"])

    def close(self) -> None:
        """The shutdown snapshot (call it after the last packet went through the engine)."""
        self._pending = None
        saved = self.save_now()
        if saved >= 0:
            log.info("saved %d sessions to %s", saved, self.store.path)
