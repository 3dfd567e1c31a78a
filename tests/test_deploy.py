"""Deployment without VMs: the Vagrantfile, the shared provisioning scripts and the systemd unit.

What CI can check of the Vagrant lab and the service on one machine: `vagrant validate` (with and
without plugins), the Vagrantfile's machines and networks against SPEC's lab (read by loading the
Vagrantfile under a stand-in for Vagrant that records every call: `ruby`, which Vagrant needs
anyway), shellcheck of every script, the apt package list, `make install` calling the shared
scripts, and `systemd-analyze verify` (clean) and `security` of the unit. The scripts run for real
against the namespace lab in test_deploy_lab.py; packaging is test_deploy_packaging.py.

The helpers that read the unit (`unit_settings`, `exec_argv`) are shared with test_deploy_lab.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fw.lab import CLIENT, LAN, SERVER, WAN

REPO = Path(__file__).resolve().parents[1]
VAGRANTFILE = REPO / "vagrant" / "Vagrantfile"
UNIT = REPO / "packaging" / "systemd" / "fw.service"
DEFAULTS = REPO / "packaging" / "default" / "fw"
SCRIPTS = sorted([*REPO.glob("scripts/*.sh"), *REPO.glob("vagrant/*.sh")])
INSTALLED_FW = "/usr/local/bin/fw"  # where the unit expects fw (install-service.sh links it)
VENV_FW = Path(sys.executable).parent / "fw"

# SPEC "The lab": machine -> [(network, IPv4, IPv6/len)], in interface order.
SPEC_LAB = {
    "client": [("lan", "198.51.100.10", "2001:db8:1::10/64")],
    "fw": [("lan", "198.51.100.1", "2001:db8:1::1/64"), ("wan", "203.0.113.1", "2001:db8:2::1/64")],
    "server": [("wan", "203.0.113.10", "2001:db8:2::10/64")],
}
SPEC_PREFIXES = {"lan": ("198.51.100.0/24", "2001:db8:1::/64"), "wan": ("203.0.113.0/24", "2001:db8:2::/64")}
# SPEC "Set-up": none of these is on a new machine; `make install` installs them.
SPEC_PACKAGES = {"iptables", "conntrack", "libnetfilter-queue-dev", "vsftpd", "lftp", "iperf3", "hping3",
                 "redis-server", "postgresql", "shellcheck", "vagrant"}

# Loads a Vagrantfile with a stand-in for Vagrant that records each configuration call as JSON:
# {"machine": NAME or null (all machines), "call": "network", "args": [...], "options": {...}}.
RECORDER_RB = r"""
require "json"

class Recorder
  def initialize(log, machine) = (@log, @machine = log, machine)
  def vm = self
  def define(name, *_args, &block) = block&.call(Recorder.new(@log, name.to_s))
  def provider(name, *_args, &_block) = @log << { machine: @machine, call: "provider", args: [name.to_s] }
  def method_missing(name, *args, **options, &_block)
    @log << { machine: @machine, call: name.to_s, args: args, options: options }
    self
  end
  def respond_to_missing?(*) = true
end

module Vagrant
  LOG = []
  def self.configure(_version) = yield(Recorder.new(LOG, nil))
end

Dir.chdir(File.dirname(ARGV[0])) { load File.basename(ARGV[0]) }
puts JSON.generate(Vagrant::LOG)
"""


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (make install installs it)")
    return path


def run(argv: list, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("timeout", 120)
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kw)


# -- the Vagrantfile ---------------------------------------------------------------------------------


def vagrant_env(tmp_path: Path, **extra: str) -> dict:
    """Vagrant offline and without traces: its home and the machines' state under tmp_path."""
    return {**os.environ, "VAGRANT_HOME": str(tmp_path / "vagrant.d"),
            "VAGRANT_DOTFILE_PATH": str(tmp_path / "dotfile"), "VAGRANT_CHECKPOINT_DISABLE": "1",
            "VAGRANT_NO_COLOR": "1", **extra}


@pytest.mark.parametrize("plugins", ["installed plugins", "no plugins"])
def test_vagrant_validates_the_vagrantfile_for_any_provider(tmp_path: Path, plugins: str) -> None:
    need("vagrant")
    extra = {"VAGRANT_NO_PLUGINS": "1"} if plugins == "no plugins" else {}
    done = run(["vagrant", "validate", "--ignore-provider"], cwd=VAGRANTFILE.parent,
               env=vagrant_env(tmp_path, **extra))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Vagrantfile validated successfully." in done.stdout


def test_vagrant_libvirt_accepts_the_provider_settings(tmp_path: Path) -> None:
    """With the plugin, `vagrant validate` checks the libvirt provider's own settings too."""
    need("vagrant")
    env = vagrant_env(tmp_path, VAGRANT_DEFAULT_PROVIDER="libvirt")
    if "vagrant-libvirt" not in run(["vagrant", "plugin", "list"], env=env).stdout:
        pytest.skip("the vagrant-libvirt plugin is not installed")
    done = run(["vagrant", "validate"], cwd=VAGRANTFILE.parent, env=env)
    assert done.returncode == 0, done.stdout + done.stderr


def vagrant_calls() -> list[dict]:
    """Every configuration call of the Vagrantfile (see RECORDER_RB)."""
    need("ruby")
    done = run(["ruby", "-e", RECORDER_RB, VAGRANTFILE])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def calls(log: list[dict], call: str, machine: str | None = None) -> list[dict]:
    return [entry for entry in log if entry["call"] == call and entry["machine"] == machine]


def provisioner(log: list[dict], machine: str, name: str) -> dict:
    found = [entry["options"] for entry in calls(log, "provision", machine) if entry["args"] == [name]]
    assert len(found) == 1, f"{machine}: {len(found)} provisioners named {name!r}"
    return found[0]


def test_three_debian_machines_for_both_providers() -> None:
    log = vagrant_calls()
    assert [entry["args"] for entry in calls(log, "box=")] == [["debian/bookworm64"]]
    assert sorted({entry["machine"] for entry in log} - {None}) == ["client", "fw", "server"]
    assert sorted(entry["args"][0] for entry in calls(log, "provider")) == ["libvirt", "virtualbox"]


def test_private_networks_are_specs_and_isolated() -> None:
    log = vagrant_calls()
    names: dict[str, set[str]] = {}
    for machine, interfaces in SPEC_LAB.items():
        networks = calls(log, "network", machine)
        assert [entry["args"] for entry in networks] == [["private_network"]] * len(interfaces), machine
        for entry, (network, ipv4, _) in zip(networks, interfaces, strict=True):
            options = entry["options"]
            assert (options["ip"], options["netmask"]) == (ipv4, "255.255.255.0"), machine
            # One name per lab network for both providers; VirtualBox: an internal network; libvirt:
            # no host address, no forwarding, no DHCP.
            assert options["virtualbox__intnet"] == options["libvirt__network_name"]
            assert options["libvirt__forward_mode"] == "veryisolated"
            assert options["libvirt__dhcp_enabled"] is False
            names.setdefault(network, set()).add(options["virtualbox__intnet"])
    assert all(len(found) == 1 for found in names.values()), names
    assert names["lan"] != names["wan"]


def test_fw_lab_constants_are_the_same_lab() -> None:
    """The namespace lab (fw/lab.py) and the VMs are one lab: the same addresses."""
    assert (CLIENT.ipv4, CLIENT.ipv6) == ("198.51.100.10/24", "2001:db8:1::10/64")
    assert (SERVER.ipv4, SERVER.ipv6) == ("203.0.113.10/24", "2001:db8:2::10/64")
    assert [(s.ipv4, s.ipv6) for s in (LAN, WAN)] == [
        (f"{ipv4}/24", ipv6) for _, ipv4, ipv6 in SPEC_LAB["fw"]]


def lab_network_args(machine: str) -> list[str]:
    """The arguments the Vagrantfile gives scripts/lab-network.sh on `machine`."""
    options = provisioner(vagrant_calls(), machine, "lab-network")
    assert options["run"] == "always"  # re-applied at every `vagrant up`: the addresses are not persistent
    assert options["inline"] == '#!/bin/sh\nexec /vagrant/scripts/lab-network.sh "$@"\n'
    return options["args"]


def test_ipv6_addresses_and_routes_through_the_fw() -> None:
    gateways = {network: (ipv4, ipv6.split("/")[0]) for network, ipv4, ipv6 in SPEC_LAB["fw"]}
    for machine, interfaces in SPEC_LAB.items():
        expected = [word for _, ipv4, ipv6 in interfaces for word in ("--address", ipv4, ipv6)]
        if machine != "fw":
            home = interfaces[0][0]
            other = "wan" if home == "lan" else "lan"
            for prefix, gateway in zip(SPEC_PREFIXES[other], gateways[home], strict=True):
                expected += ["--route", prefix, gateway]
        assert lab_network_args(machine) == expected, machine


def fw_provision_args() -> list[str]:
    """The arguments the Vagrantfile gives vagrant/provision-fw.sh."""
    options = provisioner(vagrant_calls(), "fw", "fw")
    assert options["inline"] == '#!/bin/sh\nexec /vagrant/vagrant/provision-fw.sh "$@"\n'
    return options["args"]


def test_each_machine_runs_its_provisioning_script_from_the_synced_repository() -> None:
    log = vagrant_calls()
    assert fw_provision_args() == [word for _, ipv4, ipv6 in SPEC_LAB["fw"] for word in (ipv4, ipv6)]
    for machine in ("client", "server"):
        inline = provisioner(log, machine, machine)["inline"]
        assert inline == f'#!/bin/sh\nexec /vagrant/vagrant/provision-{machine}.sh "$@"\n'
        assert (REPO / "vagrant" / f"provision-{machine}.sh").exists()
    [synced] = calls(log, "synced_folder")
    assert synced["args"] == ["..", "/vagrant"] and synced["options"]["type"] == "rsync"


# -- the shared scripts ------------------------------------------------------------------------------


def test_shellcheck_finds_nothing() -> None:
    need("shellcheck")
    assert len(SCRIPTS) >= 8
    done = run(["shellcheck", "--severity=style", *SCRIPTS])
    assert (done.returncode, done.stdout) == (0, "")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_scripts_are_executable_and_strict(script: Path) -> None:
    assert os.access(script, os.X_OK)
    lines = script.read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    assert "set -euo pipefail" in lines
    assert lines[1].startswith("# ")  # what it does, first


def test_make_install_runs_the_shared_scripts() -> None:
    done = run(["make", "--no-print-directory", "-n", "install"], cwd=REPO)
    assert done.stdout.splitlines() == ["scripts/install-system-packages.sh dev", "scripts/install-venv.sh .venv",
                                        ".venv/bin/python build_compiled.py --strict"]


def packages(*roles: str) -> list[str]:
    done = run([REPO / "scripts" / "install-system-packages.sh", "--list", *roles])
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_package_list_covers_spec_and_each_vm_role() -> None:
    assert SPEC_PACKAGES <= set(packages("dev"))
    assert {"python3-venv", "libnetfilter-queue-dev", "iptables"} <= set(packages("fw"))
    assert {"nginx", "vsftpd"} <= set(packages("server")) and "nginx" not in packages("dev")
    assert {"curl", "lftp"} <= set(packages("client"))
    assert len(packages("dev", "fw")) == len(set(packages("dev", "fw")))  # each once
    wrong = run([REPO / "scripts" / "install-system-packages.sh", "--list", "devv"])
    assert wrong.returncode == 2 and "unknown role 'devv'" in wrong.stderr


def test_every_listed_package_exists_in_the_apt_sources() -> None:
    need("apt-cache")
    names = packages("dev", "fw", "server", "client")
    done = run(["apt-cache", "show", "--no-all-versions", *names])
    found = set(re.findall(r"^Package: (\S+)$", done.stdout, re.MULTILINE))
    if not found:
        pytest.skip("apt has no package lists here (apt-get update)")
    assert set(names) - found == set()


@pytest.mark.root
def test_install_system_packages_skips_without_root() -> None:
    """As `make install` did: not root -> say what is skipped and succeed (the venv comes next)."""
    missing = "fw-no-such-package"  # one the machine lacks, or the script has nothing to skip
    done = install_system_packages_as_nobody(
        (REPO / "scripts" / "apt-packages.txt").read_text() + f"{missing} client\n", "client")
    assert done.returncode == 0, done.stderr
    wanted = " ".join([*packages("client"), missing])
    assert done.stdout == f"not root or no apt-get: skipping system packages ({wanted})\n"


@pytest.mark.root
def test_install_system_packages_needs_nothing_when_all_are_installed() -> None:
    """The lab's offline box: every package there, so no apt-get (it has no network) and no root."""
    done = install_system_packages_as_nobody("bash client\ncoreutils client\n", "client")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "install-system-packages: all 2 packages are installed\n"


def install_system_packages_as_nobody(package_list: str, *roles: str) -> subprocess.CompletedProcess:
    """scripts/install-system-packages.sh ROLES as nobody, with `package_list` as its list."""
    shared = Path(tempfile.mkdtemp(prefix="fw-deploy-"))  # where nobody may read the script
    try:
        shared.chmod(0o755)
        shutil.copy(REPO / "scripts" / "install-system-packages.sh", shared)
        (shared / "apt-packages.txt").write_text(package_list)
        return run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                    shared / "install-system-packages.sh", *roles])
    finally:
        shutil.rmtree(shared)


# -- the systemd unit --------------------------------------------------------------------------------


def unit_settings(text: str) -> dict[str, list[str]]:
    """KEY -> its values in order, over all sections (the unit's keys do not repeat across them)."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def unit_environment(settings: dict[str, list[str]], environment_file: Path) -> dict[str, str]:
    """Environment= then EnvironmentFile= (which wins), as systemd assembles them."""
    env = dict(word.split("=", 1) for value in settings["Environment"] for word in shlex.split(value))
    if environment_file.exists():
        for line in environment_file.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                key, _, value = shlex.split(line)[0].partition("=")
                env[key] = value
    return env


def exec_argv(command: str, env: dict[str, str]) -> list[str]:
    """A unit's command line as systemd expands it: ${VAR} one word, $VAR split on spaces, $$ a $."""
    argv = []
    for word in shlex.split(command):
        if match := re.fullmatch(r"\$(\w+)", word):
            argv += env.get(match.group(1), "").split()
        else:
            argv.append(re.sub(r"\$\$|\$\{(\w+)\}", lambda m: env.get(m.group(1), "") if m.group(1) else "$",
                               word))
    return argv


def rendered_unit(tmp_path: Path) -> Path:
    """The unit with fw where this checkout's venv has it (verify wants ExecStart's program to exist)."""
    path = tmp_path / "fw.service"
    path.write_text(UNIT.read_text().replace(INSTALLED_FW, str(VENV_FW)))
    return path


def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    need("systemd-analyze")
    done = run(["systemd-analyze", "verify", rendered_unit(tmp_path)], cwd=tmp_path)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_systemd_analyze_verify_catches_a_missing_program(tmp_path: Path) -> None:
    """The check above can fail: the shipped unit names /usr/local/bin/fw, absent on a CI machine."""
    need("systemd-analyze")
    if Path(INSTALLED_FW).exists():
        pytest.skip(f"{INSTALLED_FW} exists here")
    shutil.copy(UNIT, tmp_path / "fw.service")
    done = run(["systemd-analyze", "verify", tmp_path / "fw.service"], cwd=tmp_path)
    assert done.returncode != 0 and f"Command {INSTALLED_FW} is not executable" in done.stderr


def test_systemd_analyze_security_rates_the_unit_ok(tmp_path: Path) -> None:
    need("systemd-analyze")
    done = run(["systemd-analyze", "security", "--offline=yes", "--no-pager", rendered_unit(tmp_path)],
               cwd=tmp_path)
    level = re.search(r"Overall exposure level for fw\.service: ([\d.]+) (\w+)", done.stdout)
    assert level, done.stdout + done.stderr
    assert float(level.group(1)) <= 2.5 and level.group(2) == "OK", level.group(0)


def test_unit_runs_fw_with_the_least_privilege_it_needs() -> None:
    unit = unit_settings(UNIT.read_text())
    assert unit["CapabilityBoundingSet"] == ["CAP_NET_ADMIN CAP_NET_RAW"]
    assert unit["AmbientCapabilities"] == [""]
    assert unit["NoNewPrivileges"] == unit["RuntimeDirectoryPreserve"] == ["yes"]
    assert unit["ProtectSystem"] == ["strict"]
    # What it writes: /run/fw (state, kept so that `fw cleanup` finds it) and its logs; nothing else.
    assert (unit["RuntimeDirectory"], unit["LogsDirectory"], unit.get("ReadWritePaths")) == (["fw"], ["fw"], None)
    assert unit["KillMode"] == ["mixed"]  # SIGTERM to the daemon, not to its iptables-restore children


def test_unit_commands_are_fws(tmp_path: Path) -> None:
    from fw.cli.daemon import run_command

    unit = unit_settings(UNIT.read_text())
    env = unit_environment(unit, DEFAULTS)
    assert env == unit_environment(unit, tmp_path / "absent")  # /etc/default/fw repeats the defaults
    [start] = unit["ExecStart"]
    argv = exec_argv(start, env)
    assert argv == [INSTALLED_FW, "run", "--policy", "/etc/fw/policy.yaml", "--log", "/var/log/fw/eve.json"]
    options = {option for param in run_command.params for option in param.opts}
    assert {word for word in argv if word.startswith("--")} <= options
    assert exec_argv(unit["ExecReload"][0], {"MAINPID": "4242"}) == ["/bin/kill", "-HUP", "4242"]
    assert unit["ExecStopPost"] == [f"{INSTALLED_FW} cleanup"]
    [ready] = unit["ExecStartPost"]
    assert exec_argv(ready, env)[:4] == ["/usr/bin/timeout", "15", "/bin/sh", "-c"]
    assert f"until {INSTALLED_FW} stats " in ready


def test_tmpfiles_makes_the_xtables_lock(tmp_path: Path) -> None:
    need("systemd-tmpfiles")
    done = run(["systemd-tmpfiles", f"--root={tmp_path}", "--create",
                REPO / "packaging" / "tmpfiles.d" / "fw.conf"])
    assert done.returncode == 0, done.stderr
    lock = tmp_path / "run" / "xtables.lock"
    assert (lock.is_file(), oct(lock.stat().st_mode & 0o777)) == (True, "0o600")


def test_logrotate_accepts_its_configuration(tmp_path: Path) -> None:
    need("logrotate")
    done = run(["logrotate", "--debug", "--state", tmp_path / "state", REPO / "packaging" / "logrotate" / "fw"])
    assert done.returncode == 0, done.stderr
    assert "rotating pattern: /var/log/fw/*.json" in done.stderr
