"""The TFTP ALG with real programs: tftpd-hpa (in.tftpd) in the server namespace, tftp-hpa's client in
the client's, `fw run` in between with a policy that allows nothing but UDP port 69 (default drop).

With `alg: tftp` on that rule a file is fetched whole (sha256 on both sides), over IPv4 and IPv6:
the server answers from a port of its own range to the client's port, admitted as `related:tftp`,
a session whose parent is the request's. Without the ALG the request passes but the answer falls
through to the default drop and no byte arrives.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fw.lab import Lab
from tests.ftp_lab import random_bytes, sha256

pytestmark = [pytest.mark.netns, pytest.mark.root,
              pytest.mark.skipif(shutil.which("in.tftpd") is None or shutil.which("tftp") is None,
                                 reason="tftpd-hpa and tftp-hpa are not installed (scripts/apt-packages.txt)")]

POLICY = """\
version: 1
defaults: {{action: drop, log: true}}
rules:
  - {{name: tftp, action: accept, proto: udp, src: [198.51.100.0/24, "2001:db8:1::/64"], dport: 69{alg}}}
"""
SERVERS = {4: "203.0.113.10", 6: "2001:db8:2::10"}
DATA_PORTS = (50100, 50110)  # the server answers from one of these


class TftpServer:
    """in.tftpd in the server namespace, serving `root` (chrooted), answering from DATA_PORTS."""

    def __init__(self, lab: Lab, root: Path, family: int):
        self.lab, self.root, self.family = lab, root, family
        self.process: subprocess.Popen | None = None
        address = SERVERS[family] if family == 4 else f"[{SERVERS[family]}]"
        self.argv = ["in.tftpd", "--foreground", "--listen", "--secure", f"-{family}", "--address", f"{address}:69",
                     "--port-range", f"{DATA_PORTS[0]}:{DATA_PORTS[1]}", "--user", "nobody", str(root)]

    def __enter__(self) -> TftpServer:
        self.process = self.lab.popen("server", self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 5
        while not self.lab.run("server", ["ss", "-Hlun", "sport", "=", ":69"]).stdout.strip():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise AssertionError("in.tftpd did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc_info) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(5)
        self.process = None


def fetch(lab: Lab, family: int, name: str, out: Path) -> subprocess.Popen:
    """tftp-hpa in the client namespace: get `name` in binary mode into `out`."""
    return lab.popen("client", ["tftp", f"-{family}", "-m", "binary", SERVERS[family], "-c", "get", name, str(out)],
                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                     start_new_session=True)


def stats(fw) -> dict:
    return json.loads(fw.fw("stats", "--json").stdout)


def served(tmp_path: Path) -> tuple[Path, bytes]:
    root = tmp_path / "tftp"
    root.mkdir()
    root.chmod(0o755)
    data = random_bytes(69, 200_000)  # about 400 blocks of 512 bytes
    (root / "image.bin").write_bytes(data)
    (root / "image.bin").chmod(0o644)
    return root, data


@pytest.mark.parametrize("family", [4, 6])
def test_a_file_is_fetched_whole_through_the_alg(lab: Lab, daemon, tmp_path: Path, family: int):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(alg=", alg: tftp"))
    root, data = served(tmp_path)
    out = tmp_path / "fetched.bin"
    fw = daemon(policy)
    with TftpServer(lab, root, family):
        client = fetch(lab, family, "image.bin", out)
        output, _ = client.communicate(timeout=60)
    assert client.returncode == 0, output
    assert sha256(out.read_bytes()) == sha256(data)
    figures = stats(fw)
    accepted = figures["packets"]["by_verdict"]["accept"]
    assert accepted["rule:tftp"] == 1 and accepted["related:tftp"] == 1  # the request, the first answer
    assert accepted["established"] >= 2 * (len(data) // 512)  # every block and its ACK
    assert figures["packets"]["by_verdict"]["drop"] == {}
    sessions = json.loads(fw.fw("sessions", "--json").stdout)["sessions"]
    (transfer,) = [s for s in sessions if "RELATED" in s["flags"]]
    (request,) = [s for s in sessions if s["original"].get("dport") == 69]
    assert DATA_PORTS[0] <= transfer["original"]["sport"] <= DATA_PORTS[1]
    assert transfer["original"]["dport"] == request["original"]["sport"]  # to the client's own port
    assert transfer["parent"] == request["id"] and request["alg"] == "tftp"


def test_without_the_alg_the_answer_is_dropped(lab: Lab, daemon, tmp_path: Path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(alg=""))
    root, _ = served(tmp_path)
    out = tmp_path / "fetched.bin"
    fw = daemon(policy)
    with TftpServer(lab, root, 4):
        client = fetch(lab, 4, "image.bin", out)
        try:
            deadline = time.monotonic() + 20
            while stats(fw)["packets"]["by_verdict"]["drop"].get("default", 0) < 2:  # the server retries
                assert time.monotonic() < deadline, "the server's answers never reached the firewall"
                assert client.poll() is None, "the client finished although its answers are dropped"
                time.sleep(0.1)
        finally:
            os.killpg(client.pid, signal.SIGTERM)
            client.wait(5)
    figures = stats(fw)
    assert figures["packets"]["by_verdict"]["accept"].get("related:tftp", 0) == 0
    assert figures["packets"]["by_verdict"]["accept"]["rule:tftp"] == 1
    assert not out.exists() or out.stat().st_size == 0
