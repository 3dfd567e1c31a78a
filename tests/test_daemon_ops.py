"""The daemon under an operator: reload (SIGHUP and `fw reload`), killing sessions, failures on one
packet, the INPUT/OUTPUT hooks, one daemon per namespace, and the CLI's exit statuses.

Fixtures and helpers come from tests/test_daemon.py (a lab per test, the daemon in its fw namespace).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from tests import netns
from tests import test_daemon as shared
from tests.test_daemon import FAULTY, INVALID, POLICY, fw_command, get, ruleset

firewall, policy, web = shared.firewall, shared.policy, shared.web  # the fixtures, shared

pytestmark = [pytest.mark.netns, pytest.mark.root]

ONLY_8081 = POLICY.replace("dport: 8080}", "dport: 8081}")

SENDER = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(b"a" * 1000)
print("first", flush=True)
sys.stdin.readline()
s.sendall(b"b" * 1000)
s.shutdown(socket.SHUT_WR)
s.recv(1)
print("done", flush=True)
"""


# -- one packet fails ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "echoed"), [("fail-closed", None), ("fail-open", b"ping")])
def test_an_engine_failure_on_one_packet_gives_the_configured_verdict_and_the_loop_goes_on(
        lab, firewall, mode, echoed):
    fw = firewall(*(["--fail-open"] if mode == "fail-open" else []), script=FAULTY)
    with netns.udp_echo(lab, 6666, count=5, lifetime=20), netns.udp_echo(lab, 7777, count=5, lifetime=20):
        assert netns.udp_exchange(lab, "203.0.113.10", 6666, [b"ping"], timeout=1.0) == [echoed]
        assert netns.udp_exchange(lab, "203.0.113.10", 7777, [b"still", b"fine"]) == [b"still", b"fine"]
    stats = fw.json("stats")
    failed = 1 if mode == "fail-closed" else 2  # fail-open: the echo comes back, and fails too
    assert stats["errors"]["engine"] == failed
    verdict = "drop" if mode == "fail-closed" else "accept"
    assert stats["packets"]["by_verdict"][verdict]["error"] == failed
    assert stats["packets"]["by_verdict"]["accept"]["rule:allow-udp"] == 1
    assert "engine failed on a packet (udp 198.51.100.10:" in fw.output()
    assert "-> 203.0.113.10:6666 (32 bytes)" in fw.output()
    assert "RuntimeError('injected failure')" in fw.output()


# -- reload --------------------------------------------------------------------------------------------


def test_a_bad_policy_is_refused_with_its_errors_and_the_running_one_stays(lab, firewall, web, tmp_path):
    fw = firewall()
    bad = tmp_path / "bad.yaml"
    bad.write_text(INVALID)
    refused = fw.fw("reload", str(bad))
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        f"{bad}:4:13: error: unknown action 'alow' (expected accept, drop, reject)",
        "    4 |     action: alow",
        "      |             ^^^^",
        f"Error: {bad}: invalid policy, the running policy stays",
    ]
    assert get(lab, "203.0.113.10", 8080).returncode == 0
    assert fw.json("stats")["policy"]["reload_failures"] == 1
    missing = fw.fw("reload", str(tmp_path / "nowhere.yaml"))
    assert missing.returncode == 2 and "the running policy stays" in missing.stderr


def test_fw_reload_swaps_the_policy_and_keeps_every_session(lab, firewall, policy, tmp_path):
    fw = firewall()
    sink = netns.tcp_sink(lab, 8080, lifetime=20)
    sender = lab.popen("client", ["timeout", "20", sys.executable, "-c", SENDER, "203.0.113.10", "8080"],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert sender.stdout.readline().strip() == "first"
        before = {s["id"] for s in fw.json("sessions")["sessions"]}
        new_policy = tmp_path / "only-8081.yaml"
        new_policy.write_text(ONLY_8081)
        done = fw.fw("reload", str(new_policy))
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"policy {new_policy} loaded (5 rules, 1 set, default drop")
        sender.stdin.write("go on\n")
        sender.stdin.flush()
        assert sender.stdout.readline().strip() == "done"
    finally:
        sender.kill()
        sender.wait(5)
    assert sink.json()["bytes"] == 2000  # the session opened under the old policy went on
    assert before <= {s["id"] for s in fw.json("sessions")["sessions"]}
    assert netns.curl(lab, netns.url("203.0.113.10", 8080), max_time=1.5).returncode == 28  # new: dropped
    assert fw.json("stats")["policy"]["path"] == str(new_policy)


def test_sighup_rereads_the_policy_file(lab, firewall, web, policy):
    fw = firewall()
    assert get(lab, "203.0.113.10", 8081, max_time=1.5).returncode == 28
    policy.write_text(ONLY_8081)
    fw.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while fw.json("stats")["policy"]["reloads"] != 1:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert get(lab, "203.0.113.10", 8081).returncode == 0


# -- sessions -------------------------------------------------------------------------------------------


def test_sessions_kill_removes_exactly_the_matching_sessions(lab, firewall, web):
    fw = firewall()
    assert get(lab, "203.0.113.10", 8080).returncode == 0
    assert netns.ping(lab, "203.0.113.10") == 1
    table = fw.fw("sessions").stdout.splitlines()
    assert [line.split()[0] for line in table] == ["PROTO", "tcp", "icmp"]
    listed = fw.fw("sessions", "--conntrack")
    assert [line.split()[0] for line in listed.stdout.splitlines()] == ["tcp", "icmp"]
    assert "rule=allow-web" in listed.stdout and "[ASSURED]" in listed.stdout
    assert listed.stderr.strip() == "fw sessions: 2 sessions have been shown."
    assert fw.fw("sessions", "kill", "dport=8080", "rule=allow-web").stdout.strip() == "1 sessions killed"
    assert [s["proto"] for s in fw.json("sessions")["sessions"]] == ["icmp"]
    assert fw.json("stats")["sessions"]["killed"] == 1
    assert fw.fw("sessions", "kill", "all").stdout.strip() == "1 sessions killed"
    bad = fw.fw("sessions", "kill", "colour=red")
    assert bad.returncode == 2 and "bad filter term 'colour=red'" in bad.stderr


def test_stats_zero_starts_the_counters_again(lab, firewall, web):
    fw = firewall()
    assert get(lab, "203.0.113.10", 8080).returncode == 0
    assert fw.json("stats", "--zero")["packets"]["total"] >= 5
    stats = fw.json("stats")
    assert stats["packets"]["total"] == 0
    assert stats["sessions"]["active"] == 1  # sessions are not counters
    text = fw.fw("stats").stdout
    assert "packets: 0 (accepted 0, dropped 0)" in text and "queue 0: 0 overflows" in text


# -- the daemon's own host ---------------------------------------------------------------------------


def test_input_output_hooks_never_queue_loopback_neighbour_discovery_or_our_own_resets(lab, firewall, web):
    fw = firewall("--hooks", "forward,input,output")
    assert "hooks FORWARD,INPUT,OUTPUT" in fw.output()
    # The fw's own address: ICMPv6 echo needs neighbour discovery both ways, which is never queued.
    lab.run(lab.firewall, ["ip", "-6", "neigh", "flush", "all"])
    lab.run("client", ["ip", "-6", "neigh", "flush", "all"])
    assert netns.ping(lab, "2001:db8:1::1") == 1
    # Loopback inside the fw namespace is not judged (the policy would drop a new TCP flow to :9).
    local = lab.run(lab.firewall, ["curl", "-sS", "--max-time", "2", "http://127.0.0.1:9/"], check=False)
    assert local.returncode == 7  # refused by the kernel, not dropped by us (that would be 28)
    # Our RST leaves through OUTPUT with our mark: exempt, so the client is refused at once.
    assert get(lab, "203.0.113.10", 8082).returncode == 7
    stats = fw.json("stats")
    assert stats["packets"]["by_verdict"]["accept"]["rule:allow-ping6"] == 1
    assert "invalid:no-session" not in stats["drops"]


# -- one daemon per namespace, and the CLI's answers -------------------------------------------------


def test_daemons_in_two_namespaces_do_not_collide_and_one_namespace_takes_one(lab, firewall, policy):
    fw = firewall()
    other = subprocess.Popen(lab.command("server", fw_command("run", "--policy", str(policy))),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 15
        while fw.fw("stats", name="server").returncode != 0:
            assert other.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        here, there = fw.json("stats"), json.loads(fw.fw("stats", "--json", name="server").stdout)
        assert here["pid"] == fw.process.pid and there["pid"] == other.pid
        again = lab.run(lab.firewall, fw_command("run", "--policy", str(policy)), check=False)
        assert again.returncode == 1
        assert again.stderr.strip().endswith("Error: another fw daemon is running in this network namespace")
    finally:
        other.send_signal(signal.SIGTERM)
        assert other.wait(15) == 0


def test_the_cli_says_what_is_wrong_in_one_line_with_spec_exit_statuses(lab, tmp_path):
    def fw(*args):
        return lab.run(lab.firewall, fw_command(*args), check=False)

    none = fw("stats")
    assert (none.returncode, none.stderr) == (1, "Error: no fw daemon is running in this network namespace\n")
    assert fw("sessions", "--json").returncode == 1
    assert fw("reload").returncode == 1
    usage = fw("sessions", "kill")
    assert usage.returncode == 2 and "give a filter" in usage.stderr
    both = fw("run", "--policy", "x.yaml", "--queue", "1", "--queues", "1-3")
    assert both.returncode == 2 and "give --queue or --queues, not both" in both.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(INVALID)
    invalid = fw("run", "--policy", str(bad))
    assert invalid.returncode == 2
    assert invalid.stderr.startswith(f"{bad}:4:13: error: unknown action 'alow'")
    assert ruleset(lab) == ""  # nothing was installed
    assert "Traceback" not in none.stderr + usage.stderr + both.stderr + invalid.stderr


def test_queues_a_range_balances_flows_over_several_queues_served_by_one_loop(lab, firewall, web):
    fw = firewall("--queues", "2-3")
    assert "queues 2-3" in fw.output()
    for _ in range(6):
        assert get(lab, "203.0.113.10", 8080).returncode == 0
    stats = fw.json("stats")
    assert sorted(stats["queues"]) == ["2", "3"]
    assert stats["packets"]["by_verdict"]["accept"]["rule:allow-web"] == 6
    assert "--queue-balance 2:3" in ruleset(lab)
