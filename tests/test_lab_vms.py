"""The Vagrant lab booted here (scripts/lab-box.sh, lab-host.sh, lab-vms.sh): what runs without VMs.

Each bad input gets its one line and starts nothing: no libvirt (a PATH without virsh and
libvirtd), no box and a stale box (a scratch VAGRANT_HOME), no KVM and no TCG (an emulator that
cannot boot anything), a check without a lab. The box's cache key follows its inputs; the networks
`up` defines are isolated and on documentation ranges only. The end-to-end run (boot, provision,
check, and a VM that does not come up) is tests/test_lab_vms_boot.py, outside the normal suite.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAB_VMS = REPO / "scripts" / "lab-vms.sh"
LAB_HOST = REPO / "scripts" / "lab-host.sh"
LAB_BOX = REPO / "scripts" / "lab-box.sh"
DOCUMENTATION = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]


def run(argv: list, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, **kw)


def one_line(done: subprocess.CompletedProcess, text: str) -> None:
    """Failed with exactly one line on stderr, which says `text`, and nothing on stdout."""
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and text in done.stderr, done.stderr
    assert done.stdout == ""


def lab_domains_and_networks() -> list[str]:
    if shutil.which("virsh") is None:
        return []
    found = []
    for what in ("list", "net-list"):
        done = run(["virsh", "-q", "-c", "qemu:///system", what, "--all", "--name"])
        found += [name for name in done.stdout.split() if name.startswith("fw-lab-")]
    return found


@pytest.fixture
def scratch(tmp_path: Path) -> dict:
    """A state directory and a Vagrant home of its own: no box there, nothing of a real lab."""
    (tmp_path / "vagrant-home").mkdir()
    return {"FW_LAB_STATE": str(tmp_path / "state"), "VAGRANT_HOME": str(tmp_path / "vagrant-home"),
            "FW_LAB_RUN": str(tmp_path / "run")}


def path_without(tmp_path: Path, *tools: str) -> str:
    """A PATH with every program of the system's PATH but `tools` (links in one directory)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for directory in reversed(os.environ["PATH"].split(os.pathsep)):
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            target = Path(directory) / name
            if name not in tools and os.access(target, os.X_OK) and not target.is_dir():
                link = bin_dir / name
                link.unlink(missing_ok=True)
                link.symlink_to(target)
    return str(bin_dir)


@pytest.mark.root
def test_no_libvirt_is_one_line(tmp_path: Path, scratch: dict) -> None:
    before = lab_domains_and_networks()
    done = run([LAB_VMS, "up"], env={**scratch, "PATH": path_without(tmp_path, "virsh", "libvirtd")})
    one_line(done, "lab-vms: no libvirt: virsh or libvirtd is not installed")
    assert lab_domains_and_networks() == before


def install_box(vagrant_home: str, key: str) -> None:
    box = Path(vagrant_home) / "boxes" / "fw-lab-VAGRANTSLASH-bookworm64" / "0" / "libvirt"
    box.mkdir(parents=True)
    (box / "fw-lab-key").write_text(key + "\n")


@pytest.mark.root
def test_no_box_and_a_stale_box_are_one_line_each(scratch: dict) -> None:
    if shutil.which("virsh") is None or shutil.which("vagrant") is None:
        pytest.skip("the lab's host packages are not installed (scripts/lab-host.sh install)")
    before = lab_domains_and_networks()
    one_line(run([LAB_VMS, "up"], env=scratch), "lab-vms: no box fw-lab/bookworm64 in Vagrant: run make lab-box")
    install_box(scratch["VAGRANT_HOME"], "0123456789abcdef")
    key = run([LAB_BOX, "--key"]).stdout.strip()
    one_line(run([LAB_VMS, "up"], env=scratch),
             f"lab-vms: stale box: fw-lab/bookworm64 was built from other inputs (0123456789abcdef, now {key})")
    assert lab_domains_and_networks() == before
    assert not Path(scratch["FW_LAB_RUN"]).exists()  # no daemon was started


def test_box_key_follows_its_inputs(tmp_path: Path) -> None:
    key = run([LAB_BOX, "--key"])
    assert key.returncode == 0 and re.fullmatch(r"[0-9a-f]{16}\n", key.stdout), key
    assert run([LAB_BOX, "--key"]).stdout == key.stdout
    packages = tmp_path / "apt-packages.txt"
    packages.write_text((REPO / "scripts" / "apt-packages.txt").read_text() + "jq client\n")
    other = run([LAB_BOX, "--key"], env={"FW_APT_PACKAGES": str(packages)})
    assert other.returncode == 0 and other.stdout != key.stdout


def test_no_kvm_and_no_tcg_is_one_line(tmp_path: Path) -> None:
    """An emulator that boots nothing (here: `false`) under either accelerator."""
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"")
    done = run([LAB_HOST, "accel", kernel, kernel], env={"FW_LAB_QEMU": shutil.which("false")})
    one_line(done, "lab-host: no KVM and no TCG: false boots the lab's kernel with neither")


@pytest.mark.root
def test_a_check_without_a_lab_is_one_line(scratch: dict) -> None:
    before = lab_domains_and_networks()
    one_line(run([LAB_VMS, "check"], env=scratch), "lab-vms: the lab is not up: make lab-vms first")
    assert lab_domains_and_networks() == before


@pytest.mark.parametrize("script", [LAB_VMS, LAB_HOST])
def test_usage(script: Path) -> None:
    done = run([script, "sideways"])
    assert done.returncode == 2 and done.stderr.startswith("usage: ")


def test_networks_are_isolated_and_on_documentation_ranges() -> None:
    done = run([LAB_VMS, "networks"])
    assert done.returncode == 0, done.stderr
    networks = [ET.fromstring(text) for text in re.findall(r"<network>.*?</network>", done.stdout, re.DOTALL)]
    assert [net.findtext("name") for net in networks] == ["fw-lab-mgmt", "fw-lab-lan", "fw-lab-wan"]
    for net in networks:
        assert net.find("forward") is None, net.findtext("name")  # libvirt: no <forward> = isolated
    mgmt, lan, wan = networks
    assert lan.find("ip") is None and wan.find("ip") is None  # the lab's own: no host address at all
    assert mgmt.find("dns").get("enable") == "no"  # no DNS forwarding to the host's resolvers
    ip = mgmt.find("ip")
    host = ipaddress.ip_interface(f"{ip.get('address')}/{ip.get('netmask')}")
    dhcp = mgmt.find("ip/dhcp/range")
    addresses = [host.ip, ipaddress.ip_address(dhcp.get("start")), ipaddress.ip_address(dhcp.get("end"))]
    assert all(address in host.network for address in addresses)
    assert any(host.network.subnet_of(doc) for doc in DOCUMENTATION)
    # The lab's own addresses (SPEC) stay out of the management network.
    for lab_address in ("198.51.100.1", "198.51.100.10", "203.0.113.1", "203.0.113.10"):
        assert ipaddress.ip_address(lab_address) not in host.network


def test_lab_host_packages_exist_and_stay_out_of_make_install() -> None:
    listed = run([REPO / "scripts" / "install-system-packages.sh", "--list", "lab-host"],
                 env={"FW_APT_PACKAGES": str(REPO / "scripts" / "lab-host-packages.txt")}).stdout.split()
    assert {"libvirt-daemon-system", "qemu-system-x86", "vagrant-libvirt", "debootstrap"} <= set(listed)
    dev = run([REPO / "scripts" / "install-system-packages.sh", "--list", "dev"]).stdout.split()
    assert not {"libvirt-daemon-system", "qemu-system-x86", "vagrant-libvirt"} & set(dev)
    if shutil.which("apt-cache") is None:
        pytest.skip("no apt-cache here")
    shown = run(["apt-cache", "show", "--no-all-versions", *listed]).stdout
    found = set(re.findall(r"^Package: (\S+)$", shown, re.MULTILINE))
    if not found:
        pytest.skip("apt has no package lists here (apt-get update)")
    assert set(listed) - found == set()


LAB_CI = REPO / "scripts" / "lab-ci.sh"


def test_lab_ci_runs_the_lab_only_when_its_inputs_changed_and_time_is_left(tmp_path: Path) -> None:
    """CI's step: too little of CI's time left is one line and no run (exit 0, no stamp); inputs
    that passed here already are one line and no run; anything else is its usage."""
    cache = {"FW_LAB_CACHE": str(tmp_path)}
    short = run([LAB_CI, "--budget", "600"], env={**cache, "FW_LAB_CI_NEEDS": "3600"})
    assert short.returncode == 0, short.stderr
    found = re.fullmatch(r"lab-ci: the lab's inputs \(([0-9a-f]{16})\) have not passed here, but 600 s are left "
                         r"and the lab needs up to 3600 s: VM lab not run \(scripts/lab-ci.sh runs it\)\n",
                         short.stdout)
    assert found, short.stdout
    assert not (tmp_path / "ci-passed").exists()
    (tmp_path / "ci-passed").write_text(found.group(1) + "\n")
    passed = run([LAB_CI, "--budget", "600"], env=cache)
    assert passed.returncode == 0 and passed.stdout == (
        f"lab-ci: the lab's inputs ({found.group(1)}) passed here already: VM lab skipped (--always runs it)\n")
    for argv in (["--budget"], ["--budget", "soon"], ["--sometimes"]):
        done = run([LAB_CI, *argv], env=cache)
        assert done.returncode == 2 and done.stderr.startswith("usage: "), argv
