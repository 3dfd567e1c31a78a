"""The one-machine lab: network namespaces joined by veth pairs (SPEC, "The lab").

How it works. A lab is data: segments (layer-2 networks) and hosts. Each segment is a bridge inside
the firewall namespace that carries the firewall's addresses on that network (`lan`: 198.51.100.1,
2001:db8:1::1; `wan`: 203.0.113.1, 2001:db8:2::1), so the firewall's interfaces are named `lan` and
`wan` whatever hosts join. Each host is a namespace whose `eth0` is one end of a veth pair; the other
end (`lan-client`, `wan-server`, ...) is a port of its segment's bridge. An extra host (ATTACKER, at
198.51.100.66) is one more port on the same bridge: `Lab.add_host`. An HA lab (two firewalls and a
sync segment on 192.0.2.0/24) would move each bridge into a switch namespace of its own; nothing here
assumes there is only one firewall beyond the `firewall` name.

Both ends of every veth are created directly inside lab namespaces (`ip -n FW link add ... peer
... netns HOST`), so no interface ever appears in, or is linked to, the host's own namespace. DAD is
off before any interface exists (and addresses are `nodad`), so IPv6 works at once; rp_filter is off;
the firewall forwards IPv4 and IPv6 and does not pass bridged frames to iptables (br_netfilter).
Checksum offload and TSO/GSO stay on, as on real hosts. What the firewall's queue sees of a bulk TCP
transfer: without NFQUEUE's GSO flag the kernel segments the client's 64 KiB GSO packets and fills
in their checksums before queueing (measured: 1500-byte packets, every TCP checksum valid); with the
flag (the daemon sets it) packets of up to 64 KiB arrive whole, their checksums possibly partial.

`Lab.up()` makes only what is missing (idempotent, and repairs a partial lab); `Lab.down()` ends the
processes left in the lab's namespaces and deletes the namespaces, which removes their interfaces.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PREFIX = "fwlab-"
FIREWALL = "fw"
HOST_INTERFACE = "eth0"
IFNAMSIZ = 15


class LabError(Exception):
    """A lab operation failed; the message is one line for the operator."""


@dataclass(frozen=True)
class Segment:
    """A layer-2 network: a bridge named `name` in the firewall namespace holding its addresses."""

    name: str
    ipv4: str  # the firewall's address with prefix length: "198.51.100.1/24"
    ipv6: str


@dataclass(frozen=True)
class Host:
    """A namespace `name` with one interface (eth0) on `segment`, routed through the firewall."""

    name: str
    segment: str
    ipv4: str  # with prefix length: "198.51.100.10/24"
    ipv6: str

    @property
    def address4(self) -> str:
        return self.ipv4.split("/")[0]

    @property
    def address6(self) -> str:
        return self.ipv6.split("/")[0]


LAN = Segment("lan", "198.51.100.1/24", "2001:db8:1::1/64")
WAN = Segment("wan", "203.0.113.1/24", "2001:db8:2::1/64")
CLIENT = Host("client", "lan", "198.51.100.10/24", "2001:db8:1::10/64")
SERVER = Host("server", "wan", "203.0.113.10/24", "2001:db8:2::10/64")
ATTACKER = Host("attacker", "lan", "198.51.100.66/24", "2001:db8:1::66/64")

COMMON_SYSCTLS = (
    "net.ipv6.conf.all.accept_dad=0",
    "net.ipv6.conf.default.accept_dad=0",
    "net.ipv6.conf.all.disable_ipv6=0",
    "net.ipv6.conf.default.disable_ipv6=0",
    "net.ipv4.conf.all.rp_filter=0",
    "net.ipv4.conf.default.rp_filter=0",
)
FIREWALL_SYSCTLS = (
    "net.ipv4.ip_forward=1",
    "net.ipv6.conf.all.forwarding=1",
    "net.ipv6.conf.default.forwarding=1",
    # Routed traffic only: frames bridged between two hosts of one segment skip iptables.
    "net.bridge.bridge-nf-call-iptables=0",
    "net.bridge.bridge-nf-call-ip6tables=0",
    "net.bridge.bridge-nf-call-arptables=0",
)
PREFIX_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,40}")
NAME_PATTERN = re.compile(r"[a-z][a-z0-9]{0,10}")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run `ip ARGS`; a failure with check raises LabError naming the command and ip's message."""
    try:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    except FileNotFoundError as error:
        raise LabError("the `ip` command (iproute2) is not installed") from error
    if check and done.returncode != 0:
        reason = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise LabError(f"ip {' '.join(args)}: {reason[0]}")
    return done


def list_namespaces() -> list[str]:
    """Names of the named network namespaces (`ip netns list`)."""
    return [line.split()[0] for line in ip("netns", "list").stdout.splitlines() if line.strip()]


def namespace_pids(namespace: str) -> list[int]:
    done = ip("netns", "pids", namespace, check=False)
    return [int(pid) for pid in done.stdout.split()]


def end_processes(pids: list[int], grace: float = 3.0) -> None:
    """SIGTERM the processes, wait up to `grace` seconds, then SIGKILL whoever is left."""
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(is_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if is_running(pid):
            _signal(pid, signal.SIGKILL)


def is_running(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def remove_namespaces(prefix: str) -> list[str]:
    """Delete every namespace whose name starts with `prefix` (a last-resort sweep); return them."""
    doomed = [name for name in list_namespaces() if name.startswith(prefix)]
    for name in doomed:
        end_processes(namespace_pids(name))
        ip("netns", "delete", name, check=False)
    return doomed


class Lab:
    """The lab's namespaces `PREFIX + name`: build with up(), remove with down(), or use `with`."""

    def __init__(
        self,
        prefix: str = DEFAULT_PREFIX,
        hosts: tuple[Host, ...] = (CLIENT, SERVER),
        segments: tuple[Segment, ...] = (LAN, WAN),
        firewall: str = FIREWALL,
    ) -> None:
        if not PREFIX_PATTERN.fullmatch(prefix):
            raise LabError(f"bad lab prefix {prefix!r} (letters, digits, '_', '.', '-'; at most 40)")
        self.prefix = prefix
        self.firewall = firewall
        self.segments = {segment.name: segment for segment in segments}
        self.hosts: dict[str, Host] = {}
        for host in hosts:
            self._remember(host)

    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(self, *exc_info: object) -> None:
        self.down()

    def __repr__(self) -> str:
        return f"Lab(prefix={self.prefix!r}, hosts={sorted(self.hosts)})"

    # -- names --------------------------------------------------------------------------------

    @property
    def namespaces(self) -> list[str]:
        """Every namespace of this lab, the firewall's first."""
        return [self.namespace(name) for name in (self.firewall, *self.hosts)]

    def namespace(self, name: str) -> str:
        """The namespace of `name` ("fw", "client", ...), e.g. "fwlab-client"."""
        if name != self.firewall and name not in self.hosts:
            raise LabError(f"no host {name!r} in this lab (hosts: {', '.join(self.hosts)})")
        return self.prefix + name

    def host(self, name: str) -> Host:
        return self.hosts[name]

    def gateway(self, name: str, family: int) -> str:
        """The firewall's address on host `name`'s segment: the host's default gateway."""
        segment = self.segments[self.hosts[name].segment]
        return (segment.ipv4 if family == 4 else segment.ipv6).split("/")[0]

    @staticmethod
    def port_name(host: Host) -> str:
        """The firewall-side end of a host's veth: "lan-client"."""
        return f"{host.segment}-{host.name}"

    # -- building -----------------------------------------------------------------------------

    def up(self) -> Lab:
        """Build whatever of the lab is missing. Safe to call again; repairs a partial lab."""
        existing = set(list_namespaces())
        self._ensure_namespace(self.firewall, existing, COMMON_SYSCTLS + FIREWALL_SYSCTLS)
        for segment in self.segments.values():
            self._ensure_segment(segment)
        for host in self.hosts.values():
            self._ensure_host(host, existing)
        return self

    def add_host(self, host: Host) -> Host:
        """Add an extra host (e.g. ATTACKER); built at once if the lab is up, else by up()."""
        self._remember(host)
        existing = set(list_namespaces())
        if self.namespace(self.firewall) in existing:
            self._ensure_host(host, existing)
        return host

    def down(self) -> None:
        """End the processes left in the lab's namespaces and delete the namespaces (idempotent)."""
        existing = set(list_namespaces())
        mine = [name for name in self.namespaces if name in existing]
        end_processes([pid for name in mine for pid in namespace_pids(name)])
        for name in mine:
            ip("netns", "delete", name)

    def is_up(self) -> bool:
        """True when every namespace of the lab exists."""
        return set(self.namespaces) <= set(list_namespaces())

    def _remember(self, host: Host) -> None:
        if not NAME_PATTERN.fullmatch(host.name) or host.name == self.firewall:
            raise LabError(f"bad host name {host.name!r} (a-z then a-z0-9, at most 11, not the firewall)")
        if host.segment not in self.segments:
            raise LabError(f"host {host.name!r}: no segment {host.segment!r}")
        if len(self.port_name(host)) > IFNAMSIZ:
            raise LabError(f"host {host.name!r}: interface name {self.port_name(host)!r} is too long")
        self.hosts[host.name] = host

    def _ensure_namespace(self, name: str, existing: set[str], sysctls: tuple[str, ...]) -> str:
        namespace = self.prefix + name
        if namespace not in existing:
            ip("netns", "add", namespace)
            existing.add(namespace)
        # -e: keys this kernel lacks (net.bridge.* without br_netfilter) are not errors.
        self.run(name, ["sysctl", "-q", "-e", "-w", *sysctls])
        ip("-n", namespace, "link", "set", "dev", "lo", "up")
        return namespace

    def _ensure_segment(self, segment: Segment) -> None:
        firewall = self.namespace(self.firewall)
        if not self._has_link(firewall, segment.name):
            ip("-n", firewall, "link", "add", "name", segment.name, "type", "bridge",
               "forward_delay", "0", "mcast_snooping", "0")
        ip("-n", firewall, "addr", "replace", segment.ipv4, "dev", segment.name)
        ip("-n", firewall, "addr", "replace", segment.ipv6, "dev", segment.name, "nodad")
        ip("-n", firewall, "link", "set", "dev", segment.name, "up")

    def _ensure_host(self, host: Host, existing: set[str]) -> None:
        namespace = self._ensure_namespace(host.name, existing, COMMON_SYSCTLS)
        firewall = self.namespace(self.firewall)
        port = self.port_name(host)
        if not self._has_link(firewall, port):
            if self._has_link(namespace, HOST_INTERFACE):  # a stray end: cannot be, but be sure
                ip("-n", namespace, "link", "delete", HOST_INTERFACE)
            ip("-n", firewall, "link", "add", "name", port, "type", "veth",
               "peer", "name", HOST_INTERFACE, "netns", namespace)
        # A bridge port needs no addresses of its own: no IPv6 link-local on it.
        ip("-n", firewall, "link", "set", "dev", port, "master", host.segment, "addrgenmode", "none", "up")
        ip("-n", namespace, "addr", "replace", host.ipv4, "dev", HOST_INTERFACE)
        ip("-n", namespace, "addr", "replace", host.ipv6, "dev", HOST_INTERFACE, "nodad")
        ip("-n", namespace, "link", "set", "dev", HOST_INTERFACE, "up")
        ip("-n", namespace, "route", "replace", "default", "via", self.gateway(host.name, 4))
        ip("-n", namespace, "-6", "route", "replace", "default", "via", self.gateway(host.name, 6))

    @staticmethod
    def _has_link(namespace: str, link: str) -> bool:
        return ip("-n", namespace, "link", "show", "dev", link, check=False).returncode == 0

    # -- running things inside ----------------------------------------------------------------

    def command(self, name: str, argv: list[str]) -> list[str]:
        """`argv` wrapped to run inside host `name`'s namespace."""
        return ["ip", "netns", "exec", self.namespace(name), *map(str, argv)]

    def run(self, name: str, argv: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
        """Run `argv` in `name`'s namespace; text output captured and a 30 s timeout unless given.

        With check, a non-zero exit raises LabError carrying the command's last line of stderr.
        """
        kw.setdefault("timeout", 30)
        if "stdout" not in kw and "stderr" not in kw:
            kw.setdefault("capture_output", True)
        if "input" not in kw or isinstance(kw["input"], str):
            kw.setdefault("text", True)
        done = subprocess.run(self.command(name, argv), **kw)
        if check and done.returncode != 0:
            stderr = done.stderr or ""
            stderr = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
            message = stderr.strip().splitlines()[-1:]
            raise LabError(f"{name}: {' '.join(map(str, argv))}: exit {done.returncode}"
                           + (f": {message[0]}" if message else ""))
        return done

    def popen(self, name: str, argv: list[str], **kw) -> subprocess.Popen:
        """Start `argv` in `name`'s namespace. `ip netns exec` execs in place: the pid is argv's."""
        return subprocess.Popen(self.command(name, argv), **kw)

    def links(self, name: str) -> list[dict]:
        """`ip -j link` of `name`'s namespace (for inspection and tests)."""
        return json.loads(ip("-n", self.namespace(name), "-j", "link", "show").stdout)

    def addresses(self, name: str) -> list[dict]:
        """`ip -j addr` of `name`'s namespace."""
        return json.loads(ip("-n", self.namespace(name), "-j", "addr", "show").stdout)


# -- the firewall daemon in the lab ------------------------------------------------------------


def fw_argv(*args: str) -> list[str]:
    """The command line of `fw ARGS` with this interpreter (works from a checkout and a venv)."""
    return [sys.executable, "-m", "fw", *args]


def run_dir(prefix: str) -> Path:
    """Where `fw lab up` keeps the daemon's pid and log files: /run/fw/lab-PREFIX."""
    return Path("/run/fw") / f"lab-{prefix}"


def daemon_pid(prefix: str) -> int | None:
    """The pid in the lab's pid file if that process is alive and is an `fw run`, else None."""
    try:
        pid = int((run_dir(prefix) / "daemon.pid").read_text().strip())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if is_running(pid) and b"fw" in argv and b"run" in argv else None


def start_daemon(lab: Lab, policy: str | os.PathLike, log: Path, *args: str, detach: bool = False):
    """Start `fw run --policy POLICY ARGS` in the firewall namespace, output appended to `log`.

    detach: in a session of its own, so it outlives the caller (`fw lab up`).
    """
    with open(log, "ab") as out:
        return lab.popen(lab.firewall, fw_argv("run", "--policy", str(Path(policy).resolve()), *args),
                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                         start_new_session=detach)


def wait_daemon_ready(lab: Lab, process: subprocess.Popen, timeout: float = 15.0) -> None:
    """Wait until `fw stats` in the firewall namespace answers; LabError if the daemon exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise LabError(f"the firewall daemon exited with status {process.returncode}")
        if lab.run(lab.firewall, fw_argv("stats"), check=False, timeout=10).returncode == 0:
            return
        if time.monotonic() > deadline:
            raise LabError(f"the firewall daemon did not answer `fw stats` within {timeout:g} s")
        time.sleep(0.1)


def stop_process(pid: int, timeout: float = 10.0) -> bool:
    """SIGTERM `pid` and wait for it to go, SIGKILL after `timeout`; True if SIGTERM sufficed."""
    _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while is_running(pid):
        if time.monotonic() > deadline:
            _signal(pid, signal.SIGKILL)
            return False
        time.sleep(0.05)
    return True
