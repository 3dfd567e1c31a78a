"""Session snapshots: an established connection survives a restart of the engine (a new clock),
the file is written whole or not at all, a bad file is set aside, and the periodic snapshot that
is taken a budget of sessions per tick holds what `Engine.snapshot` holds."""

from __future__ import annotations

import json
import os
import stat

import pytest

from fw.conntrack.serial import FORMAT_VERSION
from fw.engine import Engine
from fw.policy import load_policy
from fw.store import SnapshotError, SnapshotService, SnapshotStore, default_snapshot_path
from fw.store.database import netns_inode
from tests.packets import seg, udp_pkt

CLIENT, SERVER = "198.51.100.10:40000", "203.0.113.10:80"
POLICY = """\
version: 1
defaults: {action: drop}
rules:
  - {name: allow-web, action: accept, proto: tcp, dport: 80}
  - {name: allow-dns, action: accept, proto: udp, dport: 53}
"""


@pytest.fixture
def policy(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return load_policy(path)


def established(engine: Engine, now: float, client: str = CLIENT) -> None:
    for packet in (seg(client, SERVER, "S", seq=1000), seg(SERVER, client, "SA", seq=5000, ack=1001),
                   seg(client, SERVER, "A", seq=1001, ack=5001)):
        assert engine.process(packet, now).verdict == "accept"


def test_an_established_connection_goes_on_after_a_restart_with_another_clock(policy, tmp_path):
    before = Engine(policy)
    established(before, now=500.0)  # engine clock 500 = wall clock 1_000_500
    store = SnapshotStore(tmp_path / "sessions.jsonl")
    store.save(before.snapshot(clock_offset=1_000_000.0))

    after = Engine(policy)  # the new process: its monotonic clock reads 20 where the wall says 1_000_530
    service = SnapshotService(after, store, clock_offset=lambda: 1_000_510.0)
    assert service.restore(now=20.0) == 1
    data = seg(CLIENT, SERVER, "PA", seq=1001, ack=5001, payload=b"GET / HTTP/1.0\r\n\r\n")
    decision = after.process(data, 20.0)
    assert (decision.verdict, decision.reason, decision.session.state_name) == ("accept", "established",
                                                                                "ESTABLISHED")
    assert decision.session.created == pytest.approx(-10.0)  # 30 s before the restart, on the new clock
    assert decision.session.rule == "allow-web"
    fresh = Engine(policy)  # without the snapshot the same packet has no session
    assert fresh.process(data, 20.0).reason == "invalid:no-session"


def test_sessions_that_expired_while_the_daemon_was_down_stay_gone(policy, tmp_path):
    before = Engine(policy)
    before.process(udp_pkt("198.51.100.10:5353", "203.0.113.10:53"), 100.0)  # udp: 30 s unreplied
    established(before, now=100.0)
    store = SnapshotStore(tmp_path / "sessions.jsonl")
    store.save(before.snapshot(clock_offset=0.0))
    after = Engine(policy)
    assert SnapshotService(after, store, clock_offset=lambda: 0.0).restore(now=200.0) == 1
    assert [s.proto for s in after.sessions] == [6]


def test_the_file_is_versioned_json_lines_readable_by_root_only(policy, tmp_path):
    engine = Engine(policy)
    established(engine, now=1.0)
    path = tmp_path / "sessions.jsonl"
    SnapshotStore(path).save(engine.snapshot(clock_offset=1_700_000_000.0))
    header, line = [json.loads(text) for text in path.read_text().splitlines()]
    assert {k: header[k] for k in ("format", "version", "sessions", "expectations")} == {
        "format": "fw-sessions", "version": FORMAT_VERSION, "sessions": 1, "expectations": 0}
    assert line["session"]["created"] == 1_700_000_001.0
    assert line["session"]["src"] == "198.51.100.10"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["policy.yaml", "sessions.jsonl"]  # no temporary file left


def test_the_default_file_is_keyed_by_the_network_namespace(monkeypatch, tmp_path):
    monkeypatch.delenv("FW_STATE_DIR", raising=False)
    assert str(default_snapshot_path()) == f"/var/lib/fw/sessions-{netns_inode()}.jsonl"
    assert str(default_snapshot_path(queue=3)) == f"/var/lib/fw/sessions-{netns_inode()}-q3.jsonl"
    monkeypatch.setenv("FW_STATE_DIR", str(tmp_path))
    assert default_snapshot_path() == tmp_path / f"sessions-{netns_inode()}.jsonl"


def test_no_file_means_nothing_to_restore(policy, tmp_path):
    assert SnapshotStore(tmp_path / "none.jsonl").load() is None
    assert SnapshotService(Engine(policy), SnapshotStore(tmp_path / "none.jsonl")).restore() == 0


@pytest.mark.parametrize(("content", "message"), [
    ("not json\n", "not JSON lines"),
    ('{"format": "something-else"}\n', "not an fw session snapshot"),
    ('{"format": "fw-sessions", "version": 1, "sessions": 2, "expectations": 0}\n{"session": {}}\n',
     r"damaged \(1 sessions and 0 expectations, the header says 2 and 0\)"),
])
def test_a_bad_file_is_refused_and_set_aside(policy, tmp_path, content, message):
    path = tmp_path / "sessions.jsonl"
    path.write_text(content)
    with pytest.raises(SnapshotError, match=message):
        SnapshotStore(path).load()
    engine = Engine(policy)
    assert SnapshotService(engine, SnapshotStore(path)).restore() == 0
    assert not path.exists()
    assert (tmp_path / "sessions.jsonl.bad").read_text() == content
    assert len(engine.sessions) == 0


def test_a_snapshot_of_another_version_is_set_aside(policy, tmp_path):
    path = tmp_path / "sessions.jsonl"
    path.write_text(json.dumps({"format": "fw-sessions", "version": 999, "sessions": 0, "expectations": 0}) + "\n")
    assert SnapshotService(Engine(policy), SnapshotStore(path)).restore() == 0
    assert (tmp_path / "sessions.jsonl.bad").exists()


def test_a_failed_write_keeps_the_old_snapshot(policy, tmp_path):
    engine = Engine(policy)
    established(engine, now=1.0)
    path = tmp_path / "sessions.jsonl"
    SnapshotStore(path).save(engine.snapshot(clock_offset=0.0))
    old = path.read_text()
    with pytest.raises(TypeError):
        SnapshotStore(path).write(1, [{"not json": object()}], [])
    assert path.read_text() == old
    assert sorted(os.listdir(tmp_path)) == ["policy.yaml", "sessions.jsonl"]


def test_periodic_snapshots_take_a_budget_of_sessions_per_tick(policy, tmp_path):
    engine = Engine(policy)
    for port in range(40000, 40025):
        established(engine, now=5.0, client=f"198.51.100.10:{port}")
    path = tmp_path / "sessions.jsonl"
    service = SnapshotService(engine, SnapshotStore(path), interval=10.0, budget=10, clock_offset=lambda: 1000.0)
    service.tick(5.0)  # the first tick only sets the time of the first snapshot
    service.tick(14.0)
    assert not path.exists()
    for now in (15.0, 16.0, 17.0):  # 10 + 10 + 5 sessions, then the write in the background
        service.tick(now)
    service._writer.join(10)
    assert service.saved == 1
    written = SnapshotStore(path).load()
    expected = engine.snapshot(clock_offset=1000.0)
    key = lambda s: s["sport"]  # noqa: E731
    assert sorted(written["sessions"], key=key) == sorted(expected["sessions"], key=key)
    assert written["expectations"] == expected["expectations"] == []
    service.tick(20.0)  # the next one is due 10 s after this one finished
    assert service._pending is None


def test_close_saves_everything_at_once(policy, tmp_path):
    engine = Engine(policy)
    for port in range(40000, 40005):
        established(engine, now=5.0, client=f"198.51.100.10:{port}")
    path = tmp_path / "sessions.jsonl"
    service = SnapshotService(engine, SnapshotStore(path), interval=3600, clock_offset=lambda: 0.0)
    service.close()
    assert len(SnapshotStore(path).load()["sessions"]) == 5


def test_a_snapshot_that_cannot_be_written_is_counted_not_raised(policy, tmp_path):
    engine = Engine(policy)
    service = SnapshotService(engine, SnapshotStore(tmp_path / "missing" / "sessions.jsonl"))
    assert service.save_now() == -1
    assert service.failures == 1 and "No such file or directory" in service.last_error
