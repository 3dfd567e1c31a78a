"""Health checks of real servers, driven by the daemon's loop; never blocking, no threads.

How it works: a `HealthChecker` owns a selector (epoll) and one non-blocking socket per check in
flight. The daemon watches `fileno()` (an epoll fd is readable when one of its sockets is ready)
and calls `poll(now)` when it is, and when `next_due()` has come. `poll` starts the checks that are
due, advances the ones whose socket is ready, fails the ones past their timeout, and returns the
state changes as plain `HealthChange(server, old, new, why)` records for the daemon to turn into
events and metrics. Time is an input; the only I/O is the checks' own sockets, which carry
SO_MARK `mark` (a value the daemon exempts from its queue, so that checks never meet the firewall's
own policy) when it is not 0.

How a server is checked is a `HealthSpec` (the policy's `health`, fw/policy/virtual_servers.py):
a TCP connect (`tcp`: good when the handshake completes) or an HTTP/1.0 GET of `path` whose status
must be `expect` (`http`). Each target is checked every `interval` seconds (from the
start of one check to the start of the next), each check failing after `timeout` seconds. A target
starts up (as HAProxy's servers do: the first failed check marks it down), goes down after `fall`
failed checks in a row and up again after `rise` good ones. Worst case, a dead server is marked
down within interval x fall + timeout of its death, and back up within interval x rise of its
return (plus the time of one check).
"""

from __future__ import annotations

import errno
import selectors
import socket
from typing import NamedTuple

from fw.policy.virtual_servers import HealthSpec

UP = "up"
DOWN = "down"
MAX_RESPONSE_HEAD = 4096  # bytes read for an HTTP status line at most


class HealthChange(NamedTuple):
    """A target went up or down: `server` is the key it was added under."""

    server: object
    old: str
    new: str
    why: str


class Target:
    """One server under check."""

    __slots__ = ("key", "address", "port", "family", "check", "up", "successes", "failures",
                 "due", "probe", "last")

    def __init__(self, key, address: str, port: int, check: HealthSpec, now: float):
        self.key = key
        self.address = address
        self.port = port
        self.family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.check = check
        self.up = True
        self.successes = 0
        self.failures = 0
        self.due = now
        self.probe: Probe | None = None
        self.last: tuple[float, bool, str] | None = None  # (when, good, why) of the last check

    @property
    def state(self) -> str:
        return UP if self.up else DOWN


class Probe:
    """One check in flight: its socket, its deadline, what is left to send, what came back."""

    __slots__ = ("target", "sock", "started", "deadline", "connected", "out", "received")

    def __init__(self, target: Target, sock: socket.socket, now: float):
        self.target = target
        self.sock = sock
        self.started = now
        self.deadline = now + target.check.timeout
        self.connected = False
        self.out = b""
        self.received = b""


class HealthChecker:
    """Checks targets added with `add(key, address, port, check, now)`; see the module docstring."""

    def __init__(self, mark: int = 0):
        self.mark = mark
        self.selector = selectors.DefaultSelector()
        self.targets: dict[object, Target] = {}

    def fileno(self) -> int:
        return self.selector.fileno()

    def add(self, key, address: str, port: int, check: HealthSpec, now: float) -> Target:
        if key in self.targets:
            raise ValueError(f"{key!r} is already checked")
        target = self.targets[key] = Target(key, address, port, check, now)
        return target

    def remove(self, key) -> None:
        target = self.targets.pop(key)
        if target.probe is not None:
            self._close(target.probe)

    def replace_targets(self, targets, now: float) -> None:
        """Check exactly these (key, address, port, HealthSpec) from now on (a reload): a target
        whose key, address, port and spec are unchanged keeps its state and its check in flight."""
        wanted = {key: (address, port, check) for key, address, port, check in targets}
        for key, target in list(self.targets.items()):
            if wanted.get(key) != (target.address, target.port, target.check):
                self.remove(key)
        for key, (address, port, check) in wanted.items():
            if key not in self.targets:
                self.add(key, address, port, check, now)

    def last_checks(self) -> dict:
        """key -> (when, good, why) of each target's last check (for `fw lb`)."""
        return {key: target.last for key, target in self.targets.items() if target.last is not None}

    def close(self) -> None:
        for key in list(self.targets):
            self.remove(key)
        self.selector.close()

    def next_due(self) -> float | None:
        """When `poll` must run next, if no socket becomes ready before."""
        times = [t.probe.deadline if t.probe else t.due for t in self.targets.values()]
        return min(times, default=None)

    def poll(self, now: float) -> list[HealthChange]:
        """Start due checks, advance ready ones, time out late ones; the state changes."""
        changes: list[HealthChange] = []
        for target in self.targets.values():
            if target.probe is None and target.due <= now:
                self._start(target, now, changes)
        for key, _events in self.selector.select(0):
            self._advance(key.data, now, changes)
        for target in self.targets.values():
            probe = target.probe
            if probe is not None and probe.deadline <= now:
                self._finish(probe, now, False, f"timeout after {target.check.timeout:g}s", changes)
        return changes

    def _start(self, target: Target, now: float, changes: list) -> None:
        target.due = now + target.check.interval
        try:
            sock = socket.socket(target.family, socket.SOCK_STREAM)
        except OSError as exc:
            self._result(target, now, False, f"socket: {exc.strerror}", changes)
            return
        probe = target.probe = Probe(target, sock, now)
        try:
            sock.setblocking(False)
            if self.mark:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.mark)
            status = sock.connect_ex((target.address, target.port))
        except OSError as exc:
            self._finish(probe, now, False, f"connect: {exc.strerror}", changes)
            return
        if status not in (0, errno.EINPROGRESS):
            self._finish(probe, now, False, _error_words(status), changes)
            return
        self.selector.register(sock, selectors.EVENT_WRITE, probe)

    def _advance(self, probe: Probe, now: float, changes: list) -> None:
        if probe.target.probe is not probe:
            return
        if not probe.connected:
            status = probe.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if status:
                self._finish(probe, now, False, _error_words(status), changes)
                return
            probe.connected = True
            if probe.target.check.type == "tcp":
                self._finish(probe, now, True, "connected", changes)
                return
            probe.out = _http_request(probe.target)
        if probe.out:
            self._send(probe, now, changes)
        else:
            self._receive(probe, now, changes)

    def _send(self, probe: Probe, now: float, changes: list) -> None:
        try:
            sent = probe.sock.send(probe.out)
        except BlockingIOError:
            return
        except OSError as exc:
            self._finish(probe, now, False, f"send: {exc.strerror}", changes)
            return
        probe.out = probe.out[sent:]
        if not probe.out:
            self.selector.modify(probe.sock, selectors.EVENT_READ, probe)

    def _receive(self, probe: Probe, now: float, changes: list) -> None:
        try:
            data = probe.sock.recv(MAX_RESPONSE_HEAD)
        except BlockingIOError:
            return
        except OSError as exc:
            self._finish(probe, now, False, f"receive: {exc.strerror}", changes)
            return
        probe.received += data
        if b"\n" not in probe.received and data and len(probe.received) < MAX_RESPONSE_HEAD:
            return
        good, why = _judge_status(probe.received, probe.target.check.expect)
        self._finish(probe, now, good, why, changes)

    def _finish(self, probe: Probe, now: float, good: bool, why: str, changes: list) -> None:
        self._close(probe)
        self._result(probe.target, now, good, why, changes)

    def _close(self, probe: Probe) -> None:
        probe.target.probe = None
        try:
            self.selector.unregister(probe.sock)
        except (KeyError, ValueError):
            pass  # never registered (it failed at once)
        probe.sock.close()

    def _result(self, target: Target, now: float, good: bool, why: str, changes: list) -> None:
        first = target.last is None
        target.last = (now, good, why)
        old = target.state
        if good:
            target.failures = 0
            target.successes += 1
            if not target.up and target.successes >= target.check.rise:
                target.up = True
        else:
            target.successes = 0
            target.failures += 1
            if target.up and (first or target.failures >= target.check.fall):
                target.up = False
        if target.state != old:
            changes.append(HealthChange(target.key, old, target.state, why))


def _error_words(status: int) -> str:
    """`connection refused` and the like, from an errno."""
    return errno.errorcode.get(status, str(status)) if status not in _WORDS else _WORDS[status]


_WORDS = {
    errno.ECONNREFUSED: "connection refused", errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable", errno.ETIMEDOUT: "connection timed out",
    errno.ECONNRESET: "connection reset",
}


def _http_request(target: Target) -> bytes:
    host = f"[{target.address}]" if ":" in target.address else target.address
    return (f"GET {target.check.path} HTTP/1.0\r\nHost: {host}:{target.port}\r\n"
            "User-Agent: fw-health-check\r\nConnection: close\r\n\r\n").encode("ascii")


def _judge_status(received: bytes, expect: int) -> tuple[bool, str]:
    """(good, why) from the start of an HTTP response: its status line against `expect`."""
    line = received.split(b"\n", 1)[0].rstrip(b"\r")
    parts = line.split(None, 2)
    if not received:
        return False, "closed without a response"
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return False, "not an HTTP response"
    status = int(parts[1])
    if status != expect:
        return False, f"HTTP {status}, expected {expect}"
    return True, f"HTTP {status}"
