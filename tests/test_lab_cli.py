"""`fw lab up|down`: the lab from the command line, its pid and log files, and its errors."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from fw.cli import main
from fw.lab import ATTACKER, CLIENT, SERVER, Lab, daemon_pid, list_namespaces, remove_namespaces, run_dir
from tests import netns

pytestmark = [pytest.mark.netns, pytest.mark.root]


@pytest.fixture
def prefix(lab_prefix):
    """A prefix for a lab the command line builds; whatever it leaves is removed afterwards."""
    chosen = lab_prefix()
    yield chosen
    remove_namespaces(chosen)
    shutil.rmtree(run_dir(chosen), ignore_errors=True)


def namespaces_with(prefix: str) -> set[str]:
    return {name for name in list_namespaces() if name.startswith(prefix)}


def fw(*args: str):
    return CliRunner().invoke(main, list(args))


def test_up_without_daemon_then_down_twice(prefix: str) -> None:
    result = fw("lab", "up", "--no-daemon", "--prefix", prefix)
    assert result.exit_code == 0, result.output
    assert f"{prefix}client 198.51.100.10 2001:db8:1::10" in result.output
    assert namespaces_with(prefix) == {f"{prefix}fw", f"{prefix}client", f"{prefix}server"}
    assert netns.ping(Lab(prefix), "2001:db8:2::10") == 1
    assert fw("lab", "up", "--no-daemon", "--prefix", prefix).exit_code == 0  # idempotent
    result = fw("lab", "down", "--prefix", prefix)
    assert (result.exit_code, result.output) == (0, f"lab {prefix} is down\n")
    assert namespaces_with(prefix) == set()
    assert fw("lab", "down", "--prefix", prefix).exit_code == 0


def test_up_with_the_attacker_and_down_removes_it(prefix: str) -> None:
    assert fw("lab", "up", "--no-daemon", "--attacker", "--prefix", prefix).exit_code == 0
    assert f"{prefix}attacker" in namespaces_with(prefix)
    assert netns.ping(Lab(prefix, (CLIENT, SERVER, ATTACKER)), "203.0.113.10", name="attacker") == 1
    assert fw("lab", "down", "--prefix", prefix).exit_code == 0
    assert namespaces_with(prefix) == set()


def test_up_starts_the_daemon_or_says_why_not(prefix: str, tmp_path) -> None:
    policy = tmp_path / "lab.yaml"
    policy.write_text("version: 1\ndefaults: {action: accept}\nrules: []\n")
    result = fw("lab", "up", "--policy", str(policy), "--prefix", prefix)
    assert namespaces_with(prefix) == {f"{prefix}fw", f"{prefix}client", f"{prefix}server"}
    if "run" in main.commands:
        assert result.exit_code == 0, result.output
        pid = daemon_pid(prefix)
        assert pid is not None and f"firewall running: pid {pid}" in result.output
        result = fw("lab", "down", "--prefix", prefix)
        assert (result.exit_code, f"firewall pid {pid} stopped" in result.output) == (0, True)
    else:  # `fw run` is not written yet: the lab stays up, without a firewall, and says so
        assert result.exit_code == 1
        assert "the firewall daemon exited with status 2: Error: No such command 'run'." in result.output
        assert "the lab is up without a firewall" in result.output
        assert daemon_pid(prefix) is None
        assert not (run_dir(prefix) / "daemon.pid").exists()
        assert fw("lab", "down", "--prefix", prefix).exit_code == 0
    assert namespaces_with(prefix) == set()


def test_up_with_a_missing_policy_is_a_usage_error_and_builds_nothing(prefix: str, tmp_path) -> None:
    result = fw("lab", "up", "--policy", str(tmp_path / "absent.yaml"), "--prefix", prefix)
    assert result.exit_code == 2
    assert "absent.yaml: no such policy file or folder" in result.output
    assert namespaces_with(prefix) == set()


def test_a_bad_prefix_is_a_usage_error() -> None:
    result = fw("lab", "up", "--no-daemon", "--prefix", "bad/prefix")
    assert result.exit_code == 2
    assert "bad lab prefix 'bad/prefix'" in result.output
