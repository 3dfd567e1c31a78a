"""vsftpd and FTP clients (lftp, curl) in the lab, for the FTP ALG's kernel tests.

How it works. `FtpServer` writes a vsftpd configuration into a test's directory and runs vsftpd in
the foreground (background=NO) in the server namespace, in a session of its own, so that `stop()`
ends vsftpd and the per-connection processes it forks through their process group (the lab's
teardown would end them too). One instance listens on [::]:21 and takes IPv4 as well (a dual-stack
socket: IPv4 clients appear to it as ::ffff:198.51.100.10). Anonymous users read the root (root's,
mode 755) and upload into pub/ (the ftp user's); passive data ports come from PASSIVE_PORTS; active
data connections come from port 20 or from any port (connect_from_port_20).

vsftpd logs the FTP protocol, every command and reply, to a file: tests read it to learn what was
announced (PORT/EPRT arguments, 227/229 replies), i.e. which data connections the ALG had to admit.

`lftp` runs one client session in the client namespace, bounded by lftp's own timeouts and by
coreutils `timeout`; curl is tests.netns.curl (its --max-time).
"""

from __future__ import annotations

import hashlib
import os
import pwd
import random
import re
import signal
import subprocess
import time
from pathlib import Path

from tests import netns

PASSIVE_PORTS = (30000, 30100)
SECURE_CHROOT_DIR = Path("/var/run/vsftpd/empty")
FTP_USER = "ftp"  # vsftpd's anonymous user (Debian's vsftpd package creates it)

VSFTPD_CONFIG = """\
listen=NO
listen_ipv6=YES
background=NO
anonymous_enable=YES
no_anon_password=YES
anon_root={root}
local_enable=NO
write_enable=YES
anon_upload_enable=YES
anon_mkdir_write_enable=NO
anon_umask=022
pasv_enable=YES
pasv_min_port={pasv_min}
pasv_max_port={pasv_max}
port_enable=YES
connect_from_port_20={port_20}
connect_timeout=5
accept_timeout=10
data_connection_timeout=20
idle_session_timeout=60
seccomp_sandbox=NO
secure_chroot_dir={secure_chroot_dir}
xferlog_enable=YES
vsftpd_log_file={log}
log_ftp_protocol=YES
use_localtime=NO
"""

# `Thu Nov 26 16:55:07 2026 [pid 12182] [ftp] FTP command: Client "::ffff:198.51.100.10", "EPSV"`
PROTOCOL_LINE = re.compile(r'FTP (command|response): Client "[^"]*", "(.*)"$')
PASSIVE_REPLY = re.compile(r"227 .*\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)")
EXTENDED_PASSIVE_REPLY = re.compile(r"229 .*\(\|\|\|(\d+)\|\)")


def random_bytes(seed: int, size: int) -> bytes:
    """`size` pseudo-random bytes, the same for the same seed."""
    return random.Random(seed).randbytes(size)


def sha256(data: bytes | Path) -> str:
    return hashlib.sha256(data.read_bytes() if isinstance(data, Path) else data).hexdigest()


def ftp_url(address: str, path: str = "") -> str:
    """ftp://ADDRESS/PATH with IPv6 addresses in brackets."""
    host = f"[{address}]" if ":" in address else address
    return f"ftp://{host}/{path}"


class FtpServer:
    """vsftpd in namespace `name` serving `directory`/root; use `with` or start()/stop()."""

    def __init__(self, lab, directory: Path, port_20: bool = True, name: str = "server",
                 lifetime: float = 120.0, **options: str) -> None:
        """`options`: more vsftpd settings, after (so overriding) ours: pasv_address="203.0.113.11"."""
        self.lab, self.name, self.lifetime = lab, name, lifetime
        self.root = directory / "root"
        self.upload_dir = self.root / "pub"
        self.config = directory / "vsftpd.conf"
        self.log = directory / "vsftpd.log"
        self.output = directory / "vsftpd.out"
        self.process: subprocess.Popen | None = None
        self.upload_dir.mkdir(parents=True)
        self.root.chmod(0o755)  # vsftpd refuses an anonymous root the ftp user may write to
        ftp = pwd.getpwnam(FTP_USER)
        os.chown(self.upload_dir, ftp.pw_uid, ftp.pw_gid)
        self.config.write_text(VSFTPD_CONFIG.format(
            root=self.root, pasv_min=PASSIVE_PORTS[0], pasv_max=PASSIVE_PORTS[1],
            port_20="YES" if port_20 else "NO", secure_chroot_dir=SECURE_CHROOT_DIR, log=self.log)
            + "".join(f"{key}={value}\n" for key, value in options.items()))

    def __enter__(self) -> FtpServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self, timeout: float = 5.0) -> FtpServer:
        """Run vsftpd; return once it listens on port 21 (AssertionError with its output if not)."""
        SECURE_CHROOT_DIR.mkdir(parents=True, exist_ok=True)
        with open(self.output, "ab") as out:
            self.process = self.lab.popen(
                self.name, ["timeout", "--kill-after=2", f"{self.lifetime:g}", "vsftpd", self.config],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.lab.run(self.name, ["ss", "-Hltn", "sport", "=", ":21"]).stdout.strip():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"vsftpd did not start: {self.output.read_text(errors='replace')}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """SIGTERM vsftpd's process group (then SIGKILL); idempotent."""
        if self.process is None:
            return
        group = self.process.pid  # a session leader: its pid is the group's id
        for signum in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(group, signum)
            except ProcessLookupError:
                break
            try:
                self.process.wait(5)
                break
            except subprocess.TimeoutExpired:
                continue
        self.process.wait(5)
        self.process = None

    # -- files ------------------------------------------------------------------------------------

    def publish(self, name: str, data: bytes) -> Path:
        """A file anonymous users may download."""
        path = self.root / name
        path.write_bytes(data)
        path.chmod(0o644)
        return path

    def uploaded(self, name: str) -> Path:
        return self.upload_dir / name

    # -- what vsftpd saw ------------------------------------------------------------------------

    def protocol(self) -> list[tuple[str, str]]:
        """("command" | "response", text) for every line of the FTP conversation, in order."""
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        return [m.groups() for line in lines if (m := PROTOCOL_LINE.search(line))]

    def commands(self) -> list[str]:
        return [text for kind, text in self.protocol() if kind == "command"]

    def responses(self) -> list[str]:
        return [text for kind, text in self.protocol() if kind == "response"]

    def data_commands(self) -> list[str]:
        """The commands that set up a data connection, verb and argument: ["PASV", "EPRT |2|...|"]."""
        verbs = ("PASV", "EPSV", "PORT", "EPRT")
        return [text for text in self.commands() if text.split(" ", 1)[0].upper() in verbs]

    def announced_ports(self) -> list[int]:
        """Every data port announced: by PORT/EPRT (the client's) and 227/229 replies (the server's)."""
        ports = []
        for kind, text in self.protocol():
            verb, _, arg = text.partition(" ")
            if kind == "command" and verb.upper() == "PORT":
                numbers = arg.split(",")
                ports.append(int(numbers[4]) * 256 + int(numbers[5]))
            elif kind == "command" and verb.upper() == "EPRT":
                ports.append(int(arg.split(arg[0])[3]))
            elif kind == "response" and (m := PASSIVE_REPLY.match(text)):
                ports.append(int(m.group(5)) * 256 + int(m.group(6)))
            elif kind == "response" and (m := EXTENDED_PASSIVE_REPLY.match(text)):
                ports.append(int(m.group(1)))
        return ports


def lftp_argv(url: str, commands: list[str], passive: bool, net_timeout: float = 10.0,
              timeout: float = 30.0) -> list[str]:
    """lftp at `url` (anonymous unless the URL names a user) running `commands` to the first failure.

    lftp retries a failed connection once (net:max-retries 1, net:timeout NET_TIMEOUT each);
    coreutils `timeout` ends it after `timeout` seconds at the latest.
    """
    settings = [
        f"set net:timeout {net_timeout:g}",
        "set net:max-retries 1",
        "set net:reconnect-interval-base 1",
        "set ftp:ssl-allow no",  # vsftpd here has no TLS: do not try AUTH TLS
        f"set ftp:passive-mode {'on' if passive else 'off'}",
        "set cmd:fail-exit yes",
        "set xfer:clobber yes",
    ]
    script = "; ".join([*settings, f"open {url}", *commands])
    return ["timeout", "--kill-after=2", f"{timeout:g}", "lftp", "-c", script]


def lftp(lab, url: str, commands: list[str], passive: bool, name: str = "client",
         net_timeout: float = 10.0, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run lftp_argv(...) in namespace `name`; the CompletedProcess (text), not checked."""
    argv = lftp_argv(url, commands, passive, net_timeout, timeout)
    return lab.run(name, argv, check=False, timeout=timeout + 10)


def curl(lab, url: str, *options: str, max_time: float = 20.0) -> subprocess.CompletedProcess:
    """curl OPTIONS URL in the client namespace (anonymous FTP login is curl's default)."""
    return netns.curl(lab, url, max_time=max_time, extra=options)
