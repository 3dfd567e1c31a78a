"""Events and per-rule counters in the store: rows from EVE records, queries, one-line views.

How it works: an event is stored as its EVE record (the JSON-lines log's object, `timestamp`
included) plus columns pulled out of it for `fw log`'s filters: the wall-clock `time`, the
`event_type`, what happened (`action`: new, end, load, activate, reload, ...), the `verdict`,
`reason` and `rule` (from the record's `fw` object), and the flow's endpoints. Aggregated drops
are one row with `count` > 1 and `fw.count`, `fw.first`, `fw.last` in the record. Per-rule
counters are added to with an upsert (SQLite and PostgreSQL both have ON CONFLICT).

Functions take an open session; they do not commit.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from fw.store.models import Event, RuleCounter

FLOW_COLUMNS = ("proto", "src_ip", "src_port", "dest_ip", "dest_port")


def wall_timestamp(wall: float) -> str:
    """EVE's timestamp: 2024-05-01T12:00:00.123456+0200 (local time, as Suricata writes it)."""
    return datetime.datetime.fromtimestamp(wall).astimezone().strftime("%Y-%m-%dT%H:%M:%S.%f%z")


def eve_record(event: dict, to_wall: Callable[[float], float]) -> tuple[float, dict]:
    """(wall time, EVE record) of an engine event (engine clock under `time`, converted by
    `to_wall`) or of an event made outside the engine (no `time`: now)."""
    from fw.drivers.eve import to_eve  # noqa: PLC0415  (the daemon's log writes the same records)

    when = event.get("time")
    wall = to_wall(when) if isinstance(when, int | float) else time.time()
    record = to_eve(event, lambda t: wall if t == when else to_wall(t))
    return wall, record


def event_row(record: dict, wall: float, count: int = 1) -> Event:
    """The row of an EVE record."""
    fw = record.get("fw") if isinstance(record.get("fw"), dict) else {}
    event_type = str(record.get("event_type") or "unknown")[:32]
    body = record.get(event_type) if isinstance(record.get(event_type), dict) else {}
    action = fw.get("event") or body.get("event") or (event_type if event_type == "drop" else None)
    verdict = fw.get("verdict")
    if verdict is None and event_type == "flow":
        verdict = "accept"  # a session exists because its first packet was accepted
    reason = fw.get("reason")
    rule = fw.get("rule")
    if rule is None and isinstance(reason, str) and reason.startswith("rule:"):
        rule = reason[5:]
    columns = {key: record.get(key) for key in FLOW_COLUMNS}
    return Event(time=wall, event_type=event_type, action=_text(action, 32), verdict=_text(verdict, 8),
                 reason=_text(reason, 64), rule=_text(rule, 255), count=count, record=record,
                 proto=_text(columns["proto"], 16), src_ip=_text(columns["src_ip"], 45),
                 dest_ip=_text(columns["dest_ip"], 45), src_port=_port(columns["src_port"]),
                 dest_port=_port(columns["dest_port"]))


def _text(value, size: int) -> str | None:
    return None if value is None else str(value)[:size]


def _port(value) -> int | None:
    return value if isinstance(value, int) and 0 <= value <= 65535 else None


def add_event(session: Session, event: dict) -> Event:
    """Store one event made outside the engine (a policy load or activation, from the CLI)."""
    wall, record = eve_record(event, lambda t: t)
    row = event_row(record, wall)
    session.add(row)
    return row


def policy_event(action: str, revision: str, **details) -> dict:
    """A policy load, activation or reload (EVE event_type `policy`)."""
    return {"event_type": "policy", "policy": {"event": action, "revision": revision, **details},
            "fw": {"event": action, "policy_rev": revision}}


def reload_event(revision: str, source: str, ok: bool = True, message: str | None = None) -> dict:
    """The daemon swapped its policy (ok) or kept the old one (not ok)."""
    event = policy_event("reload", revision, source=source, ok=ok)
    if message:
        event["policy"]["message"] = message
    return event


def query_events(session: Session, *, since: float | None = None, until: float | None = None,
                 verdict: str | None = None, rule: str | None = None, event_type: str | None = None,
                 limit: int = 100) -> list[Event]:
    """The newest `limit` events that pass the filters, oldest first."""
    query = select(Event)
    if since is not None:
        query = query.where(Event.time >= since)
    if until is not None:
        query = query.where(Event.time < until)
    if verdict is not None:
        query = query.where(Event.verdict == verdict)
    if rule is not None:
        query = query.where(Event.rule == rule)
    if event_type is not None:
        query = query.where(Event.event_type == event_type)
    rows = list(session.scalars(query.order_by(Event.time.desc(), Event.id.desc()).limit(limit)))
    rows.reverse()
    return rows


def prune_events(session: Session, before: float) -> int:
    """Delete events older than `before` (wall clock); how many went."""
    return session.execute(delete(Event).where(Event.time < before)).rowcount or 0


def describe(row: Event) -> str:
    """One line for `fw log`: time, what, verdict/reason, rule, flow."""
    record = row.record or {}
    words = [wall_timestamp(row.time), row.event_type]
    if row.action and row.action != row.event_type:
        words.append(row.action)
    if row.event_type == "policy":
        body = record.get("policy") or {}
        words.append(f"revision {body.get('revision')}")
        words += [f"{key}={value}" for key, value in body.items()
                  if key not in ("event", "revision") and value is not None]
        return " ".join(words)
    if row.verdict:
        words.append(row.verdict)
    if row.reason:
        words.append(row.reason)
    if row.rule and row.reason != f"rule:{row.rule}":
        words.append(f"rule={row.rule}")
    if row.src_ip:
        words.append(_flow_text(row))
    flow = record.get("flow")
    if row.event_type == "flow" and isinstance(flow, dict) and row.action == "end":
        words.append(f"packets={flow.get('pkts_toserver')}/{flow.get('pkts_toclient')} "
                     f"bytes={flow.get('bytes_toserver')}/{flow.get('bytes_toclient')}")
    if row.count > 1:
        words.append(f"x{row.count}")
    return " ".join(words)


def _flow_text(row: Event) -> str:
    def end(address: str, port: int | None) -> str:
        if port is None:
            return address
        return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"

    proto = (row.proto or "").lower()
    return f"{proto} {end(row.src_ip, row.src_port)} -> {end(row.dest_ip or '?', row.dest_port)}"


# -- per-rule counters --------------------------------------------------------------------------


def add_rule_counts(session: Session, deltas: dict, when: float | None = None) -> None:
    """Add {rule: (packets, bytes, sessions)} to the stored totals."""
    rows = [{"rule": rule[:255], "packets": p, "bytes": b, "sessions": s, "last_hit": when or time.time()}
            for rule, (p, b, s) in deltas.items() if p or b or s]
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert  # noqa: PLC0415
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert  # noqa: PLC0415
    else:
        _add_rule_counts_portably(session, rows)
        return
    statement = insert(RuleCounter)
    table = RuleCounter.__table__
    statement = statement.on_conflict_do_update(index_elements=["rule"], set_={
        "packets": table.c.packets + statement.excluded.packets,
        "bytes": table.c.bytes + statement.excluded.bytes,
        "sessions": table.c.sessions + statement.excluded.sessions,
        "last_hit": statement.excluded.last_hit,
    })
    session.execute(statement, rows)


def _add_rule_counts_portably(session: Session, rows: list[dict]) -> None:
    for row in rows:
        counter = session.get(RuleCounter, row["rule"])
        if counter is None:
            session.add(RuleCounter(**row))
        else:
            counter.packets += row["packets"]
            counter.bytes += row["bytes"]
            counter.sessions += row["sessions"]
            counter.last_hit = row["last_hit"]


def rule_counts(session: Session, names=None) -> dict[str, RuleCounter]:
    """Stored per-rule totals, by rule name (of `names` only, if given)."""
    query = select(RuleCounter)
    if names is not None:
        query = query.where(RuleCounter.rule.in_(list(names)))
    return {row.rule: row for row in session.scalars(query)}
