"""`fw policy load|list|show|diff|activate|test` and `fw log` through click's CliRunner on SQLite:
output, `--json`, and SPEC's exit statuses (0; 1 when the database cannot be used; 2 for bad usage,
an invalid policy or a revision that is not there), each error one line without a traceback."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from fw.cli import main
from fw.cli.store import COMMANDS, POLICY_COMMANDS, parse_time, register
from fw.policy import load_policy
from fw.store import Store, records

POLICY = """\
version: 1
defaults: {action: drop, log: true}
sets:
  clients: [198.51.100.0/24, "2001:db8:1::/64"]
rules:
  - {name: allow-web, action: accept, proto: tcp, src: $clients, dport: [80, 443]}
  - {name: allow-ssh, action: accept, proto: tcp, src: $clients, dport: 22}
  - {name: allow-ping6, action: accept, proto: icmpv6, icmp_type: echo-request}
  - {name: block-telnet, action: drop, proto: tcp, dport: 23}
"""
V2 = POLICY.replace("dport: 22}", "dport: [22, 2222]}")
INVALID = "version: 1\nrules:\n  - name: x\n    action: alow\n"


@pytest.fixture
def fw(tmp_path):
    """`fw(*args)` -> click Result, against a fresh SQLite store (FW_DB) in tmp_path."""
    register(main)
    runner = CliRunner(env={"FW_DB": str(tmp_path / "fw.db")})

    def invoke(*args: str):
        return runner.invoke(main, list(args))

    return invoke


@pytest.fixture
def files(tmp_path):
    paths = {}
    for name, text in (("v1", POLICY), ("v2", V2), ("bad", INVALID)):
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(text)
    return {name: str(path) for name, path in paths.items()}


def revision_of(path: str) -> str:
    return load_policy(path).revision


def assert_one_line_error(result, exit_code: int, pattern: str) -> None:
    assert result.exit_code == exit_code, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert pattern in lines[0], lines[0]


# -- load, list, show, diff, activate ------------------------------------------------------------


def test_load_stores_once_and_prints_the_revision(fw, files):
    rev = revision_of(files["v1"])
    first, again = fw("policy", "load", files["v1"]), fw("policy", "load", files["v1"])
    assert (first.exit_code, again.exit_code) == (0, 0)
    assert first.stdout == f"revision {rev} stored (4 rules, 1 set, default drop, revision {rev})\n"
    assert again.stdout.startswith(f"revision {rev} already stored (")
    answer = json.loads(fw("policy", "load", files["v2"], "--json").stdout)
    assert answer == {"revision": revision_of(files["v2"]), "new": True, "active": False, "daemon": None,
                      "summary": f"4 rules, 1 set, default drop, revision {revision_of(files['v2'])}"}


def test_an_invalid_policy_is_not_stored_and_exits_2(fw, files):
    result = fw("policy", "load", files["bad"])
    assert result.exit_code == 2
    assert f"{files['bad']}:4:13: error: unknown action 'alow'" in result.stderr
    assert "Traceback" not in result.stderr
    assert json.loads(fw("policy", "list", "--json").stdout) == {"revisions": []}


def test_a_missing_policy_file_exits_2(fw, tmp_path):
    result = fw("policy", "load", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2 and "no such file or folder" in result.stderr


def test_list_marks_the_active_revision(fw, files):
    empty = fw("policy", "list")
    assert (empty.exit_code, empty.stdout, empty.stderr) == (0, "", "no revisions stored (fw policy load PATH)\n")
    fw("policy", "load", files["v1"], "--activate")
    fw("policy", "load", files["v2"])
    lines = fw("policy", "list").stdout.splitlines()
    assert [line[:14] for line in lines] == [f"  {revision_of(files['v2'])}", f"* {revision_of(files['v1'])}"]
    assert lines[0].endswith(f"4 rules  {files['v2']}")
    rows = json.loads(fw("policy", "list", "--json").stdout)["revisions"]
    assert [(r["revision"], r["active"], r["rules"]) for r in rows] == [
        (revision_of(files["v2"]), False, 4), (revision_of(files["v1"]), True, 4)]


def test_show_prints_the_stored_source_of_the_active_or_named_revision(fw, files):
    fw("policy", "load", files["v1"], "--activate")
    fw("policy", "load", files["v2"])
    assert fw("policy", "show").stdout == POLICY
    assert fw("policy", "show", revision_of(files["v2"])[:7]).stdout == V2
    answer = json.loads(fw("policy", "show", "active", "--json").stdout)
    assert (answer["revision"], answer["active"], answer["sources"]) == (
        revision_of(files["v1"]), True, [{"name": files["v1"], "text": POLICY}])


def test_show_without_an_active_revision_exits_1(fw, files):
    fw("policy", "load", files["v1"])
    assert_one_line_error(fw("policy", "show"), 1, "Error: no revision is active (fw policy activate REV)")


def test_a_revision_that_is_not_there_exits_2(fw, files):
    fw("policy", "load", files["v1"])
    for args in (("show", "0000"), ("activate", "0000"), ("diff", "0000", "active"), ("test", "--rev", "0000",
                 "--proto", "tcp", "--src", "198.51.100.1", "--dst", "203.0.113.1", "--dport", "1")):
        assert_one_line_error(fw("policy", *args), 2, "Error: no revision '0000' in the store")


def test_show_stats_lists_every_rule_with_its_stored_counters(fw, files, tmp_path):
    fw("policy", "load", files["v1"], "--activate")
    store = Store(str(tmp_path / "fw.db"))
    hit = time.time()
    with store.session() as session:
        records.add_rule_counts(session, {"allow-web": (1200, 345678, 17), "old-rule": (5, 5, 5)}, when=hit)
    store.dispose()
    result = fw("policy", "show", "--stats")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == f"revision {revision_of(files['v1'])} (4 rules, 1 set, default drop, revision " \
                       f"{revision_of(files['v1'])})"
    assert lines[1].split() == ["rule", "action", "packets", "bytes", "sessions", "last", "hit"]
    assert lines[2].split()[:5] == ["allow-web", "accept", "1200", "345678", "17"]
    assert lines[3].split() == ["allow-ssh", "accept", "0", "0", "0", "never"]
    assert [line.split()[0] for line in lines[2:]] == ["allow-web", "allow-ssh", "allow-ping6", "block-telnet"]
    rules = json.loads(fw("policy", "show", "--stats", "--json").stdout)["rules"]
    assert rules[0] == {"name": "allow-web", "action": "accept", "packets": 1200, "bytes": 345678,
                        "sessions": 17, "last_hit": hit}


def test_diff_names_changed_rules_then_shows_the_sources(fw, files):
    fw("policy", "load", files["v1"])
    fw("policy", "load", files["v2"])
    old, new = revision_of(files["v1"]), revision_of(files["v2"])
    result = fw("policy", "diff", old, new)
    assert result.exit_code == 0
    assert result.stdout.splitlines()[:4] == [f"revision {old} -> {new}", "rules changed: allow-ssh",
                                              f"--- {old}/{files['v1']}", f"+++ {new}/{files['v2']}"]
    assert "-  - {name: allow-ssh, action: accept, proto: tcp, src: $clients, dport: 22}" in result.stdout
    answer = json.loads(fw("policy", "diff", old, new, "--json").stdout)
    assert answer["rules"] == {"added": [], "removed": [], "changed": ["allow-ssh"], "moved": []}
    same = fw("policy", "diff", old, old)
    assert same.stdout == f"revision {old} -> {old}\nno changes\n"


def test_activate_switches_and_rolls_back(fw, files):
    fw("policy", "load", files["v1"], "--activate")
    fw("policy", "load", files["v2"])
    old, new = revision_of(files["v1"]), revision_of(files["v2"])
    result = fw("policy", "activate", new[:6])
    assert result.exit_code == 0
    assert result.stdout == f"revision {new} active (was {old})\n"
    assert result.stderr == "daemon not reloaded: no daemon runs in this network namespace\n"
    rolled = json.loads(fw("policy", "activate", old, "--json").stdout)
    assert (rolled["revision"], rolled["previous"]) == (old, new)
    assert fw("policy", "show").stdout == POLICY
    quiet = fw("policy", "activate", new, "--no-reload")
    assert (quiet.stdout, quiet.stderr) == (f"revision {new} active (was {old})\n", "")


# -- fw policy test ---------------------------------------------------------------------------------


def test_policy_test_names_the_deciding_rule_and_why(fw, files):
    result = fw("policy", "test", "--policy", files["v1"], "--proto", "tcp", "--src", "198.51.100.10",
                "--dst", "203.0.113.10", "--dport", "22")
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [
        f"tcp 198.51.100.10:40000 -> 203.0.113.10:22: accept by rule allow-ssh ({files['v1']}:7), "
        f"revision {revision_of(files['v1'])}",
        "  proto tcp is tcp",
        "  src 198.51.100.10 in $clients",
        "  dport 22 in 22",
        "  (1 earlier rules do not match; -v lists them)",
    ]


def test_policy_test_explains_the_default_with_every_rule_skipped(fw, files):
    result = fw("policy", "test", "--policy", files["v1"], "--proto", "tcp", "--src", "192.0.2.1",
                "--dst", "203.0.113.10", "--dport", "22", "-v")
    assert result.stdout.splitlines()[1:] == [
        f"  skipped allow-web ({files['v1']}:6): src 192.0.2.1 not in $clients",
        f"  skipped allow-ssh ({files['v1']}:7): src 192.0.2.1 not in $clients",
        f"  skipped allow-ping6 ({files['v1']}:8): proto tcp is not icmpv6",
        f"  skipped block-telnet ({files['v1']}:9): dport 22 not in 23",
    ]
    assert result.stdout.startswith("tcp 192.0.2.1:40000 -> 203.0.113.10:22: drop by the default action")


def test_policy_test_reads_the_active_revision_and_speaks_json(fw, files):
    fw("policy", "load", files["v2"], "--activate")
    result = fw("policy", "test", "--proto", "icmpv6", "--src", "2001:db8:1::10", "--dst", "2001:db8:2::10",
                "--json")
    answer = json.loads(result.stdout)
    assert (answer["verdict"], answer["reason"], answer["revision"]) == ("accept", "rule:allow-ping6",
                                                                         revision_of(files["v2"]))
    assert answer["flow"] == "icmpv6 2001:db8:1::10 -> 2001:db8:2::10 type 128 code 0"
    assert answer["criteria"] == [
        {"field": "proto", "written": "icmpv6", "packet": "icmpv6", "matches": True},
        {"field": "icmp_type", "written": "echo-request", "packet": "128", "matches": True}]
    assert [s["rule"] for s in answer["skipped"]] == ["allow-web", "allow-ssh"]
    assert answer["skipped"][0]["criterion"] == {"field": "proto", "written": "tcp", "packet": "icmpv6",
                                                 "matches": False}
    dropped = json.loads(fw("policy", "test", "--proto", "tcp", "--src", "198.51.100.9", "--dst", "203.0.113.9",
                            "--dport", "2222", "--json").stdout)
    assert (dropped["verdict"], dropped["reason"], dropped["rule"]["name"]) == ("accept", "rule:allow-ssh",
                                                                                 "allow-ssh")


@pytest.mark.parametrize(("args", "message"), [
    (("--proto", "tcp", "--src", "198.51.100.1", "--dst", "203.0.113.1"), "Error: tcp needs --dport"),
    (("--proto", "icmp", "--src", "2001:db8::1", "--dst", "2001:db8::2"), "Error: icmp is IPv4's"),
    (("--proto", "tcp", "--src", "198.51.100.1", "--dst", "2001:db8::2", "--dport", "1"),
     "Error: --src and --dst must be of one address family"),
    (("--proto", "bogus", "--src", "198.51.100.1", "--dst", "203.0.113.1"), "Error: unknown protocol 'bogus'"),
    (("--proto", "tcp", "--src", "not-an-address", "--dst", "203.0.113.1", "--dport", "1"),
     "does not appear to be an IPv4 or IPv6 address"),
    (("--proto", "udp", "--src", "198.51.100.1", "--dst", "203.0.113.1", "--dport", "1", "--policy", "x",
      "--rev", "y"), "Error: give --policy or --rev, not both"),
])
def test_policy_test_bad_usage_exits_2(fw, args, message):
    result = fw("policy", "test", *args)
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_policy_test_with_an_invalid_policy_exits_2(fw, files):
    result = fw("policy", "test", "--policy", files["bad"], "--proto", "udp", "--src", "198.51.100.1",
                "--dst", "203.0.113.1", "--dport", "53")
    assert result.exit_code == 2 and "unknown action 'alow'" in result.stderr


# -- fw log -------------------------------------------------------------------------------------------


def seed_events(tmp_path, now: float) -> None:
    store = Store(str(tmp_path / "fw.db"))
    with store.session() as session:
        for when, record in (
            (now - 7200, {"event_type": "flow", "src_ip": "198.51.100.10", "src_port": 40000, "dest_ip": "203.0.113.10",
                          "dest_port": 80, "proto": "TCP", "fw": {"event": "new", "reason": "rule:allow-web",
                                                                   "rule": "allow-web"}}),
            (now - 60, {"event_type": "drop", "src_ip": "198.51.100.66", "src_port": 4444, "dest_ip": "203.0.113.10",
                        "dest_port": 23, "proto": "TCP", "fw": {"verdict": "drop", "reason": "rule:block-telnet",
                                                                 "count": 42}}),
        ):
            session.add(records.event_row({"timestamp": records.wall_timestamp(when), **record}, when,
                                          count=record["fw"].get("count", 1)))
    store.dispose()


def test_log_shows_events_oldest_first_with_filters(fw, files, tmp_path):
    now = time.time()
    seed_events(tmp_path, now)
    fw("policy", "load", files["v1"], "--activate")
    lines = fw("log").stdout.splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == [
        "flow new accept rule:allow-web tcp 198.51.100.10:40000 -> 203.0.113.10:80",
        "drop drop rule:block-telnet tcp 198.51.100.66:4444 -> 203.0.113.10:23 x42",
        f"policy load revision {revision_of(files['v1'])} origin={files['v1']} new=True",
        f"policy activate revision {revision_of(files['v1'])}",
    ]
    assert len(fw("log", "--since", "1h").stdout.splitlines()) == 3
    assert [line.split()[1] for line in fw("log", "--verdict", "drop").stdout.splitlines()] == ["drop"]
    assert len(fw("log", "--rule", "allow-web").stdout.splitlines()) == 1
    assert len(fw("log", "--type", "policy", "--limit", "1").stdout.splitlines()) == 1
    until = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now - 3600))
    assert len(fw("log", "--until", until).stdout.splitlines()) == 1
    records_out = [json.loads(line) for line in fw("log", "--verdict", "drop", "--json").stdout.splitlines()]
    assert records_out[0]["event_type"] == "drop" and records_out[0]["fw"]["count"] == 42
    assert records_out[0]["dest_port"] == 23


def test_log_with_a_bad_time_exits_2(fw):
    result = fw("log", "--since", "yesterday")
    assert result.exit_code == 2
    assert "'yesterday' is neither a duration (30s, 10m, 2h, 7d) nor an ISO 8601 time" in result.stderr


def test_parse_time_forms():
    assert parse_time("90s", now=1000.0) == 910.0
    assert parse_time("2h", now=10_000.0) == 2800.0
    assert parse_time("1.5d", now=200_000.0) == 200_000.0 - 129_600
    assert parse_time("2024-05-01T12:00:00+00:00") == 1714564800.0
    with pytest.raises(ValueError):
        parse_time("5 minutes")


# -- a database that cannot be used: exit 1, one line -----------------------------------------------


def every_store_command(files) -> list[tuple[str, ...]]:
    return [("policy", "load", files["v1"]), ("policy", "list"), ("policy", "show"), ("policy", "diff", "a", "b"),
            ("policy", "activate", "a"), ("policy", "test", "--proto", "udp", "--src", "198.51.100.1", "--dst",
                                          "203.0.113.1", "--dport", "53"), ("log",)]


def test_a_corrupt_database_is_one_line_and_exit_1_for_every_command(fw, files, tmp_path):
    (tmp_path / "fw.db").write_bytes(b"\x00garbage" * 512)
    for args in every_store_command(files):
        assert_one_line_error(fw(*args), 1, f"Error: database sqlite:///{tmp_path / 'fw.db'}: file is not a database")


def test_an_unreachable_server_is_one_line_and_exit_1(fw, files):
    for args in every_store_command(files):
        result = fw(*args, "--db", "postgresql://fw:secret@127.0.0.1:1/fw")
        assert_one_line_error(result, 1, "Error: database postgresql://fw:***@127.0.0.1:1/fw: connection failed:")
        assert "secret" not in result.stderr


def test_every_command_has_help_with_an_example():
    for command in POLICY_COMMANDS + COMMANDS:
        assert "Example: fw " in command.help, command.name
    register(main)
    runner = CliRunner()
    for name in ("load", "list", "show", "diff", "activate", "test"):
        result = runner.invoke(main, ["policy", name, "--help"])
        assert result.exit_code == 0 and "Example: fw policy " + name in result.stdout
    assert "Example: fw log" in runner.invoke(main, ["log", "--help"]).stdout


def test_a_stored_revision_that_no_longer_loads_is_not_activated(fw, files, tmp_path):
    from fw.store.models import PolicyRevision

    fw("policy", "load", files["v1"], "--activate")
    store = Store(str(tmp_path / "fw.db"))
    with store.session() as session:  # as if an older fw had accepted what this one refuses
        session.add(PolicyRevision(revision="0123456789ab", created=time.time(), origin="old.yaml", summary="old",
                                   rule_count=1, sources=[["old.yaml", INVALID]]))
    store.dispose()
    assert_one_line_error(fw("policy", "activate", "0123"), 2,
                          "Error: revision 0123456789ab no longer loads: old.yaml:4:13: error: unknown action 'alow'")
    assert_one_line_error(fw("policy", "test", "--rev", "0123", "--proto", "udp", "--src", "198.51.100.1",
                             "--dst", "203.0.113.1", "--dport", "53"), 2, "no longer loads")
    assert fw("policy", "show").stdout == POLICY  # still the old active one
