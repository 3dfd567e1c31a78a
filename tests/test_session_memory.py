"""A session's memory: what sessions share, how a TcpSession carries its track, and that the
serialised form is the one older versions wrote and read."""

from __future__ import annotations

import gc
import ipaddress
import textwrap
import tracemalloc

import pytest

from fw import compiled_modules
from fw.conntrack import serial
from fw.conntrack.table import LIBERAL, REVERSED, TcpSession
from fw.conntrack.tcp import TcpState
from fw.engine import Engine, EngineConfig
from fw.policy import load_policy
from tests.packets import seg

POLICY = """
version: 1
defaults: {action: accept, log: false}
options: {tcp_loose: true}
rules: []
"""
SERVER = "203.0.113.10:80"


@pytest.fixture
def engine(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(POLICY))
    return Engine(load_policy(path), EngineConfig(events=False))


def open_flow(engine, client: str, server: str = SERVER, now: float = 100.0):
    engine.process(seg(client, server, "S", seq=100), now)
    engine.process(seg(server, client, "SA", seq=300, ack=101), now)
    return engine.process(seg(client, server, "A", seq=101, ack=301), now).session


def test_sessions_share_addresses_ports_windows_slot_and_profile(engine):
    one, two = open_flow(engine, "198.51.100.10:40000"), open_flow(engine, "198.51.100.11:40000")
    assert one is not two and one.dst == two.dst == ipaddress.ip_address("203.0.113.10").packed
    assert one.dst is two.dst and one.sport is two.sport  # interned when the session was created
    assert one.slot == two.slot and one.o_maxwin == two.o_maxwin
    if "fw.conntrack.table" not in compiled_modules():  # compiled, they are C integers: nothing to share
        assert one.o_maxwin is two.o_maxwin
        assert one.slot is two.slot  # the bucket's int, not one per session
    assert one.profile is two.profile and one.timeouts is two.timeouts


def test_a_tcp_session_is_its_own_track(engine):
    session = open_flow(engine, "198.51.100.10:40000")
    assert isinstance(session, TcpSession) and session.tcp is session
    assert session.state is TcpState.ESTABLISHED and session.seen[1].td_end == 301
    assert "tcp" not in session.__slots__ and "liberal" not in session.__slots__
    loose = engine.process(seg("198.51.100.12:40000", SERVER, "A", seq=7, ack=9), 100.0).session
    assert loose.tcp.liberal and loose.flags & LIBERAL and not session.tcp.liberal


def test_a_flow_opened_from_the_high_end_knows_its_original_direction(engine):
    client, server = "203.0.113.99:40000", "198.51.100.1:22"  # the client's address is the higher
    session = open_flow(engine, client, server)
    assert session.flags & REVERSED and session.key[1] == ipaddress.ip_address("198.51.100.1").packed
    assert (session.src, session.sport, session.dport) == (ipaddress.ip_address("203.0.113.99").packed, 40000, 22)
    assert (session.orig_packets, session.reply_packets) == (2, 1)
    engine.process(seg(server, client, "PA", seq=301, ack=101, payload=b"banner"), 101.0)
    assert (session.orig_packets, session.reply_packets) == (2, 2)


def test_records_written_before_the_compact_session_are_read_and_written_alike(engine):
    """The serialised form did not change (version 1): a record as the former Session wrote it."""
    session = open_flow(engine, "203.0.113.99:40000", "198.51.100.1:22")
    record = serial.session_to_dict(session, 0.0)
    assert (record["src"], record["sport"], record["flags"]) == ("203.0.113.99", 40000, 3)  # no REVERSED bit
    assert record["timeouts"]["tcp_established"] == 7440 and record["rule"] is None
    copy = serial.session_from_dict(record, 0.0)
    assert serial.session_to_dict(copy, 0.0) == record
    assert copy.flags & REVERSED and copy.tcp is copy and copy.state is TcpState.ESTABLISHED
    old = dict(record, flags=3 | REVERSED | LIBERAL)  # stray bits in a damaged record are not believed
    assert serial.session_from_dict(old, 0.0).flags == 3 | REVERSED


def test_a_handshake_leaves_one_entry_in_the_timer_wheel(engine):
    open_flow(engine, "198.51.100.10:40000")
    entries = sum(len(bucket) - 1 for bucket in engine.table._slots.values())
    assert entries == 1  # the SYN's entry went when the SYN/ACK filed the session earlier
    assert [e.why for e in engine.expire(100.0 + 7441)] == ["timeout"] and len(engine.table) == 0


def test_an_established_session_costs_at_most_600_bytes(engine):
    """Regression guard (bench: 902 bytes before the compact session, 565 after, at 100,000)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(5000):
            open_flow(engine, f"198.51.100.{i % 250 + 2}:{1024 + i // 250}")
        gc.collect()
        per_session = (tracemalloc.get_traced_memory()[0] - before) / len(engine.table)
    finally:
        tracemalloc.stop()
    assert len(engine.table) == 5000 and per_session <= 600, per_session


def test_a_new_session_without_extra_is_left_to_reference_counting_and_one_with_extra_is_not(engine):
    """Compiled, a new session without `extra` (and its key) is untracked by the cycle collector
    (fw.conntrack.table.untrack: it cannot be in a cycle); given an Extra it is tracked again, so a
    cycle through its ALG or parent can still be collected. Pure, every session stays tracked."""
    session = engine.process(seg("198.51.100.7:40000", SERVER, "S", seq=100), 100.0).session
    assert session.extra is None
    compiled = "fw.engine" in compiled_modules() and "fw.conntrack.table" in compiled_modules()
    assert gc.is_tracked(session) is not compiled
    if compiled:
        assert not gc.is_tracked(session.key)
    session.owner = "peer"  # an Extra: a cycle through it can be collected
    assert gc.is_tracked(session)
    assert gc.is_tracked(engine.process(seg("198.51.100.7:40001", SERVER, "S", seq=100), 100.0).session) is not compiled
