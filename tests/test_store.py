"""The store against both databases it supports: SQLite (a file in tmp) and a real PostgreSQL server
that the module starts for itself (initdb into a tmp dir, a unix socket there, stopped at the end).

Migrations from empty, policy revisions (load, find, activate, roll back, diff), events and rule
counters, the event writer and `fw policy` on the command line, each on both backends; and the
errors a database gives, as one line each.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import inspect, text

from fw.cli import main
from fw.cli.store import register
from fw.decision import LogEvent
from fw.engine import Engine
from fw.packet import build
from fw.policy import load_policy
from fw.store import NotFound, Store, StoreError, active_policy, policies, policy_loader, records
from fw.store.database import default_url, migrate, netns_inode, resolve_url, schema_revision
from fw.store.models import Base
from fw.store.writer import EventWriter

POLICY = """\
version: 1
defaults: {action: drop, log: true}
sets:
  clients: [198.51.100.0/24, "2001:db8:1::/64"]
rules:
  - {name: allow-web, action: accept, proto: tcp, src: $clients, dport: [80, 443], log: true}
  - {name: allow-ssh, action: accept, proto: tcp, src: $clients, dport: 22}
  - {name: block-telnet, action: drop, proto: tcp, dport: 23, log: true}
"""
POLICY_V2 = POLICY.replace("dport: 22}", "dport: [22, 2222]}").replace(
    "  - {name: block-telnet", "  - {name: allow-dns, action: accept, proto: udp, dport: 53}\n  - {name: block-telnet")
TABLES = {"alembic_version", "events", "policy_activations", "policy_revisions", "rule_counters"}


# -- a throwaway PostgreSQL server --------------------------------------------------------------------


class PostgresServer:
    """initdb into a fresh tmp dir and `postgres` on a unix socket there (as the postgres user when
    we are root: it refuses to run as root). `database()` gives the URL of a new, empty database."""

    PORT = 5432  # only names the socket file: no TCP listener

    def __init__(self, bindir: str):
        self.bindir = bindir
        self.root = tempfile.mkdtemp(prefix="fw-pg-")
        self.as_user = {}
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self.as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        self.process: subprocess.Popen | None = None
        self.names = itertools.count(1)

    def start(self) -> None:
        data = os.path.join(self.root, "data")
        subprocess.run([f"{self.bindir}/initdb", "-D", data, "-A", "trust", "-U", "fw", "-E", "UTF8",
                        "--no-sync"], cwd=self.root, check=True, capture_output=True, **self.as_user)
        with open(os.path.join(self.root, "log"), "w") as log:
            self.process = subprocess.Popen(
                [f"{self.bindir}/postgres", "-D", data, "-k", self.root, "-c", "listen_addresses=",
                 "-F", "-p", str(self.PORT)], cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
                **self.as_user)
        deadline = time.monotonic() + 30
        while subprocess.run([f"{self.bindir}/pg_isready", "-q", "-h", self.root, "-p", str(self.PORT)],
                             check=False).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("postgres did not start:\n" + Path(self.root, "log").read_text())
            time.sleep(0.1)

    def url(self, database: str) -> str:
        return f"postgresql://fw@/{database}?host={self.root}&port={self.PORT}"

    def database(self) -> str:
        import psycopg

        name = f"fwtest{next(self.names)}"
        with psycopg.connect(host=self.root, port=self.PORT, user="fw", dbname="postgres",
                             autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGINT)  # "fast" shutdown: does not wait for clients
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def postgres_bindir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


@pytest.fixture(scope="module")
def postgres():
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not installed (/usr/lib/postgresql/*/bin; `make install`)")
    server = PostgresServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fw.db'}"
    return request.getfixturevalue("postgres").database()


@pytest.fixture
def store(db_url):
    opened = Store(db_url)
    yield opened
    opened.dispose()


@pytest.fixture
def policy_file(tmp_path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


def stored(store: Store, text: str, tmp_path: Path, name: str = "p.yaml"):
    path = tmp_path / name
    path.write_text(text)
    with store.session() as session:
        return policies.store_policy(session, load_policy(path), str(path))


# -- opening and migrating ------------------------------------------------------------------------------


def test_migrations_create_every_table_from_empty(store):
    with store.engine.connect() as connection:
        assert set(inspect(connection).get_table_names()) == TABLES
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0001"


def test_the_migrated_schema_is_what_the_models_say(store):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []


def test_migrating_again_changes_nothing(store, tmp_path):
    stored(store, POLICY, tmp_path)
    assert migrate(store.engine) == "0001"  # already at head: returns where it was
    reopened = Store(store.url)
    with reopened.session() as session:
        assert [r.rule_count for r in policies.revisions(session)] == [3]
    reopened.dispose()


def test_a_schema_newer_than_this_program_is_refused(store):
    with store.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    store.dispose()
    with pytest.raises(StoreError, match=r"schema 9999 is newer than this fw knows"):
        Store(store.url).open()


def test_schema_revision_of_a_new_database_is_none(tmp_path):
    from sqlalchemy import create_engine

    engine = create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    assert schema_revision(engine) is None
    assert migrate(engine) is None
    assert schema_revision(engine) == "0001"
    engine.dispose()


def test_urls_come_from_the_option_then_fw_db_then_the_namespace(monkeypatch, tmp_path):
    monkeypatch.delenv("FW_DB", raising=False)
    monkeypatch.delenv("FW_STATE_DIR", raising=False)
    assert default_url() == f"sqlite:////var/lib/fw/fw-{netns_inode()}.db"
    monkeypatch.setenv("FW_STATE_DIR", str(tmp_path))
    assert default_url() == f"sqlite:///{tmp_path}/fw-{netns_inode()}.db"
    assert resolve_url(None) == default_url()
    monkeypatch.setenv("FW_DB", "postgresql://fw@db/fw")
    assert resolve_url(None) == "postgresql://fw@db/fw"
    assert resolve_url("sqlite:///x.db") == "sqlite:///x.db"
    monkeypatch.chdir(tmp_path)
    assert resolve_url("here.db") == f"sqlite:///{tmp_path / 'here.db'}"


def test_a_password_is_never_shown():
    assert Store("postgresql://fw:s3cret@db.example/fw").label == "postgresql://fw:***@db.example/fw"


@pytest.mark.parametrize(("url", "message"), [
    ("sqlite:////nonexistent-dir/fw.db", r"^database sqlite:////nonexistent-dir/fw.db: folder /nonexistent-dir "
                                          r"does not exist$"),
    ("nosuchdb://x/y", r"^database nosuchdb://x/y: Can't load plugin: sqlalchemy.dialects:nosuchdb$"),
    ("postgresql://fw@127.0.0.1:1/fw", r"^database postgresql://fw@127.0.0.1:1/fw: connection failed: .*refused"),
])
def test_an_unusable_database_is_one_line(url, message):
    with pytest.raises(StoreError, match=message) as caught:
        Store(url).open()
    assert "\n" not in str(caught.value)


def test_a_corrupt_file_is_one_line(tmp_path):
    path = tmp_path / "corrupt.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match=r"^database sqlite:///.*corrupt.db: file is not a database$"):
        Store(str(path)).open()


# -- policy revisions -----------------------------------------------------------------------------


def test_a_policy_is_stored_once_and_loads_back_the_same(store, tmp_path):
    record, new = stored(store, POLICY, tmp_path)
    again, new_again = stored(store, POLICY.replace("version: 1", "version: 1  # a comment"), tmp_path)
    assert (new, new_again) == (True, False)
    assert again.revision == record.revision == load_policy(tmp_path / "p.yaml").revision
    with store.session() as session:
        (only,) = policies.revisions(session)
        loaded = policies.policy_of(only)
    assert loaded.revision == record.revision
    assert [rule.name for rule in loaded.rules] == ["allow-web", "allow-ssh", "block-telnet"]
    assert only.sources == [[str(tmp_path / "p.yaml"), POLICY]]


def test_revisions_are_found_by_hash_prefix_or_active(store, tmp_path):
    first, _ = stored(store, POLICY, tmp_path, "a.yaml")
    second, _ = stored(store, POLICY_V2, tmp_path, "b.yaml")
    with store.session() as session:
        assert policies.find_revision(session, first.revision).id == first.id
        assert policies.find_revision(session, second.revision[:5].upper()).id == second.id
        with pytest.raises(StoreError, match="no revision is active"):
            policies.find_revision(session, "active")
        with pytest.raises(NotFound, match="no revision 'ffffffffffff' in the store") as caught:
            policies.find_revision(session, "ffffffffffff")
        assert caught.value.exit_code == 2
        with pytest.raises(NotFound, match="no revision '%' in the store"):  # LIKE's wildcards are escaped
            policies.find_revision(session, "%")


def test_an_ambiguous_prefix_names_the_candidates(store, tmp_path):
    made = []
    for port in range(2000, 2040):  # 40 revisions: two of them share a first hex digit
        made.append(stored(store, POLICY.replace("dport: 22}", f"dport: {port}}}"), tmp_path)[0].revision)
    first = next(digit for digit in "0123456789abcdef" if sum(r.startswith(digit) for r in made) >= 2)
    sharing = sorted(r for r in made if r.startswith(first))
    with store.session() as session, pytest.raises(NotFound) as caught:
        policies.find_revision(session, first)
    assert str(caught.value).startswith(f"revision '{first}' is ambiguous: ")
    assert all(r in str(caught.value) for r in sharing[:5])


def test_activation_and_rollback_keep_the_history(store, tmp_path):
    first, _ = stored(store, POLICY, tmp_path, "a.yaml")
    second, _ = stored(store, POLICY_V2, tmp_path, "b.yaml")
    with store.session() as session:
        assert policies.activate(session, session.merge(first)) is None
    with store.session() as session:
        assert policies.activate(session, session.merge(second)).revision == first.revision
    assert active_policy(store).revision == second.revision
    with store.session() as session:  # the rollback
        assert policies.activate(session, policies.find_revision(session, first.revision)).revision == second.revision
        assert [(a.policy.revision, a.previous) for a in policies.activations(session)] == [
            (first.revision, second.revision), (second.revision, first.revision), (first.revision, None)]
        actions = [(e.action, e.record["policy"]["revision"]) for e in records.query_events(session)]
    assert active_policy(store).revision == first.revision
    assert actions == [("load", first.revision), ("load", second.revision), ("activate", first.revision),
                       ("activate", second.revision), ("activate", first.revision)]


def test_active_policy_without_an_activation_says_what_to_do(store):
    with pytest.raises(StoreError, match=r"no policy revision is active in .*\(fw policy load PATH --activate\)"):
        active_policy(store)


def test_the_daemon_loader_reads_the_store_for_its_label_and_files_otherwise(store, tmp_path, policy_file):
    first, _ = stored(store, POLICY_V2, tmp_path, "v2.yaml")
    with store.session() as session:
        policies.activate(session, session.merge(first))
    load = policy_loader(store)
    assert load(store.label).revision == first.revision
    assert load(str(policy_file)).revision == load_policy(policy_file).revision


def test_diff_names_the_rules_and_shows_the_sources(store, tmp_path):
    old, _ = stored(store, POLICY, tmp_path, "a.yaml")
    new, _ = stored(store, POLICY_V2.replace("  - {name: allow-web", "  - {name: allow-ntp, action: accept, "
                                             "proto: udp, dport: 123}\n  - {name: allow-web"), tmp_path, "a.yaml")
    result = policies.diff(old, new)
    assert result.added == ["allow-ntp", "allow-dns"]
    assert result.removed == []
    assert result.changed == ["allow-ssh"]
    assert result.moved == []
    assert f"--- {old.revision}/{tmp_path}/a.yaml\n" in result.text
    assert "-  - {name: allow-ssh, action: accept, proto: tcp, src: $clients, dport: 22}\n" in result.text
    assert "+  - {name: allow-ssh, action: accept, proto: tcp, src: $clients, dport: [22, 2222]}\n" in result.text


def test_diff_of_a_reordering_names_the_moved_rule(store, tmp_path):
    lines = POLICY.splitlines(keepends=True)
    reordered = "".join(lines[:5] + [lines[7], lines[5], lines[6]])  # block-telnet first
    old, _ = stored(store, POLICY, tmp_path, "a.yaml")
    new, _ = stored(store, reordered, tmp_path, "a.yaml")
    result = policies.diff(old, new)
    assert (result.added, result.removed, result.changed, result.moved) == ([], [], [], ["block-telnet"])


def test_a_folder_is_stored_file_by_file(store, tmp_path):
    folder = tmp_path / "policy.d"
    folder.mkdir()
    (folder / "10-base.yaml").write_text("version: 1\ndefaults: {action: drop}\n")
    (folder / "20-rules.yaml").write_text("rules:\n  - {name: allow-ssh, action: accept, proto: tcp, dport: 22}\n")
    with store.session() as session:
        record, _ = policies.store_policy(session, load_policy(folder), str(folder))
    assert [Path(name).name for name, _text in record.sources] == ["10-base.yaml", "20-rules.yaml"]
    assert policies.source_text(record) == (
        f"# ==> {folder}/10-base.yaml <==\nversion: 1\ndefaults: {{action: drop}}\n\n"
        f"# ==> {folder}/20-rules.yaml <==\nrules:\n  - {{name: allow-ssh, action: accept, proto: tcp, dport: 22}}\n")
    assert policies.policy_of(record).revision == load_policy(folder).revision


# -- events and counters --------------------------------------------------------------------------


def engine_events(policy_path: Path) -> list[dict]:
    """Real engine events: a session opened (logged rule), a drop (logged rule), the session's end."""
    engine = Engine(load_policy(policy_path))
    opened = engine.process(build.tcp("198.51.100.10", "203.0.113.10", 40000, 80, 100, 0, 2), 10.0)
    dropped = engine.process(build.tcp("198.51.100.10", "203.0.113.10", 40001, 23, 100, 0, 2), 11.0)
    ended = engine.expire(10_000.0)
    return [e.event for e in opened.effects + dropped.effects + ended if isinstance(e, LogEvent)]


def test_events_are_stored_as_eve_records_with_columns_to_filter_on(store, policy_file):
    base = float(int(time.time()) - 20_000)  # wall clock = engine clock + base (recent: not pruned)
    writer = EventWriter(store, clock_offset=lambda: base).start()
    for event in engine_events(policy_file):
        writer.submit(event)
    writer.close()
    assert (writer.stats()["written"], writer.lost) == (3, 0)
    with store.session() as session:
        rows = records.query_events(session)
        columns = [(r.time - base, r.event_type, r.action, r.verdict, r.reason, r.rule, r.proto, r.src_ip,
                    r.src_port, r.dest_ip, r.dest_port, r.count) for r in rows]
        drops = records.query_events(session, verdict="drop")
        web = records.query_events(session, rule="allow-web")
        late = records.query_events(session, since=base + 11)
        flows = records.query_events(session, event_type="flow", until=base + 11)
    assert columns == [
        (10.0, "flow", "new", "accept", "rule:allow-web", "allow-web", "TCP", "198.51.100.10", 40000,
         "203.0.113.10", 80, 1),
        (11.0, "drop", "drop", "drop", "rule:block-telnet", "block-telnet", "TCP", "198.51.100.10", 40001,
         "203.0.113.10", 23, 1),
        (10_000.0, "flow", "end", "accept", "timeout", "allow-web", "TCP", "198.51.100.10", 40000,
         "203.0.113.10", 80, 1),
    ]
    assert [r.reason for r in drops] == ["rule:block-telnet"]
    assert [r.action for r in web] == ["new", "end"]
    assert [r.action for r in late] == ["drop", "end"]
    assert [r.action for r in flows] == ["new"]
    record = rows[0].record
    assert record["timestamp"] == records.wall_timestamp(base + 10)
    assert record["flow"]["start"] == records.wall_timestamp(base + 10)
    assert rows[2].record["flow"]["end"] == records.wall_timestamp(base + 10_000)
    assert "time" not in record and record["fw"]["version"] == 1
    assert records.describe(rows[2]) == (
        f"{records.wall_timestamp(base + 10_000)} flow end accept timeout rule=allow-web "
        "tcp 198.51.100.10:40000 -> 203.0.113.10:80 packets=1/0 bytes=40/0")


def test_rule_counters_add_up(store):
    with store.session() as session:
        records.add_rule_counts(session, {"allow-web": (10, 1500, 2), "allow-ssh": (1, 60, 1)}, when=100.0)
    with store.session() as session:
        records.add_rule_counts(session, {"allow-web": (5, 500, 1), "idle": (0, 0, 0)}, when=200.0)
    with store.session() as session:
        counts = {name: (c.packets, c.bytes, c.sessions, c.last_hit)
                  for name, c in records.rule_counts(session).items()}
    assert counts == {"allow-web": (15, 2000, 3, 200.0), "allow-ssh": (1, 60, 1, 100.0)}


def test_old_events_are_pruned(store):
    with store.session() as session:
        for when in (100.0, 200.0, 300.0):
            session.add(records.event_row({"event_type": "policy", "policy": {"event": "load"}}, when))
    with store.session() as session:
        assert records.prune_events(session, before=250.0) == 2
    with store.session() as session:
        assert [row.time for row in records.query_events(session)] == [300.0]


# -- the command line on both backends ------------------------------------------------------------


def test_the_policy_commands_work_on_this_database(db_url, policy_file, tmp_path):
    register(main)
    runner = CliRunner()
    loaded = runner.invoke(main, ["policy", "load", str(policy_file), "--db", db_url, "--activate", "--json"])
    assert loaded.exit_code == 0, loaded.output
    listed = runner.invoke(main, ["policy", "list", "--db", db_url])
    assert listed.exit_code == 0
    revision = load_policy(policy_file).revision
    assert listed.stdout.startswith(f"* {revision}  ")
    shown = runner.invoke(main, ["policy", "show", revision[:6], "--db", db_url])
    assert (shown.exit_code, shown.stdout) == (0, POLICY)


def test_processes_opening_a_new_database_at_once_all_succeed(db_url):
    import sys

    code = "import sys; from fw.store import Store; Store(sys.argv[1]).open(); print('ok')"
    processes = [subprocess.Popen([sys.executable, "-c", code, db_url], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(6)]
    results = [process.communicate(timeout=60) for process in processes]
    assert [out for out, _err in results] == ["ok\n"] * 6, [err for _out, err in results]
    opened = Store(db_url)
    with opened.engine.connect() as connection:
        assert set(inspect(connection).get_table_names()) == TABLES
    opened.dispose()


def test_threads_sharing_a_new_store_migrate_it_once(db_url):
    import threading

    shared, failures = Store(db_url), []

    def use() -> None:
        try:
            with shared.session() as session:
                policies.revisions(session)
        except Exception as error:  # noqa: BLE001
            failures.append(error)

    threads = [threading.Thread(target=use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    shared.dispose()
    assert failures == []
