"""`fw replay` shows a progress bar only on a terminal, and only for a large capture (issue 17).

A capture larger than PROGRESS_BAR_BYTES is generated (raw-IP pcap of 1400-byte UDP datagrams);
`fw replay --quiet` runs with stderr on a pseudo-terminal (pty), where the bar is drawn, and with
stderr on a pipe, where nothing but the summary is written: no bar, no escape sequences.
"""

from __future__ import annotations

import os
import pty
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from fw.cli.replay import PROGRESS_BAR_BYTES
from tests.packets import udp_pkt

ROOT = Path(__file__).resolve().parent.parent
LINKTYPE_RAW = 101


@pytest.fixture(scope="module")
def large_capture(tmp_path_factory) -> Path:
    packet = udp_pkt("198.51.100.10:40000", "203.0.113.10:53", bytes(1400))
    count = PROGRESS_BAR_BYTES // (len(packet) + 16) + 100
    path = tmp_path_factory.mktemp("capture") / "large.pcap"
    record = struct.pack("<IIII", 0, 0, len(packet), len(packet)) + packet
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, LINKTYPE_RAW))
        for index in range(count):
            out.write(struct.pack("<I", 1_700_000_000 + index // 1000) + record[4:])
    assert path.stat().st_size > PROGRESS_BAR_BYTES
    return path


def replay_argv(capture: Path) -> list[str]:
    return [sys.executable, "-m", "fw", "replay", str(capture), "--policy", str(ROOT / "policies" / "lab.yaml"),
            "--quiet"]


def test_a_large_replay_shows_a_progress_bar_on_a_terminal(large_capture: Path) -> None:
    main, secondary = pty.openpty()
    try:
        done = subprocess.run(replay_argv(large_capture), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=secondary, timeout=120, env={**os.environ, "TERM": "xterm"})
        os.close(secondary)
        secondary = -1
        shown = b""
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the other end is closed and everything was read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        if secondary >= 0:
            os.close(secondary)
        os.close(main)
    assert done.returncode == 0
    text = shown.decode(errors="replace")
    assert "replay  [" in text and "100%" in text, text[-500:]
    assert "packets: " in text and "dropped: 0" in text


def test_without_a_terminal_there_is_no_bar_and_no_escape_sequences(large_capture: Path) -> None:
    done = subprocess.run(replay_argv(large_capture), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    assert "replay  [" not in done.stderr and "\x1b" not in done.stderr and "\r" not in done.stderr
    assert done.stderr.startswith("packets: ")
