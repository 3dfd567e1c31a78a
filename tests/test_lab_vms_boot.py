"""The Vagrant lab booted for real: three VMs from the offline box, provisioned, checked, torn down.

Slow (tens of minutes under TCG), so outside the normal suite: it runs with FW_LAB_VMS=1, as root,
once `make lab-box` has built the box (scripts/lab-ci.sh does both, when the lab's inputs
changed). A VM that does not come up in time gives its one line and leaves nothing behind; then
`make lab-vms` and `make lab-vms-check` pass, print their timings, and leave nothing behind either.
"Nothing" is seen from the host itself, not through libvirt (which is stopped by then): no qemu
process or dnsmasq of the lab, none of its bridges, no volume of it in libvirt's default pool.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAB_VMS = REPO / "scripts" / "lab-vms.sh"
BRIDGES = ("fwlabmgmt", "fwlablan", "fwlabwan")
POOL = Path("/var/lib/libvirt/images")

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.environ.get("FW_LAB_VMS") != "1",
                       reason="the VM lab boots three VMs: FW_LAB_VMS=1 (scripts/lab-ci.sh)"),
]


def lab(*args: str, timeout: float, **env: str) -> subprocess.CompletedProcess:
    done = subprocess.run([str(LAB_VMS), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env})
    print(done.stdout, done.stderr, sep="\n")  # the timings, in the test's output
    return done


def leftovers() -> list[str]:
    """What of the lab still runs or exists on this host."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = " ".join(word.decode(errors="replace") for word in argv)
        if ("qemu-system" in words and "fw-lab-" in words) or ("dnsmasq" in words and "fw-lab-" in words):
            found.append(f"process {pid}: {words[:120]}")
    found += [f"bridge {name}" for name in BRIDGES if Path(f"/sys/class/net/{name}").exists()]
    if POOL.is_dir():
        found += [f"volume {path.name}" for path in POOL.iterdir() if path.name.startswith("fw-lab-")]
    pid_file = Path(os.environ.get("FW_LAB_STATE", "/run/fw-lab")) / "libvirtd.pid"
    if pid_file.exists() and Path(f"/proc/{pid_file.read_text().strip()}").exists():
        found.append("libvirtd (started by scripts/lab-host.sh)")
    return found


@pytest.fixture
def torn_down():
    """The lab is down before and after each test, whatever happened."""
    lab("down", timeout=600)
    yield
    lab("down", timeout=600)


@pytest.mark.timeout(1200)
def test_a_vm_that_does_not_come_up_is_one_line_and_leaves_nothing(torn_down) -> None:
    done = lab("up", timeout=900, FW_LAB_BOOT_TIMEOUT="15")
    assert done.returncode == 1
    # Booted together, none is up after 15 s: the line names them all.
    assert re.fullmatch(r"lab-vms: the VM server, fw, client did not come up in \d+ s \(log: .*; console: .*\)\n",
                        done.stderr), done.stderr
    assert leftovers() == []


@pytest.mark.timeout(7200)
def test_lab_vms_boot_provision_and_pass_the_check(torn_down) -> None:
    up = lab("up", timeout=5400)
    assert up.returncode == 0, up.stderr
    for machine in ("server", "fw", "client"):
        assert re.search(rf"^lab-vms: {machine} booted in \d+ s", up.stdout, re.MULTILINE), machine
        assert re.search(rf"^lab-vms: {machine} provisioned in \d+ s", up.stdout, re.MULTILINE), machine
    check = lab("check", timeout=1800)
    assert check.returncode == 0, check.stderr
    oks = re.findall(r"^lab-vms: ok: (.*)$", check.stdout, re.MULTILINE)
    assert len(oks) == 9, oks  # web v4 and v6, four FTP downloads, two blocked, the sessions
    assert re.search(r"^lab-vms: check passed in \d+ s", check.stdout, re.MULTILINE)
    assert leftovers() == []
