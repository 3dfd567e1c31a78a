"""`fw policy check`: exit status 0 or 2, located errors and warnings on stderr, --json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fw.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def run(monkeypatch):
    monkeypatch.chdir(ROOT)

    def invoke(*args):
        return CliRunner().invoke(main, ["policy", *args])

    return invoke


def test_valid_policy_prints_a_summary_and_exits_0(run):
    result = run("check", "policies/lab.yaml")
    assert result.exit_code == 0
    assert result.stderr == ""
    (line,) = result.stdout.splitlines()
    assert line.startswith("policies/lab.yaml: ok, 8 rules, 2 sets, default drop, revision ")
    assert len(line.rsplit(" ", 1)[1]) == 12


def test_invalid_policy_prints_every_error_on_stderr_and_exits_2(run):
    result = run("check", "tests/policy_golden/bad-13.yaml")
    assert result.exit_code == 2
    assert result.stdout == ""
    expected = (ROOT / "tests/policy_golden/bad-13.err").read_text()
    assert result.stderr == expected + "tests/policy_golden/bad-13.yaml: 12 errors\n"


def test_spec_example_error_text(run):
    result = run("check", "tests/policy_golden/bad-4.yaml")
    assert result.exit_code == 2
    assert result.stderr.splitlines()[:3] == [
        "tests/policy_golden/bad-4.yaml:14:13: error: unknown action 'alow' (expected accept, drop, reject)",
        "   14 |     action: alow",
        "      |             ^^^^",
    ]


def test_warnings_go_to_stderr_and_keep_exit_0(run):
    result = run("check", "tests/policy_golden/warn-1.yaml")
    assert result.exit_code == 0
    assert result.stderr == (ROOT / "tests/policy_golden/warn-1.err").read_text()
    assert result.stdout.startswith("tests/policy_golden/warn-1.yaml: ok, 11 rules, 3 sets")


def test_folder_policy(run):
    result = run("check", "tests/policy_golden/bad-9")
    assert result.exit_code == 2
    assert "20-rules.yaml:3:3: error: set 'servers' is defined twice" in result.stderr


def test_missing_path_is_an_invalid_policy_not_a_traceback(run):
    result = run("check", "no/such/policy.yaml")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == ["no/such/policy.yaml: error: no such file or folder",
                                          "no/such/policy.yaml: 1 error"]
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_json_output(run):
    good = run("check", "--json", "policies/lab.yaml")
    assert good.exit_code == 0
    document = json.loads(good.stdout)
    assert document["valid"] is True and document["rules"] == 8 and document["diagnostics"] == []
    bad = run("check", "--json", "tests/policy_golden/bad-4.yaml")
    assert bad.exit_code == 2
    (diagnostic,) = json.loads(bad.stdout)["diagnostics"]
    assert diagnostic == {
        "severity": "error", "file": "tests/policy_golden/bad-4.yaml", "line": 14, "col": 13,
        "length": 4, "message": "unknown action 'alow' (expected accept, drop, reject)",
        "source_line": "    action: alow",
    }


def test_help_has_an_example(run):
    for args in (("--help",), ("check", "--help")):
        result = run(*args)
        assert result.exit_code == 0
        assert "Example: fw policy check policies/lab.yaml" in result.stdout
