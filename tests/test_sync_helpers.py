"""Helpers of the sync tests (no tests here): a real redis-server of the test's own, and sync
nodes (an engine, the daemon's packet handler and a SyncService) driven without a kernel queue.

`KeptPacket` stands in for netfilterqueue's Packet (the queue needs the kernel; the lab tests use
the real one): it records the verdict it is given and when. `pump()` is the daemon's poll loop for
the nodes' wake-up sockets.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from fw.drivers.effects import Effects
from fw.drivers.nfqueue import PacketHandler
from fw.engine import Engine, EngineConfig
from fw.policy import load_policy
from fw.sync.config import SyncConfig
from fw.sync.service import SyncService

KEY = b"test-key-of-the-cluster-0123456789"
POLICY = """
version: 1
defaults: {action: drop, log: false}
sets:
  clients: [198.51.100.0/24]
rules:
  - {name: allow-web, action: accept, proto: tcp, src: $clients, dport: 80}
  - {name: allow-dns, action: accept, proto: udp, src: $clients, dport: 53}
  - {name: allow-ftp, action: accept, proto: tcp, src: $clients, dport: 21, alg: ftp}
"""

need_redis = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")


class RedisServer:
    """redis-server on a unix socket (or 127.0.0.1:port) in a temporary folder, no persistence."""

    def __init__(self, password: str | None = None, tcp: bool = False):
        self.folder = Path(tempfile.mkdtemp(prefix="fwsync"))
        self.socket = self.folder / "redis.sock"
        self.password = password
        self.port = _free_port() if tcp else 0
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        if self.port:
            secret = f":{self.password}@" if self.password else ""
            return f"redis://{secret}127.0.0.1:{self.port}/0"
        return f"unix://{self.socket}?db=0" + (f"&password={self.password}" if self.password else "")

    def start(self) -> RedisServer:
        argv = ["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no",
                "--dir", str(self.folder), "--unixsocket", str(self.socket), "--unixsocketperm", "700"]
        if self.port:
            argv += ["--bind", "127.0.0.1"]
        if self.password:
            argv += ["--requirepass", self.password]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self.cli("PING").endswith("PONG"):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)
        return self

    def cli(self, *args: str) -> str:
        argv = ["redis-cli", "-s", str(self.socket), "--no-auth-warning"]
        if self.password:
            argv += ["-a", self.password]
        done = subprocess.run([*argv, *args], capture_output=True, text=True, timeout=10)
        return done.stdout.strip()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(5)
        self.socket.unlink(missing_ok=True)

    def pause(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class KeptPacket:
    """A queued packet as the handler sees it: bytes, interfaces, and the verdict it gets."""

    indev = outdev = 0

    def __init__(self, data: bytes):
        self.data = data
        self.verdict: str | None = None
        self.when: float | None = None

    def get_payload(self) -> bytes:
        return self.data

    def accept(self) -> None:
        self._give("accept")

    def drop(self) -> None:
        self._give("drop")

    def _give(self, verdict: str) -> None:
        if self.verdict is not None:
            raise RuntimeError("Verdict already given for this packet")
        self.verdict, self.when = verdict, time.monotonic()


class Node:
    """One firewall of a test cluster: engine, packet handler, sync service."""

    def __init__(self, name: str, url: str, tmp_path: Path, key: bytes = KEY, cluster: str = "test", **options):
        policy = tmp_path / "sync-policy.yaml"
        policy.write_text(textwrap.dedent(POLICY))
        self.name = name
        self.engine = Engine(load_policy(policy), EngineConfig(events=False))
        self.errors: list = []
        self.effects = Effects(None, None)
        self.handler = PacketHandler(self.engine, False, self.effects,
                                     lambda where, exc, data: self.errors.append((where, exc)))
        self.service = SyncService(self.engine, self.handler, SyncConfig(url, name, key, cluster, **options))
        self.service.subscribe(self.effects)
        self.handler.defer = self.service.on_decision
        self.service.start()

    def packet(self, data: bytes) -> KeptPacket:
        """Through the handler, as the queue's callback; the packet (verdict given, or not yet)."""
        packet = KeptPacket(data)
        self.handler(packet)
        return packet

    def session(self, key):
        return self.engine.table.sessions.get(key)

    @property
    def stats(self) -> dict:
        return self.service.stats()

    def close(self) -> None:
        self.service.close()


def pump(nodes, until=None, timeout: float = 5.0) -> bool:
    """Run the nodes' wake-ups (as the daemon's loop does) until `until()` holds or time is up."""
    poller = select.poll()
    by_fd = {node.service.fileno(): node for node in nodes}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    while True:
        if until is not None and until():
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return until is None
        for fd, _ in poller.poll(min(left, 0.05) * 1000):
            by_fd[fd].service.on_wake()


def ready(*nodes) -> bool:
    """Every node connected both ways, its snapshot loaded, and (with several) its peers heard."""
    for node in nodes:
        stats = node.stats
        if stats["redis"]["writer"] != "up" or stats["redis"]["reader"] != "up" or not stats["loaded"]:
            return False
        if len(nodes) > 1 and not {n.name for n in nodes if n is not node} <= set(stats["peers"]):
            return False
    return True


def wait_ready(*nodes, timeout: float = 10.0) -> None:
    assert pump(nodes, lambda: ready(*nodes), timeout), [node.stats for node in nodes]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
