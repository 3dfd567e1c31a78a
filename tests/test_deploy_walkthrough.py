"""The walkthrough of docs/deploy.md in the namespace lab: its FTP commands, the server VM's vsftpd.

The server VM's vsftpd.conf (vagrant/vsftpd.conf, only its file paths moved into the test's
directory) runs in the lab's server namespace; the firewall runs policies/lab.yaml; the four lftp
commands of the walkthrough (passive and active, IPv4 and IPv6) run, as written, in the client
namespace and must fetch the file through the FTP ALG.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fw.lab import Lab
from tests import netns
from tests.test_deploy import REPO, need
from tests.test_deploy_lab import needs_fw_run

pytestmark = [pytest.mark.netns, pytest.mark.root]

FTP_COMMANDS = re.compile(r'vagrant ssh client -c "(lftp -e .*)"$', re.MULTILINE)


@pytest.fixture
def vm_vsftpd(lab: Lab, tmp_path: Path):
    """vsftpd in the server namespace with vagrant/vsftpd.conf; only its paths moved into tmp_path."""
    root = tmp_path / "ftp"
    (root / "pub").mkdir(parents=True)
    root.chmod(0o755)
    (root / "pub" / "hello.txt").write_text("hello over FTP, through fw\n")  # as provision-server.sh
    config = tmp_path / "vsftpd.conf"
    config.write_text((REPO / "vagrant" / "vsftpd.conf").read_text()
                      + f"anon_root={root}\nxferlog_file={tmp_path / 'xfer.log'}\nbackground=NO\n")
    with netns.Background(lab, "server", ["vsftpd", config], lifetime=60) as server:
        netns.wait_for_port(lab, "server", 21)
        yield server


@needs_fw_run
def test_walkthrough_ftp_commands_pass_through_fw_with_the_lab_policy(lab: Lab, daemon, vm_vsftpd) -> None:
    need("lftp")
    commands = FTP_COMMANDS.findall((REPO / "docs" / "deploy.md").read_text())
    assert len(commands) == 4  # passive and active, IPv4 and IPv6
    firewall = daemon(REPO / "policies" / "lab.yaml")
    for command in commands:
        done = lab.run("client", ["timeout", "30", "sh", "-c", command], check=False, timeout=40)
        assert (done.returncode, done.stdout) == (0, "hello over FTP, through fw\n"), (command, done.stderr)
    stats = json.loads(firewall.fw("stats", "--json").stdout)
    assert stats["packets"]["by_verdict"]["accept"].get("related:ftp", 0) >= 4  # each data connection
