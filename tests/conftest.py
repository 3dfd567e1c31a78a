"""Fixtures for kernel tests: a fresh lab per test and the firewall daemon inside it.

Tests marked `root` skip when not root; tests marked `netns` skip when `ip netns` does not work (CI
is root, so they run there). Every lab gets a prefix unique to this run and test (`fwt<PID>-<N>-`)
and is torn down after its test, passed or failed; at the end of the session any namespace still
named `fwt<PID>-...` is removed, and at its start those of test runs that were killed.
"""

from __future__ import annotations

import itertools
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fw.lab import Lab, remove_namespaces
from tests import netns

RUN_PREFIX = f"fwt{os.getpid()}-"
PHASE_REPORTS = pytest.StashKey[dict]()


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") and os.geteuid() != 0:
        pytest.skip("needs root")
    if item.get_closest_marker("netns") and (reason := netns.unavailable_reason()):
        pytest.skip(reason)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Keep each phase's report on the item, so fixtures know at teardown whether the test failed."""
    report = yield
    item.stash.setdefault(PHASE_REPORTS, {})[report.when] = report
    return report


def node_failed(node: pytest.Item) -> bool:
    return any(report.failed for report in node.stash.get(PHASE_REPORTS, {}).values())


@pytest.fixture(autouse=True)
def private_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test's daemons keep their database and session snapshots in a folder of the test's
    own ($FW_STATE_DIR): network namespace inodes are reused, so the default per-namespace files
    under /var/lib/fw could carry one test's sessions into the next."""
    state = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("FW_STATE_DIR", str(state))
    monkeypatch.delenv("FW_DB", raising=False)
    return state


@pytest.fixture(scope="session")
def lab_prefix() -> Iterator[Callable[[], str]]:
    """A maker of fresh namespace prefixes for this run; sweeps this run's namespaces at the end."""
    if netns.unavailable_reason() is None:
        netns.remove_stale_namespaces()
    counter = itertools.count(1)
    yield lambda: f"{RUN_PREFIX}{next(counter)}-"
    if netns.unavailable_reason() is None:
        leftovers = remove_namespaces(RUN_PREFIX)
        if leftovers:
            warnings.warn(f"removed namespaces a test left behind: {', '.join(leftovers)}", stacklevel=1)


@pytest.fixture
def lab(lab_prefix: Callable[[], str]) -> Iterator[Lab]:
    """The lab (client, fw, server) up, without a firewall; torn down after the test."""
    if reason := netns.unavailable_reason():
        pytest.skip(reason)
    built = Lab(lab_prefix())
    try:
        built.up()
        yield built
    finally:
        built.down()


@pytest.fixture
def daemon(lab: Lab, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., netns.Daemon]]:
    """Start `fw run --policy POLICY ARGS` in the lab's fw namespace: `daemon(policy_path, *args)`.

    Returns a netns.Daemon once it is ready. At teardown each daemon gets SIGTERM and must exit 0
    (else the test errors with its log); the log is printed when the test failed.
    """
    started: list[netns.Daemon] = []

    def start(policy: Path | str, *args: str, ready_timeout: float = 15.0) -> netns.Daemon:
        process = netns.Daemon(lab, Path(policy), tmp_path / f"daemon-{len(started)}.log", *args)
        started.append(process)
        process.wait_ready(ready_timeout)
        return process

    yield start
    problems = []
    for process in started:
        status = process.stop()
        if status != 0:
            problems.append(f"the daemon exited with status {status} after SIGTERM, not 0"
                            if status is not None else "the daemon ignored SIGTERM and was killed")
    if problems or node_failed(request.node):
        for process in started:
            sys.stderr.write(f"--- daemon log {process.log} ---\n{process.log_text()}\n")
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture
def backend() -> Iterator[Callable[..., object]]:
    """Start a real server for the load balancer's tests: `backend("http", status=200)` (tests/backends.py).
    Every one started is killed at teardown."""
    from tests.backends import Backend

    started: list[Backend] = []

    def start(kind: str, **options) -> Backend:
        server = Backend(kind, **options)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.kill()
