"""`python -m bench.forward_lab` (root, from the repository's root, alone): owner forwarding against
the hold in the HA lab (fw.sync.lab), with fw1's sync delayed 0, 20 and 200 ms by tests/delay_proxy.py.

What it measures, for each mode (`hold`: sync and the 50 ms hold alone; `forward`: the same with
--forward-to-owner) and each delay:
- `first`: round trips of the first packet of FLOWS new UDP flows (client -> fw1 -> server, the
  echo back through fw2): the echo beats fw1's announcement, so fw2 holds it (hold) or sends it to
  fw1 (forward). Median and p99 in ms, and how many were lost (a held echo dropped at the hold's end);
- `next`: round trips of the packets after the first (PINGS ping-pongs on one flow): with the hold,
  fw2 decides them itself once the session came; forwarded, every echo still goes through fw1;
- `cpu_us`: at delay 0, each daemon's CPU time (user + system, /proc/PID/stat) over the ping-pongs,
  per ping-pong: fw1 judges the requests in both modes (and, forwarded, the echoes too), fw2 the
  echoes (hold) or sends them to fw1 (forward).
Added latency of a forwarded packet = `next` forward - `next` hold; the hold's cost is in `first`.
One JSON document on stdout. Wall-clock times on shared cores: say the load average (printed).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from fw.lab import fw_argv, start_daemon, wait_daemon_ready
from fw.sync.lab import REDIS_PORT, HaLab

PASSWORD = "bench-redis-password"
DELAYS = (0, 20, 200)
FLOWS = 30
PINGS = 2000
POLICY = """\
version: 1
defaults: {action: drop, log: false}
rules:
  - {name: echo, action: accept, proto: udp, src: 198.51.100.0/24, dport: 9999}
"""
ECHO = "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.bind(('', 9999))\n" \
       "while True:\n    data, peer = s.recvfrom(2048)\n    s.sendto(data, peer)\n"  # fmt: skip
CLIENT = textwrap.dedent("""
    import json, socket, sys, time
    flows, pings = int(sys.argv[1]), int(sys.argv[2])
    def exchange(sock, timeout):
        started = time.monotonic()
        sock.settimeout(timeout)
        sock.send(b"x" * 64)
        try:
            sock.recv(2048)
        except socket.timeout:
            return None
        return time.monotonic() - started
    first = []
    for _ in range(flows):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect(("203.0.113.10", 9999))
        first.append(exchange(sock, 0.5))
        sock.close()
        time.sleep(0.02)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("203.0.113.10", 9999))
    exchange(sock, 1.0)
    time.sleep(0.5)  # the session announced everywhere (delay up to 200 ms each way)
    print("steady", flush=True)
    sys.stdin.readline()
    nexts = [exchange(sock, 1.0) for _ in range(pings)]
    print(json.dumps({"first": first, "next": nexts}), flush=True)
""")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summary(times: list) -> dict:
    got = sorted(t for t in times if t is not None)
    if not got:
        return {"lost": len(times)}
    p99 = got[min(len(got) - 1, int(len(got) * 0.99))]
    return {"median_ms": round(statistics.median(got) * 1000, 3), "p99_ms": round(p99 * 1000, 3),
            "lost": len(times) - len(got)}  # fmt: skip


def stats(lab: HaLab, firewall: str) -> dict:
    return json.loads(lab.run(firewall, fw_argv("stats", "--json")).stdout)


def run_case(lab: HaLab, tmp: Path, mode: str, delay_ms: int) -> dict:
    proxy = lab.popen("fw1", [sys.executable, "tests/delay_proxy.py", "--listen", "127.0.0.1:16379", "--upstream",
                              f"{lab.redis_address}:{REDIS_PORT}", "--delay-ms", str(delay_ms), "--lifetime", "300"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    daemons = {}
    try:
        time.sleep(0.5)
        for firewall, url in (("fw1", f"redis://:{PASSWORD}@127.0.0.1:16379/0"), ("fw2", lab.redis_url(PASSWORD))):
            args = ["--sync", url, "--node-id", firewall, "--sync-key-file", str(tmp / "sync.key"), "--cluster", "lab"]
            if mode == "forward":
                args += ["--forward-to-owner", "--forward-listen", f"192.0.2.{firewall[-1]}:6380"]
            daemons[firewall] = start_daemon(lab.view(firewall), tmp / "policy.yaml", tmp / f"{firewall}.log", *args)
        for firewall, process in daemons.items():
            wait_daemon_ready(lab.view(firewall), process, 60)
        _wait_ready(lab, mode)
        client = lab.popen("client", [sys.executable, "-c", CLIENT, str(FLOWS), str(PINGS)], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert client.stdout.readline().strip() == "steady"
        before = {name: cpu_seconds(process.pid) for name, process in daemons.items()}
        client.stdin.write("go\n")
        client.stdin.flush()
        result = json.loads(client.stdout.readline())
        after = {name: cpu_seconds(process.pid) for name, process in daemons.items()}
        client.wait(10)
        holds = {name: stats(lab, name)["sync"]["hold"] for name in daemons}
    finally:
        for process in daemons.values():
            process.terminate()
        for process in daemons.values():
            process.wait(20)
        proxy.terminate()
        proxy.wait(10)
    return {"first": summary(result["first"]), "next": summary(result["next"]),
            "cpu_us_per_ping_pong": {name: round((after[name] - before[name]) / PINGS * 1e6, 1) for name in daemons},
            "held": {name: {"held": hold["held"], "accepted": hold["accepted"], "dropped": hold["dropped"],
                            **hold["wait"]} for name, hold in holds.items()}}  # fmt: skip


def _wait_ready(lab: HaLab, mode: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        views = {name: stats(lab, name) for name in ("fw1", "fw2")}
        heard = all(view["sync"]["peers"] and view["sync"]["loaded"] for view in views.values())
        if heard and (mode == "hold" or all(view["forward"]["decide_at"] for view in views.values())):
            return
        time.sleep(0.3)
    raise RuntimeError("the nodes did not hear each other")


def main() -> None:
    lab = HaLab(f"fb{os.getpid() % 1000}-")
    tmp = Path(tempfile.mkdtemp(prefix="fwbench"))
    (tmp / "policy.yaml").write_text(POLICY)
    (tmp / "sync.key").write_text("a-shared-key-for-the-bench-cluster-0123456789\n")
    (tmp / "sync.key").chmod(0o600)
    os.environ["FW_STATE_DIR"] = str(tmp)
    results = {"load_average_before": os.getloadavg(), "flows": FLOWS, "pings": PINGS}
    try:
        lab.up()
        redis = lab.popen("redis", lab.redis_argv(PASSWORD), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        echo = lab.popen("server", [sys.executable, "-c", ECHO])
        try:
            time.sleep(1)
            for mode in ("hold", "forward"):
                for delay_ms in DELAYS:
                    results[f"{mode} {delay_ms} ms"] = run_case(lab, tmp, mode, delay_ms)
                    lab.run("redis", ["redis-cli", "-h", lab.redis_address, "-a", PASSWORD, "--no-auth-warning",
                                      "FLUSHALL"], check=False)  # fmt: skip
                    print(mode, delay_ms, json.dumps(results[f"{mode} {delay_ms} ms"]), file=sys.stderr, flush=True)
        finally:
            echo.terminate()
            redis.terminate()
            echo.wait(5)
            redis.wait(5)
    finally:
        lab.down()
    results["load_average_after"] = os.getloadavg()
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
