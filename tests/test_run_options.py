"""Every `fw run` option with `--queues A-B`: it works (each worker is built like a single-queue
daemon, fw.runner) or it is refused at start with one line and exit status 2.

Works: --metrics (the supervisor serves its workers' summed numbers), the store (events and rule
counters from every worker, a snapshot file per queue restored on the next start), --db (the
workers load the store's active revision), --offload, --sync (each worker a sync sender of its
own: tests/test_lab_ha_more.py runs it in the HA lab).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fw.daemon import DaemonConfig
from fw.lab import Lab, fw_argv, wait_daemon_ready
from fw.sync import SyncConfig, read_key_file
from fw.workers import worker_spec
from tests import netns
from tests.test_workers import POLICY, SOURCES, exchange


def test_sync_options_reach_every_worker_and_the_key_is_read_again_from_its_file(tmp_path):
    """The supervisor tells each worker where the key is (its spec is JSON on a command line: the
    key itself never goes there); each worker is a sender of its own (its queue)."""
    key = tmp_path / "key"
    key.write_bytes(b"k" * 32)
    key.chmod(0o600)
    config = SyncConfig("redis://:pw@192.0.2.100:6379/0", "fw1", read_key_file(str(key)), "lab", 20, True,
                        key_file=str(key))
    spec = worker_spec(DaemonConfig("p.yaml", queues=(0, 1), sync=config.for_worker()), 1, "p.yaml")
    assert "k" * 32 not in json.dumps(spec)
    worker = SyncConfig.in_worker(json.loads(json.dumps(spec))["sync"], 1)
    assert (worker.url, worker.node, worker.key, worker.cluster, worker.hold_ms, worker.defer, worker.worker) == \
        (config.url, "fw1", b"k" * 32, "lab", 20, True, 1)


def stats(fw) -> dict:
    return json.loads(fw.fw("stats", "--json").stdout)


@pytest.fixture
def many_clients(lab: Lab) -> Lab:
    for address in SOURCES:
        lab.run("client", ["ip", "addr", "add", f"{address}/24", "dev", "eth0"])
    return lab


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


SCRAPE = """
import sys, urllib.request
print(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode())
"""


@pytest.mark.netns
@pytest.mark.root
def test_metrics_with_workers_are_their_numbers_summed(many_clients: Lab, daemon, policy: Path):
    lab = many_clients
    fw = daemon(policy, "--queues", "0-1", "--metrics", "127.0.0.1:9464")
    with netns.udp_echo(lab, 7777, count=len(SOURCES), lifetime=30):
        assert exchange(lab, 7777) == {source: "echo" for source in SOURCES}
    figures = stats(fw)
    assert all(w["sessions"] for w in figures["workers"])  # both workers had flows
    text = ""
    for _ in range(50):  # the supervisor copies the numbers once a second
        text = lab.run(lab.firewall, [sys.executable, "-c", SCRAPE, "9464"]).stdout
        if 'fw_packets_total{reason="rule:allow-udp",verdict="accept"} 16.0' in text:
            break
        lab.run(lab.firewall, ["sleep", "0.1"])
    assert 'fw_packets_total{reason="rule:allow-udp",verdict="accept"} 16.0' in text
    assert 'fw_rule_packets_total{rule="allow-udp"} 32.0' in text
    assert "fw_sessions 16.0" in text


@pytest.mark.netns
@pytest.mark.root
def test_workers_record_to_the_store_and_keep_a_snapshot_each(many_clients: Lab, daemon, policy: Path,
                                                              tmp_path: Path):
    lab = many_clients
    db = f"sqlite:///{tmp_path / 'fw.db'}"
    policy.write_text(POLICY.replace("dport: [7777, 7778]}", "dport: [7777, 7778], log: true}"))
    fw = daemon(policy, "--queues", "0-1", "--db", db)
    with netns.udp_echo(lab, 7777, count=len(SOURCES), lifetime=30):
        assert exchange(lab, 7777) == {source: "echo" for source in SOURCES}
    figures = stats(fw)
    assert figures["rules"]["allow-udp"] == {"packets": 32, "bytes": figures["rules"]["allow-udp"]["bytes"],
                                             "sessions": 16}
    assert fw.stop() == 0  # each worker writes its snapshot and flushes its events on the way out
    state = Path(os.environ["FW_STATE_DIR"])
    files = sorted(p.name for p in state.glob("sessions-*-q*.jsonl"))
    assert [name[-9:] for name in files] == ["-q0.jsonl", "-q1.jsonl"], files
    saved = sum(json.loads(p.read_text().splitlines()[0])["sessions"] for p in state.glob("sessions-*-q*.jsonl"))
    assert saved == 16
    log = lab.run(lab.firewall, [sys.executable, "-m", "fw", "log", "--db", db, "--json", "--rule", "allow-udp",
                                 "--limit", "1000"]).stdout
    assert sum(1 for line in log.splitlines() if json.loads(line)["event_type"] == "flow") >= 16
    again = daemon(policy, "--queues", "0-1", "--db", db)  # each worker restores its own file
    assert stats(again)["sessions"]["active"] == 16


@pytest.mark.netns
@pytest.mark.root
def test_workers_load_the_stores_active_revision(many_clients: Lab, policy: Path, tmp_path: Path):
    lab = many_clients
    db = f"sqlite:///{tmp_path / 'fw.db'}"
    loaded = lab.run(lab.firewall, fw_argv("policy", "load", str(policy), "--activate", "--db", db), check=False)
    assert loaded.returncode == 0, loaded.stderr
    log = tmp_path / "daemon.log"
    with open(log, "ab") as out:  # no --policy: the store's active revision
        process = lab.popen(lab.firewall, fw_argv("run", "--queues", "0-1", "--db", db), stdin=subprocess.DEVNULL,
                            stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_daemon_ready(lab, process, 20)
        figures = json.loads(lab.run(lab.firewall, fw_argv("stats", "--json")).stdout)
        assert [w["pid"] is not None for w in figures["workers"]] == [True, True]
        assert figures["policy"]["path"].startswith("sqlite:") and "1 rule" in figures["policy"]["summary"]
        with netns.udp_echo(lab, 7777, count=len(SOURCES), lifetime=30):
            assert exchange(lab, 7777) == {source: "echo" for source in SOURCES}
    finally:
        process.terminate()
        assert process.wait(15) == 0, log.read_text()


@pytest.mark.netns
@pytest.mark.root
def test_workers_offload_established_flows(lab: Lab, daemon, tmp_path: Path):
    from tests.test_offload import POLICY as OFFLOAD_POLICY

    policy = tmp_path / "offload.yaml"
    policy.write_text(OFFLOAD_POLICY)
    fw = daemon(policy, "--queues", "0-1", "--offload")
    size = 4 << 20
    with netns.tcp_sink(lab, 8080) as sink:
        sent = netns.tcp_send(lab, "203.0.113.10", 8080, size, seed=5)
        assert sink.json() == sent and sent["bytes"] == size
    figures = stats(fw)
    accepted = figures["packets"]["by_verdict"]["accept"]
    assert figures["offload"]["offloaded"] == 1  # by the worker that holds the session
    assert accepted["rule:bulk"] == 1 and accepted["established"] < 20, accepted  # the rest in the kernel
