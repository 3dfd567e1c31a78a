"""Snapshots of an engine's state (restarts): the session table and expectations as plain data.

How it works. `snapshot` writes every session and expectation as versioned plain dicts
(fw.conntrack.serial), times on the wall clock (engine time + clock_offset). `restore` reads them
back: sessions not yet expired join the table through `engine.adopt` (so the half-open counts are
right), parents are linked once every session is in, then the expectations whose control session
came back. A bad record is skipped and counted (`restore_errors`); a document that is no snapshot
raises serial.SerialError.
"""

from __future__ import annotations

from fw.conntrack import serial

FORMAT = "fw-sessions"


def snapshot(engine, clock_offset: float) -> dict:
    return {
        "format": FORMAT,
        "version": serial.FORMAT_VERSION,
        "sessions": [serial.session_to_dict(s, clock_offset) for s in engine.table.sessions.values()],
        "expectations": engine.expectations.to_records(clock_offset),
    }


def restore(engine, data: dict, now: float, clock_offset: float) -> int:
    """Load a snapshot; returns how many sessions joined the table."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise serial.SerialError("not an fw session snapshot")
    if data.get("version") != serial.FORMAT_VERSION:
        raise serial.SerialError(f"snapshot version {data.get('version')!r} is not {serial.FORMAT_VERSION}")
    sessions = engine.table.sessions
    restored, parents = 0, []
    for record in data.get("sessions") or ():
        try:
            session = serial.session_from_dict(record, clock_offset)
            parent = serial.parent_key(record)
        except serial.SerialError:
            engine.counters["restore_errors"] += 1
            continue
        if session.deadline <= now or session.key in sessions:
            continue
        engine.adopt(session, now)
        restored += 1
        if parent is not None:
            parents.append((session, parent))
    for session, key in parents:
        session.parent = sessions.get(key)
    for record in data.get("expectations") or ():
        if not engine.expectations.restore(record, sessions, now, clock_offset):
            engine.counters["restore_errors"] += 1
    return restored
