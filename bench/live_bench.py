"""The live part of `make bench`: throughput, small-packet rate and latency through each path.

How it works. One lab (fw.lab, prefix `fwb<pid>-`, client - fw - server over veth, torn down at the
end whatever happens), the client given SOURCES extra addresses. For each path in turn the fw
namespace is set up, measured and reset:
- `kernel forwarding`: no rules; `kernel conntrack`: ESTABLISHED,RELATED accepted, allow rules, drop;
- `bare loop` / `bare loop GSO`: an accept-everything NFQUEUE loop (bench/live_tools.py bare-loop)
  without and with the GSO flag, one process per queue, `--queue-balance` when two;
- `fw run` (GSO on, as always), `fw run --queues 0-1` (two workers), `fw run --offload`;
- `fw run, masquerade` (NAT_POLICY) and `fw run, virtual server` (LB_POLICY: the stream and the
  flood sent to a virtual address, balanced over addresses of the server namespace).
`python -m bench --paths NAME...` measures only some of them (run(paths=...)).
Measures, each the median of RUNS runs of SECONDS: TCP throughput (one iperf3 stream, Gbit/s at
the receiver), small UDP packets (64-byte datagrams from UDP_FLOWS client addresses, sent paced by
one light sender, live_tools.py udp-flood, and counted by the server's kernel, which drops them:
the loss-free rate, RFC 2544's throughput, by bisection up to UDP_OFFERED_PPS, and what arrives
under a flood of UDP_OFFERED_PPS), and ping round trips (median and p99 of PINGS echoes, 10 ms
apart).
Ratios are between paths of the same run. Everything on one 2-core machine: sender, receiver,
kernel and firewall share the cores, which the figures include.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from fw.lab import Lab, LabError, fw_argv, start_daemon, wait_daemon_ready

TOOLS = str(Path(__file__).with_name("live_tools.py"))
SERVER = "203.0.113.10"
SOURCES = [f"198.51.100.{n}" for n in range(101, 165)]
TCP_PORT, UDP_PORT = 5201, 9000
UDP_FLOWS = 64  # client addresses sending UDP, one flow each: the queue hash spreads addresses, not ports
UDP_OFFERED_PPS = 200_000  # the flood, all streams together; the loss-free search's first step
# The loss-free search doubles its rate from UDP_OFFERED_PPS while every step passes (up to
# UDP_SEARCH_TOP_PPS, where it stops: `udp_capped`), then bisects: so a path faster than the flood
# (kernel conntrack) is measured, not reported as the flood's rate.
UDP_SEARCH_TOP_PPS = 1_600_000
UDP_PAYLOAD = 64
UDP_LOSS_TOLERANCE = 0.005  # "loss-free": at most 0.5% of the datagrams lost
UDP_SEARCH_STEPS = 10
UDP_SEARCH_PRECISION = 0.02  # of the lowest rate that lost: the search ends when high - low is below it
UDP_PORT_COUNT = 8
UDP_PORTS = f"{UDP_PORT}-{UDP_PORT + UDP_PORT_COUNT - 1}"
UDP_DRAIN_SECONDS = 0.3
# The sender stays on CPU 0. Left to the scheduler, it and the firewall's one reader were often put
# on the same core (a waker pulls its wakee), which lost packets with the other core half idle.
SENDER_CPU = 0
RECEIVER_RULE = ["PREROUTING", "-p", "udp", "--dport", UDP_PORTS.replace("-", ":"), "-j", "DROP"]
PINGS = 200
POLICY = f"""\
version: 1
defaults: {{action: drop, log: false}}
rules:
  - {{name: bench-tcp, action: accept, proto: tcp, src: 198.51.100.0/24, dport: [{TCP_PORT}, "{UDP_PORTS}"]}}
  - {{name: bench-udp, action: accept, proto: udp, src: 198.51.100.0/24, dport: "{UDP_PORTS}"}}
  - {{name: bench-ping, action: accept, proto: icmp, icmp_type: echo-request}}
"""
CONNTRACK_RULES = [
    ["-A", "FORWARD", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
    ["-A", "FORWARD", "-p", "tcp", "-s", "198.51.100.0/24", "-m", "multiport", "--dports",
     f"{TCP_PORT},{UDP_PORTS.replace('-', ':')}", "-j", "ACCEPT"],
    ["-A", "FORWARD", "-p", "udp", "-s", "198.51.100.0/24", "--dport", UDP_PORTS.replace("-", ":"), "-j", "ACCEPT"],
    ["-A", "FORWARD", "-p", "icmp", "--icmp-type", "echo-request", "-j", "ACCEPT"],
    ["-A", "FORWARD", "-j", "DROP"],
]
# NAT: the same policy with the clients masqueraded toward the server (fw run's two passes: every
# packet of a translated session crosses the queue twice, before and after routing, and the
# figures include both trips; `daemon.queue_trips` counts them).
NAT_POLICY = POLICY + "nat:\n  - {name: bench-out, type: masquerade, src: 198.51.100.0/24, oif: wan}\n"
NAT_PATH = "fw run, masquerade"
# The load balancer: the same policy with the client sending to a virtual address (VIP) whose
# virtual servers (TCP on iperf3's port, UDP on each of the flood's ports) spread sessions with
# maglev over REAL_SERVERS, addresses of the server namespace (two-arm: sources kept). The server's
# counting rule matches the port, not the address, so it counts what reaches every real server.
# Ping still goes to SERVER (ICMP is not balanced). A translating policy: fw run takes NAT's hooks.
LB_PATH = "fw run, virtual server"
VIP = "203.0.113.100"
REAL_SERVERS = ["203.0.113.11", "203.0.113.12", "203.0.113.13"]
LB_POLICY = POLICY + "virtual_servers:\n" + "".join(
    f"  - {{name: bench-{proto}-{port}, address: {VIP}, proto: {proto}, port: {port}, scheduler: maglev,\n"
    f"     real_servers: [{', '.join(f'{{address: {address}}}' for address in REAL_SERVERS)}]}}\n"
    for proto, port in [("tcp", TCP_PORT)] + [("udp", UDP_PORT + n) for n in range(UDP_PORT_COUNT)])
PATHS = ("kernel forwarding", "kernel conntrack", "bare loop", "bare loop GSO", "fw run",
         "bare loop GSO, 2 queues", "fw run --queues 0-1", "fw run --offload", NAT_PATH, LB_PATH)


def unavailable_reason() -> str | None:
    """Why the live part cannot run here, or None."""
    if os.geteuid() != 0:
        return "not root (the lab needs network namespaces, iptables and NFQUEUE)"
    for tool in ("ip", "iptables", "iperf3"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make install)"
    try:
        import netfilterqueue  # noqa: F401, PLC0415
    except ImportError:
        return "netfilterqueue is not installed in this Python"
    return None


class Bench:
    def __init__(self, lab: Lab, seconds: float, runs: int, folder: Path):
        self.lab, self.seconds, self.runs, self.folder = lab, seconds, runs, folder
        self.policy = folder / "policy.yaml"
        self.policy.write_text(POLICY)
        self.nat_policy = folder / "nat-policy.yaml"
        self.nat_policy.write_text(NAT_POLICY)
        self.lb_policy = folder / "lb-policy.yaml"
        self.lb_policy.write_text(LB_POLICY)
        self.port = TCP_PORT
        self.address = SERVER  # where the TCP stream and the UDP flood go (the VIP for LB_PATH)
        self.firewall_pids: list[int] = []  # the queue readers of the path measured, for cpu_use

    def tool(self, name: str, *args) -> list[str]:
        return self.lab.command(name, [sys.executable, TOOLS, *map(str, args)])

    # -- measurements -------------------------------------------------------------------------

    def tcp(self) -> float:
        """One iperf3 stream for `seconds`: Gbit/s at the receiver."""
        server = subprocess.Popen(self.lab.command("server", ["iperf3", "-s", "-1", "-p", TCP_PORT]),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_listening(self.lab, "server", f"-Hltn sport = :{TCP_PORT}")
            done = self.lab.run("client", ["iperf3", "-c", self.address, "-p", TCP_PORT, "-t", f"{self.seconds:g}",
                                           "-J", "--connect-timeout", "3000"],
                                check=False, timeout=self.seconds + 30)
            result = json.loads(done.stdout or "{}")
            return round(result.get("end", {}).get("sum_received", {}).get("bits_per_second", 0) / 1e9, 3)
        finally:
            _end(server)

    def udp(self, offered: int) -> tuple[int, float, dict, int]:
        """Small UDP datagrams, `offered` packets/s in all for `seconds`, from UDP_FLOWS client
        addresses (live_tools.py udp-flood), counted as they reach the server (its raw table's
        counting rule): (packets/s received, fraction of the offered lost, where the CPU went in
        the middle of the run: `cpu_use`, packets/s the sender handed to the kernel)."""
        self.lab.run("server", ["iptables", "-w", "5", "-t", "raw", "-Z", "PREROUTING"])
        sender = subprocess.Popen(self.tool("client", "udp-flood", "--sources", ",".join(SOURCES[:UDP_FLOWS]),
                                            "--address", self.address, "--ports", UDP_PORTS, "--rate", offered,
                                            "--seconds", f"{self.seconds:g}", "--size", UDP_PAYLOAD,
                                            "--cpu", SENDER_CPU),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(self.seconds * 0.2)
            before = CpuSample.take(self.firewall_pids, received_datagrams(self.lab))
            time.sleep(self.seconds * 0.6)
            cpu = cpu_use(before, CpuSample.take(self.firewall_pids, received_datagrams(self.lab)))
            out, err = sender.communicate(timeout=self.seconds + 30)
        finally:
            _end(sender)
        sent = json.loads(out or "{}")
        if sender.returncode != 0 or not sent.get("seconds"):
            raise LabError(f"udp-flood failed: {err.strip()[-300:]}")
        time.sleep(UDP_DRAIN_SECONDS)  # what is still queued in the firewall arrives
        received = received_datagrams(self.lab)
        # Lost: of what was offered, not of what was sent (a sender starved of CPU sends less).
        return (round(received / sent["seconds"]), max(0.0, 1 - received / (offered * self.seconds)), cpu,
                round(sent["sent"] / sent["seconds"]))

    def udp_loss_free(self) -> tuple[int, list]:
        """RFC 2544 throughput: the highest offered rate that passes with at most UDP_LOSS_TOLERANCE
        lost (loss_free_search). (received packets/s there, the trials)."""
        best, trials = 0, []
        offered: int | None = UDP_OFFERED_PPS
        while offered is not None:
            received, lost, cpu, sent_pps = self.udp(offered)
            passed = lost <= UDP_LOSS_TOLERANCE
            trials.append({"offered": offered, "sent": sent_pps, "received": received, "lost": round(lost, 4),
                           "passed": passed, "cpu": cpu})
            if passed:
                best = max(best, received)
            offered = next_offered(trials)
        return best, trials

    def ping(self) -> dict:
        done = subprocess.run(self.tool("client", "ping", "--address", SERVER, "--count", PINGS),
                              capture_output=True, timeout=PINGS * 1.1 + 30)
        rtts = sorted(json.loads(done.stdout)["rtts_ms"])
        if not rtts:
            return {"median_ms": None, "p99_ms": None, "lost": PINGS}
        return {"median_ms": round(statistics.median(rtts), 4),
                "p99_ms": round(rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))], 4), "lost": PINGS - len(rtts)}

    def measure(self, path: str) -> dict:
        tcp = [self.tcp() for _ in range(self.runs)]
        floods = [self.udp(UDP_OFFERED_PPS) for _ in range(self.runs)]
        flood = [received for received, _, _, _ in floods]
        loss_free, trials = self.udp_loss_free()
        passed = [trial for trial in trials if trial["passed"]]
        row = {"path": path, "tcp_gbit": statistics.median(tcp), "tcp_runs": tcp,
               "udp_pps": loss_free, "udp_trials": trials, "udp_capped": all(trial["passed"] for trial in trials),
               "udp_cpu": max(passed, key=lambda trial: trial["received"])["cpu"] if passed else None,
               "udp_flood_cpu": sorted(floods, key=lambda run: run[0])[len(floods) // 2][2],
               "udp_flood_pps": round(statistics.median(flood)), "udp_flood_runs": flood, "ping": self.ping()}
        print(f"  {path:28} TCP {row['tcp_gbit']:6.2f} Gbit/s  UDP {row['udp_pps']:>7} packets/s loss-free, "
              f"{row['udp_flood_pps']:>7} under flood  "
              f"ping median {row['ping']['median_ms']} ms p99 {row['ping']['p99_ms']} ms", flush=True)
        return row

    # -- the paths ----------------------------------------------------------------------------

    def iptables(self, *rules: list[str]) -> None:
        for rule in rules:
            self.lab.run("fw", ["iptables", "-w", "5", *rule])

    def reset(self) -> None:
        self.lab.run("fw", ["iptables", "-w", "5", "-F", "FORWARD"], check=False)
        self.lab.run("fw", ["conntrack", "-F"], check=False)

    def path(self, path: str) -> dict:
        self.reset()
        try:
            if path == "kernel forwarding":
                return self.measure(path)
            if path == "kernel conntrack":
                self.iptables(*CONNTRACK_RULES)
                return self.measure(path)
            if path.startswith("bare loop"):
                return self.bare(path, gso="GSO" in path, queues=2 if "2 queues" in path else 1)
            if path == NAT_PATH:
                return self.daemon(path, [], self.nat_policy)
            if path == LB_PATH:
                self.address = VIP
                return self.daemon(path, [], self.lb_policy)
            return self.daemon(path, path.split()[2:])
        finally:
            self.reset()

    def bare(self, path: str, gso: bool, queues: int) -> dict:
        loops = [subprocess.Popen(self.tool("fw", "bare-loop", "--queue", q, "--gso", int(gso)),
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) for q in range(queues)]
        try:
            for loop in loops:
                loop.stdout.readline()  # {"ready": true}
            self.firewall_pids = [loop.pid for loop in loops]
            target = ["--queue-num", "0"] if queues == 1 else ["--queue-balance", f"0:{queues - 1}"]
            states = "INVALID,NEW,RELATED,ESTABLISHED,UNTRACKED"  # as the daemon's chain: conntrack on
            self.iptables(["-A", "FORWARD", "-m", "conntrack", "--ctstate", states],
                          ["-A", "FORWARD", "-j", "NFQUEUE", *target])
            return self.measure(path)
        finally:
            for loop in loops:
                _end(loop)

    def daemon(self, path: str, args: list[str], policy: Path | None = None) -> dict:
        log = self.folder / f"daemon-{len(list(self.folder.glob('daemon-*')))}.log"
        process = start_daemon(self.lab, policy or self.policy, log, *args)
        try:
            wait_daemon_ready(self.lab, process, 20)
            self.firewall_pids = [process.pid]
            row = self.measure(path)
            stats = json.loads(self.lab.run("fw", fw_argv("stats", "--json")).stdout)
            row["daemon"] = {"packets": stats["packets"]["total"], "drops": stats["drops"],
                             "queue_trips": stats["packets"]["total"],  # NAT: both passes counted
                             "overflows": sum(q["overflows"] for q in stats["queues"].values()),
                             "offloaded": stats.get("offload", {}).get("offloaded", 0)}
            if "kernel_bindings_made" in stats.get("nat", {}):  # NAT: sessions the kernel translated
                row["daemon"]["kernel_bindings"] = {key: stats["nat"][f"kernel_bindings_{key}"]
                                                    for key in ("made", "failed", "lost")}
            if stats.get("virtual_servers"):  # LB_PATH: sessions opened per real server, all ports
                row["daemon"]["real_servers_opened"] = opened_per_real_server(stats["virtual_servers"])
                print(f"  {'':28} sessions opened per real server: {row['daemon']['real_servers_opened']}", flush=True)
            return row
        except LabError as error:
            raise LabError(f"{path}: {error}\n{log.read_text(errors='replace')[-2000:]}") from None
        finally:
            _end(process, 15)


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuSample:
    """CPU time so far (seconds): all cores busy, the firewall's processes (and their children),
    user + system, and of that the system time (the kernel's work in their syscalls: reading the
    queue, and the verdicts' re-injection, which forwards each packet to the server); and the
    datagrams counted at the server."""

    at: float
    busy: float
    idle: float
    firewall: float
    received: int
    firewall_system: float = 0.0

    @classmethod
    def take(cls, pids: list[int], received: int) -> CpuSample:
        with open("/proc/stat") as stat:
            ticks = [int(field) for field in stat.readline().split()[1:]]
        idle = ticks[3] + ticks[4]  # idle, iowait
        times = [_process_seconds(pid) for pid in _with_descendants(pids)]
        return cls(time.monotonic(), (sum(ticks[:8]) - idle) / CLOCK_TICKS, idle / CLOCK_TICKS,
                   sum(user + system for user, system in times), received, sum(system for _, system in times))


def cpu_use(before: CpuSample, after: CpuSample) -> dict:
    """Cores used between two samples by the firewall's processes (and of that in the kernel, their
    system time) and by everything else (sender, the kernel's work outside them), and each per
    datagram received."""
    seconds = after.at - before.at
    rate = (after.received - before.received) / seconds
    firewall = (after.firewall - before.firewall) / seconds
    system = (after.firewall_system - before.firewall_system) / seconds
    other = max(0.0, (after.busy - before.busy) / seconds - firewall)

    def per_packet(cores: float) -> float | None:
        return round(cores / rate * 1e6, 2) if rate else None

    return {"received_pps": round(rate), "firewall_cores": round(firewall, 3), "other_cores": round(other, 3),
            "idle_cores": round((after.idle - before.idle) / seconds, 3),
            "firewall_us_per_packet": per_packet(firewall), "other_us_per_packet": per_packet(other),
            "firewall_user_us_per_packet": per_packet(firewall - system),
            "firewall_system_us_per_packet": per_packet(system)}


def next_offered(trials: list[dict]) -> int | None:
    """The loss-free search's next rate after these trials (each with `offered` and `passed`), or
    None when it is done: from UDP_OFFERED_PPS, double while every step passes (up to
    UDP_SEARCH_TOP_PPS), then bisect between the highest rate that passed and the lowest that lost
    until they are UDP_SEARCH_PRECISION apart (of the rate that lost, or of UDP_OFFERED_PPS if that is
    higher: 4,000 packets/s below the flood's rate, as before the search went higher); at most
    UDP_SEARCH_STEPS."""
    if len(trials) >= UDP_SEARCH_STEPS:
        return None
    low = max((trial["offered"] for trial in trials if trial["passed"]), default=0)
    high = min((trial["offered"] for trial in trials if not trial["passed"]), default=None)
    if high is None:
        return min(low * 2, UDP_SEARCH_TOP_PPS) if low < UDP_SEARCH_TOP_PPS else None
    if high - low <= max(high, UDP_OFFERED_PPS) * UDP_SEARCH_PRECISION:
        return None
    return (low + high) // 2


def _with_descendants(pids: list[int]) -> list[int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parents[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = set(pids), list(pids)
    while frontier:
        parent = frontier.pop()
        for child in [pid for pid, ppid in parents.items() if ppid == parent and pid not in found]:
            found.add(child)
            frontier.append(child)
    return sorted(found)


def _process_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, all its threads (what getrusage(2) tells the process
    itself); 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def opened_per_real_server(virtual_servers: list[dict]) -> dict[str, int]:
    """Sessions opened per real server address, over every virtual server (fw stats' rows)."""
    opened: dict[str, int] = {}
    for row in virtual_servers:
        for server in row["real_servers"]:
            address = server["server"].rsplit(":", 1)[0]
            opened[address] = opened.get(address, 0) + server["opened"]
    return opened


def received_datagrams(lab: Lab) -> int:
    """Datagrams the server's counting rule (RECEIVER_RULE, raw table) has seen since it was zeroed."""
    listing = lab.run("server", ["iptables", "-w", "5", "-t", "raw", "-nvxL", "PREROUTING"]).stdout
    return sum(int(line.split()[0]) for line in listing.splitlines()[2:] if " DROP " in f" {line} ")


def _wait_listening(lab: Lab, name: str, ss_filter: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not lab.run(name, ["ss", *ss_filter.split()], check=False).stdout.strip():
        if time.monotonic() > deadline:
            raise LabError(f"nothing listens in {name} ({ss_filter})")
        time.sleep(0.02)


def _end(process: subprocess.Popen, timeout: float = 5.0) -> None:
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def ratios(rows: dict[str, dict]) -> dict:
    """The issue's targets and the other comparisons, each a ratio of two paths of this run."""
    def ratio(metric: str, a: str, b: str):
        x, y = rows.get(a, {}).get(metric), rows.get(b, {}).get(metric)
        return round(x / y, 3) if x and y else None

    def cpu_ratio(a: str, b: str):  # CPU per datagram at the loss-free rate, all of it (firewall + rest)
        x, y = (cpu_per_datagram(rows.get(path, {})) for path in (a, b))
        return round(x / y, 3) if x and y else None

    return {
        "tcp: fw run / bare loop GSO (target >= 0.8)": ratio("tcp_gbit", "fw run", "bare loop GSO"),
        "udp: fw run / bare loop GSO (target >= 0.75)": ratio("udp_pps", "fw run", "bare loop GSO"),
        "udp: fw run --queues 0-1 / fw run (target >= 1.4)": ratio("udp_pps", "fw run --queues 0-1", "fw run"),
        "tcp: fw run, masquerade / bare loop GSO (target >= 0.7)": ratio("tcp_gbit", NAT_PATH, "bare loop GSO"),
        "udp: fw run, masquerade / bare loop GSO (target >= 0.7)": ratio("udp_pps", NAT_PATH, "bare loop GSO"),
        "tcp: fw run, masquerade / fw run": ratio("tcp_gbit", NAT_PATH, "fw run"),
        "udp: fw run, masquerade / fw run": ratio("udp_pps", NAT_PATH, "fw run"),
        "tcp: fw run, virtual server / bare loop GSO (target >= 0.7)": ratio("tcp_gbit", LB_PATH, "bare loop GSO"),
        "udp: fw run, virtual server / bare loop GSO (target >= 0.7)": ratio("udp_pps", LB_PATH, "bare loop GSO"),
        "tcp: fw run, virtual server / fw run": ratio("tcp_gbit", LB_PATH, "fw run"),
        "udp: fw run, virtual server / fw run": ratio("udp_pps", LB_PATH, "fw run"),
        "udp flood: fw run, virtual server / bare loop GSO": ratio("udp_flood_pps", LB_PATH, "bare loop GSO"),
        "tcp: fw run --offload / kernel conntrack (target >= 0.9)":
            ratio("tcp_gbit", "fw run --offload", "kernel conntrack"),
        "tcp: bare loop GSO / bare loop": ratio("tcp_gbit", "bare loop GSO", "bare loop"),
        "udp: bare loop 2 queues / 1 queue": ratio("udp_pps", "bare loop GSO, 2 queues", "bare loop GSO"),
        "tcp: fw run / kernel forwarding": ratio("tcp_gbit", "fw run", "kernel forwarding"),
        "tcp: kernel conntrack / kernel forwarding": ratio("tcp_gbit", "kernel conntrack", "kernel forwarding"),
        "udp: fw run / kernel conntrack": ratio("udp_pps", "fw run", "kernel conntrack"),
        "udp: CPU per datagram, fw run / kernel conntrack": cpu_ratio("fw run", "kernel conntrack"),
        "udp: kernel conntrack / kernel forwarding": ratio("udp_pps", "kernel conntrack", "kernel forwarding"),
        "udp flood: fw run / bare loop GSO": ratio("udp_flood_pps", "fw run", "bare loop GSO"),
        "udp flood: fw run --queues 0-1 / fw run": ratio("udp_flood_pps", "fw run --queues 0-1", "fw run"),
        "udp flood: bare loop 2 queues / 1 queue": ratio("udp_flood_pps", "bare loop GSO, 2 queues", "bare loop GSO"),
    }


def cpu_per_datagram(row: dict) -> float | None:
    """All the CPU per datagram at a path's loss-free rate (us): its firewall's processes and the
    rest (the sender and the kernel's work outside them), together."""
    cpu = row.get("udp_cpu") or {}
    if cpu.get("firewall_us_per_packet") is None or cpu.get("other_us_per_packet") is None:
        return None
    return round(cpu["firewall_us_per_packet"] + cpu["other_us_per_packet"], 2)


def latency_added(rows: dict[str, dict]) -> dict:
    """Ping median and p99 of each path minus those of kernel forwarding (ms)."""
    base = rows.get("kernel forwarding", {}).get("ping", {})
    added = {}
    for path, row in rows.items():
        ping = row.get("ping", {})
        if base.get("median_ms") is None or ping.get("median_ms") is None:
            continue
        added[path] = {"median_ms": round(ping["median_ms"] - base["median_ms"], 4),
                       "p99_ms": round(ping["p99_ms"] - base["p99_ms"], 4)}
    return added


def run(seconds: float = 3.0, runs: int = 3, paths=PATHS) -> dict:
    """Build the lab, measure every path, tear the lab down; the figures as a dict."""
    started = time.monotonic()
    lab = Lab(f"fwb{os.getpid()}-")
    rows: dict[str, dict] = {}
    print(f"live lab ({lab.prefix}*): {runs} runs of {seconds:g} s per measurement, median kept", flush=True)
    try:
        lab.up()
        for address in SOURCES:
            lab.run("client", ["ip", "addr", "add", f"{address}/24", "dev", "eth0"])
        for address in REAL_SERVERS:  # LB_PATH's real servers
            lab.run("server", ["ip", "addr", "add", f"{address}/24", "dev", "eth0"])
        # The UDP receiver: the server's kernel counts the datagrams and drops them (no socket to feed).
        lab.run("server", ["iptables", "-w", "5", "-t", "raw", "-A", *RECEIVER_RULE])
        with tempfile.TemporaryDirectory(prefix="fw-bench-") as folder:
            for path in paths:
                try:
                    rows[path] = Bench(lab, seconds, runs, Path(folder)).path(path)
                except (LabError, subprocess.SubprocessError, ValueError, KeyError) as error:
                    print(f"  {path}: failed: {error}", flush=True)
                    rows[path] = {"path": path, "error": str(error)}
    finally:
        lab.down()
    return {"seconds_per_run": seconds, "runs": runs, "client_addresses": len(SOURCES), "cpus": os.cpu_count(),
            "paths": rows, "ratios": ratios(rows), "latency_added": latency_added(rows),
            "wall_seconds": round(time.monotonic() - started, 1)}


def print_table(live: dict) -> None:
    print(f"\nlive lab ({live['cpus']} CPUs; median of {live['runs']} runs of {live['seconds_per_run']:g} s)")
    print(f"{'path':28} {'TCP Gbit/s':>10} {'UDP loss-free':>14} {'UDP flood':>10} {'fw us/pkt':>10} "
          f"{'of it sys':>10} {'rest us/pkt':>11} {'ping med ms':>12} {'ping p99 ms':>12}")
    for path, row in live["paths"].items():
        if "error" in row:
            print(f"{path:28} failed: {row['error'][:80]}")
            continue
        ping, cpu = row["ping"], row.get("udp_cpu") or {}
        loss_free = f"{row['udp_pps']}{'+' if row.get('udp_capped') else ''}"
        print(f"{path:28} {row['tcp_gbit']:>10} {loss_free:>14} {row.get('udp_flood_pps')!s:>10} "
              f"{cpu.get('firewall_us_per_packet')!s:>10} {cpu.get('firewall_system_us_per_packet')!s:>10} "
              f"{cpu.get('other_us_per_packet')!s:>11} {ping['median_ms']!s:>12} {ping['p99_ms']!s:>12}")
    print("(us/pkt: CPU per datagram at the loss-free rate, of the firewall's processes (of it sys: their\n"
          " system time, the queue's reads and the verdicts' re-injection and forwarding) and of the rest:\n"
          " the sender and the kernel's forwarding and queueing work outside those processes;\n"
          f" a loss-free rate with +: no step of the search lost, up to {UDP_SEARCH_TOP_PPS:,} packets/s)")
    for name, value in live["ratios"].items():
        print(f"ratio {name}: {value}")
    for path, added in live["latency_added"].items():
        print(f"latency added by {path}: median {added['median_ms']} ms, p99 {added['p99_ms']} ms")
