"""`python -m bench --quick`: the offline part prints its table and writes the JSON; the live part's
ratios and latency figures are computed from the paths of one run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench import live_bench

ROOT = Path(__file__).resolve().parents[1]


def test_quick_bench_prints_the_table_and_writes_json(tmp_path: Path):
    output = tmp_path / "results.json"
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--output", str(output)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "benchmark" in lines[1] and "packets/s" in lines[1] and "us/packet" in lines[1]
    for name in ("established", "new sessions, 10 rules", "new sessions, 1000 rules", "new sessions, 10000 rules",
                 "memory per session, 10000 sessions"):
        assert any(line.startswith(name + " ") for line in lines), name
    assert f"written: {output}" in lines
    document = json.loads(output.read_text())
    assert set(document) >= {"python", "results", "ratios", "live", "live_skipped", "seconds"}
    assert document["live"] is None and document["live_skipped"] == "--quick"
    rows = {row["name"]: row for row in document["results"]}
    assert rows["established"]["packets"] == 200000
    for rules in (10, 1000, 10000):
        row = rows[f"new sessions, {rules} rules"]
        assert row["packets"] == 10000 and row["packets_per_second"] > 0 and row["us_per_packet"] > 0
    assert rows["memory per session, 10000 sessions"]["sessions"] == 10000
    assert set(document["ratios"]) == {"new_session_cost_1000_vs_10_rules", "new_session_cost_10000_vs_10_rules",
                                       "established_nat_vs_plain_same_run", "balanced_new_sessions_vs_plain_same_run",
                                       "maglev_build_servers", "maglev_build_cpu_seconds",
                                       "maglev_build_longest_step_cpu_ms", "maglev_rebuild_worst_loop_turn_cpu_ms",
                                       "loop_worst_turn_without_rebuild_cpu_ms"}
    assert 0 < document["ratios"]["balanced_new_sessions_vs_plain_same_run"] < 2
    assert rows["established, snat"]["packets"] == 200000
    assert document["ratios"]["established_nat_vs_plain_same_run"] > 0


def test_live_ratios_are_taken_between_paths_of_the_run():
    rows = {
        "kernel forwarding": {"tcp_gbit": 10.0, "udp_pps": 100000, "ping": {"median_ms": 0.05, "p99_ms": 0.1}},
        "kernel conntrack": {"tcp_gbit": 8.0, "udp_pps": 90000, "ping": {"median_ms": 0.06, "p99_ms": 0.12},
                             "udp_cpu": {"firewall_us_per_packet": 0.0, "other_us_per_packet": 5.0}},
        "bare loop GSO": {"tcp_gbit": 5.0, "udp_pps": 60000, "ping": {"median_ms": 0.1, "p99_ms": 0.3}},
        "fw run": {"tcp_gbit": 4.5, "udp_pps": 40000, "ping": {"median_ms": 0.15, "p99_ms": 0.5},
                   "udp_cpu": {"firewall_us_per_packet": 5.5, "other_us_per_packet": 7.0}},
        "fw run --queues 0-1": {"tcp_gbit": 4.0, "udp_pps": 60000, "ping": {"median_ms": 0.2, "p99_ms": 0.6}},
        "fw run --offload": {"error": "failed"},
        live_bench.LB_PATH: {"tcp_gbit": 3.5, "udp_pps": 42000, "ping": {"median_ms": 0.16, "p99_ms": 0.5}},
    }
    ratios = live_bench.ratios(rows)
    assert ratios["tcp: fw run, virtual server / bare loop GSO (target >= 0.7)"] == 0.7
    assert ratios["udp: fw run, virtual server / bare loop GSO (target >= 0.7)"] == 0.7
    assert ratios["tcp: fw run, masquerade / bare loop GSO (target >= 0.7)"] is None  # not measured
    assert ratios["tcp: fw run / bare loop GSO (target >= 0.8)"] == 0.9
    assert ratios["udp: fw run / bare loop GSO (target >= 0.75)"] == 0.667
    assert ratios["udp: fw run --queues 0-1 / fw run (target >= 1.4)"] == 1.5
    assert ratios["tcp: fw run --offload / kernel conntrack (target >= 0.9)"] is None  # that path failed
    assert ratios["tcp: kernel conntrack / kernel forwarding"] == 0.8
    assert ratios["udp: CPU per datagram, fw run / kernel conntrack"] == 2.5  # (5.5 + 7.0) / (0.0 + 5.0)
    added = live_bench.latency_added(rows)
    assert added["kernel forwarding"] == {"median_ms": 0.0, "p99_ms": 0.0}
    assert added["fw run"] == {"median_ms": 0.1, "p99_ms": 0.4}
    assert "fw run --offload" not in added


def test_the_live_part_says_why_it_cannot_run_unprivileged():
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        reason = live_bench.unavailable_reason()
        assert reason is None or reason.startswith(("not root", "iperf3", "iptables", "ip ", "netfilterqueue"))
        return
    done = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", sys.executable, "-c",
                           "from bench import live_bench; print(live_bench.unavailable_reason())"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "not root (the lab needs network namespaces, iptables and NFQUEUE)", done.stderr


def test_cpu_use_splits_the_busy_cores_between_the_firewall_and_the_rest():
    before = live_bench.CpuSample(at=10.0, busy=100.0, idle=50.0, firewall=40.0, received=1_000,
                                  firewall_system=30.0)
    after = live_bench.CpuSample(at=12.0, busy=103.0, idle=51.0, firewall=41.6, received=201_000,
                                 firewall_system=30.6)
    cpu = live_bench.cpu_use(before, after)
    assert cpu == {"received_pps": 100_000, "firewall_cores": 0.8, "other_cores": 0.7, "idle_cores": 0.5,
                   "firewall_us_per_packet": 8.0, "other_us_per_packet": 7.0,
                   "firewall_user_us_per_packet": 5.0, "firewall_system_us_per_packet": 3.0}
    os.stat("/")  # a syscall or two of our own: some system time
    sample = live_bench.CpuSample.take([os.getpid()], 0)  # this machine's /proc
    assert sample.firewall > 0 and sample.busy >= sample.firewall and sample.idle >= 0
    assert 0 <= sample.firewall_system <= sample.firewall


def _search(capacity: int) -> list[dict]:
    """The loss-free search's trials against a path that passes every rate up to `capacity`."""
    trials: list[dict] = []
    offered = live_bench.UDP_OFFERED_PPS
    while offered is not None:
        trials.append({"offered": offered, "passed": offered <= capacity})
        offered = live_bench.next_offered(trials)
    return trials


def test_the_loss_free_search_goes_above_the_flood_when_the_path_is_faster():
    """Below the flood's rate the search bisects as it did (to 2% of the flood's rate); above it,
    it doubles until a step loses, then bisects, so a fast path is measured, not capped at the
    flood's rate; a path faster than the top is reported as the top, with every step passed."""
    for capacity in (127_000, 317_000, 950_000):
        trials = _search(capacity)
        best = max(trial["offered"] for trial in trials if trial["passed"])
        lost = min(trial["offered"] for trial in trials if not trial["passed"])
        assert best <= capacity < lost, (capacity, trials)
        assert lost - best <= max(lost, live_bench.UDP_OFFERED_PPS) * live_bench.UDP_SEARCH_PRECISION, trials
        assert len(trials) <= live_bench.UDP_SEARCH_STEPS
    assert _search(127_000)[0] == {"offered": live_bench.UDP_OFFERED_PPS, "passed": False}
    capped = _search(10**9)
    assert all(trial["passed"] for trial in capped)
    assert capped[-1]["offered"] == live_bench.UDP_SEARCH_TOP_PPS


def test_the_virtual_server_path_balances_the_stream_and_every_flood_port():
    """LB_PATH's policy loads, and its virtual servers cover iperf3's port (TCP) and each of the
    flood's ports (UDP) on the VIP, maglev over the real servers, which are not the counted SERVER
    but share its counting rule (it matches ports only)."""
    from fw.policy import load_policy_sources

    policy = load_policy_sources([("lb.yaml", live_bench.LB_POLICY)])
    covered = {(vs.proto, vs.port) for vs in policy.virtual_servers}
    flood = {(17, live_bench.UDP_PORT + n) for n in range(live_bench.UDP_PORT_COUNT)}
    assert covered == {(6, live_bench.TCP_PORT)} | flood
    for vs in policy.virtual_servers:
        assert vs.address == live_bench.VIP and vs.scheduler == "maglev"
        assert sorted(server.address for server in vs.real_servers) == live_bench.REAL_SERVERS
    assert live_bench.SERVER not in live_bench.REAL_SERVERS and "-s" not in live_bench.RECEIVER_RULE
    rows = [{"real_servers": [{"server": "203.0.113.11:5201", "opened": 2},
                              {"server": "203.0.113.12:5201", "opened": 1}]},
            {"real_servers": [{"server": "203.0.113.11:9000", "opened": 5}]}]
    assert live_bench.opened_per_real_server(rows) == {"203.0.113.11": 7, "203.0.113.12": 1}


def test_paths_names_the_live_paths_to_measure():
    done = subprocess.run([sys.executable, "-m", "bench", "--paths", "fw run", "no such path"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown path 'no such path'" in done.stderr
    assert live_bench.LB_PATH in done.stderr
