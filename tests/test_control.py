"""The control socket: one JSON request, one JSON answer, root only, never blocking the loop.

The server runs on the daemon's own poll loop (fw.daemon.Loop) in a thread, on an abstract address
unique to this test run; clients are the real `call()`, run as root or, in a child process, as
nobody.
"""

from __future__ import annotations

import itertools
import json
import os
import pwd
import socket
import subprocess
import sys
import threading
import time

import pytest

from fw.cli.sessions import session_line
from fw.conntrack.table import ASSURED, SEEN_REPLY, Session
from fw.daemon import Loop
from fw.drivers.control import (
    NOT_ROOT,
    ControlError,
    ControlServer,
    SessionFilter,
    call,
    chunked,
    parse_filter,
    session_view,
)

ADDRESSES = itertools.count()


class Served:
    """A ControlServer on a Loop in a background thread."""

    def __init__(self, handler):
        self.address = b"\0fw-test/%d/%d" % (os.getpid(), next(ADDRESSES))
        self.requests = []
        self.loop = Loop()

        def record(request):
            self.requests.append(request)
            return handler(request)

        self.server = ControlServer(record, self.address)
        self.server.listen(self.loop)
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while self.running:
            self.loop.run_once(0.02)

    def call(self, request, **kw):
        return call(request, address=self.address, **kw)

    def close(self):
        self.running = False
        self.thread.join(5)
        self.server.close()


@pytest.fixture
def served():
    servers = []

    def start(handler):
        servers.append(Served(handler))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_a_request_gets_its_answer(served):
    server = served(lambda request: {"ok": True, "echo": request})
    assert server.call({"command": "stats", "zero": True}) == {"ok": True,
                                                               "echo": {"command": "stats", "zero": True}}


def test_an_error_answer_becomes_a_control_error_with_its_exit_status(served):
    server = served(lambda request: {"ok": False, "error": "bad filter: src: nonsense", "exit": 2})
    with pytest.raises(ControlError) as raised:
        server.call({"command": "kill"})
    assert (str(raised.value), raised.value.exit_code) == ("bad filter: src: nonsense", 2)


def test_a_handler_that_raises_answers_an_error_and_the_server_goes_on(served):
    def handler(request):
        if request["command"] == "boom":
            raise RuntimeError("boom")
        return {"ok": True}

    server = served(handler)
    with pytest.raises(ControlError, match="the daemon failed on this request: RuntimeError"):
        server.call({"command": "boom"})
    assert server.call({"command": "stats"}) == {"ok": True}


def test_not_json_is_bad_usage(served):
    server = served(lambda request: {"ok": True})
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(server.address)
        sock.sendall(b"stats please\n")
        answer = json.loads(sock.makefile("rb").read())
    assert answer == {"ok": False, "error": "bad request: one JSON object and a newline expected", "exit": 2}
    assert server.requests == []


def test_a_large_answer_streams_in_chunks_while_the_loop_keeps_turning(served):
    turns = []

    def handler(_request):
        def document():
            yield '{"ok": true, "items": ['
            for chunk in chunked(range(60000), lambda i: {"n": i, "pad": "x" * 20}):
                turns.append(len(turns))
                yield chunk
            yield "]}\n"
        return document()

    server = served(handler)
    answer = server.call({"command": "sessions"})
    assert [item["n"] for item in answer["items"]] == list(range(60000))
    assert len(turns) == 60000 // 256 + 1  # pulled chunk by chunk, not built at once


def test_no_server_means_no_daemon():
    with pytest.raises(ControlError) as raised:
        call({"command": "stats"}, address=b"\0fw-test/%d/nobody-here" % os.getpid())
    assert (str(raised.value), raised.value.exit_code) == (
        "no fw daemon is running in this network namespace", 1)


def test_the_name_is_a_lock_a_second_server_cannot_take(served):
    server = served(lambda request: {"ok": True})
    with pytest.raises(ControlError, match="another fw daemon is running in this network namespace"):
        ControlServer(lambda request: {"ok": True}, server.address)


def test_a_client_that_never_finishes_its_request_is_dropped(served):
    server = served(lambda request: {"ok": True})
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(server.address)
        sock.sendall(b'{"command": ')
        deadline = time.monotonic() + 5
        while not server.server.connections and time.monotonic() < deadline:
            time.sleep(0.01)
        server.server.tick(time.monotonic() + 11)
        assert sock.recv(100) == b""  # closed without an answer
    assert server.requests == []


@pytest.mark.root
def test_only_root_may_talk_to_the_daemon(served):
    server = served(lambda request: {"ok": True, "secret": "sessions"})
    nobody = pwd.getpwnam("nobody").pw_uid
    code = (  # everything imported before dropping root: nobody may not read this Python's files
        "import os, sys, json\n"
        "from fw.drivers.control import call, ControlError\n"
        f"os.setgid({nobody}); os.setuid({nobody})\n"
        "try:\n"
        f"    print(json.dumps(call({{'command': 'stats'}}, address={server.address!r})))\n"
        "except ControlError as e:\n"
        "    print(json.dumps({'error': str(e), 'exit': e.exit_code}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert json.loads(done.stdout) == {"error": NOT_ROOT, "exit": 1}, done.stderr
    assert server.requests == []  # the request was never handled
    assert server.call({"command": "stats"})["secret"] == "sessions"  # root still may


# -- sessions as the operator sees them ----------------------------------------------------------

CLIENT, SERVER = bytes([198, 51, 100, 10]), bytes([203, 0, 113, 10])


def web_session(now: float = 100.0) -> Session:
    session = Session.of_flow(6, CLIENT, SERVER, 40000, 80, "ESTABLISHED", now - 5)
    session.orig_packets, session.orig_bytes, session.reply_packets, session.reply_bytes = 3, 180, 2, 120
    session.deadline = now + 7439.6
    session.rule = "allow-web"
    session.flags |= ASSURED | SEEN_REPLY
    session.policy_rev = "abc123"
    return session


def test_a_session_shows_both_tuples_its_counters_and_the_seconds_left():
    assert session_view(web_session(), 100.0, lambda s: 42) == {
        "id": 42, "proto": "tcp", "family": 4, "state": "ESTABLISHED",
        "original": {"src": "198.51.100.10", "dst": "203.0.113.10", "sport": 40000, "dport": 80,
                     "packets": 3, "bytes": 180},
        "reply": {"src": "203.0.113.10", "dst": "198.51.100.10", "sport": 80, "dport": 40000,
                  "packets": 2, "bytes": 120},
        "timeout": 7440, "age": 5.0, "rule": "allow-web", "flags": ["ASSURED", "SEEN_REPLY"],
        "alg": None, "parent": None, "policy_rev": "abc123", "owner": None,
    }


def test_a_synced_session_names_the_node_that_announced_it():
    session = web_session()
    session.owner = "fw2"
    view = session_view(session, 100.0, lambda s: 42)
    assert view["owner"] == "fw2"
    assert session_line(view).endswith("rule=allow-web owner=fw2")
    assert "owner=" not in session_line(session_view(web_session(), 100.0, lambda s: 42))


def test_an_icmp_session_shows_the_echo_id_instead_of_ports():
    six = bytes.fromhex("20010db8000100000000000000000010"), bytes.fromhex("20010db8000200000000000000000010")
    session = Session.of_flow(58, *six, 77, 77, "UNREPLIED", 0.0)
    view = session_view(session, 0.0, lambda s: 1)
    assert view["original"] == {"src": "2001:db8:1::10", "dst": "2001:db8:2::10", "id": 77,
                                "packets": 0, "bytes": 0}
    assert view["proto"] == "icmpv6"


@pytest.mark.parametrize(("terms", "selected"), [
    (["src=198.51.100.0/24"], True),
    (["src=203.0.113.10"], False),  # src is the original direction's source
    (["addr=203.0.113.10"], True),  # addr: either end
    (["dport=80", "proto=tcp"], True),
    (["port=40000"], True),
    (["sport=80"], False),
    (["rule=allow-web"], True),
    (["rule=allow-ssh"], False),
    (["proto=udp"], False),
    (["dst=2001:db8::/32"], False),
])
def test_a_kill_filter_selects_by_address_port_and_rule(terms, selected):
    assert SessionFilter(parse_filter(terms))(web_session()) is selected


@pytest.mark.parametrize(("terms", "message"), [
    ([], "give a filter"),
    (["dport"], "bad filter term 'dport'"),
    (["colour=red"], "bad filter term 'colour=red'"),
    (["src=300.1.2.3"], "src: not an address or CIDR"),
    (["dport=70000"], "dport: not a port"),
    (["proto=ipx"], "proto: unknown protocol"),
    (["port=1", "port=2"], "filter key 'port' given twice"),
])
def test_a_bad_filter_is_refused_with_a_reason(terms, message):
    with pytest.raises(ValueError, match=message):
        parse_filter(terms)


def test_a_translated_session_shows_the_reply_tuple_as_it_arrives():
    from fw.engine_nat import Binding

    session = web_session()
    public = bytes([192, 0, 2, 1])
    session.nat = Binding(6, 4, (CLIENT, SERVER, 40000, 80), (SERVER, public, 80, 20000), "nat:outbound")
    view = session_view(session, 100.0, lambda s: 42)
    assert (view["reply"]["src"], view["reply"]["dst"], view["reply"]["sport"], view["reply"]["dport"]) == \
        ("203.0.113.10", "192.0.2.1", 80, 20000)
    assert view["nat"] == "nat:outbound" and view["original"]["src"] == "198.51.100.10"
