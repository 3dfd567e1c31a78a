"""The store with the real daemon in the lab: an established TCP connection keeps working across a
daemon restart through the session snapshot (and one whose session was taken out of the snapshot
does not, so the test can fail), and `fw policy activate` reaches a running daemon as a reload.

The daemon here is fw.daemon.Daemon built the way `fw run --db URL` is to build it (HARNESS:
active revision from the store, the store as its reload source, SnapshotService restored before
start and run as a service), so these tests need nothing but the library pieces.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fw.lab import Lab, fw_argv, wait_daemon_ready
from fw.policy import load_policy

pytestmark = [pytest.mark.netns, pytest.mark.root]

HARNESS = r"""
import logging, sys
from fw.daemon import Daemon, DaemonConfig
from fw.engine import Engine, EngineConfig
from fw.store import SnapshotService, SnapshotStore, Store, active_policy, policy_loader

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s: %(message)s")
store = Store(sys.argv[1]).open()
engine = Engine(active_policy(store), EngineConfig(events=False))
snapshots = SnapshotService(engine, SnapshotStore(sys.argv[2]), interval=3600)
snapshots.restore()
daemon = Daemon(DaemonConfig(policy_path=store.label), engine, policy_loader(store))
daemon.start()
daemon.services.append(snapshots)
print(daemon.describe(), file=sys.stderr, flush=True)
try:
    daemon.run()
finally:
    daemon.close()
"""

ECHO_SERVER = r"""
import socketserver, sys
class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(line)
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer.daemon_threads = True
socketserver.ThreadingTCPServer(("0.0.0.0", int(sys.argv[1])), Echo).serve_forever()
"""

# Connects, exchanges one line, then waits for a line on stdin before it exchanges another.
CLIENT = r"""
import json, socket, sys
def exchange(sock, word):
    sock.sendall(word + b"\n")
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(100)
        if not chunk:
            raise EOFError("closed")
        data += chunk
    return data.decode().strip()
try:
    sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    print(json.dumps({"port": sock.getsockname()[1], "first": exchange(sock, b"one")}), flush=True)
except OSError as error:
    print(json.dumps({"error": type(error).__name__}), flush=True)
    sys.exit(0)
sys.stdin.readline()
try:
    print(json.dumps({"second": exchange(sock, b"two")}), flush=True)
except (OSError, EOFError) as error:
    print(json.dumps({"second": type(error).__name__}), flush=True)
"""

POLICY = """\
version: 1
defaults: {action: drop}
rules:
  - {name: allow-echo, action: accept, proto: tcp, src: 198.51.100.0/24, dport: 7000}
"""
POLICY_WIDER = POLICY + "  - {name: allow-echo-2, action: accept, proto: tcp, src: 198.51.100.0/24, dport: 7001}\n"
STORE_CLI = "from fw.cli import main; from fw.cli.store import register; register(main); main()"


class HarnessDaemon:
    def __init__(self, lab: Lab, db: str, snapshot: Path, log: Path):
        self.lab, self.log = lab, log
        with open(log, "ab") as out:
            self.process = lab.popen(lab.firewall, [sys.executable, "-c", HARNESS, db, str(snapshot)],
                                     stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_daemon_ready(lab, self.process, 15)
        except Exception:
            self.stop()
            raise AssertionError(f"the daemon did not start:\n{log.read_text()}") from None

    def stats(self) -> dict:
        return json.loads(self.lab.run(self.lab.firewall, fw_argv("stats", "--json")).stdout)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)


@pytest.fixture
def store_cli(lab: Lab, tmp_path: Path):
    """`fw policy ...` against the lab's store, run in the firewall namespace."""
    db = f"sqlite:///{tmp_path / 'fw.db'}"

    def run(*args: str, check: bool = True):
        return lab.run(lab.firewall, [sys.executable, "-c", STORE_CLI, *args, "--db", db], check=check)

    run.db = db
    return run


@pytest.fixture
def harness(lab: Lab, tmp_path: Path):
    started: list[HarnessDaemon] = []

    def start(db: str) -> HarnessDaemon:
        daemon = HarnessDaemon(lab, db, tmp_path / "sessions.jsonl", tmp_path / f"daemon-{len(started)}.log")
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


@pytest.fixture
def echo_server(lab: Lab):
    servers = [lab.popen("server", ["timeout", "120", sys.executable, "-c", ECHO_SERVER, str(port)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for port in (7000, 7001)]
    time.sleep(0.5)
    yield
    for server in servers:
        server.terminate()
        server.wait(5)


def client(lab: Lab, port: int, timeout: float = 5.0) -> subprocess.Popen:
    return lab.popen("client", ["timeout", "60", sys.executable, "-c", CLIENT, "203.0.113.10", str(port),
                                str(timeout)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def line(process: subprocess.Popen) -> dict:
    return json.loads(process.stdout.readline())


def test_an_established_connection_survives_a_restart_through_the_snapshot(lab, tmp_path, store_cli, harness,
                                                                            echo_server):
    (tmp_path / "policy.yaml").write_text(POLICY)
    store_cli("policy", "load", str(tmp_path / "policy.yaml"), "--activate")
    first = harness(store_cli.db)
    kept, dropped = client(lab, 7000), client(lab, 7000)
    kept_port, dropped_port = line(kept)["port"], line(dropped)["port"]
    assert first.stats()["sessions"]["active"] == 2
    assert first.stop() == 0

    snapshot = tmp_path / "sessions.jsonl"
    header, *sessions = [json.loads(text) for text in snapshot.read_text().splitlines()]
    assert sorted(s["session"]["sport"] for s in sessions) == sorted([kept_port, dropped_port])
    assert all(s["session"]["state"] == "ESTABLISHED" for s in sessions)
    # Take one connection out of the snapshot: after the restart it has no session and must fail.
    remaining = [s for s in sessions if s["session"]["sport"] == kept_port]
    snapshot.write_text("\n".join(json.dumps(r) for r in [{**header, "sessions": 1}, *remaining]) + "\n")

    second = harness(store_cli.db)
    assert second.stats()["sessions"]["active"] == 1
    for process in (kept, dropped):
        process.stdin.write("go\n")
        process.stdin.flush()
    assert line(kept) == {"second": "two"}
    assert line(dropped) == {"second": "TimeoutError"}
    by_verdict = second.stats()["packets"]["by_verdict"]
    assert by_verdict["accept"].get("established", 0) >= 2  # "two" and its echo
    assert by_verdict["drop"].get("invalid:no-session", 0) >= 1  # the other one's "two"


def test_activation_reaches_the_running_daemon_as_a_reload(lab, tmp_path, store_cli, harness, echo_server):
    (tmp_path / "narrow.yaml").write_text(POLICY)
    (tmp_path / "wider.yaml").write_text(POLICY_WIDER)
    store_cli("policy", "load", str(tmp_path / "narrow.yaml"), "--activate")
    store_cli("policy", "load", str(tmp_path / "wider.yaml"))
    daemon = harness(store_cli.db)
    narrow, wider = (load_policy(tmp_path / name).revision for name in ("narrow.yaml", "wider.yaml"))
    assert narrow in daemon.stats()["policy"]["summary"]
    assert line(client(lab, 7001, timeout=2)) == {"error": "TimeoutError"}  # 7001 not allowed yet

    done = store_cli("policy", "activate", wider[:8])
    assert done.stdout.splitlines() == [f"revision {wider} active (was {narrow})",
                                        f"daemon reloaded: 2 rules, 0 sets, default drop, revision {wider}"]
    stats = daemon.stats()
    assert wider in stats["policy"]["summary"] and stats["policy"]["reloads"] == 1
    opened = client(lab, 7001)
    assert line(opened)["first"] == "one"
    opened.stdin.close()

    rolled = store_cli("policy", "activate", narrow)  # the rollback reaches it the same way
    assert rolled.stdout.splitlines()[1] == f"daemon reloaded: 1 rule, 0 sets, default drop, revision {narrow}"
    assert daemon.stats()["policy"]["reloads"] == 2
