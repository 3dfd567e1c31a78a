"""The fw VM's provisioning and the systemd unit, run for real in the namespace lab.

The fw VM's provisioning script (vagrant/provision-fw.sh, with the Vagrantfile's own arguments, less
apt and pip) runs inside the lab's fw namespace and installs the service under a scratch root
(FW_ROOT): it must turn forwarding on there (and nowhere else), give the interfaces their IPv6
addresses, check the policy and install the unit. The client's and server's network step runs with
the Vagrantfile's arguments too, and must route them to each other through the fw.

Then the installed unit's own command lines (ExecStart, ExecStartPost, ExecReload, ExecStopPost, with
its Environment and /etc/default/fw) run in the fw namespace, in a stand-in for systemd's sandbox
built from the unit's settings: a private mount namespace where everything is read-only
(ProtectSystem=strict, ProtectKernelTunables) but the unit's RuntimeDirectory, LogsDirectory and
ReadWritePaths; a bounding set of CapabilityBoundingSet; NoNewPrivileges; MemoryDenyWriteExecute
(prctl PR_SET_MDWE, where the kernel has it); systemd's clean environment. One test also traces the
system calls and checks them against the unit's SystemCallFilter. What systemd alone does (cgroups,
seccomp itself, the service's state machine) needs a booted systemd: the Vagrant lab.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fw.cli import main
from fw.lab import Lab
from tests import netns
from tests.test_deploy import (
    REPO,
    exec_argv,
    fw_provision_args,
    lab_network_args,
    need,
    unit_environment,
    unit_settings,
)

pytestmark = [pytest.mark.netns, pytest.mark.root]
needs_fw_run = pytest.mark.skipif("run" not in main.commands, reason="`fw run` is not registered yet")

VENV = Path(sys.executable).parent.parent
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
FORWARDING = ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding")
API_FILESYSTEMS = ("proc|sysfs|devtmpfs|devpts|cgroup|cgroup2|nsfs|mqueue|securityfs|debugfs|tracefs|bpf|"
                   "pstore|configfs|fusectl|hugetlbfs|autofs|binfmt_misc")
# prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN): the kernel's MemoryDenyWriteExecute; kept across exec.
MDWE = "import ctypes, os, sys; ctypes.CDLL(None).prctl(65, 1, 0, 0, 0); os.execvp(sys.argv[1], sys.argv[1:])"
# The sandbox: $1 stands in for /var/log; then every mount read-only but for the writable paths.
SANDBOX_SH = f"""set -eu
mount --bind "$1" /var/log
shift
awk '{{ print $5, $(NF-2) }}' /proc/self/mountinfo | while read -r point type; do
    case "$point" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*) continue ;; esac
    printf '%s\\n' "$type" | grep -Eqx '{API_FILESYSTEMS}' && continue
    mount -o remount,bind,ro "$point"
done
mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys
while [ "$1" != -- ]; do
    mount --bind "$1" "$1" && mount -o remount,bind,rw "$1"
    shift
done
shift
exec "$@"
"""


def sysctls(lab: Lab | None, keys=FORWARDING) -> dict[str, str]:
    argv = ["sysctl", "-n", *keys]
    done = lab.run(lab.firewall, argv) if lab else subprocess.run(argv, capture_output=True, text=True)
    return dict(zip(keys, done.stdout.split(), strict=True))


def global_addresses(lab: Lab, name: str) -> dict[str, set[str]]:
    return {link["ifname"]: {f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])
                             if a.get("scope") == "global"} for link in lab.addresses(name)}


def provision_fw(lab: Lab, root: Path) -> subprocess.CompletedProcess:
    """vagrant/provision-fw.sh in the fw namespace: the Vagrantfile's arguments, this venv, FW_ROOT."""
    env = ["env", "FW_SKIP_PACKAGES=1", f"FW_VENV={VENV}", f"FW_ROOT={root}"]
    return lab.run(lab.firewall, [*env, REPO / "vagrant" / "provision-fw.sh", *fw_provision_args()],
                   check=False, timeout=120)


@pytest.fixture
def provisioned(lab: Lab, tmp_path: Path) -> Path:
    """The lab's fw namespace provisioned as the fw VM; the service's scratch root."""
    root = tmp_path / "root"
    done = provision_fw(lab, root)
    assert done.returncode == 0, done.stdout + done.stderr
    return root


# -- the provisioning scripts -------------------------------------------------------------------------


def test_fw_provisioning_routes_and_installs_the_service(lab: Lab, tmp_path: Path) -> None:
    host_before = sysctls(None)
    lab.run("fw", ["sysctl", "-q", "-w", *(f"{key}=0" for key in FORWARDING)])
    for interface, address in (("lan", "2001:db8:1::1/64"), ("wan", "2001:db8:2::1/64")):
        lab.run("fw", ["ip", "addr", "del", address, "dev", interface])
    root = tmp_path / "root"

    done = provision_fw(lab, root)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "forwarding on: ipv4 1, ipv6 1" in done.stdout
    assert "systemd is not managing this root: not started" in done.stdout
    assert sysctls(lab) == dict.fromkeys(FORWARDING, "1")
    assert sysctls(None) == host_before  # the namespace's, not the host's
    addresses = global_addresses(lab, "fw")
    assert (addresses["lan"], addresses["wan"]) == ({"198.51.100.1/24", "2001:db8:1::1/64"},
                                                    {"203.0.113.1/24", "2001:db8:2::1/64"})
    assert (root / "usr/local/bin/fw").readlink() == VENV / "bin" / "fw"
    for installed, shipped in (("etc/systemd/system/fw.service", "packaging/systemd/fw.service"),
                               ("etc/default/fw", "packaging/default/fw"),
                               ("etc/tmpfiles.d/fw.conf", "packaging/tmpfiles.d/fw.conf"),
                               ("etc/logrotate.d/fw", "packaging/logrotate/fw"),
                               ("etc/fw/policy.yaml", "policies/lab.yaml")):
        assert (root / installed).read_text() == (REPO / shipped).read_text(), installed
    assert (root / "etc/sysctl.d/60-fw-forwarding.conf").read_text().splitlines()[1:] == [
        "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1", "net.ipv6.conf.default.forwarding=1"]
    assert "complete -o nosort -F _fw_completion fw" in (root / "usr/share/bash-completion/completions/fw").read_text()
    again = provision_fw(lab, root)  # `vagrant provision` again
    assert again.returncode == 0, again.stderr


def test_fw_provisioning_refuses_an_invalid_policy(lab: Lab, tmp_path: Path) -> None:
    root, policy = tmp_path / "root", tmp_path / "bad.yaml"
    policy.write_text("version: 1\nrules:\n  - name: x\n    action: alow\n")
    done = lab.run("fw", ["env", f"FW_ROOT={root}", REPO / "scripts" / "install-service.sh",
                          "--venv", VENV, "--policy", policy], check=False)
    assert done.returncode == 2
    assert f"{policy}:4:13: error: unknown action 'alow'" in done.stderr
    assert not (root / "etc/fw/policy.yaml").exists()


def test_vagrant_network_step_routes_client_and_server_through_the_fw(lab: Lab) -> None:
    for name in ("client", "server"):
        host = lab.host(name)
        for family in ("-4", "-6"):
            lab.run(name, ["ip", family, "route", "flush", "default"])
        lab.run(name, ["ip", "addr", "del", host.ipv6, "dev", "eth0"])
    assert lab.run("client", ["ip", "route", "get", "203.0.113.10"], check=False).returncode != 0  # no route

    for name in ("client", "server"):
        lab.run(name, [REPO / "scripts" / "lab-network.sh", *lab_network_args(name)])

    assert lab.run("client", ["ip", "-6", "route", "show", "2001:db8:2::/64"]).stdout.split()[:3] == [
        "2001:db8:2::/64", "via", "2001:db8:1::1"]
    for source, target in (("client", "server"), ("server", "client")):
        for address in (lab.host(target).address4, lab.host(target).address6):
            assert netns.ping(lab, address, name=source) == 1, (source, address)


# -- the unit, run as systemd would ---------------------------------------------------------------------


class Service:
    """The unit installed under `root`, its commands run in the lab's fw namespace, sandboxed."""

    def __init__(self, lab: Lab, root: Path, scratch: Path) -> None:
        self.lab, self.root = lab, root
        self.text = self.rooted((root / "etc/systemd/system/fw.service").read_text())
        self.settings = unit_settings(self.text)
        env = unit_environment(self.settings, root / "etc/default/fw")
        self.env = {key: self.rooted(value) for key, value in env.items()}
        self.logs = scratch / "log"  # stands in for /var/log
        (self.logs / "fw").mkdir(parents=True)
        self.output = scratch / "service.out"
        self.main: subprocess.Popen | None = None

    def rooted(self, text: str) -> str:
        """Paths of files installed under the scratch root, pointed there."""
        installed = sorted((p for p in self.root.rglob("*") if p.is_file() or p.is_symlink()),
                           key=lambda p: -len(str(p)))
        for path in installed:
            original = "/" + str(path.relative_to(self.root))
            text = re.sub(rf"(?<![\w/]){re.escape(original)}(?![\w/.-])", str(path), text)
        return text

    def writable(self) -> list[str]:
        paths = [f"/run/{name}" for name in self.settings.get("RuntimeDirectory", [])]
        paths += [f"/var/log/{name}" for name in self.settings.get("LogsDirectory", [])]
        for value in self.settings.get("ReadWritePaths", []):
            paths += [p.lstrip("-") for p in value.split() if not p.startswith("-") or Path(p[1:]).exists()]
        return paths

    def sandboxed(self, argv: list[str], extra_writable: tuple[Path, ...] = (), trace: Path | None = None):
        for name in self.settings.get("RuntimeDirectory", []):
            Path("/run", name).mkdir(mode=0o700, exist_ok=True)
        capabilities = ",".join(f"+{cap.removeprefix('CAP_').lower()}"
                                for cap in self.settings["CapabilityBoundingSet"][0].split())
        wrappers = ["setpriv", f"--bounding-set=-all,{capabilities}", "--inh-caps=-all"]
        if self.settings.get("NoNewPrivileges") == ["yes"]:
            wrappers.append("--no-new-privs")
        wrappers.append("--")
        if self.settings.get("MemoryDenyWriteExecute") == ["yes"]:
            wrappers = [sys.executable, "-c", MDWE, *wrappers]
        if trace is not None:
            wrappers += ["strace", "-f", "-qq", "-o", str(trace), "--"]
        writable = [*self.writable(), *map(str, extra_writable)]
        return ["unshare", "--mount", "--", "sh", "-c", SANDBOX_SH, "sandbox", str(self.logs),
                *writable, "--", *wrappers, *argv]

    def environment(self, **extra: str) -> dict[str, str]:
        env = {"PATH": SYSTEMD_PATH, **self.env, **extra}
        if "PYTHONPATH" in os.environ:  # a checkout under test on PYTHONPATH
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        return env

    def command(self, key: str, **extra: str) -> list[str]:
        [line] = self.settings[key]
        return exec_argv(line, {**self.env, **extra})

    def start(self, trace: Path | None = None) -> subprocess.Popen:
        argv = self.sandboxed(self.command("ExecStart"), (trace.parent,) if trace else (), trace)
        with open(self.output, "ab") as out:
            self.main = self.lab.popen(self.lab.firewall, argv, stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, env=self.environment())
        return self.main

    def run(self, key: str, trace: Path | None = None, **extra: str) -> subprocess.CompletedProcess:
        argv = self.sandboxed(self.command(key, **extra), (trace.parent,) if trace else (), trace)
        return self.lab.run(self.lab.firewall, argv, check=False, timeout=60, env=self.environment(**extra))

    def stop(self) -> None:
        if self.main is not None and self.main.poll() is None:
            self.main.kill()
            self.main.wait(10)

    def log(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""


def create_boot_files(tmpfiles: Path) -> None:
    """What systemd-tmpfiles does at boot for the `f` lines of our tmpfiles.d file (a file made
    if missing, with its mode): the sandboxed service can open /run/xtables.lock, not create it."""
    for line in tmpfiles.read_text().splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[0] == "f" and not Path(fields[1]).exists():
            Path(fields[1]).touch(mode=int(fields[2], 8))


@pytest.fixture
def service(lab: Lab, provisioned: Path, tmp_path: Path):
    create_boot_files(provisioned / "etc/tmpfiles.d/fw.conf")
    unit = Service(lab, provisioned, tmp_path)
    yield unit
    unit.stop()
    if unit.log():
        sys.stderr.write(f"--- service output ---\n{unit.log()}\n")


@pytest.fixture
def web(lab: Lab, tmp_path: Path):
    """http.server on 8080 (allowed by policies/lab.yaml) and 8081 (not)."""
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "index.html").write_text("through the service\n")
    with netns.http_server(lab, tmp_path / "www", 8080), netns.http_server(lab, tmp_path / "www", 8081):
        yield


def fetch(lab: Lab, port: int, max_time: float = 3.0) -> int:
    """curl's exit status for the server's page on `port`: 0 fetched, 28 timed out (dropped)."""
    return netns.curl(lab, netns.url("203.0.113.10", port, "/index.html"), max_time=max_time).returncode


def our_rules(lab: Lab, backend: str = "nft") -> list[str]:
    tools = ("iptables-save", "ip6tables-save") if backend == "nft" else (
        "iptables-legacy-save", "ip6tables-legacy-save")
    dumps = [lab.run("fw", [tool]).stdout for tool in tools]
    return [line for dump in dumps for line in dump.splitlines() if "fw-daemon" in line]


def wait_for(predicate, timeout: float = 10.0, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


@needs_fw_run
@pytest.mark.parametrize("backend", ["nft", "legacy"])
def test_service_filters_reloads_and_cleans_up_after_a_crash(lab: Lab, service: Service, web,
                                                              backend: str) -> None:
    """On legacy iptables, the daemon and `fw cleanup` also take /run/xtables.lock."""
    service.env["FW_OPTIONS"] += f" --iptables {backend}"
    main = service.start()
    ready = service.run("ExecStartPost")
    assert ready.returncode == 0, ready.stderr + service.log()
    status = Path(f"/proc/{main.pid}/status").read_text()
    assert re.search(r"^CapEff:\s+0000000000003000$", status, re.MULTILINE)  # net_admin, net_raw only
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.MULTILINE)

    assert (fetch(lab, 8080), fetch(lab, 8081, max_time=2)) == (0, 28)
    eve = service.logs / "fw" / "eve.json"
    assert wait_for(lambda: eve.exists() and '"dest_port": 8081' in eve.read_text()), "no EVE event"

    # ExecReload: a policy that allows 8081 instead of 8080, swapped in by SIGHUP, same process.
    policy = Path(service.env["FW_POLICY"])
    policy.write_text(policy.read_text().replace("dport: [80, 443, 8080]", "dport: [80, 443, 8081]"))
    assert service.run("ExecReload", MAINPID=str(main.pid)).returncode == 0
    assert wait_for(lambda: fetch(lab, 8081, max_time=1) == 0), service.log()
    assert fetch(lab, 8080, max_time=2) == 28 and main.poll() is None

    # A crash leaves the rules: fail-closed, nothing passes. ExecStopPost removes them.
    main.send_signal(signal.SIGKILL)
    main.wait(10)
    assert our_rules(lab, backend) != []
    assert fetch(lab, 8081, max_time=2) == 28
    cleanup = service.run("ExecStopPost")
    assert cleanup.returncode == 0, cleanup.stderr
    assert "removed" in cleanup.stdout
    assert our_rules(lab, "nft") == our_rules(lab, "legacy") == []
    assert fetch(lab, 8080) == 0  # the host's own (empty) ruleset again


def allowed_system_calls(settings: dict[str, list[str]]) -> set[str]:
    """The system calls SystemCallFilter= allows: the first line's groups less the ~ lines' ones."""
    groups: dict[str, list[str]] = {}
    current = None
    for line in subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True,
                               check=True).stdout.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.split()[0], [])
        elif line.strip() and not line.strip().startswith("#") and current is not None:
            current.append(line.strip())

    def expand(names: list[str]) -> set[str]:
        return {call for name in names
                for call in (expand(groups[name]) if name.startswith("@") else {name})}

    allowed: set[str] = set()
    for value in settings["SystemCallFilter"]:
        if value.startswith("~"):
            allowed -= expand(value[1:].split())
        else:
            allowed |= expand(value.split())
    return allowed


def traced_system_calls(trace: Path) -> set[str]:
    return set(re.findall(r"^\d+\s+(?:<\.\.\. )?(\w+)(?:\(| resumed>)", trace.read_text(), re.MULTILINE))


@needs_fw_run
def test_service_system_calls_pass_its_filter(lab: Lab, service: Service, web, tmp_path: Path) -> None:
    need("strace")
    need("systemd-analyze")
    traces = tmp_path / "traces"
    traces.mkdir()
    strace = service.start(trace=traces / "main")
    ready = service.run("ExecStartPost")
    assert ready.returncode == 0, ready.stderr + service.log()
    [daemon_pid] = map(int, Path(f"/proc/{strace.pid}/task/{strace.pid}/children").read_text().split())
    assert fetch(lab, 8080) == 0
    assert service.run("ExecReload", MAINPID=str(daemon_pid)).returncode == 0
    assert fetch(lab, 8080) == 0
    os.kill(daemon_pid, signal.SIGTERM)  # systemctl stop (KillMode=mixed: the main process only)
    assert strace.wait(20) == 0, service.log()
    assert service.run("ExecStopPost", trace=traces / "cleanup").returncode == 0

    used = traced_system_calls(traces / "main") | traced_system_calls(traces / "cleanup")
    assert {"execve", "sendmsg", "recvmsg", "socket"} <= used  # the trace is real
    assert used - allowed_system_calls(service.settings) == set()


def test_sandbox_stand_in_is_read_only_but_for_the_units_paths(lab: Lab, service: Service) -> None:
    """The stand-in for systemd's sandbox does confine: what the tests above rely on."""
    probe = ("touch /etc/fw-probe 2>/dev/null && echo etc; touch /run/fw-probe 2>/dev/null && echo run;"
             " touch /run/fw/probe && rm /run/fw/probe && echo run-fw; touch /var/log/fw/probe && echo log;"
             " echo 1 > /proc/sys/net/ipv4/ip_forward 2>/dev/null && echo sysctl; grep CapBnd /proc/self/status;"
             f" {sys.executable} -c 'import mmap; mmap.mmap(-1, 4096, prot=7)' 2>/dev/null || echo no-wx")
    done = lab.run("fw", service.sandboxed(["sh", "-c", probe]), check=False, env=service.environment())
    mdwe = subprocess.run([sys.executable, "-c", "import ctypes; print(ctypes.CDLL(None).prctl(65, 1, 0, 0, 0))"],
                          capture_output=True, text=True).stdout.strip() == "0"
    expected = ["run-fw", "log", "CapBnd:", "0000000000003000"] + (["no-wx"] if mdwe else [])
    assert done.stdout.split() == expected, done.stderr
    assert not Path("/etc/fw-probe").exists() and not Path("/run/fw-probe").exists()
    assert (service.logs / "fw" / "probe").exists()


