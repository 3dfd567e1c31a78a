"""`fw top` as an operator sees it: under tmux (80x24), against a real daemon in the lab (issue 17).

A curl and an FTP download go through `fw run --policy policies/lab.yaml`; `fw top` runs in a tmux
pane in the firewall namespace; the test types keys (send-keys) and reads the screen (capture-pane):
both transfers appear, sorting by bytes puts the larger first, the filter `ftp` leaves the FTP
sessions only, k asks before killing and y kills (the row goes, and `fw sessions` agrees), and q and
Ctrl-C quit with status 0, leaving the shell's screen. Each tmux runs on a server of its own
(`tmux -L`), killed at the end.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fw.lab import Lab
from tests import ftp_lab, netns

pytestmark = [pytest.mark.netns, pytest.mark.root,
              pytest.mark.skipif(subprocess.run(["which", "tmux"], capture_output=True).returncode != 0,
                                 reason="tmux is not installed (scripts/apt-packages.txt)")]

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "policies" / "lab.yaml"


class Tmux:
    """One tmux server (-L NAME) with one 80x24 pane running `command`."""

    def __init__(self, name: str, command: str, width: int = 80, height: int = 24):
        self.base = ["tmux", "-L", name, "-f", "/dev/null"]
        env = {**os.environ, "TERM": "xterm-256color"}
        subprocess.run([*self.base, "new-session", "-d", "-s", "top", "-x", str(width), "-y", str(height),
                        command], check=True, env=env)

    def screen(self) -> str:
        return subprocess.run([*self.base, "capture-pane", "-p", "-t", "top"], capture_output=True,
                              text=True, check=True).stdout

    def keys(self, *keys: str) -> None:
        subprocess.run([*self.base, "send-keys", "-t", "top", *keys], check=True)

    def wait(self, predicate, timeout: float = 15.0, what: str = "") -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if predicate(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"the screen never showed {what or predicate}:\n{screen}")
            time.sleep(0.1)

    def close(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True)


def session_lines(screen: str) -> list[str]:
    """The lines of the sessions table (below its header), with at least one address:port."""
    lines = screen.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("PROTO"))
    return [line for line in lines[start + 1:] if re.search(r"\d+\.\d+\.\d+\.\d+:\d+", line)]


@pytest.fixture
def transfers(lab: Lab, tmp_path):
    """A web server with a 2 MB file and an FTP server with a 300 KB file, in the server namespace."""
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "big").write_bytes(os.urandom(2_000_000))
    with netns.http_server(lab, tmp_path / "www", 8080), \
            ftp_lab.FtpServer(lab, tmp_path / "ftp") as ftp:
        ftp.publish("file.bin", os.urandom(300_000))
        yield


def test_top_shows_sorts_filters_and_kills_and_quits(lab: Lab, daemon, transfers, tmp_path) -> None:
    firewall = daemon(POLICY)
    command = (f"ip netns exec {lab.namespace(lab.firewall)} {sys.executable} -m fw top --interval 0.5; "
               f"echo EXITED $?; ip netns exec {lab.namespace(lab.firewall)} {sys.executable} -m fw top; "
               "echo EXITED AGAIN $?; sleep 60")
    tmux = Tmux(f"fwtop{os.getpid()}", command)
    try:
        tmux.wait(lambda s: "sessions 0 of 0" in s and "packets/s" in s, what="the empty view")
        assert netns.curl(lab, netns.url("203.0.113.10", 8080, "/big"), extra=("-o", "/dev/null")).returncode == 0
        got = ftp_lab.curl(lab, ftp_lab.ftp_url("203.0.113.10", "file.bin"), "--ftp-pasv", "-o", "/dev/null")
        assert got.returncode == 0, got.stderr
        screen = tmux.wait(lambda s: ":8080" in s and ":21 " in s and re.search(r":3\d{4}\s+TIME_WAIT.* 30\dk ", s),
                           what="both transfers, done")
        assert "allow-web" in screen and "table 3 of 262144" in screen
        assert netns.curl(lab, netns.url("203.0.113.10", 9999, "/"), max_time=1).returncode == 28  # dropped
        tmux.wait(lambda s: re.search(r"drops/s by reason \(2 min max\): default \S+ \(max [1-9]", s),
                  what="the drop by its reason")
        assert all(len(line) <= 80 for line in screen.splitlines())

        tmux.keys("s", "s")  # bytes/s -> pkts/s -> bytes
        screen = tmux.wait(lambda s: "sort bytes (s)" in s, what="sort by bytes")
        rows = session_lines(screen)
        # the 2 MiB body plus both directions' headers: 2.0M or 2.1M as the segments fall
        assert len(rows) == 3 and ":8080" in rows[0] and re.search(r" 2\.[01]M ", rows[0]), screen
        assert re.search(r" 30\dk ", rows[1]) and ":21 " in rows[2], screen  # the FTP data session, then control

        tmux.keys("/")
        tmux.wait(lambda s: "filter: words to find" in s, what="the filter field")
        tmux.keys("ftp", "Enter")
        screen = tmux.wait(lambda s: "filter 'ftp'" in s and ":8080" not in s, what="the FTP sessions only")
        rows = session_lines(screen)
        assert len(rows) == 2 and all("allow-ftp" in row for row in rows), screen

        tmux.keys("k")
        question = tmux.wait(lambda s: "Kill tcp" in s, what="the kill question")
        victim = re.search(r"Kill tcp (\S+) -> (\S+)", question).groups()
        tmux.keys("n")
        tmux.wait(lambda s: "Kill tcp" not in s, what="the question gone")
        assert len(session_lines(tmux.screen())) == 2  # n kept it
        tmux.keys("k")
        tmux.wait(lambda s: "Kill tcp" in s, what="the kill question again")
        tmux.keys("y")
        screen = tmux.wait(lambda s: "1 session killed" in s, what="the kill's notice")
        screen = tmux.wait(lambda s: len(session_lines(s)) == 1, what="the killed session gone")
        assert victim[0] not in session_lines(screen)[0]
        sport = victim[0].rsplit(":", 1)[1]
        assert firewall.fw("sessions", f"sport={sport}", "--json").stdout.count('"id"') == 0

        tmux.keys("C-c")
        tmux.wait(lambda s: "EXITED 0" in s, what="Ctrl-C quitting with status 0")
        tmux.wait(lambda s: "sessions" in s and "packets/s" in s, what="fw top again")
        tmux.keys("q")
        screen = tmux.wait(lambda s: "EXITED AGAIN 0" in s, what="q quitting with status 0")
        assert "packets/s" not in screen  # the terminal is given back: the view is gone from the screen
    finally:
        tmux.close()


def test_top_needs_a_terminal_and_a_daemon(lab: Lab) -> None:
    result = lab.run(lab.firewall, [sys.executable, "-m", "fw", "top"], check=False)
    assert result.returncode == 1 and result.stderr.strip() == \
        "Error: fw top needs a terminal; use fw stats or fw sessions for scripts"
