"""The README's quick start works as written (issue 17): its commands, run as they stand, print
what the README shows; the live walkthrough's commands work in a lab of the test's own.

Offline: the `fw policy check` and `fw replay` lines of the first block are run and the output
block is compared line by line (`...` stands for lines left out). Live: the walkthrough's lines,
with the lab's prefix instead of `fwlab-`, without `sudo` (tests run as root), `make lab` replaced
by the `daemon` fixture (the same `fw run --policy policies/lab.yaml`) and `fw top` by its own
test (tests/test_lab_top.py).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fw.lab import Lab

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
QUICK_START = README[README.index("## Quick start"):README.index("## How it is built")]
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", QUICK_START, re.S)
CORPUS = ROOT.parent / "shared" / "corpus" / "sv-ftp-download-passive.pcap"


def commands(block: str) -> list[str]:
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]


def matches(shown: list[str], actual: list[str]) -> bool:
    """`shown` (with `...` lines for any run of lines) equals `actual`."""
    pattern = "".join(r"(?:.*\n)*?" if line.strip() == "..." else re.escape(line.rstrip()) + r"\n" for line in shown)
    return re.fullmatch(pattern, "".join(line.rstrip() + "\n" for line in actual)) is not None


@pytest.mark.skipif(not CORPUS.exists(), reason="the shared corpus is not beside the repository")
def test_the_offline_quick_start_prints_what_the_readme_shows() -> None:
    (_, script), (_, shown) = BLOCKS[0], BLOCKS[1]
    lines = commands(script)
    assert lines[0] == ". .venv/bin/activate"
    output = []
    for line in lines[1:]:
        argv = shlex.split(line)
        assert argv[0] == "fw"
        done = subprocess.run([sys.executable, "-m", "fw", *argv[1:]], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        output += (done.stdout + done.stderr).splitlines()
    assert matches(shown.splitlines(), output), "\n".join(output)
    assert "/work" not in shown and "/tmp" not in shown and "/root" not in shown


@pytest.mark.netns
@pytest.mark.root
def test_the_live_walkthrough_commands_work(lab: Lab, daemon) -> None:
    (_, walkthrough) = BLOCKS[2]
    lines = commands(walkthrough)
    assert lines[0] == "sudo make lab" and "fw top" in lines[2]
    firewall = daemon(ROOT / "policies" / "lab.yaml")
    try:
        for line in [lines[1], *lines[3:]]:
            argv = shlex.split(line.replace("fwlab-", lab.prefix))
            assert argv[0] == "sudo"
            if argv[1] == "scripts/lab-servers.sh":
                argv += [lab.prefix, "60"]
            done = subprocess.run(argv[1:], cwd=ROOT, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, f"{line}: {done.stderr}"
        sessions = firewall.fw("sessions", "--sort", "bytes").stdout
        assert re.search(r":8080 .* allow-web", sessions) and re.search(r":21 .* allow-ftp \(ftp\)", sessions)
        assert firewall.fw("sessions", "kill", "dport=21").stdout.strip() == "1 sessions killed"
    finally:  # the servers run in the lab's server namespace: the lab's teardown ends them
        shutil.rmtree(f"/run/fw/lab-{lab.prefix}/servers", ignore_errors=True)
