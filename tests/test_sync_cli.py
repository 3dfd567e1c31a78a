"""`fw run --sync ...`: the options are checked before anything starts (exit 2 with one line), and
`fw stats` prints the sync line from the daemon's sync section."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from fw.cli import main
from fw.sync import stats_line
from tests.test_sync_helpers import Node, RedisServer, need_redis, wait_ready


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "sync.key"
    path.write_text("0123456789abcdef0123456789abcdef\n")
    path.chmod(0o600)
    return path


def run(*args: str):
    return CliRunner().invoke(main, ["run", "--policy", "policies/lab.yaml", *args])


@pytest.mark.parametrize("args, message", [
    (["--node-id", "fw1"], "go with --sync URL"),
    (["--sync-defer"], "go with --sync URL"),
    (["--sync", "redis://192.0.2.100:6379/0"], "--sync needs --node-id NAME and --sync-key-file PATH"),
    (["--sync", "redis://192.0.2.100:6379/0", "--node-id", "fw1"], "--sync-key-file"),
    (["--sync", "http://192.0.2.100/", "--node-id", "fw1", "--sync-key-file", "KEY"], "expected redis://"),
    (["--sync", "redis://192.0.2.100:6379/0", "--node-id", "fw 1", "--sync-key-file", "KEY"], "--node-id 'fw 1'"),
    (["--nat-slices", "2"], "--nat-slices goes with --sync URL"),
    (["--sync", "redis://192.0.2.100:6379/0", "--node-id", "alpha", "--sync-key-file", "KEY", "--nat-slices", "2"],
     "--node-id: node id 'alpha': with NAT slices, a node id ends in its number"),
    (["--sync", "redis://192.0.2.100:6379/0", "--node-id", "fw1", "--sync-key-file", "/nonexistent/key"],
     "cannot read the sync key file"),
    (["--sync", "redis://192.0.2.100:6379/0", "--node-id", "fw1", "--sync-key-file", "KEY", "--sync-hold-ms", "-1"],
     "--sync-hold-ms"),
    (["--forward-to-owner"], "--forward-to-owner goes with --sync URL"),
    (["--forward-listen", "192.0.2.1:6380"], "--forward-listen goes with --forward-to-owner"),
    (["--sync", "redis://192.0.2.100:6379/0", "--node-id", "fw1", "--sync-key-file", "KEY", "--forward-to-owner",
      "--forward-listen", "fw1:6380"], "'fw1' is not an IP address"),
    (["--sync", "redis://192.0.2.100:6379/0", "--node-id", "fw1", "--sync-key-file", "KEY", "--forward-to-owner",
      "--forward-listen", "192.0.2.1:70000"], "the port is not 1 to 65535"),
    (["--sync", "redis://192.0.2.100:6379/0", "--node-id", "fw1", "--sync-key-file", "KEY", "--forward-to-owner",
      "--queues", "0-1"], "does not work with --queues yet (one queue only)"),
    (["--sync", "unix:///run/redis.sock", "--node-id", "fw1", "--sync-key-file", "KEY", "--forward-to-owner"],
     "--forward-listen is needed when Redis is reached over a unix socket"),
])  # fmt: skip
def test_bad_sync_options_exit_2_before_anything_starts(args, message, key_file):
    result = run(*[str(key_file) if arg == "KEY" else arg for arg in args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_a_short_key_is_refused(tmp_path):
    short = tmp_path / "short.key"
    short.write_text("tooshort\n")
    result = run("--sync", "redis://192.0.2.100:6379/0", "--node-id", "fw1", "--sync-key-file", str(short))
    assert result.exit_code == 2 and "at least 16 bytes" in result.output


@need_redis
def test_the_stats_line_of_a_running_node(tmp_path):
    server = RedisServer().start()
    node = Node("fw1", server.url, tmp_path)
    try:
        wait_ready(node)
        line = stats_line(node.stats)
    finally:
        node.close()
        server.close()
    assert line.startswith("sync: node fw1, cluster test, redis writer up, reader up; peers: none heard;")
    assert line.endswith("held 0 (accepted 0, dropped 0, full 0), wait median 0.0 ms, worst 0.0 ms")
