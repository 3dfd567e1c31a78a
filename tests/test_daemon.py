"""`fw run` in the lab: real traffic through NFQUEUE and the real engine, and the operator commands.

Each test gets a lab of its own (client - fw - server, tests/conftest.py) and starts the daemon in
the fw namespace. All traffic is bounded in count and time; every daemon is stopped at the end.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fw.lab import Lab
from tests import netns
from tests.conftest import node_failed

pytestmark = [pytest.mark.netns, pytest.mark.root]

POLICY = """\
version: 1
defaults: {action: drop, log: true}
sets:
  clients: [198.51.100.0/24, "2001:db8:1::/64"]
rules:
  - {name: allow-web, action: accept, proto: tcp, src: $clients, dport: 8080}
  - {name: reject-8082, action: reject, proto: tcp, dport: 8082}
  - {name: allow-udp, action: accept, proto: udp, src: $clients, dport: [6666, 7777]}
  - {name: allow-ping, action: accept, proto: icmp, icmp_type: echo-request}
  - {name: allow-ping6, action: accept, proto: icmpv6, icmp_type: echo-request}
"""

INVALID = """\
version: 1
rules:
  - name: x
    action: alow
"""

# A daemon whose engine fails on every UDP packet from or to port 6666 (the rest is the real engine).
FAULTY = """
import struct, sys
import fw.engine
from fw.cli.daemon import run_command

class FailingOn6666(fw.engine.Engine):
    def process(self, data, now, iif=None, oif=None):
        if data[9:10] == b"\\x11" and 6666 in struct.unpack_from("!HH", data, 20):
            raise RuntimeError("injected failure")
        return super().process(data, now, iif, oif)

fw.engine.Engine = FailingOn6666
run_command.main(sys.argv[1:], prog_name="fw run")
"""


def fw_command(*args: str) -> list[str]:
    """`fw ARGS` with this interpreter."""
    return [sys.executable, "-m", "fw", *args]


class Firewall:
    """`fw run ARGS` in the lab's fw namespace, output in a file."""

    def __init__(self, lab: Lab, log: Path, argv: list[str]):
        self.lab, self.log = lab, log
        with open(log, "ab") as out:
            self.process = lab.popen(lab.firewall, argv, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 15.0) -> Firewall:
        deadline = time.monotonic() + timeout
        while self.fw("stats").returncode != 0:
            assert self.process.poll() is None, f"fw run exited {self.process.returncode}:\n{self.output()}"
            assert time.monotonic() < deadline, f"fw run not ready after {timeout} s:\n{self.output()}"
            time.sleep(0.1)
        return self

    def fw(self, *args: str, name: str | None = None) -> subprocess.CompletedProcess:
        return self.lab.run(name or self.lab.firewall, fw_command(*args), check=False)

    def json(self, *args: str):
        done = self.fw(*args, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise AssertionError(f"fw run ignored signal {sig}:\n{self.output()}") from None


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


@pytest.fixture
def firewall(lab: Lab, tmp_path: Path, policy: Path, request: pytest.FixtureRequest):
    """firewall(*args, argv=None): start `fw run --policy POLICY ARGS` and wait until it answers."""
    started: list[Firewall] = []

    def start(*args: str, script: str | None = None, wait: bool = True) -> Firewall:
        run = ["run", "--policy", str(policy), "--log", str(tmp_path / "eve.json"), *args]
        argv = [sys.executable, "-c", script, *run[1:]] if script else fw_command(*run)
        started.append(Firewall(lab, tmp_path / f"fw-{len(started)}.log", argv))
        return started[-1].wait_ready() if wait else started[-1]

    yield start
    statuses = [fw.stop() for fw in started]
    if node_failed(request.node) or any(status not in (0, -signal.SIGKILL) for status in statuses):
        for fw in started:
            sys.stderr.write(f"--- {fw.log} ---\n{fw.output()}\n")
    assert all(status in (0, -signal.SIGKILL) for status in statuses), statuses


@pytest.fixture
def web(lab: Lab, tmp_path: Path):
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "index.html").write_text("through the firewall\n")
    with netns.http_server(lab, tmp_path / "www", 8080, lifetime=60), \
            netns.http_server(lab, tmp_path / "www", 8081, lifetime=60):
        yield


def get(lab: Lab, address: str, port: int, max_time: float = 3.0) -> subprocess.CompletedProcess:
    return netns.curl(lab, netns.url(address, port, "/index.html"), max_time=max_time)


def ruleset(lab: Lab) -> str:
    text = lab.run(lab.firewall, ["iptables-save"]).stdout + lab.run(lab.firewall, ["ip6tables-save"]).stdout
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    return "\n".join(re.sub(r"\[\d+:\d+\]", "", line) for line in lines)


# -- traffic --------------------------------------------------------------------------------------


@pytest.mark.parametrize("server", ["203.0.113.10", "2001:db8:2::10"])
def test_the_policy_decides_new_flows_and_replies_pass_as_established(lab, firewall, web, server):
    fw = firewall()
    assert get(lab, server, 8080).stdout == "through the firewall\n"
    assert get(lab, server, 8081, max_time=1.5).returncode == 28  # SYN dropped: curl times out
    started = time.monotonic()
    refused = get(lab, server, 8082)
    assert refused.returncode == 7 and time.monotonic() - started < 2  # our RST: refused at once
    stats = fw.json("stats")
    assert stats["packets"]["by_verdict"]["accept"]["rule:allow-web"] == 1
    assert stats["packets"]["by_verdict"]["accept"]["established"] >= 4
    assert stats["drops"]["default"] >= 1
    assert stats["drops"]["rule:reject-8082"] >= 1
    assert stats["effects"]["packets_sent"] >= 1
    assert stats["errors"] == {"engine": 0, "effects": 0, "verdict": 0, "loop": 0, "expire": 0}
    sessions = fw.json("sessions")["sessions"]
    assert [(s["proto"], s["rule"], s["original"]["src"], s["original"]["dport"]) for s in sessions] == [
        ("tcp", "allow-web", "198.51.100.10" if "." in server else "2001:db8:1::10", 8080)]


def test_ping_both_families_and_the_event_log(lab, firewall, tmp_path):
    firewall()
    assert netns.ping(lab, "203.0.113.10", count=2) == 2
    assert netns.ping(lab, "2001:db8:2::10", count=2) == 2
    assert netns.udp_exchange(lab, "203.0.113.10", 5353, [b"dropped"], timeout=0.5) == [None]
    time.sleep(1.2)  # the loop flushes the log every turn
    events = [json.loads(line) for line in (tmp_path / "eve.json").read_text().splitlines()]
    drops = [e for e in events if e["event_type"] == "drop"]
    assert len(drops) == 1
    drop = drops[0]
    assert (drop["src_ip"], drop["dest_ip"], drop["dest_port"], drop["proto"]) == (
        "198.51.100.10", "203.0.113.10", 5353, "UDP")
    assert drop["fw"]["reason"] == "default" and drop["fw"]["version"] == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d{4}", drop["timestamp"])


# -- fail-open and fail-closed ----------------------------------------------------------------------


def test_fail_closed_drops_everything_while_no_daemon_listens_until_fw_cleanup(lab, firewall, web):
    before = ruleset(lab)
    fw = firewall()
    assert "fail-closed: traffic is dropped when no daemon listens or the queue is full" in fw.output()
    assert fw.stop(signal.SIGKILL) == -signal.SIGKILL
    assert get(lab, "203.0.113.10", 8080, max_time=1.5).returncode == 28
    assert "-j FW-FORWARD" in ruleset(lab)
    cleaned = fw.fw("cleanup")
    assert cleaned.returncode == 0 and "chain FW-FORWARD" in cleaned.stdout
    assert ruleset(lab) == before
    assert get(lab, "203.0.113.10", 8081).returncode == 0  # no firewall at all now


def test_fail_open_passes_traffic_while_no_daemon_listens(lab, firewall, web):
    fw = firewall("--fail-open")
    assert "fail-open: traffic passes when no daemon listens or the queue is full" in fw.output()
    assert get(lab, "203.0.113.10", 8081, max_time=1.5).returncode == 28  # the policy is in force
    fw.stop(signal.SIGKILL)
    assert get(lab, "203.0.113.10", 8081).stdout == "through the firewall\n"  # --queue-bypass
    assert fw.fw("cleanup").returncode == 0


def test_a_new_daemon_removes_what_a_killed_one_left(lab, firewall, web):
    before = ruleset(lab)
    firewall().stop(signal.SIGKILL)
    fw = firewall()
    assert re.search(r"WARNING: removed \d+ rules and chains left by an earlier run", fw.output())
    assert get(lab, "203.0.113.10", 8080).returncode == 0
    assert fw.stop() == 0
    assert ruleset(lab) == before


UDP_ARRIVALS = """
import json, socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE: the released queue comes at once
sock.bind(("0.0.0.0", int(sys.argv[1])))
sock.settimeout(0.1)
end, arrivals, last = time.monotonic() + float(sys.argv[2]), [], None
while time.monotonic() < end and (last is None or time.monotonic() - last < 2.0):
    try:
        sock.recv(2048)
        last = time.monotonic()
        arrivals.append(round(last, 4))
    except TimeoutError:
        pass
print(json.dumps(arrivals))
"""

UDP_BURST = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for n in range(int(sys.argv[3])):
    sock.sendto(b"%016d" % n, (sys.argv[1], int(sys.argv[2])))
"""


UDP_INTERLEAVED = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for n in range(int(sys.argv[4])):
    sock.sendto(b"%016d" % n, (sys.argv[1], int(sys.argv[2 + n % 2])))
"""


def test_accepts_leave_in_batches_and_the_drops_among_them_stay_dropped(lab, firewall):
    fw = firewall()
    sinks = {port: netns.Background(lab, "server", [sys.executable, "-c", UDP_ARRIVALS, port, 20], 25)
             for port in (7777, 7778)}
    for port in sinks:
        netns.wait_for_port(lab, "server", port, "udp")
    fw.process.send_signal(signal.SIGSTOP)  # all 1,200 wait in the queue, then go in one drain
    try:
        lab.run("client", [sys.executable, "-c", UDP_INTERLEAVED, "203.0.113.10", 7777, 7778, 1200], timeout=30)
        time.sleep(0.3)
    finally:
        fw.process.send_signal(signal.SIGCONT)
    arrivals = {port: sink.json(timeout=30) for port, sink in sinks.items()}
    stats = fw.json("stats")
    assert len(arrivals[7777]) == 600 and arrivals[7778] == []  # allow-udp; 7778: the default drop
    assert stats["drops"] == {"default": 600}
    queue = stats["queues"]["0"]
    assert 600 / 16 <= queue["verdict_batches"] < 600 / 4, queue  # 16 accepts a message, drops between
    assert queue["netlink_errors"] == {} and queue["overflows"] == 0


@pytest.mark.parametrize("mode", ["fail-closed", "fail-open"])
def test_a_full_queue_drops_or_passes_and_the_overflow_is_counted(lab, firewall, mode):
    fw = firewall(*(["--fail-open"] if mode == "fail-open" else []))
    sink = netns.Background(lab, "server", [sys.executable, "-c", UDP_ARRIVALS, 7777, 20], 25)
    netns.wait_for_port(lab, "server", 7777, "udp")
    fw.process.send_signal(signal.SIGSTOP)  # the queue holds 4096 packets; then it is full
    try:
        lab.run("client", [sys.executable, "-c", UDP_BURST, "203.0.113.10", 7777, 6000], timeout=30)
        time.sleep(0.3)
        resumed = time.monotonic()
    finally:
        fw.process.send_signal(signal.SIGCONT)
    arrivals = sink.json(timeout=30)  # it ends 2 s after the last datagram
    while_stopped = sum(1 for t in arrivals if t < resumed)
    queue = fw.json("stats")["queues"]["0"]
    if mode == "fail-closed":
        assert while_stopped == 0
        assert queue["queue_dropped"] >= 1500 and queue["overflows"] >= queue["queue_dropped"]
        assert 4000 <= len(arrivals) <= 4100  # the 4096 queued got their verdict later
    else:
        assert while_stopped >= 1500  # passed without the daemon: the queue was full
        assert len(arrivals) >= 5900
