"""Helpers for kernel tests in the lab: servers, clients and the daemon, each bounded in count and time.

Tests import this module; the helpers also run it as a script inside a namespace (`python
tests/netns.py tcp-sink --port 9000 --lifetime 20`) for the small programs the installed tools do not
give: a TCP sink that hashes what it received, a TCP sender of N pseudo-random bytes, a UDP echo and
its client, and an ICMP/ICMPv6 echo (ping is not installed everywhere). Each prints one JSON line.

Servers are `Background` processes wrapped in coreutils `timeout`, so none outlives its lifetime even
if a test forgets it; `Lab.down()` also ends whatever is left in the lab's namespaces. Clients run to
completion with a bounded wait (curl --max-time, nc -w, socket timeouts).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import random
import re
import select
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()


# -- can kernel tests run here? -----------------------------------------------------------------


@functools.cache
def unavailable_reason() -> str | None:
    """Why namespace tests cannot run on this machine (not root, no `ip netns`), or None."""
    from fw.lab import LabError, ip

    if os.geteuid() != 0:
        return "needs root to build network namespaces"
    probe = f"fwt{os.getpid()}-probe"
    try:
        ip("netns", "add", probe)
        try:
            ip("-n", probe, "link", "set", "dev", "lo", "up")
        finally:
            ip("netns", "delete", probe, check=False)
    except LabError as error:
        return f"`ip netns` does not work here: {error}"
    return None


def remove_stale_namespaces() -> list[str]:
    """Remove namespaces `fwt<PID>-...` left by test runs whose process is gone (killed runs)."""
    from fw.lab import list_namespaces, remove_namespaces

    stale = set()
    for name in list_namespaces():
        match = re.match(r"fwt(\d+)-", name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            stale.add(match.group(0))
    return [name for prefix in sorted(stale) for name in remove_namespaces(prefix)]


# -- processes in namespaces ----------------------------------------------------------------------


class Background:
    """A process in a lab namespace that `timeout` ends after `lifetime` seconds at the latest."""

    def __init__(self, lab, name: str, argv: list[str], lifetime: float, capture: bool = True) -> None:
        """capture=False: output discarded (a chatty server could fill a pipe nobody reads)."""
        command = ["timeout", "--kill-after=2", f"{lifetime:g}", *map(str, argv)]
        output = subprocess.PIPE if capture else subprocess.DEVNULL
        self.process = lab.popen(name, command, stdin=subprocess.DEVNULL, stdout=output, stderr=output)
        self.stdout = b""
        self.stderr = b""

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the process to end by itself; its output is kept in .stdout and .stderr."""
        self.stdout, self.stderr = (output or b"" for output in self.process.communicate(timeout=timeout))
        return self.process.returncode

    def json(self, timeout: float = 30.0):
        """The JSON line a helper script printed when it ended."""
        code = self.wait(timeout)
        if code != 0:
            raise AssertionError(f"exit {code}: {self.stderr.decode(errors='replace').strip()}")
        return json.loads(self.stdout)

    def stop(self) -> None:
        """End it now if it still runs (SIGTERM, then SIGKILL) and collect its output."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.wait(5)


def script(subcommand: str, *args) -> list[str]:
    """This file run as a script: `python tests/netns.py SUBCOMMAND ARGS`."""
    return [sys.executable, str(HERE), subcommand, *map(str, args)]


def wait_for_port(lab, name: str, port: int, proto: str = "tcp", timeout: float = 5.0) -> None:
    """Wait until something in namespace `name` listens on `port` (ss, no traffic sent)."""
    flags = "-Hltn" if proto == "tcp" else "-Hlun"
    deadline = time.monotonic() + timeout
    while True:
        listening = lab.run(name, ["ss", flags, "sport", "=", f":{port}"]).stdout
        if listening.strip():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {proto} port {port} in {name} after {timeout:g} s")
        time.sleep(0.02)


def url(address: str, port: int, path: str = "/") -> str:
    """http://ADDRESS:PORT/PATH with IPv6 addresses in brackets."""
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}{path}"


# -- servers (in the server namespace unless told) -----------------------------------------------


def http_server(lab, directory: Path, port: int = 8080, name: str = "server",
                lifetime: float = 60.0) -> Background:
    """Python's http.server on [::]:PORT (IPv4 too) serving `directory`; returns once it listens."""
    server = Background(lab, name, [sys.executable, "-m", "http.server", "--bind", "::",
                                    "--directory", directory, port], lifetime, capture=False)
    wait_for_port(lab, name, port)
    return server


def nc_listen(lab, port: int, name: str = "server", family: int = 4, udp: bool = False,
              lifetime: float = 10.0) -> Background:
    """`nc -l PORT` (one connection; what it received ends up in .stdout after wait())."""
    argv = ["nc", f"-{family}", "-l", *(["-u"] if udp else []), port]
    listener = Background(lab, name, argv, lifetime)
    wait_for_port(lab, name, port, "udp" if udp else "tcp")
    return listener


def tcp_sink(lab, port: int, name: str = "server", lifetime: float = 30.0) -> Background:
    """Accept one TCP connection on [::]:PORT, read to EOF; .json() is {"sha256", "bytes"}."""
    sink = Background(lab, name, script("tcp-sink", "--port", port, "--lifetime", lifetime), lifetime + 5)
    wait_for_port(lab, name, port)
    return sink


def udp_echo(lab, port: int, name: str = "server", count: int = 100, lifetime: float = 30.0) -> Background:
    """Echo up to `count` UDP datagrams on [::]:PORT; .json() is {"echoed": N}."""
    echo = Background(lab, name, script("udp-echo", "--port", port, "--count", count,
                                        "--lifetime", lifetime), lifetime + 5)
    wait_for_port(lab, name, port, "udp")
    return echo


# -- clients (in the client namespace unless told) -----------------------------------------------


def curl(lab, address_url: str, name: str = "client", max_time: float = 5.0, extra: tuple = ()):
    """curl -sS --max-time (then `extra` options); the CompletedProcess (body in .stdout), not checked.

    Exit 28 is curl's "timed out" (a dropped SYN), 7 "could not connect" (a reset or unreachable).
    """
    return lab.run(name, ["curl", "-sS", "--globoff", "--max-time", f"{max_time:g}", *extra, address_url],
                   check=False, timeout=max_time + 10)


def nc_send(lab, address: str, port: int, data: bytes, name: str = "client", wait: float = 3.0,
            udp: bool = False):
    """Send `data` with `nc -N -w WAIT` (-u for UDP); the CompletedProcess (bytes), not checked."""
    argv = ["nc", "-N", "-w", f"{wait:g}", *(["-u"] if udp else []), address, port]
    return lab.run(name, argv, input=data, check=False, timeout=wait + 10)


def tcp_send(lab, address: str, port: int, nbytes: int, seed: int = 0, name: str = "client",
             timeout: float = 20.0) -> dict:
    """Send `nbytes` pseudo-random bytes (from `seed`); {"sha256", "bytes"} of what was sent."""
    done = lab.run(name, script("tcp-send", "--address", address, "--port", port, "--bytes", nbytes,
                                "--seed", seed, "--timeout", timeout), timeout=timeout + 10)
    return json.loads(done.stdout)


def udp_exchange(lab, address: str, port: int, payloads: list[bytes], name: str = "client",
                 timeout: float = 2.0) -> list[bytes | None]:
    """Send each payload and wait up to `timeout` for its echo; the replies (None where none came)."""
    args = [arg for payload in payloads for arg in ("--payload", payload.hex())]
    done = lab.run(name, script("udp-send", "--address", address, "--port", port, "--timeout", timeout,
                                *args), timeout=timeout * len(payloads) + 10)
    return [None if reply is None else bytes.fromhex(reply) for reply in json.loads(done.stdout)]


def ping(lab, address: str, name: str = "client", count: int = 1, timeout: float = 2.0) -> int:
    """ICMP (or ICMPv6) echo requests to `address`; the number of replies."""
    done = lab.run(name, script("ping", "--address", address, "--count", count, "--timeout", timeout),
                   check=False, timeout=count * timeout + 10)
    return json.loads(done.stdout)["received"]


# -- the daemon ----------------------------------------------------------------------------------


class Daemon:
    """`fw run --policy POLICY ARGS` in the lab's firewall namespace, output in `log`."""

    def __init__(self, lab, policy: Path, log: Path, *args: str) -> None:
        from fw.lab import start_daemon

        self.lab = lab
        self.log = log
        self.process = start_daemon(lab, policy, log, *args)

    def wait_ready(self, timeout: float = 15.0) -> None:
        from fw.lab import LabError, wait_daemon_ready

        try:
            wait_daemon_ready(self.lab, self.process, timeout)
        except LabError as error:
            raise AssertionError(f"{error}\n--- daemon log ---\n{self.log_text()}") from None

    def fw(self, *args: str, check: bool = True):
        """`fw ARGS` in the firewall namespace (reaches this daemon): fw("stats", "--json")."""
        from fw.lab import fw_argv

        return self.lab.run(self.lab.firewall, fw_argv(*args), check=check)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait; the exit status, or None if it had to be killed after `timeout`."""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            return None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


# -- the programs run inside namespaces (python tests/netns.py ...) ------------------------------


def _tcp_sink(args) -> dict:
    deadline = time.monotonic() + args.lifetime
    listener = socket.create_server(("::", args.port), family=socket.AF_INET6, dualstack_ipv6=True)
    listener.settimeout(args.lifetime)
    connection, _ = listener.accept()
    digest, total = hashlib.sha256(), 0
    while (remaining := deadline - time.monotonic()) > 0:
        connection.settimeout(remaining)
        chunk = connection.recv(1 << 16)
        if not chunk:
            break
        digest.update(chunk)
        total += len(chunk)
    return {"sha256": digest.hexdigest(), "bytes": total}


def _tcp_send(args) -> dict:
    data = random.Random(args.seed).randbytes(args.bytes)
    with socket.create_connection((args.address, args.port), timeout=args.timeout) as connection:
        connection.sendall(data)
        if args.hold:  # the connection stays open (established) until a line on stdin
            sys.stdin.readline()
        connection.shutdown(socket.SHUT_WR)
        connection.recv(1)  # wait for the peer to close: everything was read
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _udp_echo(args) -> dict:
    deadline = time.monotonic() + args.lifetime
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", args.port))
    echoed = 0
    while echoed < args.count and (remaining := deadline - time.monotonic()) > 0:
        if select.select([sock], [], [], remaining)[0]:
            data, peer = sock.recvfrom(65535)
            sock.sendto(data, peer)
            echoed += 1
    return {"echoed": echoed}


def _udp_send(args) -> list:
    family = socket.AF_INET6 if ":" in args.address else socket.AF_INET
    replies = []
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect((args.address, args.port))
        sock.settimeout(args.timeout)
        for payload in args.payload:
            sock.send(bytes.fromhex(payload))
            try:
                replies.append(sock.recv(65535).hex())
            except (TimeoutError, ConnectionRefusedError):
                replies.append(None)
    return replies


def _ping(args) -> dict:
    v6 = ":" in args.address
    family, proto, request, reply = ((socket.AF_INET6, socket.IPPROTO_ICMPV6, 128, 129) if v6
                                     else (socket.AF_INET, socket.IPPROTO_ICMP, 8, 0))
    ident = os.getpid() & 0xFFFF
    received = 0
    with socket.socket(family, socket.SOCK_RAW, proto) as sock:
        for seq in range(args.count):
            header = struct.pack("!BBHHH", request, 0, 0, ident, seq) + b"fw-lab-ping"
            if not v6:  # the kernel fills the ICMPv6 checksum; ICMPv4's is ours
                header = header[:2] + struct.pack("!H", _checksum(header)) + header[4:]
            sock.sendto(header, (args.address, 0))
            deadline = time.monotonic() + args.timeout
            while (remaining := deadline - time.monotonic()) > 0:
                if not select.select([sock], [], [], remaining)[0]:
                    break
                data = sock.recv(65535)
                icmp = data if v6 else data[(data[0] & 0x0F) * 4:]
                kind, _, _, their_ident, their_seq = struct.unpack_from("!BBHHH", icmp)
                if (kind, their_ident, their_seq) == (reply, ident, seq):
                    received += 1
                    break
    return {"sent": args.count, "received": received}


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for command, function in (("tcp-sink", _tcp_sink), ("udp-echo", _udp_echo)):
        sub = commands.add_parser(command)
        sub.add_argument("--port", type=int, required=True)
        sub.add_argument("--lifetime", type=float, default=30.0)
        sub.add_argument("--count", type=int, default=100)
        sub.set_defaults(function=function)
    for command, function in (("tcp-send", _tcp_send), ("udp-send", _udp_send), ("ping", _ping)):
        sub = commands.add_parser(command)
        sub.add_argument("--address", required=True)
        sub.add_argument("--port", type=int, default=0)
        sub.add_argument("--timeout", type=float, default=5.0)
        sub.add_argument("--bytes", type=int, default=0)
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--count", type=int, default=1)
        sub.add_argument("--payload", action="append", default=[])
        sub.add_argument("--hold", action="store_true", help="tcp-send: close only after a line on stdin")
        sub.set_defaults(function=function)
    args = parser.parse_args(argv)
    print(json.dumps(args.function(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
