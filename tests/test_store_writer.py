"""The event writer (SQLite): batches from a thread, drop floods aggregated, a full queue or a broken
database counted as lost and never felt by the caller, recovery once the database is back."""

from __future__ import annotations

import sqlite3
import time

import pytest

from fw.store import Store, records
from fw.store.writer import OVERFLOW, EventWriter

BASE = float(int(time.time()) - 3600)  # wall clock = engine clock + BASE


def drop_event(when: float, src: str = "198.51.100.66", dport: int = 23, reason: str = "rule:block-telnet") -> dict:
    return {"time": when, "event_type": "drop", "src_ip": src, "dest_ip": "203.0.113.10", "proto": "TCP",
            "src_port": 40000, "dest_port": dport, "drop": {"len": 40, "syn": True},
            "fw": {"verdict": "drop", "reason": reason}}


def flow_event(when: float, port: int) -> dict:
    return {"time": when, "event_type": "flow", "src_ip": "198.51.100.10", "dest_ip": "203.0.113.10",
            "proto": "TCP", "src_port": port, "dest_port": 80, "flow": {"start": when, "state": "new"},
            "fw": {"event": "new", "reason": "rule:allow-web", "rule": "allow-web"}}


@pytest.fixture
def store(tmp_path):
    opened = Store(f"sqlite:///{tmp_path / 'fw.db'}")
    yield opened
    opened.dispose()


def rows(store: Store, **filters) -> list:
    with store.session() as session:
        return records.query_events(session, limit=100_000, **filters)


def test_a_drop_flood_becomes_one_row_per_source_and_window_with_a_count(store):
    writer = EventWriter(store, clock_offset=lambda: BASE, drop_window=3600).start()
    for i in range(20_000):
        writer.submit(drop_event(100 + i / 1000, src="198.51.100.66" if i % 4 else "198.51.100.77"))
    writer.close()
    stored = rows(store)
    assert [(r.src_ip, r.count) for r in sorted(stored, key=lambda r: r.src_ip)] == [
        ("198.51.100.66", 15_000), ("198.51.100.77", 5_000)]
    first = next(r for r in stored if r.src_ip == "198.51.100.77")
    assert first.time == BASE + 100
    assert first.record["fw"]["count"] == 5_000
    assert first.record["fw"]["first"] == records.wall_timestamp(BASE + 100)
    assert first.record["fw"]["last"] == records.wall_timestamp(BASE + 100 + 19_996 / 1000)
    assert records.describe(first).endswith("tcp 198.51.100.77:40000 -> 203.0.113.10:23 x5000")
    assert writer.stats()["written"] == 20_000 and writer.lost == 0


def test_a_flood_from_random_sources_is_aggregated_by_reason_past_the_key_limit(store):
    writer = EventWriter(store, clock_offset=lambda: BASE, drop_window=3600, max_drop_keys=100).start()
    for i in range(5_000):
        writer.submit(drop_event(100.0, src=f"198.51.{100 + i // 250}.{i % 250}"))
    writer.close()
    stored = rows(store)
    assert len(stored) == 101
    (overflow,) = [r for r in stored if r.src_ip == OVERFLOW]
    assert (overflow.count, overflow.dest_ip, overflow.dest_port, overflow.reason) == (4_900, OVERFLOW, None,
                                                                                      "rule:block-telnet")
    assert sum(r.count for r in stored) == 5_000


def test_each_window_gets_rows_of_its_own(store):
    writer = EventWriter(store, clock_offset=lambda: BASE, drop_window=0.2, flush_interval=0.05).start()
    writer.submit(drop_event(1.0))
    writer.submit(drop_event(2.0))
    deadline = time.monotonic() + 5
    while writer.stats()["written"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    writer.submit(drop_event(3.0))
    writer.close()
    assert [(r.time - BASE, r.count) for r in rows(store)] == [(1.0, 2), (3.0, 1)]


def test_a_full_queue_loses_events_without_waiting(store):
    writer = EventWriter(store, queue_size=100)  # not started: nothing drains the queue
    started = time.perf_counter()
    for i in range(10_000):
        writer.submit(flow_event(float(i), 40000 + i % 20000))
    elapsed = time.perf_counter() - started
    assert elapsed < 1.0
    assert (writer.stats()["queued"], writer.lost, writer.stats()["submitted"]) == (100, 9_900, 10_000)


def test_a_locked_database_never_blocks_submit(store):
    store.open()  # migrate first
    holder = sqlite3.connect(store.engine.url.database, timeout=0)
    holder.execute("BEGIN EXCLUSIVE")
    writer = EventWriter(store, clock_offset=lambda: BASE, flush_interval=0.05).start()
    try:
        slowest = 0.0
        for i in range(200):
            started = time.perf_counter()
            writer.submit(flow_event(float(i), 40000 + i))
            slowest = max(slowest, time.perf_counter() - started)
            time.sleep(0.001)
        assert slowest < 0.05
        assert writer.stats()["written"] == 0
    finally:
        holder.rollback()
        holder.close()
    writer.close()
    assert writer.stats()["written"] + writer.lost == 200
    assert len(rows(store)) == writer.stats()["written"] > 0


def test_an_unreachable_database_counts_events_as_lost_and_the_writer_goes_on(tmp_path):
    folder = tmp_path / "later"
    writer = EventWriter(Store(f"sqlite:///{folder / 'fw.db'}"), clock_offset=lambda: BASE,
                         flush_interval=0.05).start()
    writer.submit(flow_event(1.0, 40001))
    deadline = time.monotonic() + 5
    while writer.lost < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert writer.lost == 1
    assert "folder" in writer.stats()["last_error"] and "does not exist" in writer.stats()["last_error"]
    folder.mkdir()  # the database comes back: the next batch is written after the back-off
    writer.submit(flow_event(2.0, 40002))
    deadline = time.monotonic() + 10
    while writer.stats()["written"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    writer.close()
    assert (writer.stats()["written"], writer.lost, writer.stats()["failures"]) == (1, 1, 1)
    assert [r.src_port for r in rows(Store(f"sqlite:///{folder / 'fw.db'}"))] == [40002]


def test_close_with_a_dead_database_gives_up_at_once(tmp_path):
    writer = EventWriter(Store(f"sqlite:///{tmp_path / 'missing' / 'fw.db'}"), flush_interval=10).start()
    for i in range(1_000):
        writer.submit(flow_event(float(i), 40000 + i))
    started = time.monotonic()
    writer.close()
    assert time.monotonic() - started < 5
    assert writer.lost == 1_000


def test_rule_counters_go_in_with_the_events(store):
    writer = EventWriter(store).start()
    writer.submit_counters({"allow-web": (3, 180, 1)})
    writer.submit_counters({"allow-web": (2, 120, 0), "allow-ssh": (1, 60, 1)})
    writer.submit_counters({})
    writer.close()
    with store.session() as session:
        counts = {rule: (c.packets, c.bytes, c.sessions) for rule, c in records.rule_counts(session).items()}
    assert counts == {"allow-web": (5, 300, 1), "allow-ssh": (1, 60, 1)}


def test_values_json_cannot_hold_are_stored_as_text_as_the_eve_log_does(store):
    writer = EventWriter(store, clock_offset=lambda: BASE).start()
    writer.submit({**flow_event(1.0, 40001), "extra": b"\x01"})
    writer.submit(flow_event(2.0, 40002))
    writer.close()
    stored = rows(store)
    assert [r.src_port for r in stored] == [40001, 40002]
    assert stored[0].record["extra"] == "b'\\x01'"
    assert writer.lost == 0 and writer.stats()["written"] == 2


def test_the_daemons_rule_counters_go_in_on_its_ticks_and_at_close(store, tmp_path):
    from fw.engine import Engine
    from fw.metrics import RuleCounters
    from fw.policy import load_policy
    from tests.packets import seg

    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nrules:\n  - {name: allow-web, action: accept, proto: tcp, dport: 80}\n")
    engine, counters = Engine(load_policy(policy)), RuleCounters()
    writer = EventWriter(store, rule_counters=counters, counters_every=10.0).start()

    def stored() -> dict:
        with store.session() as session:
            return {rule: (c.packets, c.sessions) for rule, c in records.rule_counts(session).items()}

    counters.count(engine.process(seg("198.51.100.10:40000", "203.0.113.10:80", "S"), 1.0))
    writer.tick(1.0)  # sets the first due time
    writer.tick(5.0)
    counters.count(engine.process(seg("198.51.100.10:40001", "203.0.113.10:80", "S"), 6.0))
    writer.tick(11.0)  # due: both sessions so far
    deadline = time.monotonic() + 5
    while not stored() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stored() == {"allow-web": (2, 2)}
    counters.count(engine.process(seg("198.51.100.10:40002", "203.0.113.10:80", "S"), 12.0))
    writer.close()  # the rest
    assert stored() == {"allow-web": (3, 3)}
