"""The control socket: `fw sessions`, `fw stats`, `fw reload` reach the daemon of their namespace.

How it works. The daemon binds the abstract unix socket `@fw/<netns inode>/control`. Abstract names
live in the network namespace, so each namespace has its own and a client run inside a namespace
reaches that namespace's daemon; the inode in the name makes it plain which one. Binding is also the
daemon's lock: a second daemon in the same namespace gets EADDRINUSE, and the kernel frees the name
when the process dies, so a crash leaves no stale lock. The daemon binds early (lock) and listens
only once it is ready, so "connection refused" means "no daemon (yet)".

Protocol: the client sends one JSON object and a newline (`{"command": "stats", ...}`); the server
answers with one JSON object (`{"ok": true, ...}` or `{"ok": false, "error": "...", "exit": N}`)
and closes. Only root may talk to it: the server reads the peer's SO_PEERCRED and answers anyone
else with an error, without looking at the request. The server never blocks the packet loop:
sockets are non-blocking, polled by the daemon's loop, and an answer is an iterator of byte chunks
pulled only as fast as the client reads (a large session table goes out a few hundred sessions per
loop turn). A streamed answer (`fw events --follow`, fw.feed) may yield `None`: nothing to send now;
the connection is then parked (watched only for the client hanging up) until `wake()`.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import socket
import struct
import time
from collections.abc import Callable, Iterable, Iterator

from fw.drivers.iptables import netns_inode
from fw.packet.constants import PROTO_NAMES, PROTOCOLS

MAX_REQUEST = 64 * 1024
REQUEST_SECONDS = 10.0  # a client that does not finish its request in this time is dropped
POLLIN, POLLOUT, POLLERR, POLLHUP = 0x001, 0x004, 0x008, 0x010
NOT_ROOT = "permission denied: only root may control the fw daemon"


class ControlError(Exception):
    """A control request failed; `exit_code` is the CLI's exit status (SPEC: 1 runtime, 2 usage)."""

    def __init__(self, message: str, exit_code: int = 1, answer: dict | None = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.answer = answer or {}


def control_address(inode: int | None = None) -> bytes:
    return b"\0fw/%d/control" % (inode if inode is not None else netns_inode())


def daemon_running() -> bool:
    """True if a daemon holds this namespace's control name (running, or starting up)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.bind(control_address())
    except OSError as exc:
        return exc.errno == errno.EADDRINUSE
    finally:
        probe.close()
    return False


# -- the client -----------------------------------------------------------------------------------


def _send(sock: socket.socket, request: dict, address: bytes | None) -> None:
    try:
        sock.connect(address or control_address())
    except (ConnectionRefusedError, FileNotFoundError):
        raise ControlError("no fw daemon is running in this network namespace") from None
    try:
        sock.sendall(json.dumps(request).encode() + b"\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused before reading (not root): the answer is there to read


def _checked(answer: dict) -> dict:
    if not answer.get("ok"):
        message = answer.get("error", "the fw daemon refused the request")
        raise ControlError(message, answer.get("exit", 1), answer)
    return answer


def _talk(request: dict, timeout: float, address: bytes | None, receive: Callable) -> Iterator:
    """Connect, send `request`, yield from `receive(sock)`; socket failures as ControlError."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        _send(sock, request, address)
        yield from receive(sock)
    except TimeoutError:
        raise ControlError(f"the fw daemon did not answer within {timeout:g} s") from None
    except OSError as exc:
        raise ControlError(f"talking to the fw daemon failed: {exc.strerror or exc}") from None
    finally:
        sock.close()


def _whole(sock: socket.socket) -> Iterator[dict]:
    chunks = []
    while chunk := sock.recv(1 << 16):
        chunks.append(chunk)
    try:
        answer = json.loads(b"".join(chunks))
    except ValueError:
        raise ControlError("the fw daemon closed the connection without an answer") from None
    yield _checked(answer)


def _lines(sock: socket.socket) -> Iterator[dict]:
    first = True
    for line in sock.makefile("rb"):
        try:
            item = json.loads(line)
        except ValueError:
            raise ControlError("the fw daemon sent a line that is not JSON") from None
        if first:
            first = False
            _checked(item)
            sock.settimeout(None)  # a follower waits as long as it takes
        yield item
    if first:
        raise ControlError("the fw daemon closed the connection without an answer")


def call(request: dict, timeout: float = 30.0, address: bytes | None = None) -> dict:
    """Send `request` to this namespace's daemon; its answer, or ControlError."""
    talk = _talk(request, timeout, address, _whole)
    try:
        return next(talk)
    finally:
        talk.close()


def stream(request: dict, address: bytes | None = None, timeout: float = 30.0) -> Iterator[dict]:
    """Send `request`; the daemon's answer as JSON lines, one dict each, until it closes.

    The first line is checked (`ok`) as `call` checks its answer; ControlError if it is not."""
    return _talk(request, timeout, address, _lines)


# -- the server ----------------------------------------------------------------------------------


def answer_bytes(answer) -> Iterator[bytes]:
    """An answer (a dict, or an iterable of str/bytes chunks) as byte chunks."""
    if isinstance(answer, dict):
        yield json.dumps(answer).encode() + b"\n"
        return
    for chunk in answer:
        yield chunk if chunk is None or isinstance(chunk, bytes) else chunk.encode()


def error_answer(message: str, exit_code: int = 1, **extra) -> dict:
    return {"ok": False, "error": message, "exit": exit_code, **extra}


class _Connection:
    __slots__ = ("sock", "inbox", "outbox", "chunks", "started", "peer_uid", "parked")

    def __init__(self, sock: socket.socket, peer_uid: int):
        self.sock = sock
        self.inbox = b""
        self.outbox = b""
        self.chunks: Iterator[bytes] | None = None
        self.started = time.monotonic()
        self.peer_uid = peer_uid
        self.parked = False


class ControlServer:
    """The daemon's end. `handler(request: dict)` returns a dict or an iterable of JSON chunks.

    `loop` is the daemon's poll loop: watch(fd, mask, callback(events)), modify(fd, mask), unwatch(fd).
    """

    def __init__(self, handler: Callable[[dict], object], address: bytes | None = None):
        self.handler = handler
        self.address = address or control_address()
        self.loop = None
        self.connections: dict[int, _Connection] = {}
        self.parked: dict[int, _Connection] = {}  # streams waiting for something to send (wake())
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.bind(self.address)
        except OSError as exc:
            self.sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise ControlError("another fw daemon is running in this network namespace") from None
            raise ControlError(f"cannot bind the control socket: {exc.strerror}") from None
        self.sock.setblocking(False)

    @property
    def name(self) -> str:
        return "@" + self.address[1:].decode()

    def listen(self, loop) -> None:
        self.loop = loop
        self.sock.listen(16)
        loop.watch(self.sock.fileno(), POLLIN, self._accept)

    def _accept(self, _events: int) -> None:
        while True:
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. EMFILE: try again on the next readiness
            sock.setblocking(False)
            _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            conn = _Connection(sock, uid)
            self.connections[sock.fileno()] = conn
            self.loop.watch(sock.fileno(), POLLIN, lambda events, c=conn: self._on_event(c, events))

    def _on_event(self, conn: _Connection, events: int) -> None:
        if conn.parked:
            self._check_parked(conn)
        elif events & (POLLERR | POLLHUP) and not events & (POLLIN | POLLOUT):
            self._close(conn)
        elif conn.chunks is None:
            self._read(conn)
        else:
            self._write(conn)

    def _read(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(MAX_REQUEST)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        conn.inbox += data
        if b"\n" not in conn.inbox and data and len(conn.inbox) < MAX_REQUEST:
            return
        if conn.peer_uid != 0:  # read first: closing on an unread request would reset the client
            self._respond(conn, error_answer(NOT_ROOT))
            return
        try:
            request = json.loads(conn.inbox.split(b"\n", 1)[0])
            if not isinstance(request, dict):
                raise ValueError("not an object")
        except ValueError:
            self._respond(conn, error_answer("bad request: one JSON object and a newline expected", 2))
            return
        try:
            answer = self.handler(request)
        except Exception as exc:  # noqa: BLE001  (a failed request must not stop the daemon)
            answer = error_answer(f"the daemon failed on this request: {exc!r}")
        self._respond(conn, answer)

    def _respond(self, conn: _Connection, answer) -> None:
        conn.chunks = answer_bytes(answer)
        fd = conn.sock.fileno()
        if fd in self.loop.handlers:
            self.loop.modify(fd, POLLOUT)
        else:
            self.loop.watch(fd, POLLOUT, lambda events, c=conn: self._on_event(c, events))
        self._write(conn)

    def _write(self, conn: _Connection) -> None:
        """Send what the socket takes now; pull the next chunks of the answer only as they go out."""
        try:
            while True:
                if not conn.outbox:
                    conn.outbox = next(conn.chunks, b"")
                    if conn.outbox is None:  # a stream with nothing to send now: wait for wake()
                        conn.outbox = b""
                        self._park(conn)
                        return
                    if not conn.outbox:
                        self._close(conn)
                        return
                sent = conn.sock.send(conn.outbox)
                conn.outbox = conn.outbox[sent:]
        except (BlockingIOError, InterruptedError):
            return
        except Exception:  # noqa: BLE001  (the client went away, or building the answer failed)
            self._close(conn)

    def _park(self, conn: _Connection) -> None:
        conn.parked = True
        self.parked[conn.sock.fileno()] = conn
        self.loop.modify(conn.sock.fileno(), POLLIN)  # readable now means the client hung up (or talks)

    def _check_parked(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)

    def wake(self) -> None:
        """Streams parked for lack of news write again (called after a fw.feed publish)."""
        if not self.parked:
            return
        parked, self.parked = self.parked, {}
        for fd, conn in parked.items():
            conn.parked = False
            if fd in self.loop.handlers:
                self.loop.modify(fd, POLLOUT)

    def _close(self, conn: _Connection) -> None:
        fd = conn.sock.fileno()
        if fd >= 0:
            self.loop.unwatch(fd)
            self.connections.pop(fd, None)
            self.parked.pop(fd, None)
        conn.sock.close()

    def tick(self, now: float) -> None:
        """Drop clients that sit on an unfinished request."""
        for conn in list(self.connections.values()):
            if conn.chunks is None and now - conn.started > REQUEST_SECONDS:
                self._close(conn)

    def close(self) -> None:
        for conn in list(self.connections.values()):
            self._close(conn)
        if self.loop is not None and self.sock.fileno() >= 0:
            self.loop.unwatch(self.sock.fileno())
        self.sock.close()


def chunked(items: Iterable, render: Callable, size: int = 256) -> Iterator[str]:
    """`render(item)` for each item as comma-separated JSON, `size` items per chunk."""
    batch, first = [], True
    for item in items:
        batch.append(json.dumps(render(item)))
        if len(batch) >= size:
            yield ("" if first else ",") + ",".join(batch)
            batch, first = [], False
    if batch:
        yield ("" if first else ",") + ",".join(batch)


def is_root() -> bool:
    return os.geteuid() == 0


# -- sessions as the operator sees them ----------------------------------------------------------

PROTO_NUMBERS = PROTOCOLS  # names a filter accepts (fw.packet.constants: the one protocol table)
FLAG_NAMES = ((1, "ASSURED"), (2, "SEEN_REPLY"), (4, "RELATED"), (8, "LOOSE"), (64, "OFFLOADED"))  # 64: --offload
PORTED = (6, 17)


def _address(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


def session_view(session, now: float, flow_id: Callable) -> dict:
    """One session of `fw sessions --json` (both tuples, counters, remaining seconds)."""
    proto = session.proto
    src, dst = _address(session.src), _address(session.dst)
    original = {"src": src, "dst": dst}
    reply = {"src": dst, "dst": src}
    if proto in PORTED:
        original.update(sport=session.sport, dport=session.dport)
        reply.update(sport=session.dport, dport=session.sport)
    elif proto in (1, 58):
        original["id"] = reply["id"] = session.sport
    binding = session.nat
    if binding is not None:  # NAT: the reply as it arrives, to the translated address (as conntrack -L)
        s, t, sp, tp = binding.reply
        reply.update(src=_address(s), dst=_address(t))
        if proto in PORTED:
            reply.update(sport=sp, dport=tp)
        elif proto in (1, 58):
            reply["id"] = sp
    original.update(packets=session.orig_packets, bytes=session.orig_bytes)
    reply.update(packets=session.reply_packets, bytes=session.reply_bytes)
    alg = session.alg
    view = {
        "id": flow_id(session),
        "proto": PROTO_NAMES.get(proto, str(proto)),
        "family": session.family,
        "state": session.state_name,
        "original": original,
        "reply": reply,
        "timeout": max(0, int(session.deadline - now + 0.5)),
        "age": round(now - session.created, 3),
        "rule": session.rule,
        "flags": [name for bit, name in FLAG_NAMES if session.flags & bit],
        "alg": getattr(alg, "name", None) if alg is not None else None,
        "parent": flow_id(session.parent) if session.parent is not None else None,
        "policy_rev": session.policy_rev,
        "owner": session.owner,  # the HA node that announced it (fw run --sync), else None
    }
    if binding is not None:
        view["nat"] = binding.names
    return view


FILTER_KEYS = ("proto", "src", "dst", "addr", "sport", "dport", "port", "state", "rule", "owner")
SORT_KEYS = {  # fw sessions --sort KEY: largest first (age: oldest first; expires: soonest first)
    "bytes": lambda s: -(s.orig_bytes + s.reply_bytes),
    "packets": lambda s: -(s.orig_packets + s.reply_packets),
    "age": lambda s: s.created,
    "expires": lambda s: s.deadline,
}

VIEW_SORT_KEYS = {  # the same order over `fw sessions --json` views (the supervisor merges its workers')
    "bytes": lambda v: -(v["original"]["bytes"] + v["reply"]["bytes"]),
    "packets": lambda v: -(v["original"]["packets"] + v["reply"]["packets"]),
    "age": lambda v: -v["age"],
    "expires": lambda v: v["timeout"],
}


def select_sessions(sessions: Iterable, spec: dict | None, sort: str | None, limit: int | None) -> list:
    """The sessions a `sessions` request asks for: filtered, sorted (SORT_KEYS), at most `limit`.

    ValueError for a bad filter, sort key or limit."""
    selected = SessionFilter(spec or {"all": True})
    if sort is not None and sort not in SORT_KEYS:
        raise ValueError(f"unknown sort key {sort!r} (expected {', '.join(SORT_KEYS)})")
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit: a count expected, not {limit!r}")
    chosen = [s for s in sessions if selected.all or selected(s)]
    if sort is not None:
        chosen.sort(key=SORT_KEYS[sort])
    return chosen if limit is None else chosen[:limit]


def parse_filter(terms: Iterable[str], empty_ok: bool = False) -> dict:
    """`KEY=VALUE` words (FILTER_KEYS) or `all` -> a filter dict (`empty_ok`: none given is {}).

    Raises ValueError with a message for the operator."""
    result: dict = {}
    for term in terms:
        if term == "all":
            result["all"] = True
            continue
        key, sep, value = term.partition("=")
        if not sep or key not in FILTER_KEYS or not value:
            raise ValueError(f"bad filter term {term!r} (KEY=VALUE with KEY one of {', '.join(FILTER_KEYS)}, "
                             "or `all`)")
        if key in result:
            raise ValueError(f"filter key {key!r} given twice")
        result[key] = value
    if not result and not empty_ok:
        raise ValueError("give a filter (e.g. src=198.51.100.10 dport=80 rule=allow-web), or `all`")
    SessionFilter(result)  # validates
    return result


class SessionFilter:
    """Which sessions a filter dict selects: every key given must match (addresses may be CIDRs)."""

    def __init__(self, spec: dict):
        def network(key):
            try:
                return ipaddress.ip_network(spec[key], strict=False) if key in spec else None
            except ValueError:
                raise ValueError(f"{key}: not an address or CIDR: {spec[key]!r}") from None

        def port(key):
            if key not in spec:
                return None
            value = int(spec[key]) if str(spec[key]).isdigit() else -1
            if not 0 <= value <= 65535:
                raise ValueError(f"{key}: not a port: {spec[key]!r}")
            return value

        self.all = bool(spec.get("all"))
        proto = spec.get("proto")
        if proto is not None:
            proto = PROTO_NUMBERS.get(str(proto).lower(), int(proto) if str(proto).isdigit() else -1)
            if not 0 <= proto <= 255:
                raise ValueError(f"proto: unknown protocol {spec['proto']!r}")
        self.proto = proto
        self.src, self.dst, self.addr = network("src"), network("dst"), network("addr")
        self.sport, self.dport, self.port = port("sport"), port("dport"), port("port")
        self.rule = spec.get("rule")
        self.state = str(spec["state"]).upper() if spec.get("state") else None
        self.owner = spec.get("owner")

    def __call__(self, session) -> bool:
        if self.proto is not None and session.proto != self.proto:
            return False
        src, dst = ipaddress.ip_address(session.src), ipaddress.ip_address(session.dst)
        if self.src is not None and src not in self.src:
            return False
        if self.dst is not None and dst not in self.dst:
            return False
        if self.addr is not None and src not in self.addr and dst not in self.addr:
            return False
        if self.sport is not None and session.sport != self.sport:
            return False
        if self.dport is not None and session.dport != self.dport:
            return False
        if self.port is not None and self.port not in (session.sport, session.dport):
            return False
        if self.state is not None and session.state_name != self.state:
            return False
        if self.owner is not None and session.owner != self.owner:
            return False
        return self.rule is None or session.rule == self.rule
