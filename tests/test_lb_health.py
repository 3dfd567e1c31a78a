"""Health checks (fw/lb/health.py) against real servers on loopback, killed and restarted.

The checker is driven as the daemon will drive it: wait on its epoll fd until `next_due()`, then
`poll(now)`. Times are the SPEC's bounds (down within interval x (fall + 1) + timeout of the kill,
up within interval x (rise + 1) of the restart), checked on the monotonic clock around conditions
that are polled for, never slept for.
"""

from __future__ import annotations

import json
import select
import socket
import sys
import time
from pathlib import Path

import pytest

from fw.lb.health import DOWN, UP, HealthChange, HealthChecker
from fw.policy.virtual_servers import HealthSpec

INTERVAL, TIMEOUT, RISE, FALL = 0.4, 0.2, 2, 2
MARK = 0x4C42
ROOT = Path(__file__).resolve().parent.parent


def drive(checker: HealthChecker, until, limit: float = 10.0) -> list[tuple[float, HealthChange]]:
    """Run the checker's loop until `until(changes)` is true; (time, change) pairs seen."""
    seen: list[tuple[float, HealthChange]] = []
    end = time.monotonic() + limit
    while not until(seen):
        now = time.monotonic()
        assert now < end, f"condition not met within {limit}s; changes: {seen}"
        wait = max(0.0, min(checker.next_due() or end, end) - now)
        select.select([checker], [], [], wait)
        now = time.monotonic()
        seen.extend((now, change) for change in checker.poll(now))
    return seen


def checked_once(target):
    return lambda seen: target.last is not None


def went(new: str):
    return lambda seen: any(change.new == new for _, change in seen)


@pytest.fixture
def checker():
    made = HealthChecker(mark=MARK)
    yield made
    made.close()


@pytest.mark.parametrize("kind", ["tcp", "http"])
def test_a_killed_server_goes_down_in_time_and_comes_back(kind, backend, checker):
    server = backend(kind, name="one")
    spec = HealthSpec(kind, INTERVAL, TIMEOUT, RISE, FALL)
    target = checker.add("one", "127.0.0.1", server.port, spec, time.monotonic())
    assert drive(checker, checked_once(target)) == []
    assert target.state == UP and target.last[1] is True
    server.kill()
    killed = time.monotonic()
    [(when, change)] = drive(checker, went(DOWN))
    assert change == HealthChange("one", UP, DOWN, "connection refused")
    assert when - killed <= INTERVAL * (FALL + 1) + TIMEOUT
    assert target.failures == FALL
    server.start()
    restarted = time.monotonic()
    [(when, change)] = drive(checker, went(UP))
    assert change.old == DOWN and change.why == ("connected" if kind == "tcp" else "HTTP 200")
    assert when - restarted <= INTERVAL * (RISE + 1)
    assert target.successes == RISE


def test_an_http_status_other_than_expected_is_down(backend, checker):
    # The statuses are what is tested, not the times: a timeout long enough that a loaded machine's
    # slow answer is never a "timeout" (0.2 s failed once under a load of 15 on two cores).
    server = backend("http", status=503)
    now = time.monotonic()
    interval, timeout = 4.0, 2.0
    checker.add("503", "127.0.0.1", server.port, HealthSpec("http", interval, timeout, RISE, FALL), now)
    checker.add("204", "127.0.0.1", server.port, HealthSpec("http", interval, timeout, RISE, FALL, expect=503), now)
    checker.add("404", "127.0.0.1", server.port, HealthSpec("http", interval, timeout, RISE, FALL, path="/other",
                                                            expect=503), now)
    seen = drive(checker, lambda seen: all(t.last for t in checker.targets.values()))
    assert sorted(change for _, change in seen) == [
        HealthChange("404", UP, DOWN, "HTTP 404, expected 503"),
        HealthChange("503", UP, DOWN, "HTTP 503, expected 200"),
    ]
    assert checker.targets["204"].state == UP and checker.targets["204"].last[2] == "HTTP 503"


def test_a_server_that_never_answers_times_out_without_blocking_the_loop(backend, checker):
    silent = backend("hang")
    spec = HealthSpec("http", INTERVAL, TIMEOUT, RISE, FALL)
    target = checker.add("silent", "127.0.0.1", silent.port, spec, time.monotonic())
    checker.poll(time.monotonic())  # connects (the kernel accepts), sends, and returns at once
    drive(checker, lambda seen: target.probe is not None and target.probe.connected)
    assert target.probe.sock.getblocking() is False
    assert target.probe.sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == MARK
    [(_, change)] = drive(checker, went(DOWN))
    assert change.why == f"timeout after {TIMEOUT:g}s"


def test_an_ipv6_server_is_checked(backend, checker):
    server = backend("tcp", host="::1")
    target = checker.add("six", "::1", server.port, HealthSpec("tcp", INTERVAL, TIMEOUT, RISE, FALL), time.monotonic())
    drive(checker, checked_once(target))
    assert target.state == UP and target.last[2] == "connected"


def test_fall_counts_failures_after_the_first_check(backend, checker):
    """A target starts up; its first failed check marks it down (HAProxy), later ones need `fall`."""
    server = backend("tcp")
    spec = HealthSpec("tcp", INTERVAL, TIMEOUT, rise=1, fall=3)
    target = checker.add("t", "127.0.0.1", server.port, spec, time.monotonic())
    drive(checker, checked_once(target))
    server.kill()
    seen = drive(checker, went(DOWN))
    assert target.failures == 3 and len(seen) == 1
    dead = checker.add("dead", "127.0.0.1", server.port, spec, time.monotonic())
    drive(checker, checked_once(dead))
    assert dead.state == DOWN and dead.failures == 1


def test_remove_and_close_release_the_sockets(backend, checker):
    silent = backend("hang")
    target = checker.add("silent", "127.0.0.1", silent.port, HealthSpec("http", 5, 1), time.monotonic())
    checker.poll(time.monotonic())
    sock = target.probe.sock
    checker.remove("silent")
    assert sock.fileno() == -1 and checker.next_due() is None
    checker.add("again", "127.0.0.1", 1, HealthSpec("tcp"), 0)
    with pytest.raises(ValueError):
        checker.add("again", "127.0.0.1", 1, HealthSpec("tcp"), 0)


MARKED_CHECK = """
import json, select, sys, time
from fw.lb.health import HealthChecker
from fw.policy.virtual_servers import HealthSpec
checker = HealthChecker(mark=int(sys.argv[1]))
target = checker.add("s", sys.argv[2], int(sys.argv[3]), HealthSpec("tcp", 1, 0.5), time.monotonic())
while target.last is None:
    select.select([checker], [], [], max(0, checker.next_due() - time.monotonic()))
    checker.poll(time.monotonic())
print(json.dumps([target.state, target.last[2]]))
"""


@pytest.mark.netns
@pytest.mark.root
def test_the_checks_carry_their_mark_through_the_kernel(lab, backend):
    """In the lab's firewall namespace, iptables resets every check without the mark: only the
    checker given that mark sees the server up."""
    server = lab.host("server")
    listener = backend("tcp", host=server.address4, netns=lab.namespace("server"))
    lab.run(lab.firewall, ["iptables", "-A", "OUTPUT", "-p", "tcp", "-d", server.address4, "--dport",
                           str(listener.port), "-m", "mark", "!", "--mark", str(MARK), "-j", "REJECT",
                           "--reject-with", "tcp-reset"])
    results = {}
    for mark in (MARK, 0, MARK + 1):
        done = lab.run(lab.firewall, [sys.executable, "-c", MARKED_CHECK, str(mark), server.address4,
                                      str(listener.port)], cwd=ROOT)
        results[mark] = json.loads(done.stdout)
    assert results == {MARK: ["up", "connected"], 0: ["down", "connection refused"],
                       MARK + 1: ["down", "connection refused"]}


def test_a_reload_keeps_unchanged_targets_and_their_state(backend, checker):
    server = backend("tcp")
    spec = HealthSpec("tcp", INTERVAL, TIMEOUT, RISE, FALL)
    now = time.monotonic()
    checker.replace_targets([("a", "127.0.0.1", server.port, spec), ("b", "127.0.0.1", 1, spec)], now)
    drive(checker, lambda seen: len(checker.last_checks()) == 2)
    kept, changed = checker.targets["a"], checker.targets["b"]
    assert changed.state == DOWN
    longer = HealthSpec("tcp", 2 * INTERVAL, TIMEOUT, RISE, FALL)
    checker.replace_targets([("a", "127.0.0.1", server.port, spec), ("b", "127.0.0.1", 1, longer),
                             ("c", "127.0.0.1", server.port, spec)], time.monotonic())
    assert checker.targets["a"] is kept and checker.targets["b"] is not changed
    assert checker.targets["b"].state == UP and checker.targets["b"].last is None  # starts over
    assert set(checker.last_checks()) == {"a"}
    checker.replace_targets([], time.monotonic())
    assert checker.targets == {} and checker.next_due() is None
